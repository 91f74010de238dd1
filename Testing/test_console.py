"""The Python-console API on slicer-core: real scenes, real engine processes, new nodes on the input grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import vtk
from conftest import oblique_direction

from latentdrift.bridge import console, panel_support
from latentdrift.bridge.scene import (
    SceneSession,
    find_nodes,
    load_volume_node,
    node_to_volume,
    volume_to_node,
)
from latentdrift.core import errors
from latentdrift.core.model_formats import LDSEG_FORMAT
from latentdrift.core.settings import SegmentSettings, counterfactual_settings
from latentdrift.core.volumes import Geometry, Volume, extract_slices, write_volume
from latentdrift.segmentation.seg_files import SegmentClass, write_segmentation_file


def _matrix(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture
def volume_node(session, oblique_nifti: Path):
    """An oblique, anisotropic volume node in the headless session."""
    return load_volume_node(session, oblique_nifti)


def test_run_on_node_blocking_and_background(session, volume_node, tmp_path: Path) -> None:
    """A background run that fails and a blocking run that succeeds, at the same time, on one node."""
    before_voxels, before_matrix = node_to_volume(volume_node).voxels.copy(), _matrix(volume_node)
    job = console.run_on_node(
        volume_node, "scene", ["--slices", "90:99"], ["volume"], session=session, blocking=False
    )
    assert isinstance(job, console.NodeJob) and not job.done

    kept = tmp_path / "kept"
    result = console.run_on_node(
        volume_node,
        "scene",
        ["--axis", "sagittal"],
        ["volume"],
        session=session,
        output=kept,
        foreground_opacity=0.3,
    )
    assert isinstance(result, console.RunResult)
    rebuilt = result.node("volume")
    assert rebuilt.GetID() != volume_node.GetID()
    assert rebuilt.GetName() == f"{volume_node.GetName()} volume"
    assert np.array_equal(node_to_volume(rebuilt).voxels, before_voxels)
    assert np.array_equal(_matrix(rebuilt), before_matrix)  # exactly the input's geometry
    assert np.array_equal(node_to_volume(volume_node).voxels, before_voxels)  # input untouched
    assert np.array_equal(_matrix(volume_node), before_matrix)
    assert result.output == kept and (kept / "summary.json").is_file()
    assert json.loads((kept / "summary.json").read_text())["axis"] == "sagittal"
    for composite in find_nodes(session, "vtkMRMLSliceCompositeNode"):
        assert composite.GetBackgroundVolumeID() == volume_node.GetID()
        assert composite.GetForegroundVolumeID() == rebuilt.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.3)

    with pytest.raises(errors.SliceRangeError, match="outside the volume"):
        job.wait(timeout=180)
    assert job.done and isinstance(job.error, errors.SliceRangeError)
    assert not job.run.work_folder.exists()  # temporary export removed
    assert (
        len(find_nodes(session, "vtkMRMLScalarVolumeNode")) == 2
    )  # input + one result, nothing from the failure


def test_mode_functions_report_engine_errors(session, volume_node, tmp_path: Path) -> None:
    """segment/counterfactual/finetune go through the engine and surface its error (bad model / cohort)."""
    segment_job = console.segment(
        volume_node, model=tmp_path / "no-model", samples=2, steps=2, session=session, blocking=False
    )
    edit_job = console.counterfactual(
        volume_node,
        instruction="make it older",
        model=tmp_path / "no-model",
        steps=2,
        session=session,
        blocking=False,
    )
    training = console.start_finetune(tmp_path / "no-cohort", "lora", tmp_path / "job", steps=2)
    for job in (segment_job, edit_job):
        with pytest.raises(errors.LatentDriftError):
            job.wait(timeout=180)
    with pytest.raises(errors.LatentDriftError):
        training.wait(timeout=180)
    assert not training.running
    assert len(find_nodes(session, "vtkMRMLScalarVolumeNode")) == 1


def _write_segmentation(reference: Volume, path: Path) -> np.ndarray:
    """A .seg.nrrd with two segments, as the engine process writes it."""
    labels = np.zeros(reference.voxels.shape, np.uint8)
    labels[2:5, 3:8, 2:6] = 1
    labels[5:7, 1:4, 6:11] = 2
    classes = [SegmentClass(1, "lesion", (1.0, 0.2, 0.2)), SegmentClass(2, "edema", (0.2, 0.8, 0.2))]
    write_segmentation_file(reference.with_voxels(labels), classes, path)
    return labels


def test_outputs_load_by_role_with_display(session, volume_node, tmp_path: Path) -> None:
    """The files segment/counterfactual write become nodes on the input grid with their display set-up."""
    template = node_to_volume(volume_node)
    out = tmp_path / "result"
    out.mkdir()
    _write_segmentation(template, out / "seg.seg.nrrd")
    entropy = np.linspace(0, 1, template.voxels.size, dtype=np.float32).reshape(template.voxels.shape)
    write_volume(template.with_voxels(entropy), out / "uncertainty.nrrd")
    write_volume(template.with_voxels(1 - entropy), out / "p1.nrrd")
    write_volume(template.with_voxels(entropy), out / "p2.nrrd")
    summary = {
        "outputs": {
            "segmentation": "seg.seg.nrrd",
            "uncertainty": "uncertainty.nrrd",
            "probability": ["p1.nrrd", "p2.nrrd"],
        }
    }

    _write_segmentation(template, out / "brain.seg.nrrd")
    summary["outputs"]["brain_mask"] = "brain.seg.nrrd"  # the brain front end's role: loaded once written
    run = console.prepare(volume_node, SegmentSettings(), session=session, output=out)
    loaded = run.load(summary)
    assert loaded.node("brain_mask").GetSegmentation().GetNumberOfSegments() == 2
    segmented = console.as_segment_result(loaded)
    segments = segmented.segmentation_node.GetSegmentation()
    assert [segments.GetNthSegment(n).GetName() for n in range(segments.GetNumberOfSegments())] == [
        "lesion",
        "edema",
    ]
    display = segmented.segmentation_node.GetDisplayNode()
    assert display.GetVisibility2DFill() and display.GetVisibility2DOutline()
    assert segmented.segmentation_node.GetStorageNode() is None  # no link to the result files
    uncertainty = segmented.uncertainty_node.GetDisplayNode()
    assert uncertainty.GetColorNode().GetName() in ("Inferno", "Iron")
    assert (uncertainty.GetWindowLevelMin(), uncertainty.GetWindowLevelMax()) == pytest.approx((0.0, 1.0))
    assert session.colors_logic.GetColorLegendDisplayNode(segmented.uncertainty_node) is not None
    assert len(segmented.probability_nodes) == 2
    assert [n.GetName() for n in segmented.probability_nodes] == [
        "oblique probability",
        "oblique probability 2",
    ]
    for node in (segmented.uncertainty_node, *segmented.probability_nodes):
        assert np.array_equal(_matrix(node), _matrix(volume_node))
    run.cleanup()

    difference = np.full(template.voxels.shape, -3.0, np.float32)
    difference[0, 0, 0] = 2.0
    write_volume(template.with_voxels(template.voxels + 1), out / "cf.nrrd")
    write_volume(template.with_voxels(difference), out / "diff.nrrd")
    settings = counterfactual_settings(instruction="make it older")
    run = console.prepare(volume_node, settings, fade=0.7, session=session, output=out)
    edited = console.as_counterfactual_result(
        run.load({"outputs": {"counterfactual": "cf.nrrd", "difference": "diff.nrrd"}})
    )
    assert np.allclose(node_to_volume(edited.counterfactual_node).voxels, template.voxels + 1)
    diff_display = edited.difference_node.GetDisplayNode()
    assert diff_display.GetColorNode().GetName() in ("DivergingBlueRed", "fMRI")
    assert (diff_display.GetWindowLevelMin(), diff_display.GetWindowLevelMax()) == pytest.approx((-3.0, 3.0))
    composite = find_nodes(session, "vtkMRMLSliceCompositeNode")[0]
    assert composite.GetBackgroundVolumeID() == volume_node.GetID()
    assert composite.GetForegroundVolumeID() == edited.counterfactual_node.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.7)
    console.set_fade(0.25, session)
    assert composite.GetForegroundOpacity() == pytest.approx(0.25)

    write_volume(Volume(np.zeros((3, 3, 3), np.float32), Geometry((1, 1, 1), (0, 0, 0))), out / "small.nrrd")
    with pytest.raises(errors.InputError, match="not on the input's voxel grid"):
        run.load({"outputs": {"counterfactual": "small.nrrd"}})
    run.cleanup()


def test_bad_calls_fail_before_any_process(session, volume_node) -> None:
    with pytest.raises(errors.ParameterError, match="known roles"):
        console.run_on_node(volume_node, "scene", [], ["no-such-role"], session=session)
    with pytest.raises(errors.InputError, match="session"):
        console.run_on_node(volume_node, "scene", [], ["volume"], session=SceneSession.headless())
    with pytest.raises(errors.InputError, match="scalar volume"):
        console.run_on_node(None, "scene", [], ["volume"], session=session)
    with pytest.raises(errors.ParameterError, match="edit mode"):
        console.counterfactual(volume_node, mode="paint", session=session)
    with pytest.raises(errors.ParameterError, match="Unknown SegmentSettings setting"):
        console.segment(volume_node, sample=2, session=session)
    with pytest.raises(errors.ParameterError, match="scheme"):
        console.start_finetune("cohort", "magic", "job")


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_slice_index_at_ras_matches_the_engine_slicing(session, axis: str, rng: np.random.Generator) -> None:
    """The slice under a point (the crosshair) is the engine's slice holding that voxel, on an oblique volume."""
    shape = (9, 11, 13)
    voxels = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    volume = Volume(voxels, Geometry((0.7, 1.3, 2.5), (12.5, -30.25, 7.0), oblique_direction()), "grid")
    node = volume_to_node(session, volume, "grid")
    count = panel_support.slice_count(node, axis)
    assert count == extract_slices(volume, axis).count
    for k, j, i in rng.integers(0, shape, size=(5, 3)):
        ras = volume.geometry.ijk_to_ras() @ np.array([i, j, k, 1.0])
        index = panel_support.slice_index_at_ras(node, ras[:3], axis)
        assert voxels[k, j, i] in extract_slices(volume, axis, f"{index}:{index + 1}").slices
    with pytest.raises(errors.SliceRangeError, match="crosshair"):
        panel_support.slice_index_at_ras(node, (1e4, 1e4, 1e4), axis)


@pytest.mark.parametrize(
    ("axis", "orientation"), [("axial", "Axial"), ("coronal", "Coronal"), ("sagittal", "Sagittal")]
)
def test_the_preview_takes_the_slice_a_view_shows(session, axis: str, orientation: str) -> None:
    """The view showing the axis is found; the slice its plane (slice offset) cuts is the engine's slice."""
    import slicer

    volume = Volume(
        np.arange(9 * 11 * 13, dtype=np.float32).reshape(9, 11, 13),
        Geometry((0.7, 1.3, 2.5), (12.5, -30.25, 7.0)),
    )
    node = volume_to_node(session, volume, "grid")
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(session.scene)
    for name, shown in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        view = session.scene.CreateNodeByClass("vtkMRMLSliceNode")
        view.SetLayoutName(name)
        session.scene.AddNode(view)
        view.SetOrientation(shown)
    view = panel_support.slice_node_showing(axis, session)
    assert view.GetOrientation() == orientation
    count = panel_support.slice_count(node, axis)
    for index in (0, 3, count - 1):
        stack = extract_slices(volume, axis, f"{index}:{index + 1}")
        k, j, i = np.argwhere(volume.voxels == stack.slices[0][2, 2])[0]
        point = volume.geometry.ijk_to_ras() @ np.array([i, j, k, 1.0])
        normal = np.array([view.GetSliceToRAS().GetElement(r, 2) for r in range(3)])
        view.SetSliceOffset(float(np.dot(point[:3], normal)))  # the plane through that voxel
        assert panel_support.shown_slice_index(node, view, axis) == index
    view.SetSliceOffset(1e4)
    with pytest.raises(errors.SliceRangeError):
        panel_support.shown_slice_index(node, view, axis)
    assert view.SetOrientation("Coronal" if orientation != "Coronal" else "Axial")
    with pytest.raises(errors.InputError, match=f"No slice view shows {axis} slices"):
        panel_support.slice_node_showing(axis, session)


def test_helpers_for_the_panel(tmp_path: Path) -> None:
    assert console.attributes_text(70, "F", "CN") == "age=70,sex=F,dx=CN"
    assert console.attributes_text(-1, "unknown", " ") == ""
    assert console.attributes_text(77.5, None, "MCI") == "age=77.5,dx=MCI"

    report = panel_support.start_info().wait(timeout=180)  # torch is imported in that process, not here
    assert report["python"] and any(device["name"] == "cpu" for device in report["devices"])
    assert ("cpu", "cpu: " + report["devices"][-1]["description"]) in panel_support.device_choices(report)
    assert panel_support.device_choices(None) == [("auto", "auto (best available)"), ("cpu", "cpu: CPU")]
    report = {
        "devices": [
            {"name": "cuda:0", "description": "NVIDIA H200", "memory_gb": 139.8},
            {"name": "cpu", "description": "CPU (16 threads)", "memory_gb": None},
        ]
    }
    assert panel_support.device_choices(report)[1:] == [
        ("cuda:0", "cuda:0: NVIDIA H200, 139.8 GB"),
        ("cpu", "cpu: CPU (16 threads)"),
    ]

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in ("a.nrrd", "b.nii.gz", "notes.txt"):
        (cohort / name).write_text("x")
    assert panel_support.describe_cohort(cohort).startswith("2 volume file(s)")
    table = tmp_path / "cohort.csv"
    table.write_text("path,age\ncohort/a.nrrd,70\ncohort/missing.nrrd,71\n")
    assert "2 row(s)" in panel_support.describe_cohort(
        table
    ) and "1 missing (first: cohort/missing.nrrd)" in panel_support.describe_cohort(table)
    assert "neither" in panel_support.describe_cohort(tmp_path / "nothing")

    models = tmp_path / "models"
    (models / "seg").mkdir(parents=True)
    (models / "seg" / "config.json").write_text(json.dumps({"format": LDSEG_FORMAT}))
    (models / "editor").mkdir()
    (models / "editor" / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionInstructPix2PixPipeline"})
    )
    assert [
        path for _, path in panel_support.model_choices(["ldseg"], [models]) if path.parent == models
    ] == [models / "seg"]
    assert [
        path
        for _, path in panel_support.model_choices(["instruct-pix2pix"], [models / "editor"])
        if path.parent == models
    ] == [models / "editor"]

    def listed(tab: str, scheme: str = "") -> list[str]:
        """The panel's entries for a tab: from scratch, or the user's models (bundled ones left out)."""
        return [
            folder
            for label, folder in panel_support.panel_model_choices(tab, scheme, [models])
            if folder == "" or Path(folder).parent == models
        ]

    assert listed("segment") == [str(models / "seg")]
    assert listed("finetune", "ldseg") == ["", str(models / "seg")]  # a new model first
    assert panel_support.panel_model_choices("finetune", "ldseg", [])[0] == (panel_support.FROM_SCRATCH, "")
    for tab, scheme in (("counterfactual", ""), ("finetune", "lora"), ("finetune", "instruct-pix2pix")):
        assert listed(tab, scheme) == [str(models / "editor")]


def test_training_status_and_loss_chart(session, tmp_path: Path) -> None:
    """status.jsonl → progress, loss curve and sample image, read a part at a time; the chart grows by rows."""
    job_dir = tmp_path / "job"
    (job_dir / "samples").mkdir(parents=True)
    (job_dir / "samples" / "step2.png").write_bytes(b"png")
    lines = [
        {"step": 1, "epoch": 0, "loss": 0.9, "lr": 1e-4, "eta_s": 20, "sample_image": None},
        {"step": 2, "epoch": 0, "loss": 0.7, "lr": 1e-4, "eta_s": 10, "sample_image": "samples/step2.png"},
        {"step": 3, "epoch": 1, "loss": 0.5, "lr": 1e-4, "eta_s": 5, "sample_image": "samples/missing.png"},
    ]
    status_file = job_dir / "status.jsonl"
    status_file.write_text("\n".join(json.dumps(line) for line in lines[:2]) + '\n{"step": 3, "lo')
    job = console.TrainingJob(job_dir)
    assert job.new_records() == lines[:2]  # the line being written waits
    assert job.new_records() == []
    status_file.write_text(status_file.read_text()[: -len('{"step": 3, "lo')] + json.dumps(lines[2]) + "\n")
    assert job.new_records() == lines[2:]
    status = job.status()
    assert status.latest["step"] == 3 and status.losses == [(1, 0.9), (2, 0.7), (3, 0.5)]
    assert status.sample_image(job.job_dir) == job_dir / "samples" / "step2.png"
    assert not job.running and job.poll() == []
    with pytest.raises(errors.JobError, match="No process"):
        job.wait()

    chart = panel_support.loss_chart(session)
    table = chart.table_node.GetTable()
    assert chart.append(lines[:2]) == 2 and chart.append(lines[2:]) == 1
    assert table is chart.table_node.GetTable() and table.GetNumberOfRows() == 3  # grown, not rebuilt
    assert chart.append([{"step": 2, "loss": 0.6}]) == 1  # a resumed job redoes step 2: rows from it go
    assert [table.GetValue(r, 1).ToDouble() for r in range(table.GetNumberOfRows())] == pytest.approx(
        [0.9, 0.6]
    )
    again = panel_support.loss_chart(session)
    assert (
        again.chart_node.GetID() == chart.chart_node.GetID()
        and again.table_node.GetTable().GetNumberOfRows() == 0
    )
    assert chart.chart_node.GetNumberOfPlotSeriesNodes() == 1

    replacement = job_dir / "status.tmp"
    replacement.write_text(json.dumps(lines[0]) + "\n")
    replacement.replace(status_file)  # a resumed job drops the lines after its checkpoint
    assert job.new_records() == lines[:1]
