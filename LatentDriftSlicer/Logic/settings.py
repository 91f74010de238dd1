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
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from .errors import ParameterError, SliceRangeError, UnreadableFileError
from .prompts import Attributes, PromptOptions, describe, instruct

Drift = float | tuple[float, ...]
"""Latent Drift δ: one number, or one per latent channel (see :mod:`latentdrift.drift`)."""

Axis = Literal["axial", "coronal", "sagittal"]
AXES: tuple[Axis, ...] = ("axial", "coronal", "sagittal")
"""The anatomical slice axes (how volumes are cut along them: :mod:`latentdrift.volumes`)."""

Mode = Literal["generate", "img2img", "instruct", "direction"]
SchedulerName = Literal["ddim", "ddpm"]
MODES: tuple[Mode, ...] = ("generate", "img2img", "instruct", "direction")
EDIT_MODES: tuple[Mode, ...] = ("instruct", "img2img", "direction")
"""The modes that edit a volume (``counterfactual``); ``generate`` makes new slices."""
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


# --------------------------------------------------------------------------- Latent Drift δ


def parse_drift(text: str) -> Drift:
    """``"0.05"`` → 0.05; ``"0.05,0,0,-0.02"`` → a per-channel drift (one value per latent channel)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ParameterError(
            f"Cannot read drift '{text}': give one number (e.g. 0.05) or one per latent channel "
            "separated by commas (e.g. 0.05,0,0,-0.02)."
        ) from None
    return values[0] if len(values) == 1 else values


MAX_RESOLUTION = 2048
"""The largest slice side (pixels) a model may work or be trained at: beyond it a model config or an option
is taken for a mistake (a UNet ``sample_size`` of 3000 computed for minutes, 100000 asked for 596 GiB)."""

DRIFT_LIMIT = 1.0
"""The largest |δ| accepted, five times the paper's range (−0.2 … 0.2): far beyond it every latent is pushed
out of the VAE's range at each step, and a counterfactual comes out identical to its factual edit."""


def validate_drift(delta: Drift, channels: int | None = None) -> None:
    """Raise :class:`ParameterError` unless δ is finite, within ±:data:`DRIFT_LIMIT` and (per-channel) has
    ``channels`` values."""
    values = (delta,) if isinstance(delta, int | float) else tuple(delta)
    if not values or not all(math.isfinite(value) for value in values):
        raise ParameterError(
            f"Drift {delta} is not a finite number: use e.g. 0.05 (the paper uses -0.2 to 0.2)."
        )
    if any(abs(value) > DRIFT_LIMIT for value in values):
        raise ParameterError(
            f"Drift {delta} is outside -{DRIFT_LIMIT:g} to {DRIFT_LIMIT:g}: use e.g. 0.05 "
            "(the paper uses -0.2 to 0.2; far larger drifts leave the image unchanged)."
        )
    if len(values) > 1 and channels is not None and len(values) != channels:
        raise ParameterError(
            f"Per-channel drift has {len(values)} values but the model's latents have {channels} channels: "
            f"give {channels} values or a single number."
        )


def check_seed(seed: int) -> None:
    """Raise :class:`ParameterError` unless ``seed`` is a seed every command takes: 0 to 2^63 − 1."""
    if not 0 <= seed < 2**63:
        raise ParameterError(f"seed={seed} is outside 0 to 2^63-1: use a non-negative integer.")


def check_batching(batch_size: int | None, workers: int | None) -> None:
    """Raise :class:`ParameterError` for a batch size or a worker count below 1 (None: chosen by device)."""
    if batch_size is not None and batch_size < 1:
        raise ParameterError(f"batch_size={batch_size}: use 1 or more slices per batch.")
    if workers is not None and workers < 1:
        raise ParameterError(f"workers={workers}: use 1 or more, or leave it out to choose by device.")


def check_steps(steps: int | None) -> None:
    """Raise :class:`ParameterError` unless ``steps`` (None: the model's) is 1 to 1000 sampling steps."""
    if steps is not None and not 1 <= steps <= 1000:
        raise ParameterError(f"steps={steps} is outside 1–1000: use e.g. 50.")


def check_blend(blend: float) -> None:
    """Raise :class:`ParameterError` unless the neighbour blend weight is in [0, 1)."""
    if not 0.0 <= blend < 1.0:
        raise ParameterError(f"blend={blend} is outside [0, 1): use 0 (off) to e.g. 0.5.")


def check_axis(axis: str | None) -> None:
    """Raise :class:`ParameterError` unless ``axis`` is one of :data:`AXES` (None: the model's)."""
    if axis is not None and axis not in AXES:
        raise ParameterError(f"Unknown slice axis '{axis}': use axial, coronal or sagittal.")


def slice_bounds(text: str | None) -> tuple[int, int | None]:
    """``"a:b"`` (Python-style, end excluded, either side optional; ``"a"`` alone: slice a) → ``(a, b)``,
    ``b`` None for "to the end"; ``None`` or ``""`` → ``(0, None)``, every slice.

    Raises :class:`SliceRangeError` for text that is not a range and for a range that is empty, reversed
    or negative whatever the volume (``"5:2"``); :func:`latentdrift.volumes.parse_slice_range` checks
    the end against the volume.
    """
    if not text:
        return 0, None
    start_text, colon, stop_text = text.partition(":")
    try:
        start = int(start_text) if start_text.strip() else 0
        stop = (int(stop_text) if stop_text.strip() else None) if colon else start + 1
    except ValueError:
        raise SliceRangeError(f"Slice range '{text}' is not 'a:b' with whole numbers.") from None
    if start < 0 or (stop is not None and stop <= start):
        first = max(start, 0)
        raise SliceRangeError(
            f"Slice range '{text}' is empty, reversed or negative: give 'a:b' with 0 ≤ a < b (b excluded), "
            f"e.g. '{first}:{first + 1}' for one slice."
        )
    return start, stop


# --------------------------------------------------------------------------- slice-level edits


@dataclass(frozen=True)
class EditSettings:
    """Settings shared by every mode; each mode reads the ones it needs.

    * ``mode``: ``generate`` (text-to-image), ``img2img`` (SDEdit: noise the slice to ``strength``
      and denoise with the prompt), ``instruct`` (InstructPix2Pix: slice + instruction), ``direction``
      (DDIM inversion with the source prompt, then sampling with the prompt embedding moved by the
      edit direction mean(target paraphrases) − mean(source paraphrases)).
    * Text: ``prompt`` (generate, img2img; in direction the prompt used for inversion) defaults to
      ``describe(target)`` (``describe(source)`` in direction); ``instruction`` (instruct) defaults to
      ``instruct(source, target)``; ``prompt_options`` sets the prompt style (a description uses
      paraphrase 0; the direction edit averages all 21).
    * ``drift``: δ, a float or one float per latent channel (see :mod:`latentdrift.drift`);
      ``drift_start``: start from N(δ, I) (generate, instruct) or noise the image with ε + δ (img2img).
    * ``strength`` in (0, 1] (img2img only); ``steps`` ≥ 1 denoising steps (before strength);
      ``guidance`` text guidance (classifier-free when > 1); ``image_guidance`` (instruct only;
      InstructPix2Pix uses guidance only when ``guidance > 1`` and ``image_guidance ≥ 1``).
    * ``seed``: every slice of an edit uses the noise of ``torch.Generator().manual_seed(seed)``;
      generated sample *i* uses ``seed + i``. ``batch_size``: slices in flight at once (halved on
      out-of-memory; a volume run sets it from :attr:`CounterfactualSettings.batch_size`). ``workers``:
      threads the slices are shared among, each with its own pipeline calls of ``batch_size // workers``
      slices (None: 2 on a multi-core CPU, else 1; :func:`latentdrift.devices.parallel_workers`); 1
      makes the same calls as one stock pipeline given ``batch_size`` slices. ``scheduler``: ``ddim``
      (deterministic, eta 0) or ``ddpm`` (ancestral).
    * ``factual_reference`` (instruct with source attributes; read by
      :func:`latentdrift.counterfactual.counterfactual_volume`): measure the edit's change against
      :meth:`factual`, the same edit asked to keep the source's attributes, instead of against the
      VAE reconstruction. What the editor changes on every pass, whatever it is asked, then cancels.
    """

    mode: Mode = "instruct"
    prompt: str | None = None
    instruction: str | None = None
    source: Attributes | None = None
    target: Attributes | None = None
    prompt_options: PromptOptions = field(default_factory=PromptOptions)
    negative_prompt: str = ""
    drift: Drift = 0.0
    drift_start: bool = False
    strength: float = 0.5
    steps: int = 20
    guidance: float = 7.5
    image_guidance: float = 1.5
    seed: int = 0
    batch_size: int = 4
    workers: int | None = None
    scheduler: SchedulerName = "ddim"
    factual_reference: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ParameterError(f"Unknown edit mode '{self.mode}': use one of {', '.join(MODES)}.")
        if self.scheduler not in SCHEDULERS:
            raise ParameterError(
                f"Scheduler '{self.scheduler}' cannot carry Latent Drift: use ddim or ddpm "
                "(the mean shift of Eq. 4 is not defined for multistep or ODE solvers)."
            )
        validate_drift(self.drift)
        self._check_numbers()
        self._check_mode()

    def _check_numbers(self) -> None:
        check_steps(self.steps)
        if not 0 < self.strength <= 1:
            raise ParameterError(f"strength={self.strength} is outside (0, 1]: use e.g. 0.5.")
        if self.guidance < 0 or self.image_guidance < 0:
            raise ParameterError("Guidance scales must be ≥ 0: use e.g. guidance 7.5 and image guidance 1.5.")
        check_batching(self.batch_size, self.workers)
        check_seed(self.seed)

    def _check_mode(self) -> None:
        if self.mode == "img2img" and int(self.steps * self.strength) < 1:
            raise ParameterError(
                f"steps={self.steps} × strength={self.strength} gives no denoising step: "
                "raise steps or strength so that steps × strength ≥ 1."
            )
        if self.mode in ("generate", "img2img") and self.prompt is None and self.target is None:
            raise ParameterError(
                f"Mode {self.mode} needs a prompt or target attributes (e.g. age=77,dx=MCI)."
            )
        if (
            self.mode == "instruct"
            and self.instruction is None
            and (self.source is None or self.target is None)
        ):
            raise ParameterError("Mode instruct needs an instruction, or both source and target attributes.")
        if self.mode == "direction":
            if self.source is None or self.target is None:
                raise ParameterError(
                    "Mode direction needs both source and target attributes (e.g. dx=AD → dx=CN)."
                )
            if self.scheduler != "ddim":
                raise ParameterError("Mode direction inverts the slice with DDIM: use scheduler ddim.")
            if self.drift_start:
                raise ParameterError(
                    "drift_start does not apply to mode direction (it starts from the inverted slice): turn it off."
                )

    def factual(self) -> EditSettings | None:
        """The factual edit: instruct from the source's attributes to themselves, same noise and settings.

        None unless ``mode`` is instruct, ``factual_reference`` is on and the source attributes are known.
        """
        if self.mode != "instruct" or not self.factual_reference or self.source is None:
            return None
        return replace(self, instruction=None, target=self.source)

    def text(self) -> str:
        """The prompt (generate, img2img, direction) or instruction (instruct) this run conditions on."""
        if self.mode == "instruct":
            if self.instruction is not None:
                return self.instruction
            assert self.source is not None and self.target is not None
            return instruct(self.source, self.target, self.prompt_options.age_format)
        if self.prompt is not None:
            return self.prompt
        attributes = self.source if self.mode == "direction" else self.target
        assert attributes is not None
        return describe(attributes, self.prompt_options)


# --------------------------------------------------------------------------- volume runs


FRONT_END_STEPS = ("bias_correction", "brain_extraction", "alignment")


@dataclass(frozen=True)
class FrontEndSettings:
    """Which steps of the brain front end the user allows (all by default).

    A step runs only where the model's input contract needs it (:mod:`latentdrift.frontend`): a brain
    model on a head gets N4 ``bias_correction``, deepbet ``brain_extraction`` and ``alignment`` to the
    MNI152 template. ``enabled`` False (``--no-preprocess``) runs none: the model sees the volume as loaded.
    """

    enabled: bool = True
    bias_correction: bool = True
    brain_extraction: bool = True
    alignment: bool = True

    def allows(self, step: str) -> bool:
        """Whether ``step`` (one of :data:`FRONT_END_STEPS`) may run."""
        return self.enabled and bool(getattr(self, step))


@dataclass(frozen=True)
class SegmentSettings:
    """``latentdrift segment``: the model, samples per slice, DDIM steps, slicing, outputs, seed, device.

    ``model``: a model name or folder (None: the default segmentation model). ``steps`` None: the
    model's own; ``axis`` None: the model's. ``probabilities``: also write one probability volume per
    class. ``batch_size``: slices per batch (halved on out-of-memory); ``workers``: threads the slices
    are shared among (None: 2 on a multi-core CPU, else 1; :func:`latentdrift.devices.parallel_workers`).
    ``front_end``: the brain front end's steps (a brain model on a head; ``axis`` and ``slices`` then name
    the input's slices).
    """

    model: str | None = None
    samples: int = 8
    steps: int | None = None
    axis: Axis | None = None
    slices: str | None = None
    probabilities: bool = False
    seed: int = 0
    device: str = "auto"
    batch_size: int = 8
    workers: int | None = None
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
    model: str | None = None
    batch_size: int | None = None
    device: str = "auto"
    full_precision: bool = False

    def __post_init__(self) -> None:
        check_batching(self.batch_size, None)


@dataclass(frozen=True)
class CounterfactualSettings(DiffusionRun):
    """``latentdrift counterfactual``: ``edit`` applied to every slice of a volume.

    ``axis`` and ``slices`` (``"a:b"``, None: all) choose the slices; ``blend`` in [0, 1) mixes each
    slice's edit with its neighbours'; ``front_end``: the brain front end's steps.
    """

    axis: Axis = "axial"
    slices: str | None = None
    blend: float = 0.0
    front_end: FrontEndSettings = field(default_factory=FrontEndSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_axis(self.axis)
        slice_bounds(self.slices)
        check_blend(self.blend)


@dataclass(frozen=True)
class GenerateSettings(DiffusionRun):
    """``latentdrift generate``: ``count`` new slices from ``edit`` (mode ``generate``); sample *i* uses seed + i."""

    count: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.count < 1:
            raise ParameterError(f"count={self.count}: ask for at least one slice.")


@dataclass(frozen=True)
class DemoSettings:
    """``latentdrift demo``: the counterfactual's attributes, δ (None: the editor's recorded δ, else 0),
    steps; slicing, seed, device and the brain front end's steps shared by both parts."""

    source: Attributes = field(default_factory=lambda: Attributes.parse(DEMO_SOURCE))
    target: Attributes = field(default_factory=lambda: Attributes.parse(DEMO_TARGET))
    drift: Drift | None = None
    steps: int = EditSettings.steps
    axis: Axis = "axial"
    slices: str | None = None
    seed: int = 0
    device: str = "auto"
    front_end: FrontEndSettings = field(default_factory=FrontEndSettings)

    def __post_init__(self) -> None:
        if self.drift is not None:
            validate_drift(self.drift)
        check_steps(self.steps)
        check_axis(self.axis)
        slice_bounds(self.slices)
        check_seed(self.seed)


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
    return _split(GenerateSettings, {**options, "mode": "generate"})


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


_NESTED: dict[str, Callable[[Any], Any]] = {
    "edit": lambda value: settings_from_json(EditSettings, value),
    "source": lambda value: Attributes(**value),
    "target": lambda value: Attributes(**value),
    "prompt_options": lambda value: PromptOptions(**value),
    "drift": lambda value: tuple(value) if isinstance(value, list) else value,
    "search_grid": tuple,
    "front_end": lambda value: settings_from_json(FrontEndSettings, value),
}
"""How a field read from JSON becomes its value again (by field name; JSON has no tuples or classes)."""


def settings_json(settings: Any) -> str:
    """A settings object as JSON text (nested settings and attributes as objects, paths as text)."""
    return json.dumps(asdict(settings), default=str)


def settings_from_json(kind: type[T], values: Mapping[str, Any]) -> T:
    """The ``kind`` settings of :func:`settings_json`'s values (unknown keys are refused)."""
    if not isinstance(values, Mapping):
        raise ParameterError(f"{kind.__name__} must be a JSON object, got {type(values).__name__}.")
    converted = {
        name: _NESTED[name](value) if name in _NESTED and value is not None else value
        for name, value in values.items()
    }
    return build_settings(kind, converted)


def read_settings(kind: type[T], path: str | Path) -> T:
    """The ``kind`` settings in the JSON file ``path``, or on standard input for ``"-"`` (see :func:`write_settings`)."""
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
        values = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        where = "standard input" if str(path) == "-" else f"'{path}'"
        raise UnreadableFileError(f"Cannot read the settings from {where}: {error}") from None
    return settings_from_json(kind, values)
