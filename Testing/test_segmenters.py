"""The segmenter seam: any registered kind goes through the volume pipeline, the workflow and the model lists.

A toy kind, registered here only, stands for a new segmentation model: a deterministic threshold on the
model-range image, its threshold in ``model.safetensors``. LDSeg is the registry's first kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from conftest import oblique_direction
from safetensors.numpy import load_file, save_file

from latentdrift.bridge import panel_support
from latentdrift.cli import main
from latentdrift.core import models
from latentdrift.core.errors import ModelError
from latentdrift.core.progress import CountCallback
from latentdrift.core.settings import SegmentSettings
from latentdrift.core.volumes import Geometry, Volume, read_volume, write_volume
from latentdrift.segmentation import segmenters
from latentdrift.segmentation.ldseg import LDSegNetwork, save_ldseg_model, tiny_config
from latentdrift.segmentation.segmenters import InputSpec, LabelClass, SlicePrediction, load_segmenter
from latentdrift.segmentation.segmenters.ldseg import LDSegSegmenter
from latentdrift.segmentation.volume_segmentation import segment_volume

TOY_FORMAT = "test-threshold"
TOY_SPEC = InputSpec(
    axis="coronal",
    image_size=64,
    classes=(LabelClass("background", (0, 0, 0)), LabelClass("bright", (250, 200, 0), "SCT^1^Bright")),
    intensity_percentiles=(0.0, 100.0),
)


@dataclass(frozen=True)
class ThresholdSegmenter:
    """Class 1 where the model-range image is above ``threshold``; certain everywhere (entropy 0)."""

    threshold: float
    spec: InputSpec = TOY_SPEC

    def predict(
        self, images: np.ndarray, settings: SegmentSettings, on_progress: CountCallback | None = None
    ) -> SlicePrediction:
        bright = (images[:, 0] > self.threshold).astype(np.float32)
        if on_progress is not None:
            on_progress(len(images), len(images))
        return SlicePrediction(np.stack([1.0 - bright, bright], axis=1), np.zeros_like(bright))


class ThresholdKind:
    """Folders with ``toy.json`` (``format``) and ``model.safetensors`` (``threshold``)."""

    name = "threshold"

    def recognises(self, folder: Path) -> bool:
        path = folder / "toy.json"
        return path.is_file() and json.loads(path.read_text())["format"] == TOY_FORMAT

    def load(self, folder: Path, device: str) -> ThresholdSegmenter:
        return ThresholdSegmenter(float(load_file(folder / "model.safetensors")["threshold"]))


@pytest.fixture
def toy_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy kind registered, and the ``segment`` task taking it (as it takes every registered kind)."""
    monkeypatch.setitem(segmenters.REGISTRY, ThresholdKind.name, ThresholdKind())
    segment = models.DEFAULT_MODELS["segment"]
    monkeypatch.setitem(
        models.DEFAULT_MODELS, "segment", replace(segment, kinds=segmenters.segmenter_kinds())
    )


def toy_folder(root: Path) -> Path:
    folder = root / "toy"
    folder.mkdir(parents=True)
    (folder / "toy.json").write_text(json.dumps({"format": TOY_FORMAT}))
    save_file({"threshold": np.array(0.0, np.float32)}, str(folder / "model.safetensors"))
    return folder


def bright_box() -> tuple[Volume, np.ndarray]:
    """A dark oblique volume with a bright box in it (anisotropic voxels), and the box's mask."""
    voxels = np.full((30, 36, 40), 10.0, np.float32)
    box = np.zeros(voxels.shape, bool)
    box[8:22, 10:26, 12:30] = True
    voxels[box] = 200.0
    return Volume(voxels, Geometry((1.0, 1.2, 2.0), (5.0, -3.0, 7.0), oblique_direction()), "box"), box


def test_a_registered_toy_segmenter_segments_a_volume_onto_its_own_grid(
    toy_kind: None, tmp_path: Path
) -> None:
    volume, box = bright_box()
    segmenter = load_segmenter(toy_folder(tmp_path), "cpu")
    assert isinstance(segmenter, ThresholdSegmenter) and segmenter.threshold == 0.0
    result = segment_volume(volume, segmenter, SegmentSettings(device="cpu"))
    assert result.axis == "coronal"
    assert result.labels.voxels.shape == volume.voxels.shape
    assert result.labels.geometry.is_close(volume.geometry, 1e-6)
    assert result.probabilities.shape == (2, *volume.voxels.shape)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    labelled = result.labels.voxels == 1
    dice = 2 * (labelled & box).sum() / (labelled.sum() + box.sum())
    assert dice > 0.95
    assert result.figures["classes"]["bright"]["voxels"] == int(labelled.sum())
    assert float(result.entropy.voxels.max()) == 0.0


def test_the_registry_lists_ldseg_and_loads_its_folders(tmp_path: Path) -> None:
    assert "ldseg" in segmenters.segmenter_kinds()
    config = tiny_config(("background", "object"))
    folder = save_ldseg_model(LDSegNetwork(config), tmp_path / "ldseg")
    assert segmenters.segmenter_kind(folder) == "ldseg" == models.model_kind(folder)
    loaded = load_segmenter(folder, "cpu")
    assert isinstance(loaded, LDSegSegmenter)
    assert loaded.spec.class_names == config.class_names and loaded.spec.image_size == config.image_size
    assert (loaded.spec.axis, loaded.spec.input) == (config.axis, config.input)


def test_a_folder_of_no_known_kind_is_refused_naming_the_kinds(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    assert segmenters.segmenter_kind(tmp_path) is None and models.model_kind(tmp_path) is None
    with pytest.raises(ModelError, match="of a known kind \\(ldseg\\)"):
        load_segmenter(tmp_path)


def test_the_segment_task_accepts_every_registered_kind() -> None:
    assert models.DEFAULT_MODELS["segment"].kinds == segmenters.segmenter_kinds()


def test_the_console_and_panel_list_the_models_of_a_registered_kind(toy_kind: None, tmp_path: Path) -> None:
    folder = toy_folder(tmp_path / "models")
    assert models.model_kind(folder) == "threshold"
    listed = [path for _, path in panel_support.panel_model_choices("segment", "", [tmp_path / "models"])]
    assert folder in map(Path, listed)
    other = [
        path for _, path in panel_support.panel_model_choices("counterfactual", "", [tmp_path / "models"])
    ]
    assert folder not in map(Path, other)


def test_the_cli_segments_with_a_registered_kind(toy_kind: None, tmp_path: Path) -> None:
    volume, box = bright_box()
    image = write_volume(volume, tmp_path / "box.nrrd")
    out = tmp_path / "out"
    argv = ["segment", str(image), "--model", str(toy_folder(tmp_path)), "--output", str(out)]
    assert main([*argv, "--device", "cpu", "--quiet", "--scene", "no"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["figures"]["classes"]["bright"]["voxels"] > 0.95 * box.sum()
    assert read_volume(out / "uncertainty.nrrd").voxels.shape == volume.voxels.shape
