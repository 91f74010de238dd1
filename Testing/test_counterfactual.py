"""Whole-volume counterfactuals (engine): geometry, determinism, drift, ranges, empty slices, blending, OOM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import oblique_direction

import latentdrift.counterfactual.edit.run as run_module
import latentdrift.counterfactual.volume_editing as counterfactual_module
from latentdrift.bridge.scene import load_volume_node, node_to_volume
from latentdrift.core.errors import ParameterError
from latentdrift.core.volumes import Geometry, Volume, extract_slices, reassemble
from latentdrift.counterfactual.edit import EditSettings, PipelineBundle, load_bundle
from latentdrift.counterfactual.prompts import Attributes
from latentdrift.counterfactual.volume_editing import (
    blend_neighbours,
    counterfactual_volume,
    model_resolution,
)

SOURCE = Attributes.parse("age=70,sex=F,dx=CN")
TARGET = Attributes.parse("age=77,dx=MCI", base=SOURCE)
TOL = 1e-6


@pytest.fixture(scope="module")
def brain() -> Volume:
    """An oblique, anisotropic int16 'head': a blob whose axial slices 0, 1 and the last are empty."""
    k, j, i = np.meshgrid(np.arange(9), np.arange(11), np.arange(13), indexing="ij")
    blob = 900 * np.exp(-((k - 4) ** 2 / 6 + (j - 5) ** 2 / 10 + (i - 6) ** 2 / 12))
    voxels = np.where(blob > 40, blob + 3 * np.sin(i + j), 0).astype(np.int16)
    volume = Volume(voxels, Geometry((0.7, 1.3, 2.5), (12.5, -30.25, 7.0), oblique_direction()), "brain")
    stack = extract_slices(volume, "axial")
    stack.slices[[0, 1, -1]] = 0  # empty slices at both ends, one of them inside the range 1:8
    return volume.with_voxels(reassemble(stack.slices, stack, volume))


def settings(**changes: Any) -> EditSettings:
    defaults: dict[str, Any] = {
        "mode": "img2img",
        "target": TARGET,
        "steps": 2,
        "strength": 0.5,
        "drift": 0.05,
    }
    return EditSettings(**{**defaults, **changes})


def test_model_resolution_is_unet_size_times_vae_factor(sd: PipelineBundle) -> None:
    assert model_resolution(sd) == 32


@pytest.mark.parametrize("mode", ["img2img", "direction", "instruct"])
def test_every_mode_gives_volumes_on_the_input_grid(
    mode: str, folders: dict[str, Path], brain: Volume
) -> None:
    bundle = load_bundle(folders["instruct" if mode == "instruct" else "sd"], "cpu")
    before = brain.voxels.copy()
    result = counterfactual_volume(brain, bundle, settings(mode=mode, source=SOURCE), "coronal")
    for volume in (result.counterfactual, result.difference):
        assert volume.voxels.shape == brain.voxels.shape and volume.voxels.dtype == np.float32
        assert volume.geometry.is_close(brain.geometry, TOL)
    np.testing.assert_array_equal(brain.voxels, before)  # the input is never modified
    edited = result.counterfactual.voxels
    assert brain.voxels.min() <= edited.min() and edited.max() <= brain.voxels.max()
    np.testing.assert_array_equal(result.difference.voxels, edited - brain.voxels.astype(np.float32))
    assert np.abs(result.difference.voxels).max() > 1.0
    assert result.figures["drift"] == 0.05 and result.figures["adjacent_difference_ratio"] > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_same_seed_same_volume_other_seed_and_drift_differ(
    sd: PipelineBundle, brain: Volume, workers: int
) -> None:
    result = counterfactual_volume(brain, sd, settings(seed=3, workers=workers))
    first = result.counterfactual.voxels
    assert result.figures["workers"] == workers
    again = counterfactual_volume(brain, sd, settings(seed=3, workers=workers)).counterfactual.voxels
    other_seed = counterfactual_volume(brain, sd, settings(seed=4)).counterfactual.voxels
    no_drift = counterfactual_volume(brain, sd, settings(seed=3, drift=0.0)).counterfactual.voxels
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other_seed).max() > 1.0
    assert np.abs(first - no_drift).max() > 1.0


def test_slices_outside_the_range_and_empty_slices_are_the_input(sd: PipelineBundle, brain: Volume) -> None:
    result = counterfactual_volume(brain, sd, settings(), "axial", slices="1:8")
    full = extract_slices(brain, "axial").slices
    out = extract_slices(result.counterfactual, "axial").slices
    empty = [n for n in range(len(full)) if not full[n].any()]
    untouched = sorted({*empty, *(n for n in range(len(full)) if not 1 <= n < 8)})
    assert empty and result.figures["copied_empty_slices"] == len([n for n in empty if 1 <= n < 8])
    np.testing.assert_array_equal(out[untouched], full[untouched].astype(np.float32))
    assert result.indices == tuple(range(1, 8))
    assert np.abs(extract_slices(result.difference, "axial").slices[untouched]).max() == 0.0


def test_node_is_not_modified(session, sd: PipelineBundle, oblique_nifti: Path) -> None:
    import slicer

    node = load_volume_node(session, oblique_nifti)
    before = slicer.util.arrayFromVolume(node).copy()
    counterfactual_volume(node_to_volume(node), sd, settings(), "sagittal", slices="2:5")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)


def test_blend_mixes_neighbouring_edits(sd: PipelineBundle, brain: Volume) -> None:
    changes = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 2, 2), np.float32)
    np.testing.assert_allclose(blend_neighbours(changes, 0.5)[:, 0, 0], [0.25, 1.0, 1.75])
    assert blend_neighbours(changes, 0.0) is changes
    sharp = counterfactual_volume(brain, sd, settings(), "axial")
    blended = counterfactual_volume(brain, sd, settings(), "axial", blend=0.6)
    assert not np.allclose(sharp.counterfactual.voxels, blended.counterfactual.voxels)
    ratio = "adjacent_difference_ratio"
    assert blended.figures[ratio] <= sharp.figures[ratio] * 1.05
    with pytest.raises(ParameterError, match="blend"):
        counterfactual_volume(brain, sd, settings(), blend=1.0)


def test_out_of_memory_halves_the_suggested_batch_and_gives_the_same_volume(
    sd: PipelineBundle, brain: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_share = settings(
        workers=1
    )  # the halving of one share's calls (2 workers would split the batch first)
    expected = counterfactual_volume(brain, sd, one_share, "coronal", batch_size=11).counterfactual.voxels
    calls: list[int] = []
    original = run_module.call_pipeline

    def flaky(bundle: PipelineBundle, pipeline: Any, kwargs: dict[str, Any]) -> np.ndarray:
        calls.append(len(kwargs["prompt"]))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return original(bundle, pipeline, kwargs)

    monkeypatch.setattr(counterfactual_module, "suggest_batch_size", lambda device, per_item, ceiling: 4)
    monkeypatch.setattr(run_module, "call_pipeline", flaky)
    result = counterfactual_volume(brain, sd, one_share, "coronal")
    assert calls[:3] == [4, 2, 2] and set(calls[1:]) <= {1, 2} and result.figures["batch_size"] == 4
    units = float(np.ptp(brain.voxels)) / 2
    np.testing.assert_allclose(result.counterfactual.voxels, expected, atol=1e-5 * units)


def test_batch_size_estimate_grows_with_resolution_and_guidance(sd: PipelineBundle) -> None:
    small = counterfactual_module.bytes_per_slice(sd, settings(guidance=1.0), 32)
    assert counterfactual_module.bytes_per_slice(sd, settings(), 32) == 2 * small
    assert counterfactual_module.bytes_per_slice(sd, settings(), 64) == 8 * small
    # on the CPU the batch is what fits in half the available RAM, up to the ceiling
    assert counterfactual_module.choose_batch_size(sd, settings(), 32) == counterfactual_module.MAX_BATCH


def test_an_instruct_edit_is_taken_against_the_factual_edit(folders: dict[str, Path], brain: Volume) -> None:
    bundle = load_bundle(folders["instruct"], "cpu")
    edit = settings(mode="instruct", source=SOURCE, guidance=3.0)
    result = counterfactual_volume(brain, bundle, edit, "axial")
    assert result.figures["reference"] == "factual edit"
    assert np.abs(result.difference.voxels).max() > 1.0
    factual = edit.factual()
    assert factual is not None and factual.target == SOURCE and factual.text() != edit.text()
    unchanged = counterfactual_volume(brain, bundle, factual, "axial")  # its own factual edit: no change
    np.testing.assert_array_equal(unchanged.counterfactual.voxels, brain.voxels.astype(np.float32))
    against_reconstruction = counterfactual_volume(
        brain,
        bundle,
        settings(mode="instruct", source=SOURCE, guidance=3.0, factual_reference=False),
        "axial",
    )
    assert against_reconstruction.figures["reference"] == "reconstruction"
    assert not np.allclose(against_reconstruction.difference.voxels, result.difference.voxels)


def test_instruct_text_guidance_steers_away_from_the_factual_instruction() -> None:
    """Guidance contrasts the instruction with "change nothing", unless a negative prompt is given."""
    edit = settings(mode="instruct", source=SOURCE)
    factual = edit.factual()
    assert factual is not None
    assert edit.negative_text() == factual.text() != edit.text()
    assert factual.negative_text() == factual.text()  # the factual edit gets no text guidance
    assert settings(mode="instruct", source=SOURCE, negative_prompt="blurry").negative_text() == "blurry"
    assert settings(mode="instruct", source=SOURCE, factual_reference=False).negative_text() == ""
    assert settings(mode="instruct", source=None, instruction="Age it").negative_text() == ""
    assert settings(mode="img2img", source=SOURCE).negative_text() == ""


def test_only_instruct_edits_with_source_attributes_have_a_factual_edit() -> None:
    assert settings(mode="instruct", source=SOURCE, instruction="Age it").factual() is not None
    assert settings(mode="instruct", source=SOURCE, factual_reference=False).factual() is None
    assert settings(mode="instruct", source=None, instruction="Age it").factual() is None
    assert settings(mode="img2img", source=SOURCE).factual() is None
