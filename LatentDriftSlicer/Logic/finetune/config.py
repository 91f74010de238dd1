"""What a fine-tuning job does: :class:`FinetuneConfig`, stored as the job folder's ``config.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ParameterError
from ..core.settings import settings_from_json
from ..core.values import MAX_RESOLUTION, Drift, check_seed, validate_drift
from ..counterfactual.prompts import PromptOptions
from . import SCHEMES

if TYPE_CHECKING:  # cohorts reads volumes (SimpleITK): the Slicer panel imports this module at start-up
    from .cohorts import SliceSettings

DEFAULT_SEARCH_GRID = tuple(round(-0.2 + 0.05 * i, 2) for i in range(9))
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tuning job (the CLI's ``finetune`` options, one to one).

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

    cohort: str
    scheme: str
    model: str | None = None
    steps: int = 1000
    seed: int = 0
    drift: Drift | None = None
    search_drift: bool = False
    batch_size: int = 4
    gradient_accumulation: int = 1
    learning_rate: float | None = None
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    mixed_precision: str = "auto"
    device: str = "auto"
    resolution: int = 64
    axis: str = "axial"
    min_anatomy: float = 0.05
    validation_fraction: float = 0.1
    prompt_style: str = "diverse"
    patient_info: bool = True
    age_format: str = "numerical"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    """Checkpoints kept in ``JOB_DIR/checkpoints`` (the newest)."""
    sample_every: int = 100
    """Optimizer steps between sample images in ``JOB_DIR/samples`` (0: none)."""
    sample_steps: int = 20
    log_every: int = 1
    """Optimizer steps between status lines (each a point of the panel's loss chart)."""
    placeholder_token: str = "<cohort-mri>"
    initializer_token: str = "brain"
    instance_token: str = "sks"
    lora_rank: int = 4
    merge_lora: bool = True
    prior_loss_weight: float = 1.0
    num_class_images: int = 16
    modifier_token: str = "<new1>"
    conditioning_dropout: float = 0.05
    identity_pairs: bool = False
    train_text_encoder: bool = False
    scanner_variation: bool = False
    search_grid: tuple[float, ...] = DEFAULT_SEARCH_GRID
    search_samples: int = 8
    search_steps: int = 20
    classes: str | None = None
    cache_dir: str | None = None

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
        if self.mixed_precision not in MIXED_PRECISION:
            raise ParameterError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}.")
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
