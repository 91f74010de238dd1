"""Model cards: the ``MODEL_CARD.md`` written next to every model's weights, all made here.

Each card holds only figures the run itself measured: :func:`ldseg_training_card` (an LDSeg model
trained or fine-tuned here), :func:`ldseg_card` (an LDSeg model saved without one, from its config),
:func:`finetuned_card` (a fine-tuned Stable Diffusion / InstructPix2Pix model) and
:func:`pretraining_card` (the pre-trained miniature Stable Diffusion). Importing this module loads no
torch: the Slicer panel and job status read without it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..segmentation.ldseg.network import LDSegConfig, LDSegNetwork
    from ..segmentation.ldseg.training import TrainSettings


def class_table(config: LDSegConfig) -> str:
    """The Markdown table of an LDSeg model's classes: label value, name, colour, terminology."""
    rows = [
        f"| {index} | {c.name} | {c.color} | {c.terminology or '—'} |"
        for index, c in enumerate(config.classes)
    ]
    return "\n".join(["| value | class | colour | terminology |", "| --- | --- | --- | --- |", *rows])


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
    from ..segmentation.ldseg.sampler import describe_sampling

    config = model.config
    counts = model.parameter_counts()
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

{class_table(config)}

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


def ldseg_card(model: LDSegNetwork) -> str:
    """A minimal Markdown model card: classes, input conventions, size."""
    from ..segmentation.ldseg.sampler import describe_sampling

    config = model.config
    size = "×".join([str(config.image_size)] * config.spatial_dims)
    what = (
        f"{config.axis} slices" if config.spatial_dims == 2 else f"whole volumes ({config.axis} orientation)"
    )
    return (
        "# LDSeg model\n\n"
        f"Latent-diffusion segmentation of {what} at {size}, "
        f"{model.parameter_counts()['total']:,} parameters, "
        f"{describe_sampling(config)} by default.\n\n"
        f"Input: intensities windowed to percentiles {config.intensity_percentiles} and mapped to "
        f"{config.intensity_range}.\n\n{class_table(config)}\n"
    )


def finetuned_card(metadata: dict[str, Any], report: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` of a fine-tuned model from its metadata and cohort report."""
    losses = metadata.get("losses") or {}
    curve = metadata.get("drift_curve")
    lines = [
        f"# Fine-tuned model ({metadata['scheme']})",
        "",
        "Made by `latentdrift finetune` (LatentDriftSlicer). Trained on a local cohort: check the cohort "
        "report below before using it, and do not use it for diagnosis.",
        "",
        "| | |",
        "|---|---|",
        f"| scheme | {metadata['scheme']} |",
        f"| base model | `{metadata.get('base_model')}` |",
        f"| cohort | `{metadata.get('cohort')}` (key `{metadata.get('cohort_key')}`) |",
        f"| rows used / total | {report.get('rows_used')} / {report.get('rows_total')} |",
        f"| subjects / slices | {report.get('subjects')} / {report.get('slices')} |",
        f"| steps | {metadata.get('steps')} |",
        f"| Latent Drift δ | {metadata.get('drift')} (trained with δ: {metadata.get('trained_drift')}) |",
        f"| loss first / last / final mean | {_fmt(losses.get('first'))} / {_fmt(losses.get('last'))} / "
        f"{_fmt(losses.get('final_mean'))} |",
    ]
    for name, value in (metadata.get("tokens") or {}).items():
        lines.append(f"| {name} | `{value}` |")
    if curve:
        lines += [
            "",
            f"δ search ({curve['criterion']}, {curve['samples']} samples, {curve['steps']} steps):",
            "",
        ]
        lines += ["| δ | L1 mean image | L1 nearest |", "|---|---|---|"]
        lines += [
            f"| {p['delta']:g} | {p['mean_image_l1']:.4f} | {p['nearest_l1']:.4f} |" for p in curve["points"]
        ]
    problems = report.get("problems") or []
    if problems:
        lines += ["", f"{len(problems)} cohort row(s) were skipped; see `cohort_report.md`."]
    lines += ["", "Loss curve: `loss_curve.png`. Sampling: use δ above with a DDIM or DDPM scheduler."]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{float(value):.4f}"


def pretraining_card(record: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` of a pre-trained model: sizes, data, settings and the measured loss curves."""
    settings = record["settings"]
    size = settings["resolution"] // 2 ** (len(settings["vae_channels"]) - 1)
    counts = ", ".join(f"{name} {count:,}" for name, count in record["parameters"].items())
    lines = [
        "# Miniature Stable Diffusion, pre-trained on natural images",
        "",
        "A diffusers `StableDiffusionPipeline` trained from random weights by `latentdrift.finetune.pretrain` "
        "(LatentDriftSlicer) as a stand-in for Stable Diffusion v1.4: a general image model to fine-tune "
        "on medical images. It makes rough, blurry images; it is not a medical model.",
        "",
        f"* {settings['resolution']}×{settings['resolution']} pixels, latents 4×{size}×{size}; parameters: {counts}.",
        f"* Data: random crops (grey and colour, several scales) of scikit-image's sample images "
        f"({', '.join(record['images'])}), captioned `a <tone> <scale> photo of <subject>`.",
        f"* VAE: {settings['vae_steps']} steps on {settings['vae_resolution']}² crops; UNet + text encoder: "
        f"{settings['unet_steps']} steps; batch {settings['batch_size']}, seed {settings['seed']}.",
        "",
        "Training losses (mean over each interval):",
        "",
        "| stage | step | loss |",
        "|---|---|---|",
    ]
    for stage in ("vae", "unet"):
        lines += [
            f"| {stage} | {entry['step']} | {entry['loss']:.4f} |" for entry in record[f"{stage}_losses"]
        ]
    return "\n".join(lines) + "\n"
