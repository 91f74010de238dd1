"""DDIM sampling: step spacing for few steps, one image encoding per slice, one decoding per sample."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from latentdrift.core.errors import ParameterError
from latentdrift.segmentation.ldseg import (
    LDSegNetwork,
    ddim_sample_latents,
    make_scheduler,
    sample_probabilities,
    sampling_scheduler,
    tiny_config,
)
from latentdrift.segmentation.ldseg.sampler import describe_sampling, predict_original


@pytest.mark.parametrize(
    ("steps", "first_timestep", "start"),
    [
        *[(1, None, 0), (3, None, 666), (7, None, 852), (15, None, 924), (50, None, 980), (999, None, 998)],
        *[(1, 924, 924), (2, 924, 924), (15, 924, 924), (16, 924, 930), (50, 924, 980), (3, 950, 950)],
    ],
)
def test_each_ddim_step_uses_alpha_of_next_scheduled_timestep(
    steps: int, first_timestep: int | None, start: int
) -> None:
    """The schedule starts at ``start``; each update lands on ᾱ of the next timestep (ᾱ = 1 after the last)."""
    scheduler = sampling_scheduler(replace(tiny_config(), first_timestep=first_timestep), steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    assert len(timesteps) == steps and timesteps == sorted(set(timesteps), reverse=True)
    assert timesteps[0] == start and timesteps[-1] == start - (steps - 1) * (1000 // steps) >= 0
    alphas = torch.cat([scheduler.alphas_cumprod, torch.ones(1)])  # alphas[-1]: ᾱ = 1 after the last step
    generator = torch.Generator().manual_seed(0)
    for index, t in enumerate(timesteps):
        original, noise = torch.randn(2, 2, 1, 4, 4, generator=generator)  # x̂₀ well inside the clip range
        sample = alphas[t].sqrt() * original + (1 - alphas[t]).sqrt() * noise
        next_t = timesteps[index + 1] if index + 1 < steps else -1
        result = scheduler.step(noise, t, sample).prev_sample
        torch.testing.assert_close(
            result, _ddim_update(sample, noise, alphas[t], alphas[next_t]), rtol=1e-5, atol=1e-6
        )
        if 0 < next_t < 999:  # the check can tell a neighbouring timestep apart
            for wrong in (next_t - 1, next_t + 1):
                assert (result - _ddim_update(sample, noise, alphas[t], alphas[wrong])).abs().max() > 1e-4


def _ddim_update(
    sample: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, next_alpha: torch.Tensor
) -> torch.Tensor:
    """Deterministic DDIM (η = 0): x̂₀ from (sample, ε), re-noised to ᾱ of the next timestep."""
    original = (sample - (1 - alpha).sqrt() * noise) / alpha.sqrt()
    return next_alpha.sqrt() * original + (1 - next_alpha).sqrt() * noise


def test_one_step_from_a_first_timestep_is_the_clipped_original_prediction() -> None:
    """N = 1 starting at t: the sample is x̂₀ predicted from the noise at t, clipped to the latent bound."""
    torch.manual_seed(0)
    config = replace(tiny_config(), first_timestep=924)
    model = LDSegNetwork(config).eval()
    noise, embedding = torch.randn(2, 3, 1, 8, 8)
    with torch.no_grad():
        predicted = model.predict_noise(noise, embedding, torch.full((3,), 924))
        expected = predict_original(
            noise, predicted, torch.full((3,), 924), make_scheduler(config).alphas_cumprod
        )
    result = ddim_sample_latents(model, embedding, noise, steps=1)
    torch.testing.assert_close(result, expected.clamp(-config.latent_bound, config.latent_bound))
    assert (expected.abs() > config.latent_bound).any() and (expected.abs() < config.latent_bound).any()


@pytest.mark.parametrize(
    ("steps", "first_timestep", "mirror", "words"),
    [
        (15, None, False, "15 DDIM steps"),
        (1, 924, False, "1 DDIM step from t = 924"),
        (50, 924, False, "50 DDIM steps from t = 980"),
        (1, 924, True, "1 DDIM step from t = 924, half of the samples on the mirrored slice"),
    ],
)
def test_the_default_sampler_is_described_with_where_it_starts(
    steps: int, first_timestep: int | None, mirror: bool, words: str
) -> None:
    config = replace(
        tiny_config(), sampling_steps=steps, first_timestep=first_timestep, mirror_samples=mirror
    )
    assert describe_sampling(config) == words


@pytest.mark.parametrize("samples", [1, 4, 5])
def test_mirrored_samples_are_the_mirrored_image_sampled_and_mirrored_back(samples: int) -> None:
    torch.manual_seed(0)
    model = LDSegNetwork(tiny_config()).eval()
    images, noise = torch.randn(3, 1, 32, 32), torch.randn(samples, 3, 1, 8, 8)
    plain = sample_probabilities(model, images, noise, steps=2)
    mirrored = sample_probabilities(model, images, noise, steps=2, mirror=True)
    half = samples // 2
    torch.testing.assert_close(mirrored[: samples - half], plain[: samples - half], rtol=0, atol=0)
    if half:
        expected = sample_probabilities(model, images.flip(-1), noise[-half:], steps=2).flip(-1)
        torch.testing.assert_close(mirrored[-half:], expected, rtol=0, atol=0)
        assert not torch.allclose(mirrored[-half:], plain[-half:])  # the tiny model is not symmetric


@pytest.mark.parametrize("first_timestep", [-1, 1000])
def test_first_timestep_outside_the_schedule_is_refused(first_timestep: int) -> None:
    with pytest.raises(ParameterError, match="first_timestep must be between 0 and"):
        replace(tiny_config(), first_timestep=first_timestep)


def test_cosine_schedule_is_used() -> None:
    scheduler = make_scheduler(tiny_config())
    alphas = scheduler.alphas_cumprod
    assert len(alphas) == 1000
    # cosine schedule (s = 0.008): ᾱ_499 = cos²((0.5 + s) / (1 + s) · π/2) ≈ 0.494
    assert abs(float(alphas[499]) - 0.49) < 0.02


def test_encoder_once_per_slice_decoder_once_per_sample() -> None:
    torch.manual_seed(0)
    model = LDSegNetwork(tiny_config()).eval()
    seen: dict[str, list[int]] = {"image_encoder": [], "label_decoder": [], "denoiser": []}
    for name, batches in seen.items():
        getattr(model, name).register_forward_hook(
            lambda _m, args, _o, batches=batches: batches.append(args[0].shape[0])
        )
    images, noise = torch.randn(3, 1, 32, 32), torch.randn(4, 3, 1, 8, 8)
    probabilities = sample_probabilities(model, images, noise, steps=5)
    assert probabilities.shape == (4, 3, 2, 32, 32)
    torch.testing.assert_close(probabilities.sum(dim=2), torch.ones(4, 3, 32, 32))
    assert seen == {"image_encoder": [3], "label_decoder": [12], "denoiser": [12] * 5}


def test_chosen_sampler_is_written_into_the_model_and_its_card(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sys
    from pathlib import Path

    from latentdrift.segmentation.ldseg import LDSegNetwork, load_ldseg_model, save_ldseg_model, tiny_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "ldseg"))
    from choose_sampling import apply

    config = replace(tiny_config(), sampling_steps=15)
    save_ldseg_model(LDSegNetwork(config), tmp_path, f"Sampler: {describe_sampling(config)} by default.\n")
    apply(tmp_path, 1, 924, False, 0.8123)
    apply(tmp_path, 1, 860, True, 0.8456)  # a second choice replaces the first sentence, not appends to it
    chosen = load_ldseg_model(tmp_path).config
    assert (chosen.sampling_steps, chosen.first_timestep, chosen.mirror_samples) == (1, 860, True)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert card.startswith(
        f"Sampler: {describe_sampling(chosen)} by default (chosen on the validation subjects"
    )
    assert "mean Dice 0.846 on whole volumes with 8 samples" in card and "0.812" not in card
