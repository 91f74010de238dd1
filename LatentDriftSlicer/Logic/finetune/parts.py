"""What the fine-tuning loop works on: the model's modules, the examples, one batch.

Shared by the loop (:mod:`.loop`), the schemes (:mod:`.schemes`) and sampling (:mod:`.sampling`),
which import it and not one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Parts:
    """The modules of a Stable Diffusion folder, as the training loop uses them."""

    base: Path
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any


@dataclass
class Examples:
    """What batches are drawn from: images (N, S, S) in [-1, 1], one prompt each, optional sources."""

    images: torch.Tensor
    prompts: list[str]
    sources: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class Batch:
    """One process's batch: pixels (B, 3, S, S), prompts, sources (InstructPix2Pix), prior items at the end."""

    pixels: torch.Tensor
    prompts: list[str]
    sources: torch.Tensor | None = None
    prior_count: int = 0


def as_pixels(images: torch.Tensor) -> torch.Tensor:
    """(B, S, S) grey slices → (B, 3, S, S) as the VAE takes them."""
    return images[:, None].expand(-1, 3, -1, -1).contiguous()


@dataclass
class UNetInput:
    """What the UNet of one training step takes: ``latents`` (B, C, h, w) and text states ``text`` (B, L, D).

    ``C`` is the latent channels, or twice that for InstructPix2Pix (source latents concatenated).
    """

    latents: torch.Tensor
    text: torch.Tensor
