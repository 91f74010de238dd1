"""Small CNNs of MONAI blocks trained here: the feature encoder for FID/KID and the CN-vs-AD classifier.

No Inception (or other ImageNet) weights can be downloaded, so the FID/KID features come from an
encoder trained in this pipeline on the *training* cohort's slices: it classifies a slice's position
along the axial axis (``POSITION_BINS`` bins of the relative index within each volume's kept slices),
a task that forces the features to describe brain anatomy. Its ``feature_dim`` pooled activations are
the features. The classifier is the same network with one logit (CN = 0, AD = 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.networks.blocks import Convolution
from safetensors.torch import load_file, save_file
from torch import nn

from latentdrift.finetune.cohorts import CohortData

POSITION_BINS = 8
BATCH = 32


class SliceCNN(nn.Module):
    """Slices (B, 1, S, S) in [-1, 1] → features (B, feature_dim) → ``outputs`` logits.

    Three stride-2 MONAI ``Convolution`` blocks (conv, batch norm, PReLU), global average pooling.
    """

    def __init__(self, outputs: int, feature_dim: int, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            Convolution(2, 1, width, strides=2, kernel_size=3, norm="BATCH", act="PRELU"),
            Convolution(2, width, 2 * width, strides=2, kernel_size=3, norm="BATCH", act="PRELU"),
            Convolution(2, 2 * width, feature_dim, strides=2, kernel_size=3, norm="BATCH", act="PRELU"),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(feature_dim, outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) → (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) → (B, outputs) logits."""
        return self.head(self.body(x))


def position_labels(data: CohortData) -> np.ndarray:
    """Per slice (N,) the bin 0…POSITION_BINS−1 of its index relative to its volume's kept slices."""
    by_row: dict[int, list[int]] = {}
    for record in data.slices:
        by_row.setdefault(record["row"], []).append(record["index"])
    labels = []
    for record in data.slices:
        low, high = min(by_row[record["row"]]), max(by_row[record["row"]])
        relative = (record["index"] - low) / max(high - low, 1)
        labels.append(min(int(relative * POSITION_BINS), POSITION_BINS - 1))
    return np.array(labels, dtype=np.int64)


def train_network(
    net: SliceCNN, images: np.ndarray, targets: np.ndarray, epochs: int, seed: int, binary: bool
) -> list[float]:
    """Adam (1e-3), batches of 32 in a seeded order; cross-entropy (or BCE when ``binary``). Mean loss per epoch.

    ``images`` (N, S, S) in [-1, 1]; ``targets`` (N,) class indices (or 0/1 when ``binary``).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images[:, None].astype(np.float32))
    y = torch.from_numpy(targets.astype(np.float32 if binary else np.int64))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss() if binary else nn.CrossEntropyLoss()
    net.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), BATCH):
            items = order[start : start + BATCH]
            if len(items) < 2:  # batch norm needs two items
                continue
            optimiser.zero_grad()
            output = net(x[items])
            loss = loss_fn(output[:, 0] if binary else output, y[items])
            loss.backward()
            optimiser.step()
            total += float(loss) * len(items)
        losses.append(total / len(x))
    net.eval()
    return losses


@torch.no_grad()
def apply(net: SliceCNN, images: np.ndarray, features: bool) -> np.ndarray:
    """Features (N, feature_dim) or logits (N, outputs) of slices (N, S, S), in eval mode."""
    net.eval()
    out = []
    for start in range(0, len(images), 64):
        x = torch.from_numpy(images[start : start + 64, None].astype(np.float32))
        out.append((net.features(x) if features else net(x)).numpy())
    return np.concatenate(out).astype(np.float64)


def train_encoder(path: Path, data: CohortData, feature_dim: int, epochs: int, seed: int) -> dict[str, float]:
    """Train the position encoder on ``data`` and save it (safetensors) at ``path``; its loss and accuracy."""
    net = SliceCNN(POSITION_BINS, feature_dim)
    labels = position_labels(data)
    losses = train_network(net, data.images, labels, epochs, seed, binary=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    accuracy = float((apply(net, data.images, features=False).argmax(axis=1) == labels).mean())
    return {"final_loss": losses[-1], "train_accuracy": accuracy, "slices": len(labels)}


def load_encoder(path: Path, feature_dim: int) -> SliceCNN:
    """The encoder saved by :func:`train_encoder`, in eval mode."""
    net = SliceCNN(POSITION_BINS, feature_dim)
    net.load_state_dict(load_file(path))
    net.eval()
    return net
