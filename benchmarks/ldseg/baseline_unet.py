"""Train the deterministic baseline for the LDSeg robustness benchmark: a MONAI U-Net of similar size.

    .venv/bin/python benchmarks/ldseg/baseline_unet.py [--steps 1000]

Same training slices as the bundled LDSeg model (``scripts/train_default_ldseg.py``: the same synthetic
subjects, the same subject split, window, resolution and augmentation), same optimizer, batch size and
number of steps; loss Dice + CE. Writes ``data/baseline-unet/model.safetensors`` and ``training.json``
(not committed: ``benchmarks/ldseg/run.py`` retrains it when it is missing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from train_default_ldseg import DATA, default_config, write_subjects  # noqa: E402

from latentdrift.segmentation.data import find_pairs, load_training_slices, split_by_subject  # noqa: E402
from latentdrift.segmentation.ldseg.augment import augment_batch  # noqa: E402

OUTPUT = ROOT / "data" / "baseline-unet"
CHANNELS = (24, 48, 96, 192)


def build_unet(num_classes: int) -> UNet:
    """The baseline: MONAI UNet, 4 levels (24–192 channels), 2 residual units per level (~0.9 M parameters)."""
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=num_classes,
        channels=CHANNELS,
        strides=(2,) * (len(CHANNELS) - 1),
        num_res_units=2,
    )


def train(steps: int, batch_size: int, subjects: int) -> Path:
    """Train the baseline and write it to ``OUTPUT``; returns the weights path."""
    config = default_config()
    pairs = find_pairs(write_subjects(subjects))
    train_pairs, _ = split_by_subject(pairs, 0.2, 0)
    images, labels = load_training_slices(train_pairs, config)
    x, y = torch.from_numpy(images)[:, None], torch.from_numpy(labels.astype("int64"))
    model = build_unet(config.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_dice=2.0, lambda_ce=1.0)
    history, started = [], time.perf_counter()
    for step in range(steps):
        generator = torch.Generator().manual_seed(step)
        index = torch.randint(0, len(x), (batch_size,), generator=generator)
        batch_x, batch_y = augment_batch(x[index], y[index], generator, config.intensity_range, True)
        loss = loss_function(model(batch_x), batch_y[:, None])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            history.append(
                {"step": step + 1, "loss": float(loss), "seconds": round(time.perf_counter() - started, 1)}
            )
            print(json.dumps(history[-1]), flush=True)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    weights = OUTPUT / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    (OUTPUT / "training.json").write_text(
        json.dumps(
            {"steps": steps, "batch_size": batch_size, "channels": CHANNELS, "history": history}, indent=2
        )
    )
    return weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--subjects", type=int, default=30)
    args = parser.parse_args()
    print(train(args.steps, args.batch_size, args.subjects), DATA)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
