"""Pre-training the miniature Stable Diffusion: data, a tiny run, resume, the output's format."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from latentdrift.core.errors import ParameterError
from latentdrift.finetune.pretrain import (
    NaturalImages,
    PretrainSettings,
    caption,
    caption_words,
    pretrain,
    step_rng,
)

TINY = PretrainSettings(
    resolution=16,
    vae_resolution=16,
    vae_steps=2,
    unet_steps=4,
    batch_size=2,
    checkpoint_every=2,
    vae_channels=(32, 32),
    unet_channels=(32, 32),
    text_width=32,
    device="cpu",
)


def test_captions_say_tone_scale_and_subject() -> None:
    assert (
        caption("the surface of the moon", True, 0.1)
        == "a grayscale close-up photo of the surface of the moon"
    )
    assert caption("a cat", False, 0.5) == "a color detail photo of a cat"
    assert caption("a cat", False, 1.0).startswith("a color wide")
    assert {"grayscale", "moon", "astronaut", "photo"} <= caption_words()


def test_natural_image_batches_are_seeded_and_in_range() -> None:
    images = NaturalImages(("camera", "coffee"))
    pixels, captions = images.batch(6, 32, step_rng(0, "vae", 3), grey_fraction=0.5)
    again, captions_again = images.batch(6, 32, step_rng(0, "vae", 3), grey_fraction=0.5)
    other, _ = images.batch(6, 32, step_rng(0, "vae", 4), grey_fraction=0.5)
    assert pixels.shape == (6, 3, 32, 32) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1 and pixels.std() > 0.05
    assert torch.equal(pixels, again) and captions == captions_again
    assert not torch.equal(pixels, other)
    for image, text in zip(pixels, captions, strict=True):
        grey = bool((image[0] == image[1]).all() and (image[1] == image[2]).all())
        assert ("grayscale" in text) == grey, text


@pytest.mark.parametrize(
    "change",
    [{"resolution": 18}, {"vae_steps": 0}, {"grey_fraction": 1.5}, {"caption_dropout": 1.0}],
)
def test_bad_settings_are_refused(change: dict) -> None:
    with pytest.raises(ParameterError):
        replace(TINY, **change)


def test_tiny_run_loads_in_stock_diffusers_and_resumes_exactly(tmp_path: Path) -> None:
    whole = pretrain(tmp_path / "whole", tmp_path / "work-whole", TINY)
    pretrain(tmp_path / "first", tmp_path / "work-split", replace(TINY, unet_steps=2))
    split = pretrain(tmp_path / "split", tmp_path / "work-split", TINY)

    a = load_file(whole / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(split / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(whole.rglob("*.bin")) and not list(whole.rglob("*.pt"))
    card = (whole / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "| unet | 4 |" in card and "astronaut" in card

    pipeline = StableDiffusionPipeline.from_pretrained(whole, local_files_only=True)
    assert pipeline.vae.config.scaling_factor != pytest.approx(0.18215)
    text = "a grayscale detail photo of the surface of the moon"
    ids = pipeline.tokenizer(text).input_ids
    assert pipeline.tokenizer.decode(ids, skip_special_tokens=True) == text and len(ids) < 30
    image = pipeline(
        "a grayscale photo of the moon",
        num_inference_steps=2,
        height=16,
        width=16,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 16, 16, 3) and np.isfinite(image).all()
