"""LDSeg networks and config: shapes, standardised latent, parameter budget, JSON round trip."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from latentdrift.core.errors import ParameterError
from latentdrift.segmentation.ldseg import (
    LabelClass,
    LDSegConfig,
    LDSegNetwork,
    default_classes,
    tiny_config,
    training_config,
)


def test_part_shapes_and_standardised_latent() -> None:
    torch.manual_seed(0)
    model = LDSegNetwork(tiny_config(["background", "a", "b"]))
    images = torch.randn(3, 1, 32, 32)
    labels = torch.randint(0, 3, (3, 32, 32))
    latent = model.encode_labels(labels)
    embedding = model.image_encoder(images)
    assert latent.shape == embedding.shape == (3, 1, 8, 8)
    assert torch.allclose(latent.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(latent.std(dim=(1, 2, 3), correction=0), torch.ones(3), atol=1e-3)
    assert model.predict_noise(latent, embedding, torch.tensor([0, 500, 999])).shape == (3, 1, 8, 8)
    assert model.label_decoder(latent).shape == (3, 3, 32, 32)


def test_latent_channels_widen_the_latent_the_embedding_and_the_denoiser() -> None:
    torch.manual_seed(0)
    config = replace(tiny_config(["background", "a", "b"]), latent_channels=3)
    model = LDSegNetwork(config)
    latent = model.encode_labels(torch.randint(0, 3, (2, 32, 32)))
    embedding = model.image_encoder(torch.randn(2, 1, 32, 32))
    assert latent.shape == embedding.shape == (2, *config.latent_shape) == (2, 3, 8, 8)
    assert torch.allclose(latent.std(dim=(1, 2, 3), correction=0), torch.ones(2), atol=1e-3)
    assert model.predict_noise(latent, embedding, torch.tensor([1, 900])).shape == (2, 3, 8, 8)
    assert model.label_decoder(latent).shape == (2, 3, 32, 32)
    assert config.latent_bound == pytest.approx((3 * 8 * 8) ** 0.5)


def test_a_config_written_before_latent_channels_reads_as_one_channel() -> None:
    data = replace(tiny_config(), latent_channels=2).to_dict()
    del data["latent_channels"]
    assert LDSegConfig.from_dict(data).latent_channels == 1


def test_a_config_written_before_mirror_samples_does_not_mirror() -> None:
    data = replace(tiny_config(), mirror_samples=True).to_dict()
    assert LDSegConfig.from_dict(data).mirror_samples is True
    del data["mirror_samples"]
    assert LDSegConfig.from_dict(data).mirror_samples is False


def test_training_config_cuts_the_widths_to_the_downsampling() -> None:
    config = training_config(default_classes(["background", "a"]), image_size=64, latent_downsampling=8)
    assert config.latent_shape == (4, 8, 8)
    assert config.label_channels == config.image_channels == (16, 32, 48, 64)
    with pytest.raises(ParameterError, match="power of two"):
        training_config(default_classes(["background", "a"]), latent_downsampling=6)


def test_default_model_size_is_about_two_million_parameters() -> None:
    counts = LDSegNetwork(LDSegConfig()).parameter_counts()
    assert 1_000_000 <= counts["total"] <= 2_000_000
    assert LDSegConfig().latent_size == 16


def test_config_json_round_trip() -> None:
    config = tiny_config(["background", "liver", "spleen"])
    config = LDSegConfig(
        **{
            **config.__dict__,
            "classes": (*config.classes[:2], LabelClass("spleen", (1, 2, 3), "SCT^78961009^Spleen")),
        }
    )
    assert LDSegConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"classes": [{"name": "only", "color": [0, 0, 0], "terminology": ""}]}, "classes"),
        ({"image_size": 30}, "multiple"),
        ({"latent_downsampling": 6}, "power of two"),
        ({"axis": "oblique"}, "axis"),
        ({"latent_channels": 0}, "latent_channels"),
        ({"sampling_steps": 0}, "sampling_steps"),
        ({"mirror_samples": True, "axis": "sagittal"}, "mirror_samples needs an axial or coronal model"),
        ({"mirror_samples": 1}, "'mirror_samples'"),
        ({"image_size": "32"}, "'image_size'"),
        ({"extra": 1}, "'extra'"),
    ],
)
def test_invalid_config_is_refused_with_reason(change: dict, words: str) -> None:
    data = {**tiny_config().to_dict(), **change}
    with pytest.raises(ParameterError, match=words):
        LDSegConfig.from_dict(data)


def test_missing_key_is_named() -> None:
    data = tiny_config().to_dict()
    del data["axis"]
    with pytest.raises(ParameterError, match="missing key 'axis'"):
        LDSegConfig.from_dict(data)
