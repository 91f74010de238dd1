"""Images from a model being trained: sample slices, PNG files, the loss curve.

Sampling goes through the project's one sampling mechanism (:mod:`latentdrift.counterfactual.edit`, where δ is
applied by :class:`~latentdrift.counterfactual.drift.DriftCallback`): the training modules are wrapped in a
:class:`~latentdrift.counterfactual.edit.PipelineBundle` without copying. A model trained with δ is sampled with
δ and a drifted start ``z_T ~ N(δ, I)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.values import Drift
from ..counterfactual.edit import EditSettings, PipelineBundle, edit_slices, generate_slices
from ..counterfactual.modes import GENERATE, INSTRUCT
from .config import FinetuneConfig
from .parts import Examples, Parts


def bundle_of(parts: Parts) -> PipelineBundle:
    """The training modules as a :class:`PipelineBundle` (same objects, their device and dtype)."""
    return PipelineBundle(
        folder=parts.base,
        device=parts.unet.device,
        dtype=parts.unet.dtype,
        unet=parts.unet,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        scheduler_config=dict(parts.noise_scheduler.config),
    )


def has_drift(delta: Drift) -> bool:
    """True unless δ is zero (or all zeros)."""
    values = (delta,) if isinstance(delta, int | float) else tuple(delta)
    return any(value != 0 for value in values)


@torch.no_grad()
def sample_slice(parts: Parts, examples: Examples, config: FinetuneConfig, delta: Drift) -> np.ndarray:
    """One (S, S) slice in [-1, 1]: a generation from the first prompt, or an edit of the first source."""
    settings = {
        "drift": delta,
        "drift_start": has_drift(delta),
        "steps": config.sample_steps,
        "seed": config.seed,
        "batch_size": 1,
    }
    bundle = bundle_of(parts)
    size = config.resolution
    if examples.sources is not None:
        source = examples.sources[:1].numpy()
        edit = EditSettings(mode=INSTRUCT.name, instruction=examples.prompts[0], **settings)  # type: ignore[arg-type]
        return np.concatenate([source[0], edit_slices(bundle, source, edit)[0]], axis=1)
    generate = EditSettings(mode=GENERATE.name, prompt=examples.prompts[0], **settings)  # type: ignore[arg-type]
    return generate_slices(bundle, 1, size, size, generate)[0]


def save_png(image: np.ndarray, path: Path) -> Path:
    """Write a slice in [-1, 1] as an 8-bit grey PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip((image + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def save_curve(xs: list[float], ys: list[float], path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """A line plot PNG (loss curve, δ curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    axes.plot(xs, ys, marker="o" if len(xs) <= 30 else None)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


@torch.no_grad()
def class_images(parts: Parts, prompt: str, config: FinetuneConfig, device: torch.device) -> np.ndarray:
    """``num_class_images`` samples (N, S, S) of the base model for ``prompt`` (DreamBooth's prior)."""
    for module in (parts.unet, parts.vae, parts.text_encoder):
        module.to(device)
    settings = EditSettings(mode=GENERATE.name, prompt=prompt, steps=config.sample_steps, seed=config.seed)
    size = config.resolution
    return generate_slices(bundle_of(parts), config.num_class_images, size, size, settings)
