"""What a fine-tuning job does: :class:`FinetuneConfig`, stored as the job folder's ``config.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ParameterError
from ..core.models import DEFAULT_MODELS
from ..core.settings import device_option, mixed_precision_option, option, seed_option, settings_from_json
from ..core.values import MAX_RESOLUTION, Drift, check_mixed_precision, check_seed, validate_drift
from ..counterfactual.prompts import PromptOptions
from . import SCHEMES

if TYPE_CHECKING:  # cohorts reads volumes (SimpleITK): the Slicer panel imports this module at start-up
    from .cohorts import SliceSettings

DEFAULT_SEARCH_GRID = tuple(round(-0.2 + 0.05 * i, 2) for i in range(9))


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tuning job, and the declaration of the CLI's ``finetune`` options.

    The fields declared with :func:`~latentdrift.core.settings.option` and a help text are the options
    (:mod:`latentdrift.cli_options` derives them: flag, type, help, choices); ``seed`` and ``device`` are
    every command's. The checks of :meth:`__post_init__` are the one home of each field's bounds.

    ``drift`` is δ used in training (``None``: no Latent Drift); ``search_drift`` searches δ on the base
    model first (grid ``search_grid``, ``search_samples`` samples of ``search_steps`` steps each) and
    trains with the best one. ``learning_rate`` ``None`` takes the scheme's default (as in the diffusers
    example scripts). ``mixed_precision`` ``auto`` is fp16 on CUDA and off elsewhere.

    InstructPix2Pix only: ``identity_pairs`` adds every training slice as a pair with itself (an
    instruction with nothing to change, e.g. "Turn this CN 70 … into a 70 brain MRI with CN"), so the
    editor learns that the instruction decides how much changes; ``train_text_encoder`` trains the
    text encoder with the UNet (at the same learning rate); ``scanner_variation`` augments every pair
    (source and target alike) with the warps and real-scan transforms LDSeg trains with
    (:func:`latentdrift.segmentation.ldseg.augment.augment_pairs`), so that the editor meets other
    scanners' contrast, sharper anatomy and front-end leftovers in training, not first on a user's head.
    """

    cohort: str = option(metavar="CSV|DIR", help="cohort CSV or folder of volumes")
    scheme: str = option(choices=SCHEMES, help="what trains and what the job makes (docs/fine-tuning.md)")
    model: str | None = option(
        None,
        help="base model folder or name (ldseg: an LDSeg model to fine-tune, keeping its classes, axis "
        f"and resolution; default: {DEFAULT_MODELS['finetune'].name}, for ldseg a new model)",
    )
    steps: int = option(1000, help="optimizer steps (default: {default})")
    seed: int = seed_option()
    drift: Drift | None = option(None, help="train with Latent Drift δ (one number or one per channel)")
    search_drift: bool = option(False, help="grid-search δ on the base model first")
    batch_size: int = option(4, help="items per process and micro-batch (default: {default})")
    gradient_accumulation: int = option(1, help="micro-batches per optimizer step (default: {default})")
    learning_rate: float | None = option(None, help="default: the scheme's (as in the diffusers scripts)")
    lr_scheduler: str = option(
        "constant", help="diffusers scheduler name: constant, cosine, linear, ... (default: {default})"
    )
    warmup_steps: int = 0
    mixed_precision: str = mixed_precision_option()
    device: str = device_option()
    resolution: int = option(64, help="slice size in pixels (multiple of 8) (default: {default})")
    axis: str = option("axial", help="slice axis: axial, coronal, sagittal (default: {default})")
    min_anatomy: float = 0.05
    validation_fraction: float = option(0.1, help="share of subjects held out (default: {default})")
    prompt_style: str = option("diverse", help="simple or diverse (default: {default})")
    patient_info: bool = option(True, flag="--no-patient-info", help="prompts without age, sex, diagnosis")
    age_format: str = option("numerical", help="numerical, words or binned (default: {default})")
    checkpoint_every: int = option(100, help="steps between checkpoints (default: {default})")
    keep_checkpoints: int = 2
    """Checkpoints kept in ``JOB_DIR/checkpoints`` (the newest)."""
    sample_every: int = option(100, help="steps between sample images (0: none) (default: {default})")
    """Optimizer steps between sample images in ``JOB_DIR/samples`` (0: none)."""
    sample_steps: int = option(20, help="denoising steps of sample images (default: {default})")
    log_every: int = option(1, help="steps between status lines (default: {default})")
    """Optimizer steps between status lines (each a point of the panel's loss chart)."""
    placeholder_token: str = "<cohort-mri>"
    initializer_token: str = "brain"
    instance_token: str = "sks"
    lora_rank: int = option(4, help="lora: adapter rank (default: {default})")
    merge_lora: bool = option(True, flag="--no-merge-lora", help="lora: save the adapter only")
    prior_loss_weight: float = option(
        1.0, help="dreambooth: weight of the prior-preservation loss (default: {default})"
    )
    num_class_images: int = option(
        16, help="dreambooth: class images generated by the base model (default: {default})"
    )
    modifier_token: str = option(
        "<new1>", help="custom-diffusion: the new token ('' for none) (default: {default})"
    )
    conditioning_dropout: float = 0.05
    identity_pairs: bool = option(
        False,
        help="instruct-pix2pix: also train each slice as a pair with itself (an instruction with nothing to change)",
    )
    train_text_encoder: bool = option(False, help="instruct-pix2pix: train the text encoder too")
    scanner_variation: bool = option(
        False,
        help="instruct-pix2pix: augment each pair alike (warps, other scanners' contrast, front-end leftovers)",
    )
    search_grid: tuple[float, ...] = DEFAULT_SEARCH_GRID
    search_samples: int = option(8, help="δ search: samples per δ (default: {default})")
    search_steps: int = option(20, help="δ search: denoising steps per sample (default: {default})")
    classes: str | None = option(None, help="ldseg: class names, background first (default: from the labels)")
    cache_dir: str | None = option(None, help="slice cache (default: ~/.cache/latentdrift/cohorts)")

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ParameterError(f"Unknown scheme '{self.scheme}': use one of {', '.join(SCHEMES)}.")
        if self.drift is not None and self.search_drift:
            raise ParameterError("Give either a drift (--drift) or --search-drift, not both.")
        if self.drift is not None:
            validate_drift(self.drift)
        for name in ("steps", "batch_size", "gradient_accumulation", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name}={getattr(self, name)}: use 1 or more.")
        if self.keep_checkpoints < 1 or self.sample_every < 0 or self.sample_steps < 1:
            raise ParameterError("keep_checkpoints and sample_steps must be ≥ 1, sample_every ≥ 0.")
        if not 8 <= self.resolution <= MAX_RESOLUTION or self.resolution % 8:
            raise ParameterError(
                f"resolution={self.resolution}: use a multiple of 8 up to {MAX_RESOLUTION} (e.g. 64, 256, 512)."
            )
        check_seed(self.seed)
        check_mixed_precision(self.mixed_precision)
        if not 0 <= self.validation_fraction < 1 or not 0 <= self.conditioning_dropout < 1 / 3:
            raise ParameterError(
                "validation_fraction must be in [0, 1) and conditioning_dropout in [0, 1/3)."
            )
        for name in ("identity_pairs", "train_text_encoder", "scanner_variation"):
            if getattr(self, name) and self.scheme != "instruct-pix2pix":
                raise ParameterError(
                    f"{name} applies to the instruct-pix2pix scheme only: turn it off for {self.scheme}."
                )
        self.prompt_options()  # checks style and age format

    def prompt_options(self) -> PromptOptions:
        """The prompt style of this job."""
        return PromptOptions(self.prompt_style, self.patient_info, self.age_format)  # type: ignore[arg-type]

    def slice_settings(self) -> SliceSettings:
        """How the cohort's volumes become slices."""
        from .cohorts import SliceSettings

        return SliceSettings(self.axis, self.resolution, min_anatomy=self.min_anatomy)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> FinetuneConfig:
        """The config of a ``config.json`` (lists back to tuples; unknown keys are refused)."""
        return settings_from_json(cls, values)

    @classmethod
    def read(cls, path: str | Path) -> FinetuneConfig:
        """Read a job's ``config.json``."""
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
