"""The Python-console API: run LatentDrift on scene nodes and get nodes back.

Works in Slicer's Python console (on ``slicer.mrmlScene``) and on slicer-core (pass the headless
:class:`~.scene.SceneSession` as ``session``)::

    import latentdrift.console as ld
    result = ld.segment(volume_node, model="brain-tissue-ldseg", samples=8)
    result.segmentation_node, result.uncertainty_node

Every run goes the same way (:func:`run_on_node`): the input node is exported to a temporary NRRD
(the node itself is never modified), the ``latentdrift`` command runs in a child process
(:mod:`.processes`) that writes its results as files by role and no scene (``--scene no``), and the
files of the roles asked for are loaded as NEW nodes on the input's exact geometry, with their
display set up (:func:`latentdrift.scene.load_outputs`: input in the background, the result in the
foreground, colour tables for maps). :func:`segment` and :func:`counterfactual` hand the engine its
own settings object (:mod:`.settings`) as JSON. ``blocking=False`` returns a :class:`NodeJob` at
once: poll it from the main thread (Slicer's GUI does so from a timer); it loads the outputs when
the run ends.

Fine-tuning runs as a job folder (:func:`start_finetune`, :class:`TrainingJob`): its ``status.jsonl``
gives the progress, loss curve and latest sample image, also for jobs started elsewhere.

Nothing here imports torch or another model library: the Slicer panel imports this module in
Slicer's own process. Devices are listed by a child process (:func:`start_info`).
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from . import errors
from .processes import EngineProcess, RunState
from .scene import (
    COUNTERFACTUAL_ROLES,
    ROLE_LOADERS,
    SEGMENT_ROLES,
    OutputFiles,
    SceneSession,
    find_nodes,
    load_outputs,
    node_to_volume,
)
from .settings import (
    Axis,
    CounterfactualSettings,
    SegmentSettings,
    build_settings,
    counterfactual_settings,
    edit_fields,
)
from .train import SCHEMES as FINETUNE_SCHEMES
from .train.job_folder import JobFolder, StatusFollower
from .volumes import VOLUME_SUFFIXES, Geometry, Volume, slice_layout, write_volume

T = TypeVar("T")

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
    """LDSeg output nodes: the segmentation, the uncertainty map, (when asked) per-class probabilities, and
    the brain mask when the brain front end made one (a brain model on a head)."""

    segmentation_node: Any
    uncertainty_node: Any | None
    probability_nodes: list[Any]
    summary: dict[str, Any]
    output: Path | None
    brain_mask_node: Any | None = None


@dataclass
class CounterfactualResult:
    """Latent Drift output nodes: the counterfactual volume, the signed difference from the input, and the
    brain mask when the brain front end made one."""

    counterfactual_node: Any
    difference_node: Any | None
    summary: dict[str, Any]
    output: Path | None
    brain_mask_node: Any | None = None


# --------------------------------------------------------------------------- the generic core


@dataclass
class PreparedRun:
    """A command ready to run on an exported input node, and how to load its outputs afterwards.

    ``settings`` (an engine settings object, or None) goes to the child as JSON on its standard input.
    """

    session: SceneSession
    input_node: Any
    template: Volume
    command: str
    arguments: list[str]
    settings: Any | None
    roles: tuple[str, ...]
    output: Path
    keep_output: bool
    work_folder: Path
    foreground_opacity: float

    def start(self) -> EngineProcess:
        """Start the engine process of this run."""
        return EngineProcess.start_command(self.command, self.arguments, self.settings)

    def load(self, summary: dict[str, Any]) -> RunResult:
        """Load the outputs of ``roles`` from the result folder as new nodes and set up the views."""
        outputs = {role: _listed(summary, role) for role in self.roles}
        files = OutputFiles(self.output, outputs, self.input_node, self.template)
        nodes = load_outputs(self.session, files, self.roles, self.foreground_opacity)
        return RunResult(summary, self.output if self.keep_output else None, nodes)

    def cleanup(self) -> None:
        """Remove the exported input (and the result folder when it was temporary)."""
        shutil.rmtree(self.work_folder, ignore_errors=True)


def _listed(summary: dict[str, Any], role: str) -> list[str]:
    value = summary.get("outputs", {}).get(role)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def prepare_run(
    volume_node: Any,
    command: str,
    arguments: Sequence[str],
    roles_to_load: Sequence[str],
    *,
    session: SceneSession | None = None,
    output: str | Path | None = None,
    foreground_opacity: float = 0.5,
    settings: Any | None = None,
) -> PreparedRun:
    """Export ``volume_node`` and build the command line; nothing runs yet (see :func:`run_on_node`).

    The command is ``latentdrift COMMAND INPUT ARGUMENTS --output DIR --scene no`` (plus ``--settings
    -`` when ``settings`` is given).
    """
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
    return PreparedRun(
        session=session,
        input_node=volume_node,
        template=template,
        command=command,
        arguments=[str(input_path), *arguments, "--output", str(result_folder), "--scene", "no"],
        settings=settings,
        roles=tuple(roles_to_load),
        output=result_folder,
        keep_output=output is not None,
        work_folder=work_folder,
        foreground_opacity=foreground_opacity,
    )


class NodeJob(Generic[T]):
    """A command running on a node; its outputs become nodes when it ends.

    Drive it from the main thread (MRML is not thread-safe): :meth:`poll` in a timer, or :meth:`wait`.
    """

    def __init__(self, run: PreparedRun, convert: Callable[[RunResult], T], process: EngineProcess) -> None:
        self.run = run
        self.process = process
        self._convert = convert
        self._result: T | None = None
        self._error: errors.LatentDriftError | None = None
        self._completed = False

    @property
    def state(self) -> RunState:
        """The run's outcome so far (progress, log tail, summary or error)."""
        return self.process.state

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
        events = self.process.poll()
        if any(event["event"] == "exit" for event in events):
            self._complete()
        return events

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
        if not self.process.join(timeout):
            raise errors.JobError(f"The run is still going after {timeout:g} s.")
        self.poll()
        return self.result()

    def cancel(self) -> None:
        """Ask the run's whole process tree to stop; returns at once. The job then fails with a
        cancellation error (:meth:`poll` sees it end)."""
        self.process.cancel()


def run_on_node(
    volume_node: Any,
    command: str,
    arguments: Sequence[str],
    roles_to_load: Sequence[str],
    *,
    session: SceneSession | None = None,
    output: str | Path | None = None,
    blocking: bool = True,
    foreground_opacity: float = 0.5,
) -> RunResult | NodeJob[RunResult]:
    """Run ``latentdrift COMMAND INPUT ARGUMENTS`` on a volume node and load the outputs of ``roles_to_load``.

    ``output`` keeps the result folder there (default: a temporary folder, removed after loading).
    Blocking runs return a :class:`RunResult` or raise the command's error; ``blocking=False``
    returns a :class:`NodeJob` at once.
    """
    run = prepare_run(
        volume_node,
        command,
        arguments,
        roles_to_load,
        session=session,
        output=output,
        foreground_opacity=foreground_opacity,
    )
    return _launch(run, lambda result: result, blocking)


def start_run(run: PreparedRun, convert: Callable[[RunResult], T]) -> NodeJob[T]:
    """Start ``run`` in an engine process; its :class:`NodeJob` at once (the panel polls it from a timer)."""
    try:
        return NodeJob(run, convert, run.start())
    except OSError as error:
        run.cleanup()
        raise errors.LatentDriftError(f"Could not start the engine process: {error}") from error


def _launch(run: PreparedRun, convert: Callable[[RunResult], T], blocking: bool) -> T | NodeJob[T]:
    """Start ``run``; wait for it when ``blocking``."""
    job = start_run(run, convert)
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


def prepare_segment(
    volume_node: Any,
    settings: SegmentSettings,
    *,
    session: SceneSession | None = None,
    output: str | Path | None = None,
) -> PreparedRun:
    """The ``latentdrift segment`` run of :func:`segment`, not started (for a GUI that starts it itself)."""
    return prepare_run(
        volume_node,
        "segment",
        [],
        SEGMENT_ROLES,
        session=session,
        output=output,
        foreground_opacity=0.4,
        settings=settings,
    )


def segment(
    volume_node: Any,
    *,
    blocking: bool = True,
    session: SceneSession | None = None,
    output: str | Path | None = None,
    **options: Any,
) -> SegmentResult | NodeJob[SegmentResult]:
    """LDSeg segmentation of a volume node: a segmentation node and its uncertainty map (values 0..1).

    ``options`` are the :class:`~latentdrift.settings.SegmentSettings` (with their defaults there):
    ``model`` (None: the default segmentation model), ``samples`` diffusion samples of ``steps`` DDIM
    steps each (None: the model's default) combined per slice, ``slices`` a range ``"a:b"`` along
    ``axis`` (default: all), ``probabilities=True`` also loads one probability map per class,
    ``device``, ``seed``.
    """
    run = prepare_segment(
        volume_node, build_settings(SegmentSettings, options), session=session, output=output
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
        brain_mask_node=result.node("brain_mask"),
    )


def prepare_counterfactual(
    volume_node: Any,
    settings: CounterfactualSettings,
    *,
    fade: float,
    session: SceneSession | None = None,
    output: str | Path | None = None,
) -> PreparedRun:
    """The ``latentdrift counterfactual`` run of :func:`counterfactual`, not started; ``fade`` as there."""
    return prepare_run(
        volume_node,
        "counterfactual",
        [],
        COUNTERFACTUAL_ROLES,
        session=session,
        output=output,
        foreground_opacity=fade,
        settings=settings,
    )


def counterfactual(
    volume_node: Any,
    *,
    fade: float = 1.0,
    blocking: bool = True,
    session: SceneSession | None = None,
    output: str | Path | None = None,
    **options: Any,
) -> CounterfactualResult | NodeJob[CounterfactualResult]:
    """A Latent Drift counterfactual of a volume node and its signed difference map.

    ``options`` are the settings of :func:`latentdrift.settings.counterfactual_settings` (defaults
    there): ``mode`` is ``instruct`` (give ``instruction``, or ``source``/``target`` attributes such
    as ``"age=70,sex=F,dx=CN"`` → ``"age=77,dx=MCI"``), ``img2img`` (give ``prompt``) or ``direction``
    (give ``source`` and ``target``); ``drift`` is the Latent Drift δ; ``model`` None uses the edit
    mode's default model (``brain-mri-instruct`` for instruct, else ``brain-mri-sd``). An instruct
    edit with ``source`` attributes is taken relative to the factual edit (keep the source's
    attributes); ``factual_reference=False`` takes it relative to the VAE reconstruction (half the
    time). ``fade`` is the opacity of the counterfactual over the input in the slice views.
    """
    run = prepare_counterfactual(
        volume_node, counterfactual_settings(**options), fade=fade, session=session, output=output
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
        brain_mask_node=result.node("brain_mask"),
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


# --------------------------------------------------------------------------- slices and slice views


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


SLICE_VIEWS = ("Red", "Yellow", "Green")
"""Slice views looked at first when a view showing an axis is wanted (Slicer's standard three)."""


def slice_node_showing(axis: Axis, session: SceneSession | None = None) -> Any:
    """The slice node of a view showing ``axis`` slices (orientation Axial, Coronal or Sagittal).

    The standard views (Red, Yellow, Green) are looked at first. Raises
    :class:`~.errors.InputError` when no view shows that orientation.
    """
    session = session or SceneSession.from_application()
    standard = {view: rank for rank, view in enumerate(SLICE_VIEWS)}
    nodes = sorted(
        find_nodes(session, "vtkMRMLSliceNode"),
        key=lambda node: standard.get(node.GetLayoutName(), len(standard)),
    )
    for node in nodes:
        if node.GetOrientation().lower() == axis:
            return node
    raise errors.InputError(
        f"No slice view shows {axis} slices: set a view's orientation to {axis.capitalize()}, "
        "or choose the slice axis a view shows."
    )


def shown_slice_index(volume_node: Any, slice_node: Any, axis: Axis) -> int:
    """The index (as ``--slices`` counts along ``axis``) of the volume's slice that ``slice_node`` shows.

    The view's plane (its SliceToRAS: the slice offset and orientation) is met by the line through the
    volume's centre along the plane's normal; the slice through that point is the one shown, also
    when the view is panned or the volume is oblique. Raises :class:`~.errors.SliceRangeError` when
    the plane misses the volume.
    """
    import vtk

    geometry, shape = _node_grid(volume_node)
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(slice_node.GetSliceToRAS())
    slice_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    normal, origin = slice_to_ras[:3, 2], slice_to_ras[:3, 3]
    k, j, i = shape
    center = (geometry.ijk_to_ras() @ np.array([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0]))[:3]
    point = center - normal * float(np.dot(center - origin, normal) / np.dot(normal, normal))
    return slice_index_at_ras(volume_node, point, axis)


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


def start_info() -> EngineProcess:
    """``latentdrift info`` in a child process; its result summary is the report :func:`device_choices` reads.

    torch is imported there, never in the caller's process; the panel polls it from its timer and
    keeps the device list until the user refreshes it.
    """
    return EngineProcess.start_command("info")


def device_choices(report: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """``(value, label)`` for a device selector: auto, then each device of an ``info`` report
    (CUDA GPUs with their memory, MPS, the CPU); without a report, auto and the CPU."""
    devices = (report or {}).get("devices") or [{"name": "cpu", "description": "CPU", "memory_gb": None}]
    choices = [("auto", "auto (best available)")]
    for device in devices:
        memory = f", {device['memory_gb']:g} GB" if device.get("memory_gb") else ""
        choices.append((str(device["name"]), f"{device['name']}: {device['description']}{memory}"))
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

    ``tab``: ``counterfactual``, ``segment`` or ``finetune``. Segment lists the models of every
    segmentation kind (:mod:`latentdrift.segmenters`); Fine-tune with the ``ldseg`` scheme lists
    :data:`FROM_SCRATCH` (folder '') and then the LDSeg models it can fine-tune; every other case lists
    diffusion models (InstructPix2Pix and Stable Diffusion).
    """
    from .segmenters import segmenter_kinds

    trains_ldseg = tab == "finetune" and scheme == "ldseg"
    diffusion = ("instruct-pix2pix", "stable-diffusion")
    kinds = segmenter_kinds() if tab == "segment" else ("ldseg",) if trains_ldseg else diffusion
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
        self.folder = JobFolder(job_dir)
        self.job_dir = self.folder.path
        self.process = process
        self._follower = StatusFollower(self.folder.status_file)

    def status(self) -> TrainingStatus:
        """Every record of ``status.jsonl`` so far (a line being written is skipped)."""
        return TrainingStatus(self.folder.status_records())

    def new_records(self) -> list[dict[str, Any]]:
        """The records written since the last call: only the new part of ``status.jsonl`` is read
        (what a monitor polling every fraction of a second wants)."""
        return self._follower.read_new()

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
        """Stop the job: the process tree started from here (returns at once), else ``latentdrift jobs cancel``."""
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


def start_finetune(cohort: str | Path, scheme: str, job_dir: str | Path, **options: Any) -> TrainingJob:
    """Start fine-tuning in the background; returns its :class:`TrainingJob` at once.

    ``options`` are the other fields of :class:`~latentdrift.train.config.FinetuneConfig` (defaults
    there), e.g. ``steps``, ``drift`` (train with Latent Drift δ) or ``search_drift=True`` (search δ
    first), ``model`` (None: the default base model ``mini-sd-natural``; for the ``ldseg`` scheme an
    LDSeg model to fine-tune, None: train one from scratch), ``device``, ``seed``. The config goes
    to the engine process as JSON.
    """
    from .train.config import FinetuneConfig

    if scheme not in FINETUNE_SCHEMES:
        raise errors.ParameterError(f"Unknown scheme '{scheme}': use {', '.join(FINETUNE_SCHEMES)}.")
    values = edit_fields({"cohort": str(cohort), "scheme": scheme, **options})
    config = build_settings(FinetuneConfig, values)
    process = EngineProcess.start_command("finetune", ["--job-dir", str(job_dir)], settings=config)
    return TrainingJob(job_dir, process)


@dataclass
class LossChart:
    """A plot chart of a loss curve and the table under it, grown one status record at a time."""

    chart_node: Any
    table_node: Any

    def append(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Add the ``(step, loss)`` of ``records`` as new table rows; returns how many were added.

        Rows already there are kept (no rebuild); a record whose step is not past the last row (a
        resumed job redoing steps) first drops the rows from that step on.
        """
        table = self.table_node.GetTable()
        added = 0
        for record in records:
            if record.get("step") is None or record.get("loss") is None:
                continue
            step = float(record["step"])
            while (
                table.GetNumberOfRows() and table.GetValue(table.GetNumberOfRows() - 1, 0).ToDouble() >= step
            ):
                table.RemoveRow(table.GetNumberOfRows() - 1)
            row = table.InsertNextBlankRow()
            table.SetValue(row, 0, step)
            table.SetValue(row, 1, float(record["loss"]))
            added += 1
        if added:
            table.Modified()
            self.table_node.Modified()
        return added


def loss_chart(session: SceneSession | None = None, name: str = "LatentDrift loss") -> LossChart:
    """An empty loss chart (table, series and chart nodes reused by ``name``), for Slicer's plot view."""
    import vtk

    session = session or SceneSession.from_application()
    scene = session.scene
    table_node = _node_named(scene, "vtkMRMLTableNode", f"{name} table")
    steps, losses = vtk.vtkFloatArray(), vtk.vtkFloatArray()
    steps.SetName("step")
    losses.SetName("loss")
    data = vtk.vtkTable()
    data.AddColumn(steps)
    data.AddColumn(losses)
    table_node.SetAndObserveTable(data)
    series = _node_named(scene, "vtkMRMLPlotSeriesNode", f"{name} series")
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName("step")
    series.SetYColumnName("loss")
    series.SetPlotType(series.PlotTypeLine)
    chart = _node_named(scene, "vtkMRMLPlotChartNode", name)
    if not chart.HasPlotSeriesNodeID(series.GetID()):
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetXAxisTitle("step")
    chart.SetYAxisTitle("loss")
    return LossChart(chart, table_node)


def _node_named(scene: Any, class_name: str, name: str) -> Any:
    node = scene.GetFirstNode(name, class_name)
    return node if node is not None else scene.AddNewNodeByClass(class_name, name)
