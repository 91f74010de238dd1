"""The brain front end on real files: synthetic heads with known brains, the bundled real head, bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from latentdrift.core.errors import InputError, LabelMapGivenError, ModelError, ParameterError
from latentdrift.core.settings import FrontEndSettings
from latentdrift.core.volumes import Geometry, Volume, resample_volume, volume_from_sitk
from latentdrift.counterfactual.volume_editing import VolumeCounterfactual
from latentdrift.fixtures.synthetic import (
    SubjectSettings,
    brain_tissue_template,
    synthetic_head,
    synthetic_subject,
)
from latentdrift.frontend import BRAIN_T1, NATIVE, InputContract, read_contract
from latentdrift.frontend.alignment import model_grid
from latentdrift.frontend.bias_field import correct_bias_field, head_mask
from latentdrift.frontend.head import PreparedHead, prepare_head
from latentdrift.frontend.recognise import recognise, refuse_unless_head_sized
from latentdrift.frontend.tasks import FEATHER_MM, counterfactual_on_input, segmentation_on_input
from latentdrift.segmentation.volume_segmentation import VolumeSegmentation

CPU = torch.device("cpu")
CONTRACT = replace(BRAIN_T1, spacing_mm=3.0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.fixture(scope="module")
def head() -> tuple[Volume, np.ndarray]:
    """A synthetic subject (2 mm) inside a simulated skull and scalp, and its true brain mask."""
    image, labels = synthetic_subject(1001, SubjectSettings(spacing_mm=2.0))
    volume, mask = synthetic_head(image, labels, seed=1001)
    return volume, mask.voxels > 0


@pytest.fixture(scope="module")
def prepared(head: tuple[Volume, np.ndarray]) -> PreparedHead:
    return prepare_head(head[0], CONTRACT, FrontEndSettings(), CPU)


# --------------------------------------------------------------------------- contracts


def test_a_contract_round_trips_and_refuses_what_it_does_not_know() -> None:
    assert InputContract.from_dict(BRAIN_T1.to_dict()) == BRAIN_T1
    assert InputContract.from_dict({}) == NATIVE
    with pytest.raises(ParameterError, match="unknown key 'skull'"):
        InputContract.from_dict({"skull": True})
    with pytest.raises(ParameterError, match="'space' is 'talairach'"):
        InputContract.from_dict({"space": "talairach"})
    with pytest.raises(ParameterError, match="spacing_mm 0"):
        InputContract(spacing_mm=0.0)
    assert NATIVE.is_brain_model is False and BRAIN_T1.is_brain_model is True


def test_models_declare_their_contract_in_their_own_config(tmp_path: Path) -> None:
    ldseg = tmp_path / "ldseg"
    ldseg.mkdir()
    (ldseg / "config.json").write_text(
        json.dumps({"format": "latentdrift-ldseg", "input": CONTRACT.to_dict()})
    )
    diffusers = tmp_path / "sd"
    diffusers.mkdir()
    (diffusers / "latentdrift.json").write_text(json.dumps({"drift": 0.05, "input": {"modality": "T1"}}))
    plain = tmp_path / "plain"
    plain.mkdir()
    assert read_contract(ldseg) == CONTRACT
    assert read_contract(diffusers) == InputContract(modality="T1")
    assert read_contract(plain) == NATIVE
    (plain / "latentdrift.json").write_text(json.dumps({"input": {"space": "moon"}}))
    with pytest.raises(ModelError, match=r"latentdrift\.json: Input contract: 'space' is 'moon'"):
        read_contract(plain)


def test_the_bundled_brain_models_declare_brain_contracts() -> None:
    from latentdrift.core.models import default_model

    for task in ("segment", "instruct", "img2img"):
        contract = read_contract(default_model(task).path)
        assert contract.modality == "T1" and contract.skull_stripped and contract.space == "mni152", task


# --------------------------------------------------------------------------- what the input already is


def test_a_skull_stripped_brain_is_recognised_and_a_head_is_not(head: tuple[Volume, np.ndarray]) -> None:
    template, _ = brain_tissue_template()
    found = recognise(template)
    assert found.skull_stripped
    assert found.foreground is not None and dice(found.foreground, template.voxels > 0) == 1.0
    assert not recognise(head[0]).skull_stripped


def test_inputs_no_brain_model_can_use_are_refused_with_a_reason(head: tuple[Volume, np.ndarray]) -> None:
    volume = head[0]
    ct = volume.with_voxels(np.where(volume.voxels > 30, 40.0, -1000.0).astype(np.float32))
    with pytest.raises(InputError, match="looks like a CT"):
        refuse_unless_head_sized(ct)
    slab = Volume(volume.voxels[40:41].copy(), volume.geometry, "one slice")
    with pytest.raises(InputError, match="only 1 slice"):
        refuse_unless_head_sized(slab)
    tiny = Volume(volume.voxels, Geometry((0.2, 0.2, 0.2), (0.0, 0.0, 0.0)), "tiny")
    with pytest.raises(InputError, match="too small for a head"):
        refuse_unless_head_sized(tiny)
    labels = volume.with_voxels((volume.voxels > 100).astype(np.uint8))
    with pytest.raises(LabelMapGivenError):
        prepare_head(labels, CONTRACT, FrontEndSettings(), CPU)


# --------------------------------------------------------------------------- steps


def test_n4_removes_most_of_a_known_bias_field() -> None:
    template, labels = brain_tissue_template()
    small = resample_volume(template, (3.0, 3.0, 3.0))
    white = (
        resample_volume(labels.with_voxels((labels.voxels == 3).astype(np.float32)), (3.0, 3.0, 3.0)).voxels
        > 0.5
    )
    k = np.linspace(-1.0, 1.0, small.voxels.shape[0])[:, None, None]
    field = np.broadcast_to(np.exp(0.25 * k + 0.15 * k**2), small.voxels.shape).astype(np.float32)
    biased = small.with_voxels(small.voxels * field)
    corrected, estimate = correct_bias_field(biased, head_mask(biased))

    def spread(voxels: np.ndarray) -> float:
        return float(voxels[white].std() / voxels[white].mean())

    assert spread(corrected.voxels) < 0.6 * spread(biased.voxels)
    assert np.corrcoef(np.log(estimate[white]), np.log(field[white]))[0, 1] > 0.9
    assert np.isclose(estimate[head_mask(biased)].mean(), 1.0, atol=1e-3)


def test_the_front_end_finds_the_brain_of_a_synthetic_head(
    head: tuple[Volume, np.ndarray], prepared: PreparedHead
) -> None:
    volume, truth = head
    assert prepared.brain_mask is not None
    assert dice(prepared.brain_mask, truth) >= 0.93
    names = [step.name for step in prepared.steps]
    assert names == ["checks", "bias_correction", "brain_extraction", "alignment"]
    record = prepared.record()
    assert record["brain_volume_ml"] == pytest.approx(truth.sum() * 8 / 1000, rel=0.1)
    assert all(step["seconds"] >= 0 for step in record["steps"])
    assert record["steps"][3]["correlation"] > 0.6
    assert prepared.source is volume  # the input is kept as it is, never modified


def test_an_empty_field_of_view_around_the_head_does_not_change_its_brain_mask(
    head: tuple[Volume, np.ndarray], prepared: PreparedHead
) -> None:
    """deepbet sees the head cropped to its box: 80 mm of empty border around it give the same mask."""
    from latentdrift.frontend.brain_extraction import extract_brain

    volume, _ = head
    pad = 40
    geometry = volume.geometry
    shift = np.asarray(geometry.direction) @ (np.asarray(geometry.spacing) * pad)
    padded = Volume(
        np.pad(prepared.corrected.voxels, pad),
        replace(geometry, origin=tuple(np.asarray(geometry.origin) - shift)),
    )
    mask = extract_brain(padded, CPU)
    assert mask.sum() == mask[pad:-pad, pad:-pad, pad:-pad].sum()  # nothing in the border
    assert prepared.brain_mask is not None
    assert dice(mask[pad:-pad, pad:-pad, pad:-pad], prepared.brain_mask) >= 0.99


def test_the_model_sees_the_brain_on_its_grid_and_results_come_back_on_the_input_grid(
    head: tuple[Volume, np.ndarray], prepared: PreparedHead
) -> None:
    volume, truth = head
    seen = prepared.model_input(CONTRACT)
    grid = model_grid(CONTRACT.spacing_mm)
    assert seen.voxels.shape == tuple(reversed(grid.GetSize()))
    assert seen.geometry.is_close(volume_from_sitk(grid).geometry)
    back = prepared.to_input_grid(seen)
    assert back.shape == volume.voxels.shape
    # the brain went to the template and came back: it overlaps the brain it came from
    assert dice(back > 0.1 * back.max(), truth) > 0.85


def test_an_anisotropic_coronal_oblique_head_works_and_comes_back_on_its_exact_grid(
    head: tuple[Volume, np.ndarray],
) -> None:
    volume, truth = head
    coronal = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # i: R→L, j: I→S… rows S→I
    angle = np.radians(12.0)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    resliced = resample_volume(volume, (2.0, 2.0, 3.0), tilt @ coronal)
    mask = (
        resample_volume(volume.with_voxels(truth.astype(np.float32)), (2.0, 2.0, 3.0), tilt @ coronal).voxels
        > 0.5
    )
    result = prepare_head(resliced, CONTRACT, FrontEndSettings(), CPU)
    assert result.brain_mask is not None and result.brain_mask.shape == resliced.voxels.shape
    assert dice(result.brain_mask, mask) >= 0.9
    back = result.to_input_grid(result.model_input(CONTRACT))
    assert back.shape == resliced.voxels.shape


def test_an_already_skull_stripped_brain_skips_extraction() -> None:
    template, _ = brain_tissue_template()
    small = resample_volume(template, (3.0, 3.0, 3.0))
    result = prepare_head(small, CONTRACT, FrontEndSettings(), CPU)
    extraction = next(step for step in result.steps if step.name == "brain_extraction")
    assert extraction.details["method"].startswith("none")
    assert result.alignment is not None and result.alignment.correlation > 0.9


def test_steps_turned_off_run_not_and_say_what_that_risks(head: tuple[Volume, np.ndarray]) -> None:
    volume = head[0]
    off = prepare_head(volume, CONTRACT, FrontEndSettings(enabled=False), CPU)
    assert not off.active and off.steps == () and off.model_input(CONTRACT) is volume
    no_n4 = prepare_head(volume, CONTRACT, FrontEndSettings(bias_correction=False, alignment=False), CPU)
    assert [s.name for s in no_n4.steps] == ["checks", "brain_extraction"]
    assert no_n4.bias_field is None and no_n4.alignment is None
    assert any("bias field" in w for w in no_n4.warnings) and any("MNI152" in w for w in no_n4.warnings)
    native = prepare_head(volume, NATIVE, FrontEndSettings(), CPU)
    assert not native.active


def test_a_volume_that_is_no_head_is_refused_with_what_was_found() -> None:
    _, j, i = np.meshgrid(np.arange(64), np.arange(80), np.arange(96), indexing="ij")
    body = ((i - 48) / 44.0) ** 2 + ((j - 40) / 30.0) ** 2 < 1  # a torso-like phantom, 3 mm voxels
    inner = ((i - 48) / 38.0) ** 2 + ((j - 40) / 24.0) ** 2 < 1
    voxels = np.where(inner, 400.0, np.where(body, 900.0, 0.0))
    voxels += np.random.default_rng(0).normal(0.0, 20.0, voxels.shape)
    torso = Volume(voxels.clip(0).astype(np.float32), Geometry((3.0, 3.0, 3.0), (0.0, 0.0, 0.0)), "torso")
    with pytest.raises(InputError, match=r"No brain found in 'torso' \(brain extraction found \d+ ml"):
        prepare_head(torso, CONTRACT, FrontEndSettings(), CPU)


def test_a_brain_without_t1_contrast_is_refused(head: tuple[Volume, np.ndarray]) -> None:
    volume, truth = head
    inverted = np.where(truth, volume.voxels.max() - volume.voxels, volume.voxels).astype(np.float32)
    with pytest.raises(InputError, match="does not look like a T1"):
        prepare_head(volume.with_voxels(inverted), CONTRACT, FrontEndSettings(), CPU)


# --------------------------------------------------------------------------- the way back


def test_a_counterfactual_changes_nothing_farther_than_the_feather_from_the_brain(
    head: tuple[Volume, np.ndarray], prepared: PreparedHead
) -> None:
    volume = head[0]
    seen = prepared.model_input(CONTRACT)
    rng = np.random.default_rng(0)
    change = seen.with_voxels(rng.normal(0.0, 20.0, seen.voxels.shape).astype(np.float32))
    result = VolumeCounterfactual(seen, change, "axial", (), {"drift": 0.0}, [])
    edit = counterfactual_on_input(prepared, result, "axial", None)
    assert edit.counterfactual.geometry == volume.geometry
    assert prepared.brain_mask is not None
    distance = ndimage.distance_transform_edt(~prepared.brain_mask, sampling=volume.geometry.spacing[::-1])
    far = distance > FEATHER_MM
    np.testing.assert_array_equal(edit.counterfactual.voxels[far], volume.voxels[far])
    assert np.all(edit.difference.voxels[far] == 0)
    assert np.abs(edit.difference.voxels[prepared.brain_mask]).mean() > 1.0  # the brain did change
    np.testing.assert_allclose(edit.difference.voxels, edit.counterfactual.voxels - volume.voxels)


def test_a_segmentation_is_tissue_inside_the_brain_mask_and_nothing_outside(
    head: tuple[Volume, np.ndarray], prepared: PreparedHead
) -> None:
    volume = head[0]
    seen = prepared.model_input(CONTRACT)
    probabilities = np.stack([np.full(seen.voxels.shape, p, np.float32) for p in (0.5, 0.1, 0.4)])
    entropy = seen.with_voxels(np.full(seen.voxels.shape, 0.3, np.float32))
    labels = seen.with_voxels(np.zeros(seen.voxels.shape, np.uint8))
    result = VolumeSegmentation(labels, entropy, probabilities, "axial")
    restored = segmentation_on_input(prepared, result, ["Background", "A", "B"], "axial", None)
    assert prepared.brain_mask is not None
    inside = prepared.brain_mask
    assert restored.labels.geometry == volume.geometry
    assert np.all(restored.labels.voxels[inside] == 2) and np.all(restored.labels.voxels[~inside] == 0)
    assert np.all(restored.entropy.voxels[~inside] == 0)
    assert np.all(restored.probabilities[0][~inside] == 1)
    assert restored.figures["classes"]["B"]["voxels"] == int(inside.sum())


def test_a_slice_range_of_the_input_maps_to_a_few_model_slices(
    head: tuple[Volume, np.ndarray], prepared: PreparedHead
) -> None:
    middle = prepared.source.voxels.shape[0] // 2
    text = prepared.model_slices(CONTRACT, "axial", f"{middle}:{middle + 1}", "axial")
    assert text is not None
    start, stop = (int(v) for v in text.split(":"))
    assert 1 <= stop - start <= 6
    assert prepared.model_slices(CONTRACT, "axial", None, "axial") is None
