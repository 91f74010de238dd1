"""The `latentdrift` command: real files in, a real scene out; bad input fails cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_image

from latentdrift.bridge.scene import find_nodes, load_scene, node_to_volume
from latentdrift.cli import main
from latentdrift.core.volumes import read_volume

TOL = 1e-6


def test_scene_on_oblique_anisotropic_nifti_keeps_geometry_and_voxels(
    oblique_nifti: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main(["scene", str(oblique_nifti), "--output", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "scene"
    assert set(summary["outputs"]) >= {"scene", "scene_bundle", "input", "volume", "summary"}
    original = read_volume(oblique_nifti)
    written = read_volume(out / summary["outputs"]["volume"])
    assert np.array_equal(written.voxels, original.voxels)
    assert np.allclose(written.geometry.spacing, original.geometry.spacing, atol=TOL, rtol=0)
    assert np.allclose(written.geometry.origin, original.geometry.origin, atol=TOL, rtol=0)
    assert np.allclose(written.geometry.direction, original.geometry.direction, atol=TOL, rtol=0)
    for scene_file in (summary["outputs"]["scene"], summary["outputs"]["scene_bundle"]):
        nodes = find_nodes(load_scene(out / scene_file), "vtkMRMLScalarVolumeNode")
        assert len(nodes) == 2
        for node in nodes:
            assert node_to_volume(node).geometry.is_close(original.geometry, TOL)


def test_scene_with_several_inputs_and_a_slice_range(oblique_nifti: Path, tmp_path: Path, rng) -> None:
    second = write_image(
        tmp_path / "second.mha", rng.normal(size=(6, 7, 8)).astype(np.float32), spacing=(1, 1, 3)
    )
    out = tmp_path / "out"
    args = [
        "scene",
        str(oblique_nifti),
        str(second),
        "--axis",
        "sagittal",
        "--slices",
        "1:4",
        "-o",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["outputs"]["volume"]) == 2
    assert all(f["max_abs_difference"] == 0.0 for f in summary["figures"].values())


def test_info_reports_versions_devices_and_models(capsys) -> None:
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["packages"]["torch"] != "not installed"
    assert any(d["name"] == "cpu" for d in report["devices"])
    assert isinstance(report["models"], list)


def _bad_inputs(tmp_path: Path, rng) -> dict[str, tuple[list[str], str]]:
    """name → (command arguments before --output, words the one-line error must contain)."""
    junk = tmp_path / "junk.nii.gz"
    junk.write_text("not an image")
    sitk.WriteImage(
        sitk.GetImageFromArray(rng.normal(size=(4, 5, 6, 7)).astype(np.float32), isVector=False),
        str(tmp_path / "s.nii.gz"),
    )
    sitk.WriteImage(
        sitk.GetImageFromArray(rng.normal(size=(4, 5, 6, 3)).astype(np.float32), isVector=True),
        str(tmp_path / "v.nrrd"),
    )
    sitk.WriteImage(
        sitk.GetImageFromArray(rng.normal(size=(8, 8)).astype(np.float32)), str(tmp_path / "flat.nrrd")
    )
    nan = rng.normal(size=(4, 5, 6)).astype(np.float32)
    nan[0, 0, 0] = np.nan
    write_image(tmp_path / "nan.nrrd", nan)
    write_image(tmp_path / "label.nrrd", rng.integers(0, 3, size=(6, 6, 6)).astype(np.uint8))
    write_image(tmp_path / "constant.nrrd", np.full((4, 4, 4), 3.0, np.float32))
    good = write_image(tmp_path / "good.nrrd", rng.normal(size=(4, 5, 6)).astype(np.float32))
    return {
        "missing": (["scene", str(tmp_path / "absent.nii.gz")], "does not exist"),
        "unreadable": (["scene", str(junk)], "Cannot read"),
        "4d": (["scene", str(tmp_path / "s.nii.gz")], "4D series"),
        "vector": (["scene", str(tmp_path / "v.nrrd")], "vector volume"),
        "2d": (["scene", str(tmp_path / "flat.nrrd")], "2D image"),
        "nan": (["scene", str(tmp_path / "nan.nrrd")], "NaN"),
        "label map": (["scene", str(tmp_path / "label.nrrd")], "label map"),
        "constant": (["scene", str(tmp_path / "constant.nrrd")], "constant"),
        "slice range": (["scene", str(good), "--slices", "2:99"], "outside the volume"),
        "unknown device": (["scene", str(good), "--device", "tpu"], "Unknown device"),
        "absent cuda": (["scene", str(good), "--device", "cuda:0"], "CUDA"),
    }


BAD_CASES = [
    "missing",
    "unreadable",
    "4d",
    "vector",
    "2d",
    "nan",
    "label map",
    "constant",
    "slice range",
    "unknown device",
    "absent cuda",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_with_one_line_and_no_output(case: str, tmp_path: Path, rng, capsys) -> None:
    arguments, words = _bad_inputs(tmp_path, rng)[case]
    if case == "absent cuda" and _has_cuda():
        pytest.skip("this machine has a CUDA GPU")
    out = tmp_path / "results" / "out"
    status = main([*arguments, "--output", str(out)])
    captured = capsys.readouterr()
    assert status != 0
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("latentdrift: error: ") and words in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()
    assert list((tmp_path / "results").iterdir()) == [] if (tmp_path / "results").exists() else True


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    """The console script as a user runs it: exit status and stderr of a real process."""
    command = [
        str(Path(sys.executable).with_name("latentdrift")),
        "scene",
        str(tmp_path / "absent.nrrd"),
        "-o",
        str(tmp_path / "o"),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"latentdrift: error: Input '{tmp_path / 'absent.nrrd'}' does not exist: check the path."
    ]
    debug = subprocess.run([*command, "--debug"], capture_output=True, text=True, timeout=120)
    assert "Traceback" in debug.stderr
