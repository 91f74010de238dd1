"""What each engine run does, as light dataclasses: the one place where every run option has its default.

The ``latentdrift`` command's flags, the Python console and the Slicer panel all build these objects.
The console and the panel hand them to the engine process as JSON (:func:`settings_json` on the
child's standard input, ``--settings -``; :func:`read_settings` reads them back, also from a file),
so an option crosses the process boundary once, by name, instead of being spelled into
command-line arguments and parsed back.

Nothing here imports torch, SimpleITK or any model library: the Slicer panel imports this module
when Slicer starts. Unknown or missing settings are refused when the objects are built
(:func:`build_settings`); :class:`EditSettings` checks its values too, and the engine checks the
others where it uses them (a :class:`~.errors.ParameterError` says what is wrong and how to fix it).

* :class:`EditSettings` — one slice-level edit or generation (mode, text, Latent Drift δ, sampling).
* :class:`SegmentSettings` — ``latentdrift segment``: LDSeg on a volume.
* :class:`CounterfactualSettings` — ``latentdrift counterfactual``: an :class:`EditSettings` applied to
  every slice of a volume (a :class:`DiffusionRun`: model, batching, device), with slicing and blending.
* :class:`GenerateSettings` — ``latentdrift generate``: new slices from text.
* :class:`DemoSettings` — ``latentdrift demo``: the main job with the default models.
* :class:`TrainLDSegSettings` — ``latentdrift train-ldseg``: an LDSeg model trained from image/label pairs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from ..counterfactual.modes import DEFAULT_EDIT, GENERATE, REGISTRY, EditMode, edit_mode, volume_edit_names
from ..counterfactual.prompts import Attributes, PromptOptions
from .errors import ParameterError, UnreadableFileError
from .models import DEFAULT_MODELS
from .values import (
    MIXED_PRECISION,
    STEPS_RANGE,
    Axis,
    Drift,
    check_axis,
    check_batching,
    check_blend,
    check_seed,
    check_steps,
    parse_class_names,
    parse_drift,
    slice_bounds,
    validate_drift,
)

SchedulerName = Literal["ddim", "ddpm"]
SCHEDULERS: tuple[SchedulerName, ...] = ("ddim", "ddpm")

SceneChoice = Literal["auto", "yes", "no"]
SCENE_CHOICES: tuple[SceneChoice, ...] = ("auto", "yes", "no")
SCENE_DEFAULT: SceneChoice = "auto"
"""Whether a command also writes the Slicer scene of its results (``scene.mrml``, ``scene.mrb``):
``auto`` when Slicer's MRML core (``slicer-core``) can be imported, ``yes`` always (an error
without it), ``no`` never (the Slicer panel builds its own nodes from the files)."""

DEMO_SOURCE = "age=70,dx=CN"
DEMO_TARGET = "age=75,dx=AD"

T = TypeVar("T")


# --------------------------------------------------------------------------- options: the schema


def option(
    default: Any = MISSING,
    *,
    help: str | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    choices: tuple[Any, ...] | None = None,
    range: tuple[float, float] | None = None,
    slider: tuple[float, float] | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A settings field with what its option needs besides its type and default.

    ``help`` (``{default}`` is replaced by the default) makes the field a command-line option,
    ``--name-with-dashes`` unless ``flag`` names it otherwise; ``metavar`` names its value in the help;
    ``choices`` lists the values a command or the panel offers (a ``Literal`` type gives them itself);
    ``range`` is the ``(low, high)`` a number may take (the panel's sliders offer it; the checks ``__post_init__``
    runs, written beside it, refuse values outside it); ``slider`` is the narrower ``(low, high)`` the panel offers where the
    engine accepts more or states no bound (δ: the paper's −0.2…0.2 within the accepted ±1). The
    command line derives its options from these fields
    (:mod:`latentdrift.cli_options`); the console and the JSON of :func:`settings_json` use the fields
    by name.
    """
    metadata = {
        "help": help,
        "flag": flag,
        "metavar": metavar,
        "choices": choices,
        "range": range,
        "slider": slider,
    }
    return field(
        default=default,
        default_factory=default_factory,
        metadata={key: value for key, value in metadata.items() if value is not None},
    )


def option_field(kind: type, name: str) -> Field[Any]:
    """The field ``name`` of the settings class ``kind``."""
    return {f.name: f for f in fields(kind)}[name]


def slider_range(kind: type, name: str) -> tuple[float, float]:
    """The ``(low, high)`` the panel offers for the option ``name`` of ``kind``: its ``slider``, else its
    ``range``."""
    metadata = option_field(kind, name).metadata
    return metadata.get("slider") or metadata["range"]


# The run options every task shares, declared once: each settings class takes its field from here.


def seed_option() -> Any:
    """``seed``: the same seed gives the same result (every command's ``--seed``)."""
    return option(
        0,
        help="random seed: the same seed gives the same result (default: {default})",
        range=(0, 2**63 - 1),
        slider=(0, 2**31 - 1),  # a Qt spin box holds 32-bit integers
    )


def device_option() -> Any:
    """``device``: where the run computes (every command's ``--device``)."""
    return option("auto", help="auto, cpu, cuda, cuda:N or mps (default: {default})")


def batch_size_option(default: int | None, default_text: str | None) -> Any:
    """``batch_size``: slices in flight at once; ``default_text`` (None: no option) says what the default is."""
    help = None if default_text is None else f"slices per batch, halved on out-of-memory ({default_text})"
    return option(default, help=help)


def workers_option() -> Any:
    """``workers``: threads the slices are shared among (None: 2 on a multi-core CPU, else 1)."""
    return option(None)


def precision_option() -> Any:
    """``full_precision``: float32 on CUDA instead of float16."""
    return option(False, help="float32 on CUDA (default there: float16)")


def mixed_precision_option() -> Any:
    """``mixed_precision``: training's autocast (``auto``: fp16 on CUDA, off elsewhere; every training command)."""
    return option(
        "auto", choices=MIXED_PRECISION, help="auto: fp16 on CUDA, float32 elsewhere (default: {default})"
    )


def slices_option() -> Any:
    """``slices``: the range ``"a:b"`` along the slice axis (None: all)."""
    return option(None, metavar="A:B", help="slice range along the axis (default: all)")


def _edit_mode_help() -> str:
    names = volume_edit_names()
    return "; ".join(f"{name}: {REGISTRY[name].summary}" for name in names) + " (default: {default})"


REFERENCE_HELP = (
    "instruct: take the change against the VAE reconstruction, not against the factual edit "
    "(the instruction to keep the --from attributes): one edit per slice instead of two"
)


# --------------------------------------------------------------------------- slice-level edits


@dataclass(frozen=True)
class EditSettings:
    """Settings shared by every mode; each mode reads the ones it needs.

    * ``mode``: the name of an edit mode of :mod:`latentdrift.counterfactual.modes` (``generate``, ``img2img``,
      ``instruct``, ``direction``); its file says what the mode does and which settings it needs.
    * Text: ``prompt`` (generate, img2img; in direction the prompt used for inversion) defaults to
      ``describe(target)`` (``describe(source)`` in direction); ``instruction`` (instruct) defaults to
      ``instruct(source, target)``; ``prompt_options`` sets the prompt style (a description uses
      paraphrase 0; the direction edit averages all 21).
    * ``drift``: δ, a float or one float per latent channel (see :mod:`latentdrift.counterfactual.drift`);
      ``drift_start``: start from N(δ, I) (generate, instruct) or noise the image with ε + δ (img2img).
    * ``strength`` in (0, 1] (img2img only); ``steps`` ≥ 1 denoising steps (before strength);
      ``guidance`` text guidance (classifier-free when > 1); ``image_guidance`` (instruct only;
      InstructPix2Pix uses guidance only when ``guidance > 1`` and ``image_guidance ≥ 1``).
    * ``seed``: every slice of an edit uses the noise of ``torch.Generator().manual_seed(seed)``;
      generated sample *i* uses ``seed + i``. ``batch_size``: slices in flight at once (halved on
      out-of-memory; a volume run sets it from :attr:`CounterfactualSettings.batch_size`). ``workers``:
      threads the slices are shared among, each with its own pipeline calls of ``batch_size // workers``
      slices (None: 2 on a multi-core CPU, else 1; :func:`latentdrift.core.devices.parallel_workers`); 1
      makes the same calls as one stock pipeline given ``batch_size`` slices. ``scheduler``: ``ddim``
      (deterministic, eta 0) or ``ddpm`` (ancestral).
    * ``factual_reference`` (instruct with source attributes; read by
      :func:`latentdrift.counterfactual.volume_editing.counterfactual_volume`): measure the edit's change against
      :meth:`factual`, the same edit asked to keep the source's attributes, instead of against the
      VAE reconstruction. What the editor changes on every pass, whatever it is asked, then cancels.
    """

    mode: str = option(DEFAULT_EDIT.name, flag="--edit", choices=volume_edit_names(), help=_edit_mode_help())
    prompt: str | None = option(None, help="the text prompt (default: built from the attributes)")
    instruction: str | None = option(None, help="instruct: the instruction (default: from --from/--to)")
    source: Attributes | None = option(None, flag="--from", metavar="ATTRS", help="e.g. age=70,sex=F,dx=CN")
    target: Attributes | None = option(
        None, flag="--to", metavar="ATTRS", help="e.g. age=77,dx=MCI (unset keys: from --from)"
    )
    prompt_options: PromptOptions = field(default_factory=PromptOptions)
    negative_prompt: str = ""
    drift: Drift = option(
        0.0,
        slider=(-0.2, 0.2),  # the paper's range; the engine accepts ±DRIFT_LIMIT
        help="Latent Drift δ: one number or one per latent channel, e.g. 0.05 or =-0.05,0,0,0.02 "
        "(default: {default:g})",
    )
    drift_start: bool = option(False, help="start sampling from N(δ, I)")
    strength: float = option(
        0.5, range=(0.0, 1.0), help="img2img: how far to noise, (0, 1] (default: {default})"
    )
    steps: int = option(20, range=STEPS_RANGE, help="denoising steps (default: {default})")
    guidance: float = option(7.5, slider=(0.0, 30.0), help="text guidance scale (default: {default})")
    image_guidance: float = option(
        1.5, slider=(0.0, 10.0), help="instruct: image guidance scale (default: {default})"
    )
    seed: int = seed_option()
    batch_size: int = batch_size_option(4, None)
    workers: int | None = workers_option()
    scheduler: SchedulerName = option("ddim", help="sampler (default: {default})")
    factual_reference: bool = option(True, flag="--reconstruction-reference", help=REFERENCE_HELP)

    def __post_init__(self) -> None:
        mode = edit_mode(self.mode)
        if self.scheduler not in SCHEDULERS:
            raise ParameterError(
                f"Scheduler '{self.scheduler}' cannot carry Latent Drift: use ddim or ddpm "
                "(the mean shift of Eq. 4 is not defined for multistep or ODE solvers)."
            )
        validate_drift(self.drift)
        self._check_numbers()
        mode.check(self)

    def _check_numbers(self) -> None:
        check_steps(self.steps)
        if not 0 < self.strength <= 1:
            raise ParameterError(f"strength={self.strength} is outside (0, 1]: use e.g. 0.5.")
        if self.guidance < 0 or self.image_guidance < 0:
            raise ParameterError("Guidance scales must be ≥ 0: use e.g. guidance 7.5 and image guidance 1.5.")
        check_batching(self.batch_size, self.workers)
        check_seed(self.seed)

    def factual(self) -> EditSettings | None:
        """The factual edit: the same edit asked to keep the source's attributes, same noise and settings.

        None unless the mode has one (instruct), ``factual_reference`` is on and the source attributes are known.
        """
        return self.edit_mode.factual(self)

    def text(self) -> str:
        """The prompt (generate, img2img, direction) or instruction (instruct) this run conditions on."""
        return self.edit_mode.text(self)

    def negative_text(self) -> str:
        """What text guidance steers away from: the negative prompt, or for instruct with a factual
        reference the factual instruction (:meth:`~latentdrift.counterfactual.modes.instruct.Instruct.negative_text`)."""
        return self.edit_mode.negative_text(self)

    @property
    def edit_mode(self) -> EditMode:
        """The mode's class (:mod:`latentdrift.counterfactual.modes`): what ``mode`` means."""
        return edit_mode(self.mode)


# --------------------------------------------------------------------------- volume runs


FRONT_END_STEPS = ("bias_correction", "brain_extraction", "alignment", "tissue_prior")


@dataclass(frozen=True)
class FrontEndSettings:
    """Which steps of the brain front end the user allows (all by default).

    A step runs only where the model's input contract needs it (:mod:`latentdrift.frontend`): a brain
    model on a head gets N4 ``bias_correction``, deepbet ``brain_extraction`` and ``alignment`` to the
    MNI152 template; a segmentation model with a ``tissue_prior_weight`` then gets the template's
    ``tissue_prior`` weighted into its probabilities. ``enabled`` False (``--no-preprocess``) runs none:
    the model sees the volume as loaded.
    """

    enabled: bool = True
    bias_correction: bool = True
    brain_extraction: bool = True
    alignment: bool = True
    tissue_prior: bool = True

    def allows(self, step: str) -> bool:
        """Whether ``step`` (one of :data:`FRONT_END_STEPS`) may run."""
        return self.enabled and bool(getattr(self, step))


@dataclass(frozen=True)
class SegmentSettings:
    """``latentdrift segment``: the model, samples per slice, DDIM steps, slicing, outputs, seed, device.

    ``model``: a model name or folder (None: the default segmentation model). ``steps`` None: the
    model's own; ``axis`` None: the model's. ``probabilities``: also write one probability volume per
    class. ``batch_size``: slices per batch (halved on out-of-memory); ``workers``: threads the slices
    are shared among (None: 2 on a multi-core CPU, else 1; :func:`latentdrift.core.devices.parallel_workers`).
    ``front_end``: the brain front end's steps (a brain model on a head; ``axis`` and ``slices`` then name
    the input's slices).
    """

    model: str | None = option(
        None, help=f"model name or folder (see `info`; default: {DEFAULT_MODELS['segment'].name})"
    )
    samples: int = option(
        8, slider=(1, 64), help="samples per slice (uncertainty); 1 allowed (default: {default})"
    )
    steps: int | None = option(None, help="DDIM steps (default: the model's, at most 15)")
    axis: Axis | None = option(None, help="slice axis (default: the model's axis)")
    slices: str | None = slices_option()
    probabilities: bool = option(False, help="also write per-class probability volumes")
    seed: int = seed_option()
    device: str = device_option()
    batch_size: int = batch_size_option(8, "default: {default}")
    workers: int | None = workers_option()
    front_end: FrontEndSettings = field(default_factory=FrontEndSettings)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ParameterError(f"samples={self.samples}: use 1 or more samples per slice (e.g. 8).")
        check_steps(self.steps)
        check_axis(self.axis)
        slice_bounds(self.slices)
        check_seed(self.seed)
        check_batching(self.batch_size, self.workers)


@dataclass(frozen=True)
class DiffusionRun:
    """What every Stable Diffusion run has: its ``edit`` settings and where the model runs.

    ``model``: a Stable Diffusion folder or name (None: the edit mode's default model);
    ``batch_size`` slices in flight (None: from free memory); ``device``; ``full_precision`` keeps
    float32 on CUDA.
    """

    edit: EditSettings
    model: str | None = option(
        None,
        help="diffusers-format Stable Diffusion folder or name (default: "
        f"{DEFAULT_MODELS[DEFAULT_EDIT.name].name} for --edit {DEFAULT_EDIT.name}, "
        f"else {DEFAULT_MODELS[volume_edit_names()[1]].name})",
    )
    batch_size: int | None = batch_size_option(None, "default: from free GPU memory")
    device: str = device_option()
    full_precision: bool = precision_option()

    def __post_init__(self) -> None:
        check_batching(self.batch_size, None)


@dataclass(frozen=True)
class CounterfactualSettings(DiffusionRun):
    """``latentdrift counterfactual``: ``edit`` applied to every slice of a volume.

    ``axis`` and ``slices`` (``"a:b"``, None: all) choose the slices; ``blend`` in [0, 1) mixes each
    slice's edit with its neighbours'; ``front_end``: the brain front end's steps.
    """

    axis: Axis = option("axial", help="slice axis (default: {default})")
    slices: str | None = slices_option()
    blend: float = option(
        0.0, range=(0.0, 1.0), help="mix each slice's edit with its neighbours', [0, 1) (default: {default})"
    )
    front_end: FrontEndSettings = field(default_factory=FrontEndSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_axis(self.axis)
        slice_bounds(self.slices)
        check_blend(self.blend)


@dataclass(frozen=True)
class GenerateSettings(DiffusionRun):
    """``latentdrift generate``: ``count`` new slices from ``edit`` (mode ``generate``); sample *i* uses seed + i."""

    EDIT_OPTIONS: ClassVar[dict[str, dict[str, str]]] = {
        "target": {"flag": "--attributes", "help": "describe the patient, e.g. age=77,sex=F,dx=AD"},
        **{name: {} for name in ("prompt", "drift", "drift_start", "guidance", "scheduler", "steps")},
    }
    """The :class:`EditSettings` options of ``generate`` (the others are an edit's), with what differs."""

    model: str | None = option(
        None, help=f"Stable Diffusion folder or name (default: {DEFAULT_MODELS[GENERATE.name].name})"
    )
    count: int = option(4, help="how many slices; sample i uses seed + i (default: {default})")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.count < 1:
            raise ParameterError(f"count={self.count}: ask for at least one slice.")


@dataclass(frozen=True)
class DemoSettings:
    """``latentdrift demo``: the counterfactual's attributes, δ (None: the editor's recorded δ, else 0),
    steps; slicing, seed, device and the brain front end's steps shared by both parts."""

    source: Attributes = option(
        default_factory=lambda: Attributes.parse(DEMO_SOURCE),
        flag="--from",
        metavar="ATTRS",
        help=f"default: {DEMO_SOURCE}",
    )
    target: Attributes = option(
        default_factory=lambda: Attributes.parse(DEMO_TARGET),
        flag="--to",
        metavar="ATTRS",
        help=f"default: {DEMO_TARGET}",
    )
    drift: Drift | None = option(
        None, help="Latent Drift δ (default: the δ recorded with the editor, else 0)"
    )
    steps: int = option(EditSettings.steps, help="counterfactual denoising steps (default: {default})")
    axis: Axis = option("axial", help="slice axis (default: {default})")
    slices: str | None = slices_option()
    seed: int = seed_option()
    device: str = device_option()
    front_end: FrontEndSettings = field(default_factory=FrontEndSettings)

    def __post_init__(self) -> None:
        if self.drift is not None:
            validate_drift(self.drift)
        check_steps(self.steps)
        check_axis(self.axis)
        slice_bounds(self.slices)
        check_seed(self.seed)


@dataclass(frozen=True)
class TrainLDSegSettings:
    """``latentdrift train-ldseg``: a new LDSeg model (``classes``, background first, comma-separated), or
    one fine-tuned from ``init_from`` (a model name or folder, whose classes and architecture are kept).

    The architecture options (:attr:`ARCHITECTURE`) are None unless given: a new model takes
    :attr:`NEW_MODEL`'s and the image size of its dimensions (:attr:`IMAGE_SIZES`); with ``init_from``
    they must stay None. ``batch_size`` None: the model's dimensions decide (:attr:`BATCH_SIZES`).
    ``checkpoint_dir`` None: ``OUTPUT.checkpoints``; ``card_notes``: a Markdown file appended to the
    model card. :func:`latentdrift.segmentation.workflow.ldseg_training` makes the model config and the
    :class:`~latentdrift.segmentation.ldseg.TrainSettings` of these, which check the values (steps, batch
    size, seed; the config its sizes).
    """

    NEW_MODEL: ClassVar[dict[str, Any]] = {
        "axis": "axial",
        "spatial_dims": 2,
        "latent_downsampling": 4,
        "latent_channels": 4,
    }
    """A new model's architecture where its option is not given (the image size: :attr:`IMAGE_SIZES`)."""
    IMAGE_SIZES: ClassVar[dict[int, int]] = {2: 128, 3: 64}
    """A new model's resolution in pixels by ``spatial_dims``."""
    BATCH_SIZES: ClassVar[dict[int, int]] = {2: 16, 3: 2}
    """Slices (3D: volumes) per step by the trained model's ``spatial_dims``."""
    ARCHITECTURE: ClassVar[tuple[str, ...]] = (
        "axis",
        "spatial_dims",
        "image_size",
        "latent_downsampling",
        "latent_channels",
    )
    """The options that define a new model's architecture (refused with ``init_from``)."""

    classes: str | None = option(None, help="class names, background first, e.g. background,CSF,GM,WM")
    init_from: str | None = option(
        None,
        metavar="NAME|DIR",
        help="fine-tune this LDSeg model: start from its weights, keep its classes and architecture",
    )
    axis: Axis | None = option(None, help=f"slice axis the model learns (default: {NEW_MODEL['axis']})")
    spatial_dims: int | None = option(
        None,
        choices=tuple(IMAGE_SIZES),
        help="2: slices along --axis; 3: whole volumes at --image-size³ "
        f"(default: {NEW_MODEL['spatial_dims']})",
    )
    image_size: int | None = option(
        None,
        help=f"model resolution in pixels (default: {IMAGE_SIZES[2]} for 2D, {IMAGE_SIZES[3]} for 3D)",
    )
    latent_downsampling: int | None = option(
        None, help=f"image size / latent size (default: {NEW_MODEL['latent_downsampling']})"
    )
    latent_channels: int | None = option(
        None, help=f"channels of the label latent (default: {NEW_MODEL['latent_channels']})"
    )
    reconstruction_weight: float = option(
        1.0,
        help="weight of the label autoencoder's own loss; 0 = the LDSeg reference (default: {default:g})",
    )
    steps: int = option(2000, help="optimizer steps (default: {default})")
    batch_size: int | None = option(
        None, help=f"slices (3D: volumes) per step (default: {BATCH_SIZES[2]}; 3D: {BATCH_SIZES[3]})"
    )
    learning_rate: float = option(1e-3, help="AdamW learning rate (default: {default:g})")
    lr_scheduler: str = option("constant", help="diffusers scheduler name: constant, cosine, linear, ...")
    validation_fraction: float = option(0.2, help="share of subjects held out")
    augment: bool = option(True, flag="--no-augment", help="train without augmentation")
    checkpoint_dir: str | None = option(None, help="resumable checkpoints (default: OUTPUT.checkpoints)")
    checkpoint_every: int = option(250, help="steps between checkpoints (default: {default})")
    card_notes: str | None = option(None, help="a Markdown file appended to the model card")
    seed: int = seed_option()
    device: str = device_option()
    mixed_precision: str = mixed_precision_option()

    def __post_init__(self) -> None:
        if self.init_from is None:
            if not self.class_names():
                raise ParameterError(
                    "Give --classes (background first), or --init-from a model to fine-tune."
                )
            return
        given = [f"--{name.replace('_', '-')}" for name in self._given_architecture()]
        if given:
            raise ParameterError(f"--init-from keeps the model's architecture: leave out {', '.join(given)}.")

    def class_names(self) -> list[str]:
        """The names in ``classes`` (empty: none given)."""
        return parse_class_names(self.classes)

    def architecture(self) -> dict[str, Any]:
        """A new model's architecture (:func:`~latentdrift.segmentation.ldseg.training_config`'s keywords):
        the options given (a 0 too: the config refuses it), else :attr:`NEW_MODEL`'s and :attr:`IMAGE_SIZES`'."""
        given = self._given_architecture()
        spatial_dims = given.get("spatial_dims", self.NEW_MODEL["spatial_dims"])
        return {**self.NEW_MODEL, "image_size": self.IMAGE_SIZES[spatial_dims], **given}

    def _given_architecture(self) -> dict[str, Any]:
        """The :attr:`ARCHITECTURE` options given (not None), in that order."""
        return {name: getattr(self, name) for name in self.ARCHITECTURE if getattr(self, name) is not None}

    def batch_size_for(self, spatial_dims: int) -> int:
        """``batch_size``, or the default for a model of ``spatial_dims``."""
        return self.BATCH_SIZES[spatial_dims] if self.batch_size is None else self.batch_size


# --------------------------------------------------------------------------- from flat options


def edit_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with text read into values: ``source``/``target`` attributes (``"age=70,dx=CN"``;
    the target's unset keys come from the source) and ``drift`` (``"0.05"`` or ``"0.05,0,0,0"``)."""
    values = dict(options)
    for name in ("source", "target"):
        if isinstance(values.get(name), str):
            text = values[name]
            base = values.get("source") if name == "target" else None
            values[name] = Attributes.parse(text, base=base) if text.strip() else None
    if isinstance(values.get("drift"), str):
        values["drift"] = parse_drift(values["drift"])
    return values


def counterfactual_settings(**options: Any) -> CounterfactualSettings:
    """:class:`CounterfactualSettings` from flat options: the edit's (:class:`EditSettings` fields, read by
    :func:`edit_fields`) and the volume run's; an option of neither is refused."""
    return _split(CounterfactualSettings, options)


def generate_settings(**options: Any) -> GenerateSettings:
    """:class:`GenerateSettings` (edit mode ``generate``) from flat options, like :func:`counterfactual_settings`."""
    return _split(GenerateSettings, {**options, "mode": GENERATE.name})


def demo_settings(**options: Any) -> DemoSettings:
    """:class:`DemoSettings` from options, attributes and δ given as text or as values (:func:`edit_fields`);
    a target given as text without a source takes its unset keys from the demo's default source."""
    if isinstance(options.get("target"), str) and options.get("source") is None:
        options["source"] = DemoSettings().source
    return build_settings(DemoSettings, edit_fields(options))


def _split(kind: type[T], options: Mapping[str, Any]) -> T:
    values = edit_fields(options)
    outer = {f.name for f in fields(kind)} - {"edit"}  # type: ignore[arg-type]
    _refuse_unknown(kind.__name__, values, outer | {f.name for f in fields(EditSettings)})
    edit = build_settings(EditSettings, {k: v for k, v in values.items() if k not in outer})
    return build_settings(kind, {"edit": edit, **{k: v for k, v in values.items() if k in outer}})


def build_settings(kind: type[T], values: Mapping[str, Any]) -> T:
    """``kind(**values)``, with a :class:`ParameterError` naming any unknown or missing setting."""
    known = {f.name: f for f in fields(kind)}  # type: ignore[arg-type]
    _refuse_unknown(kind.__name__, values, set(known))
    missing = [name for name, f in known.items() if name not in values and _required(f)]
    if missing:
        raise ParameterError(f"{kind.__name__} needs {', '.join(missing)}.")
    return kind(**values)


def _refuse_unknown(name: str, values: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ParameterError(
            f"Unknown {name} setting(s) {', '.join(unknown)}: use {', '.join(sorted(known))}."
        )


def _required(setting: Any) -> bool:
    """True for a dataclass field without a default."""
    return setting.default is MISSING and setting.default_factory is MISSING


# --------------------------------------------------------------------------- as JSON, across processes


def settings_json(settings: Any) -> str:
    """A settings object as JSON text (nested settings and attributes as objects, paths as text)."""
    return json.dumps(asdict(settings), default=str)


def settings_from_json(kind: type[T], values: Mapping[str, Any]) -> T:
    """The ``kind`` settings of :func:`settings_json`'s values (unknown keys are refused).

    Each value becomes its field's type again (JSON has no tuples or classes): an object becomes the
    dataclass its field declares (nested settings, attributes, prompt options), a list a tuple.
    """
    if not isinstance(values, Mapping):
        raise ParameterError(f"{kind.__name__} must be a JSON object, got {type(values).__name__}.")
    hints = get_type_hints(kind)
    return build_settings(kind, {name: _from_json(hints.get(name), value) for name, value in values.items()})


def _from_json(hint: Any, value: Any) -> Any:
    """``value`` read from JSON as the field type ``hint`` declares (unchanged where JSON keeps it)."""
    members = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    for member in members:
        if isinstance(value, Mapping) and is_dataclass(member):
            return settings_from_json(cast(type, member), value)
        if isinstance(value, list) and get_origin(member) is tuple:
            return tuple(value)
    return value


def read_settings(kind: type[T], path: str | Path) -> T:
    """The ``kind`` settings in the JSON file ``path``, or on standard input for ``"-"`` (see :func:`write_settings`)."""
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
        values = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        where = "standard input" if str(path) == "-" else f"'{path}'"
        raise UnreadableFileError(f"Cannot read the settings from {where}: {error}") from None
    return settings_from_json(kind, values)
