"""LDSeg model folders: bit-exact round trip, safetensors only, clear ModelError for each broken case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latentdrift.core.errors import ModelError
from latentdrift.segmentation.ldseg import (
    LDSegNetwork,
    load_ldseg_model,
    model_info,
    save_ldseg_model,
    segment_slices,
    tiny_config,
)


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[LDSegNetwork, Path]:
    torch.manual_seed(0)
    model = LDSegNetwork(tiny_config(["background", "liver", "tumour"])).eval()
    return model, save_ldseg_model(model, tmp_path / "model")


def _images() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (2, 1, 32, 32)).astype(np.float32)


def test_round_trip_is_bit_exact(saved: tuple[LDSegNetwork, Path], monkeypatch) -> None:
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors"]
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never be used"))
    loaded = load_ldseg_model(folder, "cpu")
    assert loaded.config == model.config and not loaded.training
    before = segment_slices(model, _images(), samples=2, steps=3, seed=3)
    after = segment_slices(loaded, _images(), samples=2, steps=3, seed=3)
    for name in ("labels", "probabilities", "entropy", "variance"):
        np.testing.assert_array_equal(getattr(before, name), getattr(after, name))


def test_card_and_info(saved: tuple[LDSegNetwork, Path], tmp_path: Path) -> None:
    model, folder = saved
    assert "tumour" in (folder / "MODEL_CARD.md").read_text()
    info = model_info(folder)
    assert info["num_classes"] == 3 and info["image_size"] == 32 and info["axis"] == "axial"
    assert [c["name"] for c in info["classes"]] == ["background", "liver", "tumour"]
    assert info["classes"][1]["terminology"] == "" and info["has_weights"]
    custom = save_ldseg_model(model, tmp_path / "custom", card_text="# Mine\n")
    assert (custom / "MODEL_CARD.md").read_text() == "# Mine\n"


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_ldseg_model(tmp_path / "nowhere")


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no config\.json"):
        load_ldseg_model(tmp_path)


def test_missing_weights_and_pickled_files_refused(saved: tuple[LDSegNetwork, Path]) -> None:
    _model, folder = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no model\.safetensors\.$"):
        load_ldseg_model(folder)
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match=r"pytorch_model\.bin: pickled weights are refused"):
        load_ldseg_model(folder)


def test_broken_json(saved: tuple[LDSegNetwork, Path]) -> None:
    _model, folder = saved
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_ldseg_model(folder)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("image_size", "big", "'image_size'"),
        ("classes", [], "classes"),
        ("format", "other", "'format'"),
        ("format_version", 99, "'format_version'"),
        ("label_channels", [8, 8], "label_channels"),
    ],
)
def test_invalid_config_names_the_key(
    saved: tuple[LDSegNetwork, Path], key: str, value: object, words: str
) -> None:
    _model, folder = saved
    document = json.loads((folder / "config.json").read_text())
    document[key] = value
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(ModelError, match=words):
        load_ldseg_model(folder)
    with pytest.raises(ModelError, match=words):
        model_info(folder)


def test_weights_that_do_not_match_the_config(saved: tuple[LDSegNetwork, Path]) -> None:
    _model, folder = saved
    document = json.loads((folder / "config.json").read_text())
    document["denoiser_channels"] = [16, 32]
    document["denoiser_head_channels"] = 16
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(ModelError, match=r"do not match its config\.json.*wrong shape"):
        load_ldseg_model(folder)


def test_corrupt_safetensors(saved: tuple[LDSegNetwork, Path]) -> None:
    _model, folder = saved
    (folder / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_ldseg_model(folder)
