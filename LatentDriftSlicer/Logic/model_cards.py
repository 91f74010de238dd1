"""Model cards: Markdown written next to the weights, with only figures measured by the run itself."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .ldseg import LDSegNetwork, TrainSettings
from .ldseg.sampler import describe_sampling


def ldseg_training_card(
    model: LDSegNetwork,
    history: list[dict[str, Any]],
    inputs: dict[str, Any],
    settings: TrainSettings,
    notes: str,
) -> str:
    """The MODEL_CARD.md of a trained LDSeg model: what it segments, how it was trained, what it scored.

    ``notes`` is the caller's Markdown (data provenance, the command that reproduces the model).
    """
    config = model.config
    counts = model.parameter_counts()
    classes = "\n".join(
        f"| {index} | {c.name} | {c.color} | {c.terminology or '—'} |"
        for index, c in enumerate(config.classes)
    )
    last = history[-1] if history else {}
    dice = last.get("dice") or {}
    dice_rows = "\n".join(f"| {name} | {value:.3f} |" for name, value in dice.items() if value is not None)
    curve = "\n".join(
        f"| {h['epoch']} | {h['step']} | {h['loss']:.4f} | {h.get('mean_dice', float('nan')):.3f} |"
        for h in history
    )
    started = f" Fine-tuned from `{inputs['start_from']}`." if inputs.get("start_from") else ""
    return f"""# LDSeg model

Latent-diffusion segmentation (Zaman et al., LDSeg) of {config.axis} slices at {config.image_size}×{config.image_size},
latent {config.latent_size}×{config.latent_size}×{config.latent_channels}, {counts["total"]:,} parameters
({", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "total")}), {describe_sampling(config)} by default.

Input: intensities windowed to the volume's percentiles {config.intensity_percentiles} and mapped to
{config.intensity_range}; slices padded to a square field of view in millimetres.

| value | class | colour | terminology |
| --- | --- | --- | --- |
{classes}

## Training

Data: {inputs.get("train_subjects", "?")} training and {inputs.get("validation_subjects", "?")} validation subjects
(`{inputs.get("data", "?")}`), split by subject.{started} Settings: `{asdict(settings)}`.

Validation Dice at the end of training (EMA weights, 1 sample, {settings.validation_steps} DDIM steps):

| class | Dice |
| --- | --- |
{dice_rows or "| (no validation data) | — |"}

| epoch | step | training loss | validation mean Dice |
| --- | --- | --- | --- |
{curve}

{notes}
"""
