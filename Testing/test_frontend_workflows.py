"""The brain front end through the commands: a head in, results on the head's own grid out, by role.

Tiny random models that declare a brain contract stand in for the bundled ones (the front end does not
care what the model learnt); the head is a synthetic subject inside a simulated skull and scalp, so its
brain is known. ``test_frontend.py`` holds the step-level tests.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from latentdrift.cli import main
from latentdrift.core.volumes import read_volume, write_volume
from latentdrift.finetune.metadata import update_metadata
from latentdrift.fixtures.synthetic import SubjectSettings, synthetic_head, synthetic_subject
from latentdrift.fixtures.tiny_models import build_tiny_sd
from latentdrift.frontend import BRAIN_T1
from latentdrift.segmentation.ldseg import LDSegNetwork, save_ldseg_model, tiny_config
from latentdrift.segmentation.seg_files import read_segmentation_file

CONTRACT = replace(BRAIN_T1, spacing_mm=3.0)
FAST = ["--device", "cpu", "--quiet", "--scene", "no"]


@pytest.fixture(scope="module")
def head_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A synthetic head (2.5 mm) as NRRD, and its true brain mask."""
    image, labels = synthetic_subject(1002, SubjectSettings(spacing_mm=2.5))
    head, mask = synthetic_head(image, labels, seed=1002)
    path = write_volume(head, tmp_path_factory.mktemp("head") / "head.nrrd")
    return path, mask.voxels > 0


@pytest.fixture(scope="module")
def brain_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LDSeg model and a tiny InstructPix2Pix editor, both declaring a T1 brain contract."""
    root = tmp_path_factory.mktemp("brain-models")
    config = replace(tiny_config(("background", "CSF", "GM", "WM")), input=CONTRACT)
    ldseg = save_ldseg_model(LDSegNetwork(config), root / "ldseg")
    editor = build_tiny_sd(root / "editor", instruct=True)
    update_metadata(editor, input=CONTRACT.to_dict())
    return {"ldseg": ldseg, "editor": editor}


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def test_segment_on_a_head_writes_the_brain_mask_and_labels_only_the_brain(
    head_file: tuple[Path, np.ndarray], brain_models: dict[str, Path], tmp_path: Path
) -> None:
    path, truth = head_file
    out = tmp_path / "segment"
    argv = [
        "segment",
        str(path),
        "--model",
        str(brain_models["ldseg"]),
        "--samples",
        "2",
        "--output",
        str(out),
    ]
    assert main([*argv, *FAST]) == 0
    summary = _summary(out)
    assert summary["outputs"]["brain_mask"] == "brain_mask.seg.nrrd"
    assert [s["name"] for s in summary["front_end"]["steps"]] == [
        "checks",
        "bias_correction",
        "brain_extraction",
        "alignment",
    ]
    assert summary["front_end"]["brain_volume_ml"] > 500
    source = read_volume(path)
    mask_labels, mask_segments = read_segmentation_file(out / "brain_mask.seg.nrrd")
    assert [s.name for s in mask_segments] == ["Brain"] and "12738006" in mask_segments[0].terminology
    assert mask_labels.geometry.is_close(source.geometry, 1e-6)
    brain = mask_labels.voxels > 0
    assert 2 * (brain & truth).sum() / (brain.sum() + truth.sum()) > 0.9
    labels, _ = read_segmentation_file(out / "segmentation.seg.nrrd")
    uncertainty = read_volume(out / "uncertainty.nrrd")
    assert labels.geometry.is_close(source.geometry, 1e-6) and uncertainty.geometry.is_close(
        source.geometry, 1e-6
    )
    assert np.all(labels.voxels[~brain] == 0) and np.all(labels.voxels[brain] > 0)
    assert np.all(uncertainty.voxels[~brain] == 0)


def test_a_counterfactual_of_a_head_changes_nothing_far_from_the_brain(
    head_file: tuple[Path, np.ndarray], brain_models: dict[str, Path], tmp_path: Path
) -> None:
    path, _ = head_file
    out = tmp_path / "counterfactual"
    argv = [
        "counterfactual",
        str(path),
        "--model",
        str(brain_models["editor"]),
        "--from",
        "age=70,dx=CN",
        "--to",
        "age=78,dx=AD",
        "--steps",
        "2",
        "--output",
        str(out),
    ]
    assert main([*argv, *FAST]) == 0
    source = read_volume(path)
    edited = read_volume(out / "counterfactual.nrrd")
    mask, _ = read_segmentation_file(out / "brain_mask.seg.nrrd")
    distance = ndimage.distance_transform_edt(mask.voxels == 0, sampling=source.geometry.spacing[::-1])
    changed = edited.voxels != source.voxels
    assert changed.any()
    assert not (changed & (distance > 3.0)).any()
    assert _summary(out)["front_end"]["steps"][-1]["name"] == "alignment"


def test_no_preprocess_gives_the_model_the_volume_as_loaded(
    head_file: tuple[Path, np.ndarray], brain_models: dict[str, Path], tmp_path: Path
) -> None:
    path, _ = head_file
    out = tmp_path / "plain"
    argv = [
        "segment",
        str(path),
        "--model",
        str(brain_models["ldseg"]),
        "--samples",
        "1",
        "--output",
        str(out),
    ]
    assert main([*argv, "--no-preprocess", *FAST]) == 0
    summary = _summary(out)
    assert "brain_mask" not in summary["outputs"] and "front_end" not in summary
    assert summary["settings"]["front_end"]["enabled"] is False


def test_steps_turned_off_are_recorded_with_a_warning(
    head_file: tuple[Path, np.ndarray], brain_models: dict[str, Path], tmp_path: Path
) -> None:
    path, _ = head_file
    out = tmp_path / "no-n4"
    argv = [
        "segment",
        str(path),
        "--model",
        str(brain_models["ldseg"]),
        "--samples",
        "1",
        "--output",
        str(out),
    ]
    assert main([*argv, "--no-bias-correction", "--no-alignment", *FAST]) == 0
    summary = _summary(out)
    assert [s["name"] for s in summary["front_end"]["steps"]] == ["checks", "brain_extraction"]
    assert any("bias field" in w for w in summary["warnings"])


def test_a_ct_given_to_a_brain_model_is_refused_in_one_line(
    head_file: tuple[Path, np.ndarray], brain_models: dict[str, Path], tmp_path: Path, capsys
) -> None:
    head = read_volume(head_file[0])
    ct = write_volume(
        head.with_voxels(np.where(head.voxels > 30, 40.0, -1000.0).astype(np.float32)), tmp_path / "ct.nrrd"
    )
    out = tmp_path / "ct-out"
    argv = ["segment", str(ct), "--model", str(brain_models["ldseg"]), "--output", str(out)]
    assert main([*argv, *FAST]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "looks like a CT" in error[0]
    assert not out.exists()
