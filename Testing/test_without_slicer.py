"""The engine process needs no MRML: every command runs where ``import slicer`` fails and writes its results
as files by role; the panel's loader then makes nodes of them on slicer-core, on the input's grid.

Inside 3D Slicer the engine runs in ``PythonSlicer``, whose ``slicer`` package lacks the module logics
a scene needs, and a pip install without the ``scene`` extra has no ``slicer`` at all: here one child
process stands for both, with ``sys.modules["slicer"] = None`` before anything is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import vtk

from latentdrift.bridge import console
from latentdrift.bridge.scene import find_nodes, load_volume_node
from latentdrift.core.settings import SegmentSettings, counterfactual_settings
from latentdrift.fixtures.tiny_models import build_tiny_sd
from latentdrift.segmentation.ldseg import LabelClass, LDSegNetwork, save_ldseg_model, tiny_config

TOL = 1e-6
CSF = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^65216001^Cerebrospinal fluid~^^~Anatomic codes - DICOM master list~^^~^^"
)
CLASSES = (
    LabelClass("background", (0, 0, 0)),
    LabelClass("Cerebrospinal fluid", (85, 188, 255), CSF),
    LabelClass("tissue", (200, 200, 215)),
)
WITHOUT_SLICER = """
import json, sys
sys.modules["slicer"] = None  # from here on, `import slicer` raises ImportError
from latentdrift.cli import main

for argv in json.loads(sys.argv[1]):
    status = main(argv)
    if status != 0:
        sys.exit(f"{argv[0]} exited with {status}")
assert sys.modules["slicer"] is None, "something replaced the blocked slicer module"
print("done without slicer")
"""
ROLES = {
    "scene": {"volume", "summary"},
    "segment": {"segmentation", "uncertainty", "probability", "preview", "summary"},
    "counterfactual": {"counterfactual", "difference", "preview", "summary"},
    "generate": {"image", "volume", "summary"},
    "demo": {"segmentation", "uncertainty", "counterfactual", "difference", "preview", "summary"},
}


def _run_every_command(root: Path, default_models: Path) -> dict[str, Path]:
    """Every command, run once in one process without ``slicer``; their result folders by command."""
    from conftest import oblique_direction, write_image

    k, j, i = np.meshgrid(np.arange(9), np.arange(11), np.arange(13), indexing="ij")
    voxels = (100 * np.exp(-((k - 4) ** 2 / 8 + (j - 5) ** 2 / 10 + (i - 6) ** 2 / 12))).astype(np.float32)
    cohort = root / "cohort"
    cohort.mkdir()
    image = write_image(
        cohort / "oblique.nrrd", voxels, (0.7, 1.3, 2.5), (12.5, -30.25, 7.0), oblique_direction()
    )
    ldseg = save_ldseg_model(LDSegNetwork(replace(tiny_config(), classes=CLASSES)), root / "ldseg")
    editor, sd = build_tiny_sd(root / "ip2p", instruct=True), build_tiny_sd(root / "sd")
    out = {name: root / "out" / name for name in (*ROLES, "batch")}

    def command(name: str, *arguments: str) -> list[str]:
        return [name, *arguments, "--output", str(out[name]), "--device", "cpu", "--quiet"]

    commands = [
        command("scene", str(image)),
        command(
            "segment", str(image), "--model", str(ldseg), "--samples", "2", "--steps", "2", "--probabilities"
        ),
        command(
            "counterfactual",
            str(image),
            "--model",
            str(editor),
            "--from",
            "age=70,dx=CN",
            "--to",
            "age=75",
            "--steps",
            "2",
            "--slices",
            "1:3",
        ),
        command("generate", "--model", str(sd), "--attributes", "age=77", "--count", "1", "--steps", "2"),
        command("demo", str(image), "--steps", "2", "--slices", "1:3"),
        command("batch", "segment", str(cohort), "--model", str(ldseg), "--samples", "1", "--steps", "1"),
    ]
    env = {**os.environ, "LATENTDRIFT_DEFAULT_MODELS": str(default_models)}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_SLICER, json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("done without slicer")
    return {**out, "input": image, "ldseg": ldseg}


def _listed(summary: dict, role: str) -> list[str]:
    value = summary["outputs"].get(role, [])
    return [value] if isinstance(value, str) else value


def test_every_command_runs_without_slicer_and_the_panel_loads_its_files(
    tmp_path: Path, default_models: Path, session
) -> None:
    """One test, so that the one child process running every command runs once (not once per xdist worker)."""
    runs = _run_every_command(tmp_path, default_models)
    for command, roles in ROLES.items():
        _check_files_by_role(runs[command], roles)
    batch = json.loads((runs["batch"] / "oblique" / "summary.json").read_text())
    assert {"segmentation", "uncertainty"} <= set(batch["outputs"])
    _check_the_panels_loader(runs, session)


def _check_files_by_role(out: Path, roles: set[str]) -> None:
    """The roles written, each file there, no scene (nor its input copy), the segmentation a .seg.nrrd."""
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["outputs"]) == roles, out.name
    for role in summary["outputs"]:
        assert all((out / name).is_file() for name in _listed(summary, role))
    if "segmentation" in roles:
        (segmentation,) = _listed(summary, "segmentation")
        assert segmentation.endswith(".seg.nrrd")


def _matrix(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _check_the_panels_loader(runs: dict[str, Path], session) -> None:
    """What the panel does with a run's folder, on slicer-core: nodes on the input's geometry, named,
    coloured segments with their terminology."""
    node = load_volume_node(session, runs["input"])
    run = console.prepare(node, SegmentSettings(), session=session, output=runs["segment"])
    result = console.as_segment_result(run.load(json.loads((runs["segment"] / "summary.json").read_text())))
    run.cleanup()
    for loaded in (result.uncertainty_node, *result.probability_nodes):
        assert np.allclose(_matrix(loaded), _matrix(node), atol=TOL)
    segments = result.segmentation_node.GetSegmentation()
    names = [segments.GetNthSegment(n).GetName() for n in range(segments.GetNumberOfSegments())]
    assert names == ["Cerebrospinal fluid", "tissue"]
    csf = segments.GetNthSegment(0)
    assert csf.GetColor() == pytest.approx((85 / 255, 188 / 255, 1.0)) and csf.GetTerminology() == CSF
    to_world = vtk.vtkMatrix4x4()
    csf.GetRepresentation("Binary labelmap").GetImageToWorldMatrix(to_world)
    assert np.allclose(
        [[to_world.GetElement(r, c) for c in range(4)] for r in range(4)], _matrix(node), atol=TOL
    )

    settings = counterfactual_settings(instruction="older")
    run = console.prepare(node, settings, fade=0.6, session=session, output=runs["counterfactual"])
    edited = console.as_counterfactual_result(
        run.load(json.loads((runs["counterfactual"] / "summary.json").read_text()))
    )
    run.cleanup()
    for loaded in (edited.counterfactual_node, edited.difference_node):
        assert np.allclose(_matrix(loaded), _matrix(node), atol=TOL)
    composite = find_nodes(session, "vtkMRMLSliceCompositeNode")[0]
    assert composite.GetForegroundVolumeID() == edited.counterfactual_node.GetID()


def test_a_scene_asked_for_without_slicer_fails_before_any_work(tmp_path: Path, oblique_nifti: Path) -> None:
    code = WITHOUT_SLICER.replace("status != 0", "status != 2")
    argv = [["scene", str(oblique_nifti), "--scene", "yes", "--output", str(tmp_path / "out")]]
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    error = done.stderr.strip()
    assert error.startswith("latentdrift: error: Cannot write the Slicer scene") and "\n" not in error
    assert not (tmp_path / "out").exists()
