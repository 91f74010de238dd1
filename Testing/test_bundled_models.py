"""The bundled models: found by the registry, loadable, honest model cards, and they work."""

from __future__ import annotations

import json
import re

import numpy as np
import torch
from monai.metrics import compute_dice

from latentdrift.core.models import list_models, resolve_model
from latentdrift.fixtures.synthetic import brain_tissue_template
from latentdrift.segmentation.ldseg import load_ldseg_model
from latentdrift.segmentation.segmenters.ldseg import LDSegSegmenter
from latentdrift.segmentation.volume_segmentation import SegmentSettings, segment_volume

LDSEG = "brain-tissue-ldseg"


def test_registry_lists_the_bundled_segmentation_model() -> None:
    entries = {m.name: m for m in list_models()}
    assert entries[LDSEG].kind == "ldseg" and entries[LDSEG].bundled
    config = load_ldseg_model(entries[LDSEG].path).config
    assert [c.name for c in config.classes] == [
        "Background",
        "Cerebrospinal fluid",
        "Grey matter",
        "White matter",
    ]
    assert all(c.terminology.count("~") == 6 for c in config.classes[1:])
    assert config.intensity_reference is not None and config.axis == "axial"


def test_model_card_figures_come_from_the_training_record() -> None:
    folder = resolve_model(LDSEG, ("ldseg",)).path
    history = json.loads((folder / "training.json").read_text())
    card = (folder / "MODEL_CARD.md").read_text()
    for name, value in history[-1]["dice"].items():
        row = re.search(rf"\| {re.escape(name)} \| ([0-9.]+) \|", card)
        assert row is not None and float(row.group(1)) == round(value, 3)
    assert "scripts/train_default_ldseg.py" in card and "synthetic" in card


def test_bundled_model_segments_the_sample_brain() -> None:
    """A few axial slices of the MNI152 template (the source of the synthetic training subjects)."""
    image, labels = brain_tissue_template()
    model = load_ldseg_model(resolve_model(LDSEG, ("ldseg",)).path)
    result = segment_volume(
        image, LDSegSegmenter(model), SegmentSettings(samples=2, steps=5, slices="85:88", device="cpu")
    )
    inside = slice(85, 88)
    predicted = torch.from_numpy(np.eye(4)[result.labels.voxels[inside]].transpose(3, 0, 1, 2)[None])
    expected = torch.from_numpy(np.eye(4)[labels.voxels[inside]].transpose(3, 0, 1, 2)[None])
    dice = compute_dice(predicted, expected, include_background=False)[0].numpy()
    assert dice.mean() > 0.7, dice
    assert result.entropy.voxels.min() >= 0.0 and result.entropy.voxels.max() <= 1.0
    assert result.entropy.voxels[inside].std() > 0.01
