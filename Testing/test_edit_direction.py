"""The direction edit: drift-consistent DDIM inversion reconstructs the source; the edit direction.

Reconstruction is measured on a tiny model whose UNet predicts a constant ε (conv_out weights set to
zero, bias kept): DDIM inversion is then exact in exact arithmetic, so what is left is float
rounding (measured ~1e-7 for δ = 0, ~1e-5 for δ = 0.1 at 10 steps). A random-weight UNet is not a
smooth ε(x, t) and its DDIM inversion error is large (O(1)); a trained model's lies in between.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from latentdrift.core.values import Drift
from latentdrift.counterfactual.drift import DriftCallback
from latentdrift.counterfactual.edit import (
    EditSettings,
    PipelineBundle,
    edit_direction,
    edit_slices,
    encode_prompts,
    invert,
    load_bundle,
)
from latentdrift.counterfactual.edit.run import slices_to_pixels
from latentdrift.counterfactual.prompts import Attributes, PromptOptions
from latentdrift.fixtures.tiny_models import build_tiny_sd

SIZE = 32
SOURCE = Attributes.parse("age=70,sex=F,dx=AD")
HEALTHY = Attributes.parse("dx=CN", base=SOURCE)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def constant_epsilon(tmp_path_factory: pytest.TempPathFactory) -> PipelineBundle:
    bundle = load_bundle(build_tiny_sd(tmp_path_factory.mktemp("models") / "sd"), "cpu")
    with torch.no_grad():
        bundle.unet.conv_out.weight.zero_()
    return bundle


@pytest.fixture(scope="module")
def slices() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE)).astype(np.float32)


def settings(drift: Drift = 0.0, target: Attributes = SOURCE) -> EditSettings:
    return EditSettings(mode="direction", source=SOURCE, target=target, steps=10, guidance=1.0, drift=drift)


def reconstruct(
    bundle: PipelineBundle, latents: torch.Tensor, run: EditSettings, inversion_drift: Drift
) -> torch.Tensor:
    pipeline = bundle.pipeline(StableDiffusionPipeline, bundle.scheduler(DDIMScheduler))
    embeds = encode_prompts(pipeline, [run.text()])
    inverted = invert(bundle, latents, embeds, dataclasses.replace(run, drift=inversion_drift))
    return pipeline(
        prompt_embeds=embeds.expand(len(latents), -1, -1),
        latents=inverted,
        num_inference_steps=run.steps,
        guidance_scale=1.0,
        output_type="latent",
        callback_on_step_end=DriftCallback(run.drift),
    ).images


@pytest.mark.parametrize("drift", [0.0, 0.1, (0.1, -0.1, 0.05, 0.0)])
def test_inversion_then_sampling_returns_the_source_latents(
    constant_epsilon: PipelineBundle, slices: np.ndarray, drift: Drift
) -> None:
    latents = constant_epsilon.encode(slices_to_pixels(slices))
    rebuilt = reconstruct(constant_epsilon, latents, settings(drift), inversion_drift=drift)
    assert (rebuilt - latents).abs().max().item() < TOLERANCE


def test_inversion_that_ignores_the_drift_does_not_return_the_source(
    constant_epsilon: PipelineBundle, slices: np.ndarray
) -> None:
    latents = constant_epsilon.encode(slices_to_pixels(slices))
    rebuilt = reconstruct(constant_epsilon, latents, settings(0.1), inversion_drift=0.0)
    assert (rebuilt - latents).abs().max().item() > 0.5


def test_direction_edit_without_a_change_reproduces_the_vae_round_trip(
    constant_epsilon: PipelineBundle, slices: np.ndarray
) -> None:
    bundle = constant_epsilon
    with torch.no_grad():
        decoded = bundle.vae.decode(
            bundle.encode(slices_to_pixels(slices)) / bundle.vae.config.scaling_factor
        )
    expected = (((decoded.sample / 2 + 0.5).clamp(0, 1)).mean(dim=1) * 2 - 1).numpy()
    edited = edit_slices(bundle, slices, settings(0.1))
    np.testing.assert_allclose(edited, expected, atol=TOLERANCE)


def test_edit_direction_is_the_difference_of_mean_paraphrase_embeddings(
    constant_epsilon: PipelineBundle,
) -> None:
    pipeline = constant_epsilon.pipeline(StableDiffusionPipeline, constant_epsilon.scheduler(DDIMScheduler))
    options = PromptOptions(style="simple")
    assert torch.equal(edit_direction(pipeline, SOURCE, SOURCE, options), torch.zeros(1, 77, 32))
    direction = edit_direction(pipeline, SOURCE, HEALTHY, options)
    assert direction.shape == (1, 77, 32) and direction.abs().max() > 0


def test_a_real_direction_changes_the_slice(tmp_path: Path, slices: np.ndarray) -> None:
    bundle = load_bundle(build_tiny_sd(tmp_path / "random"), "cpu")
    unchanged = edit_slices(bundle, slices, settings(0.05))
    assert not np.allclose(unchanged, edit_slices(bundle, slices, settings(0.05, target=HEALTHY)), atol=1e-3)
