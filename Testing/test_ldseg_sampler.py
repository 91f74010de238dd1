"""DDIM sampling: step spacing for few steps, one image encoding per slice, one decoding per sample."""

from __future__ import annotations

import pytest
import torch

from latentdrift.ldseg import LDSegNetwork, make_scheduler, sample_probabilities, tiny_config


@pytest.mark.parametrize("steps", [1, 3, 7, 15, 50, 999])
def test_each_ddim_step_uses_alpha_of_next_scheduled_timestep(steps: int) -> None:
    """The update must land on ᾱ of the next timestep in the schedule (ᾱ = 1 after the last)."""
    scheduler = make_scheduler(tiny_config())
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    assert len(timesteps) == steps and timesteps == sorted(set(timesteps), reverse=True)
    assert timesteps[-1] == 0 and timesteps[0] >= 1000 - 1000 // steps - (1000 % steps)
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
