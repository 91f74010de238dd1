"""The template's tissue prior: its maps, the weighting formula, the config rule, and its run on a head."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from latentdrift.cli import main
from latentdrift.core.errors import ModelError, ParameterError
from latentdrift.core.models import default_model
from latentdrift.core.volumes import read_volume, volume_from_sitk, volume_to_sitk, write_volume
from latentdrift.fixtures.synthetic import (
    GREY_MATTER,
    WHITE_MATTER,
    SubjectSettings,
    brain_tissue_template,
    labels_on_head,
    synthetic_head,
    synthetic_subject,
)
from latentdrift.frontend import BRAIN_T1
from latentdrift.frontend.alignment import model_grid
from latentdrift.frontend.contract import TEMPLATE_TISSUES
from latentdrift.frontend.tasks import TISSUE_PRIOR_PROGRESS
from latentdrift.frontend.tissue_prior import subject_prior, tissue_channels, weighted_probabilities
from latentdrift.segmentation.ldseg import LDSegNetwork, load_ldseg_model, save_ldseg_model, tiny_config
from latentdrift.segmentation.seg_files import read_segmentation_file

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("Background", *TEMPLATE_TISSUES)
CONTRACT = replace(BRAIN_T1, spacing_mm=3.0)
FAST = ["--device", "cpu", "--quiet", "--scene", "no", "--samples", "1"]


def test_the_prior_follows_a_deformed_brain_far_better_than_the_template_itself() -> None:
    """A synthetic subject is the template deformed: the warped prior must find its tissues where they went."""
    grid = model_grid(3.0)
    image, labels = synthetic_subject(1004, SubjectSettings(spacing_mm=3.0))
    brain = volume_from_sitk(sitk.Resample(volume_to_sitk(image), grid))
    truth = sitk.GetArrayFromImage(
        sitk.Resample(volume_to_sitk(labels), grid, interpolator=sitk.sitkNearestNeighbor)
    )
    template = sitk.GetArrayFromImage(
        sitk.Resample(volume_to_sitk(brain_tissue_template()[1]), grid, interpolator=sitk.sitkNearestNeighbor)
    )
    prior = subject_prior(brain)
    assert prior.shape == (3, *brain.voxels.shape) and prior.dtype == np.float32
    assert prior.min() >= 0 and prior.sum(axis=0).max() <= 1 + 1e-5
    inside = truth > 0
    warped_agrees = np.mean(prior.argmax(axis=0)[inside] + 1 == truth[inside])
    assert warped_agrees > 0.88 and warped_agrees > np.mean(template[inside] == truth[inside]) + 0.08
    assert prior[:, brain.voxels == 0].sum(axis=0).mean() < 0.1  # little prior where there is no brain


def test_weighting_keeps_the_background_and_sums_and_moves_an_undecided_voxel_towards_the_prior() -> None:
    # voxels: undecided grey/white, sure white matter, background, no tissue at all
    probabilities = np.array(
        [[0.2, 0.0, 0.9, 1.0], [0.0, 0.0, 0.05, 0.0], [0.4, 0.02, 0.03, 0.0], [0.4, 0.98, 0.02, 0.0]],
        np.float32,
    )
    prior = np.array([[0.1, 0.0, 0.0, 0.3], [0.2, 0.9, 0.5, 0.4], [0.7, 0.1, 0.5, 0.3]], np.float32)
    weighted = weighted_probabilities(probabilities, prior, [1, 2, 3], 1.0)
    np.testing.assert_allclose(weighted.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(weighted[0], probabilities[0])
    assert weighted[3, 0] > weighted[2, 0]  # undecided: the prior says white matter
    assert weighted[3, 1] > 0.5  # the model is sure: a prior of 0.1 against it is a penalty, not a veto
    np.testing.assert_array_equal(weighted[1:, 3], 0.0)  # no tissue stays no tissue
    np.testing.assert_array_equal(weighted_probabilities(probabilities, prior, [1, 2, 3], 0.0), probabilities)


def test_a_model_without_the_templates_tissues_cannot_ask_for_the_prior() -> None:
    with pytest.raises(ModelError, match="'Cerebrospinal fluid'"):
        tissue_channels(["Background", "CSF", "GM", "WM"])
    assert tissue_channels(["Background", "White matter", "Grey matter", "Cerebrospinal fluid"]) == [3, 2, 1]
    config = tiny_config(CLASSES)
    with pytest.raises(ParameterError, match="tissue_prior_weight above 0 needs input space 'mni152'"):
        replace(config, tissue_prior_weight=0.5)
    with pytest.raises(ParameterError, match="tissue_prior_weight must be from 0"):
        replace(config, input=CONTRACT, tissue_prior_weight=-1.0)
    document = replace(config, input=CONTRACT).to_dict()
    del document["tissue_prior_weight"]
    assert type(config).from_dict(document).tissue_prior_weight == 0.0  # configs written before it


def test_the_bundled_model_uses_the_weight_its_benchmark_chose() -> None:
    chosen = json.loads((REPO / "benchmarks/realhead/tissue-prior.json").read_text(encoding="utf-8"))
    config = load_ldseg_model(default_model("segment").path).config
    assert config.tissue_prior_weight == chosen["chosen_weight"] > 0


def test_segment_weights_the_prior_in_records_it_and_leaves_it_out_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An untrained model is undecided everywhere, so with a strong prior its labels follow the template."""
    image, labels = synthetic_subject(1003, SubjectSettings(spacing_mm=2.5))
    head, _ = synthetic_head(image, labels, seed=1003)
    head_path = write_volume(head, tmp_path / "head.nrrd")
    config = replace(tiny_config(CLASSES), input=CONTRACT, tissue_prior_weight=8.0)
    model = save_ldseg_model(LDSegNetwork(config), tmp_path / "model")
    truth = labels_on_head(labels, head)
    runs = {}
    for name, flags in (("prior", ["--progress-json"]), ("none", ["--no-tissue-prior"])):
        out = tmp_path / name
        argv = ["segment", str(head_path), "--model", str(model), "--output", str(out), *flags, *FAST]
        assert main(argv) == 0
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        runs[name] = (summary, read_segmentation_file(out / "segmentation.seg.nrrd")[0].voxels)
    said = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    prior_progress = [(e["done"], e["total"]) for e in said if e.get("message") == TISSUE_PRIOR_PROGRESS]
    assert prior_progress == [(0, 1), (1, 1)]  # the registration's seconds are not silent, and end done
    steps = {s["name"]: s for s in runs["prior"][0]["front_end"]["steps"]}
    assert steps["tissue_prior"]["weight"] == 8.0 and "MNI152" in steps["tissue_prior"]["atlas"]
    assert "demons" in steps["tissue_prior"]["registration"]
    assert "tissue_prior" not in {s["name"] for s in runs["none"][0]["front_end"]["steps"]}

    def agreement(found: np.ndarray) -> float:
        both = (truth > 0) & (found > 0)
        tissue = np.isin(truth, (GREY_MATTER, WHITE_MATTER)) & both
        return float(np.mean(found[tissue] == truth[tissue]))

    assert agreement(runs["prior"][1]) > 0.7
    assert agreement(runs["prior"][1]) > agreement(runs["none"][1]) + 0.2
    assert read_volume(head_path).voxels.tobytes() == head.voxels.tobytes()
