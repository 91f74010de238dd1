"""The Python-console API: run LatentDrift on scene nodes and get nodes back.

Works in Slicer's Python console (on ``slicer.mrmlScene``) and on slicer-core (pass the headless
:class:`~.scene.SceneSession` as ``session``)::

    import latentdrift.console as ld
    result = ld.segment(volume_node, model="brain-tissue-ldseg", samples=8)
    result.segmentation_node, result.uncertainty_node

Every run goes the same way (:func:`run_on_node`): the input node is exported to a temporary NRRD
(the node itself is never modified), the ``latentdrift`` command runs in a child process
(:mod:`.processes`), and the outputs its ``summary.json`` lists by role are loaded as NEW nodes on
the input's exact geometry, with their display set up (input in the background, the result in the
foreground, colour tables for maps). ``blocking=False`` returns a :class:`NodeJob` at once: poll it
from the main thread (Slicer's GUI does so from a timer); it loads the outputs when the run ends.

Fine-tuning runs as a job folder (:func:`start_finetune`, :class:`TrainingJob`): its ``status.jsonl``
gives the progress, loss curve and latest sample image, also for jobs started elsewhere.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from . import errors
from .processes import EngineProcess, RunState, engine_command, parse_line
from .scene import (
    DIFFERENCE_COLORMAP,
    PROBABILITY_COLORMAP,
    UNCERTAINTY_COLORMAP,
    SceneSession,
    add_map_node,
    match_display,
    node_to_volume,
    show_in_slice_views,
    volume_to_node,
)
from .train import SCHEMES as FINETUNE_SCHEMES
from .volumes import VOLUME_SUFFIXES, Axis, Geometry, Volume, read_volume, slice_layout, write_volume

T = TypeVar("T")

GEOMETRY_TOLERANCE = 1e-3  # mm: outputs go through float32 files
SEGMENT_ROLES = ("segmentation", "uncertainty", "probability")
COUNTERFACTUAL_ROLES = ("counterfactual", "difference")
EDIT_MODES = ("instruct", "img2img", "direction")

# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """What a run produced: its summary, result folder (None when temporary) and new nodes by role."""

    summary: dict[str, Any]
    output: Path | None
    nodes: dict[str, list[Any]] = field(default_factory=dict)

    def node(self, role: str) -> Any | None:
        """The first node loaded for ``role`` (None when the run wrote none)."""
        found = self.nodes.get(role)
        return found[0] if found else None


@dataclass
class SegmentResult:
    """LDSeg output nodes: the segmentation, the uncertainty map and (when asked) per-class probabilities."""

    segmentation_node: Any
    uncertainty_node: Any | None
    probability_nodes: list[Any]
    summary: dict[str, Any]
    output: Path | None


@dataclass
class CounterfactualResult:
    """Latent Drift output nodes: the counterfactual volume and the signed difference from the input."""

    counterfactual_node: Any
    difference_node: Any | None
    summary: dict[str, Any]
    output: Path | None


# --------------------------------------------------------------------------- loading outputs by role


def _load_image(session: SceneSession, path: Path, template: Volume, reference: Any, name: str) -> Any:
    node = volume_to_node(session, template.with_voxels(_voxels_on_grid(path, template)), name)
    match_display(node, reference)
    return node


def _load_map(colormap: Sequence[str], symmetric: bool) -> Callable[..., Any]:
    def load(session: SceneSession, path: Path, template: Volume, reference: Any, name: str) -> Any:
        voxels = _voxels_on_grid(path, template)
        if symmetric:
            bound = float(np.max(np.abs(voxels))) or 1.0
            value_range = (-bound, bound)
        else:
            value_range = (0.0, 1.0)
        node = add_map_node(session, template.with_voxels(voxels), name, colormap, value_range)
        session.colors_logic.AddDefaultColorLegendDisplayNode(node)
        return node

    return load


def _load_segmentation(session: SceneSession, path: Path, template: Volume, reference: Any, name: str) -> Any:
    import slicer

    node = session.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", session.scene.GenerateUniqueName(name))
    reader = slicer.vtkMRMLSegmentationStorageNode()  # not added to the scene: no link to the temp file
    reader.SetFileName(str(path))
    if not reader.ReadData(node):
        session.scene.RemoveNode(node)
        raise errors.UnreadableFileError(f"Could not read the segmentation '{path}'.")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    display = node.GetDisplayNode()
    display.SetVisibility2DFill(True)
    display.SetVisibility2DOutline(True)
    display.SetOpacity2DFill(0.35)
    return node


ROLE_LOADERS: dict[str, Callable[..., Any]] = {
    "volume": _load_image,
    "counterfactual": _load_image,
    "difference": _load_map(DIFFERENCE_COLORMAP, symmetric=True),
    "uncertainty": _load_map(UNCERTAINTY_COLORMAP, symmetric=False),
    "probability": _load_map(PROBABILITY_COLORMAP, symmetric=False),
    "segmentation": _load_segmentation,
}
FOREGROUND_ROLES = ("counterfactual", "volume", "uncertainty")


def _voxels_on_grid(path: Path, template: Volume) -> np.ndarray:
    """The voxels of an output file, checked to lie on the input's grid."""
    volume = read_volume(path)
    if volume.voxels.shape != template.voxels.shape or not volume.geometry.is_close(
        template.geometry, GEOMETRY_TOLERANCE
    ):
        raise errors.InputError(
            f"Output '{path.name}' is not on the input's voxel grid "
            f"({volume.voxels.shape} vs {template.voxels.shape}): it cannot be shown over the input."
        )
    return volume.voxels


def _listed(summary: dict[str, Any], role: str) -> list[str]:
    value = summary.get("outputs", {}).get(role)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# --------------------------------------------------------------------------- the generic core


@dataclass
class PreparedRun:
    """A command ready to run on an exported input node, and how to load its outputs afterwards."""

    session: SceneSession
    input_node: Any
    template: Volume
    argv: list[str]
    roles: tuple[str, ...]
    output: Path
    keep_output: bool
    work_folder: Path
    foreground_opacity: float

    def load(self, summary: dict[str, Any]) -> RunResult:
        """Load the outputs of ``roles`` from the result folder as new nodes and set up the views."""
        result = RunResult(summary, self.output if self.keep_output else None)
        base = self.input_node.GetName()
        for role in self.roles:
            for index, name in enumerate(_listed(summary, role)):
                suffix = f" {role}" if index == 0 else f" {role} {index + 1}"
                node = ROLE_LOADERS[role](
                    self.session, self.output / name, self.template, self.input_node, base + suffix
                )
                result.nodes.setdefault(role, []).append(node)
        foreground = next((result.node(r) for r in FOREGROUND_ROLES if result.node(r) is not None), None)
        show_in_slice_views(self.session, self.input_node, foreground, self.foreground_opacity)
        return result

    def cleanup(self) -> None:
        """Remove the exported input (and the result folder when it was temporary)."""
        shutil.rmtree(self.work_folder, ignore_errors=True)


def prepare_run(
    volume_node: Any,
    command: str,
    arguments: Sequence[str],
    roles_to_load: Sequence[str],
    *,
    session: SceneSession | None = None,
    output: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    foreground_opacity: float = 0.5,
) -> PreparedRun:
    """Export ``volume_node`` and build the command line; nothing runs yet (see :func:`run_on_node`)."""
    unknown = [role for role in roles_to_load if role not in ROLE_LOADERS]
    if unknown:
        raise errors.ParameterError(
            f"Cannot load output role(s) {', '.join(unknown)}: known roles are {', '.join(ROLE_LOADERS)}."
        )
    session = _session_for(volume_node, session)
    template = node_to_volume(volume_node)
    work_folder = Path(tempfile.mkdtemp(prefix="latentdrift-"))
    input_path = write_volume(template, work_folder / f"{_file_stem(volume_node.GetName())}.nrrd")
    result_folder = Path(output).expanduser().absolute() if output is not None else work_folder / "result"
    argv = engine_command(
        command,
        [
            str(input_path),
            *arguments,
            "--output",
            str(result_folder),
            "--device",
            device,
            "--seed",
            str(seed),
        ],
    )
    return PreparedRun(
        session=session,
        input_node=volume_node,
        template=template,
        argv=argv,
        roles=tuple(roles_to_load),
        output=result_folder,
        keep_output=output is not None,
        work_folder=work_folder,
        foreground_opacity=foreground_opacity,
    )


class NodeJob(Generic[T]):
    """A command running on a node; its outputs become nodes when it ends.

    Drive it from the main thread (MRML is not thread-safe): :meth:`poll` in a timer, or :meth:`wait`.
    When Slicer's own ``launchConsoleProcess`` owns the process instead, feed its lines with
    :meth:`feed_line`, its end with :meth:`feed_exit`, and set :attr:`pid` so :meth:`cancel` works.
    """

    def __init__(
        self, run: PreparedRun, convert: Callable[[RunResult], T], process: EngineProcess | None = None
    ) -> None:
        self.run = run
        self.process = process
        self.pid: int | None = process.pid if process is not None else None
        self.state: RunState = process.state if process is not None else RunState()
        self._convert = convert
        self._result: T | None = None
        self._error: errors.LatentDriftError | None = None
        self._completed = False

    @property
    def done(self) -> bool:
        """True once the run has ended and its outputs are loaded (or it failed)."""
        return self._completed

    @property
    def error(self) -> errors.LatentDriftError | None:
        """Why the run failed (None while running or after success)."""
        return self._error

    def poll(self) -> list[dict[str, Any]]:
        """New events since the last call; loads the outputs when the ``exit`` event arrives."""
        events = self.process.poll() if self.process is not None else []
        if any(event["event"] == "exit" for event in events):
            self._complete()
        return events

    def feed_line(self, line: str) -> dict[str, Any]:
        """Record one output line of an externally launched process; returns its event."""
        event = parse_line(line)
        self.state.record(event)
        return event

    def feed_exit(self, returncode: int) -> None:
        """Record the end of an externally launched process and load its outputs."""
        self.state.record({"event": "exit", "returncode": returncode})
        self._complete()

    def _complete(self) -> None:
        if self._completed:
            return
        self._completed = True
        try:
            self._result = self._convert(self.run.load(self.state.outcome()))
        except errors.LatentDriftError as error:
            self._error = error
        finally:
            self.run.cleanup()

    def result(self) -> T:
        """The loaded result; raises the run's error, or :class:`~.errors.JobError` while running."""
        if not self._completed:
            raise errors.JobError("The run has not finished yet: poll() or wait() first.")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def wait(self, timeout: float | None = None) -> T:
        """Block until the run ends, then return :meth:`result` (raises its error)."""
        if self.process is None:
            raise errors.JobError("This job's process is driven from outside: use feed_exit().")
        if not self.process.join(timeout):
            raise errors.JobError(f"The run is still going after {timeout:g} s.")
        self.poll()
        return self.result()

    def cancel(self) -> None:
        """Stop the run and its whole process tree; the job then fails with a cancellation error."""
        if self.process is not None:
            self.process.cancel()
            self.poll()
        elif self.pid is not None and not self._completed:
            from .processes import kill_process_tree

            self.state.cancelled = True
            kill_process_tree(self.pid)


def run_on_node(
    volume_node: Any,
    command: str,
    arguments: Sequence[str],
    roles_to_load: Sequence[str],
    *,
    session: SceneSession | None = None,
    output: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    blocking: bool = True,
    foreground_opacity: float = 0.5,
) -> RunResult | NodeJob[RunResult]:
    """Run ``latentdrift COMMAND INPUT ARGUMENTS`` on a volume node and load the outputs of ``roles_to_load``.

    ``output`` keeps the result folder there (default: a temporary folder, removed after loading).
    Blocking runs return a :class:`RunResult` or raise the command's error; ``blocking=False``
    returns a :class:`NodeJob` at once.
    """
    return _launch(
        prepare_run(
            volume_node,
            command,
            arguments,
            roles_to_load,
            session=session,
            output=output,
            device=device,
            seed=seed,
            foreground_opacity=foreground_opacity,
        ),
        lambda result: result,
        blocking,
    )


def _launch(run: PreparedRun, convert: Callable[[RunResult], T], blocking: bool) -> T | NodeJob[T]:
    """Start ``run`` in an :class:`~.processes.EngineProcess`; wait for it when ``blocking``."""
    try:
        job = NodeJob(run, convert, EngineProcess(run.argv))
    except OSError as error:
        run.cleanup()
        raise errors.LatentDriftError(f"Could not start the engine process: {error}") from error
    return job.wait() if blocking else job


def _session_for(volume_node: Any, session: SceneSession | None) -> SceneSession:
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise errors.InputError("Pick an input image volume (a scalar volume node).")
    if session is None:
        session = SceneSession.from_application() if _in_application() else None
    if session is None or session.scene is not volume_node.GetScene():
        raise errors.InputError(
            "The volume node is not in the session's scene: pass session= (the SceneSession that holds it)."
        )
    return session


def _in_application() -> bool:
    import slicer

    return getattr(slicer, "app", None) is not None


def _file_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "input"


# --------------------------------------------------------------------------- the modes


def _slicing_arguments(axis: Axis, slices: str | None) -> list[str]:
    return ["--axis", axis, *(["--slices", slices] if slices else [])]


def _model_arguments(model: str | Path | None) -> list[str]:
    """``--model MODEL``, or nothing for the command's default model."""
    return ["--model", str(model)] if model is not None else []


def prepare_segment(
    volume_node: Any,
    *,
    model: str | Path | None = None,
    samples: int = 8,
    steps: int | None = None,
    axis: Axis = "axial",
    slices: str | None = None,
    probabilities: bool = False,
    device: str = "auto",
    seed: int = 0,
    session: SceneSession | None = None,
    output: str | Path | None = None,
) -> PreparedRun:
    """The ``latentdrift segment`` run of :func:`segment`, not started (for a GUI that launches it itself)."""
    arguments = [
        *_model_arguments(model),
        "--samples",
        str(samples),
        *(["--steps", str(steps)] if steps is not None else []),
        *_slicing_arguments(axis, slices),
        *(["--probabilities"] if probabilities else []),
    ]
    return prepare_run(
        volume_node,
        "segment",
        arguments,
        SEGMENT_ROLES,
        session=session,
        output=output,
        device=device,
        seed=seed,
        foreground_opacity=0.4,
    )


def segment(
    volume_node: Any,
    *,
    model: str | Path | None = None,
    samples: int = 8,
    steps: int | None = None,
    axis: Axis = "axial",
    slices: str | None = None,
    probabilities: bool = False,
    device: str = "auto",
    seed: int = 0,
    blocking: bool = True,
    session: SceneSession | None = None,
    output: str | Path | None = None,
) -> SegmentResult | NodeJob[SegmentResult]:
    """LDSeg segmentation of a volume node: a segmentation node and its uncertainty map (values 0..1).

    ``samples`` diffusion samples of ``steps`` DDIM steps each (None: the model's default) are combined per slice; ``slices`` is a
    range ``"a:b"`` along ``axis`` (default: all). ``probabilities=True`` also loads one
    probability map per class. ``model`` None uses the default segmentation model.
    """
    run = prepare_segment(
        volume_node,
        model=model,
        samples=samples,
        steps=steps,
        axis=axis,
        slices=slices,
        probabilities=probabilities,
        device=device,
        seed=seed,
        session=session,
        output=output,
    )
    return _launch(run, as_segment_result, blocking)


def as_segment_result(result: RunResult) -> SegmentResult:
    """A segment run's nodes as a :class:`SegmentResult` (raises when it wrote no segmentation)."""
    if result.node("segmentation") is None:
        raise errors.LatentDriftError("The segment command wrote no segmentation.")
    return SegmentResult(
        segmentation_node=result.node("segmentation"),
        uncertainty_node=result.node("uncertainty"),
        probability_nodes=result.nodes.get("probability", []),
        summary=result.summary,
        output=result.output,
    )


def prepare_counterfactual(
    volume_node: Any,
    *,
    edit: str = "instruct",
    instruction: str | None = None,
    prompt: str | None = None,
    source: str | None = None,
    target: str | None = None,
    model: str | Path | None = None,
    drift: float | str = 0.0,
    strength: float = 0.5,
    steps: int = 20,
    guidance: float = 7.5,
    image_guidance: float | None = None,
    factual_reference: bool = True,
    axis: Axis = "axial",
    slices: str | None = None,
    device: str = "auto",
    seed: int = 0,
    fade: float = 1.0,
    session: SceneSession | None = None,
    output: str | Path | None = None,
) -> PreparedRun:
    """The ``latentdrift counterfactual`` run of :func:`counterfactual`, not started."""
    if edit not in EDIT_MODES:
        raise errors.ParameterError(f"Unknown edit mode '{edit}': use {', '.join(EDIT_MODES)}.")
    arguments = ["--edit", edit, *_model_arguments(model)]
    if instruction:
        arguments += ["--instruction", instruction]
    if prompt:
        arguments += ["--prompt", prompt]
    if source is not None or target is not None:
        arguments += ["--from", source or "", "--to", target or ""]
    arguments += [f"--drift={drift}", "--strength", str(strength), "--steps", str(steps)]
    arguments += ["--guidance", str(guidance)]
    if image_guidance is not None:
        arguments += ["--image-guidance", str(image_guidance)]
    if not factual_reference:
        arguments.append("--reconstruction-reference")
    arguments += _slicing_arguments(axis, slices)
    return prepare_run(
        volume_node,
        "counterfactual",
        arguments,
        COUNTERFACTUAL_ROLES,
        session=session,
        output=output,
        device=device,
        seed=seed,
        foreground_opacity=fade,
    )


def counterfactual(
    volume_node: Any,
    *,
    edit: str = "instruct",
    instruction: str | None = None,
    prompt: str | None = None,
    source: str | None = None,
    target: str | None = None,
    model: str | Path | None = None,
    drift: float | str = 0.0,
    strength: float = 0.5,
    steps: int = 20,
    guidance: float = 7.5,
    image_guidance: float | None = None,
    factual_reference: bool = True,
    axis: Axis = "axial",
    slices: str | None = None,
    device: str = "auto",
    seed: int = 0,
    fade: float = 1.0,
    blocking: bool = True,
    session: SceneSession | None = None,
    output: str | Path | None = None,
) -> CounterfactualResult | NodeJob[CounterfactualResult]:
    """A Latent Drift counterfactual of a volume node and its signed difference map.

    ``edit`` is ``instruct`` (give ``instruction``, or ``source``/``target`` attributes such as
    ``"age=70,sex=F,dx=CN"`` → ``"age=77,dx=MCI"``), ``img2img`` (give ``prompt``) or ``direction``
    (give ``source`` and ``target``). An instruct edit with ``source`` attributes is taken relative
    to the factual edit (keep the source's attributes); ``factual_reference=False`` takes it relative
    to the VAE reconstruction (half the time). ``drift`` is the Latent Drift δ; ``fade`` the opacity of the
    counterfactual over the input in the slice views. ``model`` None uses the edit mode's default
    model (``brain-mri-instruct`` for instruct, else ``brain-mri-sd``).
    """
    run = prepare_counterfactual(
        volume_node,
        edit=edit,
        instruction=instruction,
        prompt=prompt,
        source=source,
        target=target,
        model=model,
        drift=drift,
        strength=strength,
        steps=steps,
        guidance=guidance,
        image_guidance=image_guidance,
        factual_reference=factual_reference,
        axis=axis,
        slices=slices,
        device=device,
        seed=seed,
        fade=fade,
        session=session,
        output=output,
    )
    return _launch(run, as_counterfactual_result, blocking)


def as_counterfactual_result(result: RunResult) -> CounterfactualResult:
    """A counterfactual run's nodes as a :class:`CounterfactualResult` (raises when it wrote none)."""
    if result.node("counterfactual") is None:
        raise errors.LatentDriftError("The counterfactual command wrote no counterfactual volume.")
    return CounterfactualResult(
        counterfactual_node=result.node("counterfactual"),
        difference_node=result.node("difference"),
        summary=result.summary,
        output=result.output,
    )


def attributes_text(age: float | None = None, sex: str | None = None, diagnosis: str | None = None) -> str:
    """Patient attributes as the CLI's ``--from``/``--to`` text, leaving unknown ones out.

    A negative age, an empty or ``"unknown"`` sex and an empty diagnosis mean unknown.
    """
    parts = []
    if age is not None and age >= 0:
        parts.append(f"age={age:g}")
    if sex and sex.strip().lower() != "unknown":
        parts.append(f"sex={sex.strip()}")
    if diagnosis and diagnosis.strip():
        parts.append(f"dx={diagnosis.strip()}")
    return ",".join(parts)


def set_fade(foreground_opacity: float, session: SceneSession | None = None) -> None:
    """Set the foreground opacity (the counterfactual over the input) in every slice view."""
    session = session or SceneSession.from_application()
    for index in range(session.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        session.scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode").SetForegroundOpacity(
            foreground_opacity
        )


# --------------------------------------------------------------------------- slices and crosshair


def slice_count(volume_node: Any, axis: Axis) -> int:
    """How many slices the volume has along an anatomical ``axis`` (the range of ``--slices``)."""
    geometry, shape = _node_grid(volume_node)
    return int(shape[slice_layout(geometry, axis).permutation[0]])


def slice_index_at_ras(volume_node: Any, ras: Sequence[float], axis: Axis) -> int:
    """The index (as ``--slices`` counts along ``axis``) of the slice through point ``ras`` (e.g. the crosshair).

    Raises :class:`~.errors.SliceRangeError` when the point lies outside the volume.
    """
    geometry, shape = _node_grid(volume_node)
    layout = slice_layout(geometry, axis)
    ijk = np.linalg.inv(geometry.ijk_to_ras()) @ np.array([*ras[:3], 1.0])
    array_axis = layout.permutation[0]  # voxels are [k, j, i]: array axis a is voxel axis 2 - a
    size = shape[array_axis]
    index = int(np.floor(ijk[2 - array_axis] + 0.5))
    if layout.flips[0]:
        index = size - 1 - index
    if not 0 <= index < size:
        raise errors.SliceRangeError(
            f"The point {tuple(round(float(v), 1) for v in ras[:3])} lies outside '{volume_node.GetName()}' "
            f"along the {axis} axis: move the crosshair onto the volume."
        )
    return index


def _node_grid(volume_node: Any) -> tuple[Geometry, tuple[int, int, int]]:
    import vtk

    if volume_node is None or volume_node.GetImageData() is None:
        raise errors.InputError("Pick an input image volume first.")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    array = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    i, j, k = volume_node.GetImageData().GetDimensions()
    return Geometry.from_ijk_to_ras(array), (k, j, i)


# --------------------------------------------------------------------------- devices and models


def device_choices() -> list[tuple[str, str]]:
    """``(value, label)`` for a device selector: auto, each CUDA GPU with its memory, MPS, the CPU."""
    from .devices import available_devices

    choices = [("auto", "auto (best available)")]
    for device in available_devices():
        memory = f", {device.memory_gb:g} GB" if device.memory_gb else ""
        choices.append((device.name, f"{device.name}: {device.description}{memory}"))
    return choices


CPU_WARNING = (
    "Running on the CPU: expect minutes per volume. Use fewer slices, samples or steps to try settings, "
    "and a GPU for full volumes."
)


def default_model_folder(task: str) -> Path | None:
    """The folder of ``task``'s default model (a selector preselects it), or None when none fits.

    ``task``: an edit mode (``instruct``, ``img2img``, ``direction``, ``generate``), ``segment`` or
    ``finetune``. A default that is missing or of the wrong kind gives None (a run says why).
    """
    from .models import find_default

    try:
        entry = find_default(task)
    except errors.ModelError:
        return None
    return entry.path if entry is not None else None


FROM_SCRATCH = "(a new model, trained from scratch)"
"""The first entry of the panel's model list for LDSeg training (its folder is '')."""


def panel_model_choices(
    tab: str, scheme: str = "", extra_folders: Iterable[str | Path] = ()
) -> list[tuple[str, str]]:
    """The panel's model list for a tab, ``(label, folder)`` (see :func:`model_choices`).

    ``tab``: ``counterfactual``, ``segment`` or ``finetune``. Segment lists LDSeg models; Fine-tune with
    the ``ldseg`` scheme lists :data:`FROM_SCRATCH` (folder '') and then the LDSeg models it can
    fine-tune; every other case lists diffusion models (InstructPix2Pix and Stable Diffusion).
    """
    trains_ldseg = tab == "finetune" and scheme == "ldseg"
    kinds = ("ldseg",) if tab == "segment" or trains_ldseg else ("instruct-pix2pix", "stable-diffusion")
    choices = [(label, str(folder)) for label, folder in model_choices(kinds, extra_folders)]
    return [(FROM_SCRATCH, ""), *choices] if trains_ldseg else choices


def model_choices(kinds: Iterable[str], extra_folders: Iterable[str | Path] = ()) -> list[tuple[str, Path]]:
    """``(label, folder)`` for every model of ``kinds``: registry models first, then ``extra_folders``.

    Each extra folder may be a model itself or hold model folders one level down (like the registry's).
    """
    from .models import list_models, model_kind

    wanted = set(kinds)
    choices = [
        (f"{m.name} (bundled)" if m.bundled else m.name, m.path) for m in list_models() if m.kind in wanted
    ]
    seen = {path.resolve() for _, path in choices}
    for folder in map(Path, extra_folders):
        candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())] if folder.is_dir() else []
        for candidate in candidates:
            if model_kind(candidate) in wanted and candidate.resolve() not in seen:
                seen.add(candidate.resolve())
                choices.append((f"{candidate.name} ({candidate.parent})", candidate))
    return choices


# --------------------------------------------------------------------------- fine-tuning jobs


def describe_cohort(path: str | Path) -> str:
    """A short check of a fine-tuning cohort (a folder of volumes, or a CSV listing them) for the panel."""
    path = Path(path).expanduser()
    if path.is_dir():
        volumes = [
            p for p in sorted(path.rglob("*")) if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)
        ]
        if not volumes:
            return f"No volumes ({', '.join(VOLUME_SUFFIXES)}) in '{path}'."
        return f"{len(volumes)} volume file(s) in '{path}'."
    if path.is_file() and path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            return f"'{path.name}' has no rows."
        files = [v for row in rows for v in row.values() if v and v.lower().endswith(VOLUME_SUFFIXES)]
        missing = [v for v in files if not (path.parent / v).expanduser().exists()]
        report = f"{len(rows)} row(s), columns: {', '.join(rows[0])}; {len(files)} volume path(s)"
        return report + (f", {len(missing)} missing (first: {missing[0]})." if missing else ", all found.")
    return f"'{path}' is neither a folder nor a .csv file."


@dataclass
class TrainingStatus:
    """A fine-tuning job's progress, from its ``status.jsonl`` (one record per logged step)."""

    records: list[dict[str, Any]]

    @property
    def latest(self) -> dict[str, Any]:
        """The last record (empty before the first step is logged)."""
        return self.records[-1] if self.records else {}

    @property
    def losses(self) -> list[tuple[int, float]]:
        """``(step, loss)`` for every record that has both."""
        return [
            (int(r["step"]), float(r["loss"]))
            for r in self.records
            if r.get("step") is not None and r.get("loss") is not None
        ]

    def sample_image(self, job_dir: Path) -> Path | None:
        """The most recent sample image that exists (paths are relative to the job folder)."""
        for record in reversed(self.records):
            if record.get("sample_image"):
                image = job_dir / str(record["sample_image"])
                if image.is_file():
                    return image
        return None


class TrainingJob:
    """A fine-tuning job folder, and the process working on it when started from here."""

    def __init__(self, job_dir: str | Path, process: EngineProcess | None = None) -> None:
        self.job_dir = Path(job_dir).expanduser().absolute()
        self.process = process

    def status(self) -> TrainingStatus:
        """The records of ``status.jsonl`` so far (lines being written are skipped)."""
        records = []
        status_file = self.job_dir / "status.jsonl"
        if status_file.is_file():
            for line in status_file.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
        return TrainingStatus(records)

    @property
    def running(self) -> bool:
        """True while the process started from here is running."""
        return self.process is not None and self.process.running

    def poll(self) -> list[dict[str, Any]]:
        """New events of the process started from here (none for a job opened from its folder)."""
        return self.process.poll() if self.process is not None else []

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the process ends; its result summary, or raises its error."""
        if self.process is None:
            raise errors.JobError(f"No process of job '{self.job_dir}' was started from here.")
        return self.process.wait(timeout)

    def cancel(self) -> None:
        """Stop the job: the process tree started from here, else ``latentdrift jobs cancel``."""
        if self.running:
            assert self.process is not None
            self.process.cancel()
        else:
            EngineProcess.start_command("jobs", ["cancel", str(self.job_dir)]).wait()

    def resume(self) -> TrainingJob:
        """Continue the job from its last checkpoint in a new process (``latentdrift jobs resume``)."""
        if self.running:
            raise errors.JobError(f"Job '{self.job_dir}' is still running.")
        self.process = EngineProcess.start_command("jobs", ["resume", str(self.job_dir)])
        return self


def start_finetune(
    cohort: str | Path,
    scheme: str,
    job_dir: str | Path,
    *,
    steps: int = 1000,
    drift: float | str | None = None,
    search_drift: bool = False,
    model: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
) -> TrainingJob:
    """Start fine-tuning in the background; returns its :class:`TrainingJob` at once.

    ``drift`` trains with Latent Drift δ (``search_drift=True`` searches δ instead; neither: none).
    ``model`` None starts from the default base model (``mini-sd-natural``) when it is installed; for the
    ``ldseg`` scheme ``model`` is an LDSeg model to fine-tune (None: train one from scratch).
    """
    if scheme not in FINETUNE_SCHEMES:
        raise errors.ParameterError(f"Unknown scheme '{scheme}': use {', '.join(FINETUNE_SCHEMES)}.")
    arguments = ["--cohort", str(cohort), "--scheme", scheme, "--steps", str(steps)]
    if search_drift:
        arguments.append("--search-drift")
    elif drift is not None:
        arguments += [f"--drift={drift}"]
    arguments += _model_arguments(model)
    arguments += ["--job-dir", str(job_dir), "--device", device, "--seed", str(seed)]
    return TrainingJob(job_dir, EngineProcess.start_command("finetune", arguments))


def loss_chart(
    status: TrainingStatus, session: SceneSession | None = None, name: str = "LatentDrift loss"
) -> Any:
    """A plot chart node of the loss curve (table, series and chart reused by ``name``), for Slicer's plot view."""
    import vtk

    session = session or SceneSession.from_application()
    scene = session.scene
    table = _node_named(scene, "vtkMRMLTableNode", f"{name} table")
    steps, losses = vtk.vtkFloatArray(), vtk.vtkFloatArray()
    steps.SetName("step")
    losses.SetName("loss")
    for step, loss in status.losses:
        steps.InsertNextValue(step)
        losses.InsertNextValue(loss)
    data = vtk.vtkTable()
    data.AddColumn(steps)
    data.AddColumn(losses)
    table.SetAndObserveTable(data)
    series = _node_named(scene, "vtkMRMLPlotSeriesNode", f"{name} series")
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("step")
    series.SetYColumnName("loss")
    series.SetPlotType(series.PlotTypeLine)
    chart = _node_named(scene, "vtkMRMLPlotChartNode", name)
    if not chart.HasPlotSeriesNodeID(series.GetID()):
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetXAxisTitle("step")
    chart.SetYAxisTitle("loss")
    return chart


def _node_named(scene: Any, class_name: str, name: str) -> Any:
    node = scene.GetFirstNode(name, class_name)
    return node if node is not None else scene.AddNewNodeByClass(class_name, name)
