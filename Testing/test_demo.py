"""`latentdrift demo`: segmentation + counterfactual with the default models in one command, atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentdrift.bridge.scene import find_nodes, load_scene
from latentdrift.cli import main
from latentdrift.core.volumes import read_volume

FAST = ["--slices", "90:92", "--steps", "2", "--device", "cpu", "--quiet"]


def test_demo_on_the_sample_writes_both_results_and_a_summary_of_both(
    tiny_defaults: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sample"
    assert main(["demo", "sample:mni152-t1", *FAST, "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "demo"
    assert summary["results"] == {
        "segmentation": "segmentation/summary.json",
        "counterfactual": "counterfactual/summary.json",
    }
    assert summary["inputs"]["model"] == str(tiny_defaults / "brain-mri-instruct")
    assert summary["inputs"]["segmentation_model"] == str(tiny_defaults / "brain-tissue-ldseg")
    assert summary["settings"]["drift"] == 0.05 and not summary["settings"]["drift_start"]  # the editor's δ
    assert summary["settings"]["guidance"] == 3.0  # and its guidance
    assert summary["settings"]["source"]["diagnosis"] == "CN" and summary["settings"]["target"]["age"] == 75
    parts = {part: json.loads((out / path).read_text()) for part, path in summary["results"].items()}
    assert (
        parts["segmentation"]["command"] == "segment"
        and parts["counterfactual"]["command"] == "counterfactual"
    )
    assert parts["counterfactual"]["settings"]["text"].startswith("Age this CN 70 years old")
    for part, own in parts.items():
        assert summary["figures"][part] == own["figures"]
        assert (out / part / own["outputs"]["preview"]).stat().st_size > 10_000
    listed = [
        name
        for names in summary["outputs"].values()
        for name in ([names] if isinstance(names, str) else names)
    ]
    assert all((out / name).is_file() for name in listed)
    assert sorted(p.name for p in out.iterdir()) == ["counterfactual", "segmentation", "summary.json"]
    source = read_volume(out / summary["outputs"]["input"][0])
    for role in ("segmentation", "uncertainty", "counterfactual", "difference"):
        assert read_volume(out / summary["outputs"][role]).voxels.shape == source.voxels.shape
    for scene in summary["outputs"]["scene"]:
        assert len(find_nodes(load_scene(out / scene), "vtkMRMLScalarVolumeNode")) >= 2


BAD_RUNS = {
    "missing input": (["demo", "{tmp}/none.nii.gz"], "none.nii.gz"),
    "bad slice range": (["demo", "{input}", "--slices", "50:60"], "slice"),
    "bad attributes": (["demo", "{input}", "--to", "height=180"], "height=180"),
    "bad drift": (["demo", "{input}", "--drift", "a,b"], "Cannot read drift"),
    "drift channels": (["demo", "{input}", "--drift", "0.1,0.2"], "4 channels"),  # after the segmentation
    "unknown sample": (["demo", "sample:nope"], "Unknown sample"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_bad_demo_runs_fail_with_one_line_and_write_nothing(
    case: str, tiny_defaults: Path, oblique_nifti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args, message = BAD_RUNS[case]
    args = [a.format(tmp=tmp_path, input=oblique_nifti) for a in args]
    out = tmp_path / "results" / "demo"
    assert main([*args, "--steps", "2", "--device", "cpu", "--quiet", "--output", str(out)]) != 0
    error = capsys.readouterr().err.strip()
    assert error.startswith("latentdrift: error:") and "\n" not in error and message in error
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_demo_without_the_default_models_says_how_to_get_them(
    no_models: Path, oblique_nifti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "results" / "demo"
    assert main(["demo", str(oblique_nifti), *FAST, "--output", str(out)]) == 4
    error = capsys.readouterr().err.strip()
    assert "brain-tissue-ldseg" in error and "\n" not in error and not out.parent.exists()
