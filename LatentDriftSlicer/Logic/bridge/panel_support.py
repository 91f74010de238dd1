"""What the Slicer panel needs besides runs: the slice a view shows, device and model lists, a model's
δ and guidance, cohort checks and the loss chart.

Nothing here imports torch or another model library (Slicer's own process imports this module);
devices are listed by a child process (:func:`start_info`). Slice geometry itself is computed in
:mod:`.volumes` (:func:`~.volumes.slice_index_at`, :func:`~.volumes.plane_point_through_centre`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core import errors
from ..core.settings import EditSettings
from ..core.values import Axis
from ..core.volumes import VOLUME_SUFFIXES, Geometry, plane_point_through_centre, slice_index_at, slice_layout
from ..counterfactual.recorded_sampling import recorded_sampling
from .processes import EngineProcess
from .scene import SceneSession, find_nodes

# --------------------------------------------------------------------------- slices and slice views


def slice_count(volume_node: Any, axis: Axis) -> int:
    """How many slices the volume has along an anatomical ``axis`` (the range of ``--slices``)."""
    geometry, shape = _node_grid(volume_node)
    return int(shape[slice_layout(geometry, axis).permutation[0]])


def slice_index_at_ras(volume_node: Any, ras: Sequence[float] | np.ndarray, axis: Axis) -> int:
    """The index (as ``--slices`` counts along ``axis``) of the slice through point ``ras`` (e.g. the crosshair).

    Raises :class:`~.errors.SliceRangeError` when the point lies outside the volume.
    """
    index = slice_index_at(*_node_grid(volume_node), ras, axis)
    if index is None:
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

    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(slice_node.GetSliceToRAS())
    slice_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return slice_index_at_ras(
        volume_node, plane_point_through_centre(*_node_grid(volume_node), slice_to_ras), axis
    )


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
    from ..core.models import find_default

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
    segmentation kind (:mod:`latentdrift.segmentation.segmenters`); Fine-tune with the ``ldseg`` scheme lists
    :data:`FROM_SCRATCH` (folder '') and then the LDSeg models it can fine-tune; every other case lists
    diffusion models (InstructPix2Pix and Stable Diffusion).
    """
    from ..segmentation.segmenters import segmenter_kinds

    trains_ldseg = tab == "finetune" and scheme == "ldseg"
    diffusion = ("instruct-pix2pix", "stable-diffusion")
    kinds = segmenter_kinds() if tab == "segment" else ("ldseg",) if trains_ldseg else diffusion
    choices = [(label, str(folder)) for label, folder in model_choices(kinds, extra_folders)]
    return [(FROM_SCRATCH, ""), *choices] if trains_ldseg else choices


def model_choices(kinds: Iterable[str], extra_folders: Iterable[str | Path] = ()) -> list[tuple[str, Path]]:
    """``(label, folder)`` for every model of ``kinds``: registry models first, then ``extra_folders``.

    Each extra folder may be a model itself or hold model folders one level down (like the registry's).
    """
    from ..core.models import list_models, model_kind

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


def model_sampling_shown(model: str | Path | None, mode: str) -> tuple[float, float]:
    """The Latent Drift δ and text guidance a counterfactual with ``model`` (a folder; None or '': the
    edit ``mode``'s default model) uses when the panel leaves them to the model: the values recorded with
    it (:mod:`latentdrift.counterfactual.recorded_sampling`), else the engine's defaults."""
    recorded = recorded_sampling({"model": str(model) if model else None, "mode": mode})
    return float(recorded.get("drift", EditSettings.drift)), float(
        recorded.get("guidance", EditSettings.guidance)
    )


# --------------------------------------------------------------------------- cohorts and the loss chart


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
