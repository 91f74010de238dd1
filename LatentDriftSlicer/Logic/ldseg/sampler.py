"""DDIM sampling of LDSeg label latents, on diffusers' ``DDIMScheduler``.

Step spacing: with ``timestep_spacing="leading"`` diffusers schedules ``t_k = k · (T // N)`` and each
step moves from ``t`` to ``t - T // N``, which is exactly the next scheduled timestep, so every step
uses ᾱ of the timestep the sampler visits next (the last step goes to ᾱ = 1). MONAI's DDIMScheduler,
and diffusers with ``"linspace"``/``"trailing"`` spacing, mismatch the two when ``T`` is not a
multiple of ``N``. With T = 1000 and N = 15 the schedule is 924, 858, …, 66, 0.

Shapes are written for 2D; 3D models (``config.spatial_dims == 3``) use the same functions with one
more spatial axis everywhere (latents ``(B, c, d, h, w)``, ``c = config.latent_channels``; images ``(b, 1, D, H, W)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_ddim import DDIMScheduler

from .network import LDSegConfig, LDSegNetwork


def make_scheduler(config: LDSegConfig) -> DDIMScheduler:
    """A fresh DDIM scheduler for ``config`` (ε-prediction, x̂₀ clipped to ``±config.latent_bound``)."""
    return DDIMScheduler(
        num_train_timesteps=config.train_timesteps,
        beta_schedule=config.beta_schedule,
        clip_sample=True,
        clip_sample_range=config.latent_bound,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )


def predict_original(
    noisy: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Standard x̂₀ = (z_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t for latents ``(B, c, h, w)`` and timesteps ``(B,)``."""
    alpha = alphas_cumprod.to(noisy.device)[timesteps].float().view(-1, *(1,) * (noisy.ndim - 1))
    return (noisy - (1 - alpha).sqrt() * noise) / alpha.sqrt()


@torch.no_grad()
def ddim_sample_latents(
    model: LDSegNetwork, embedding: torch.Tensor, noise: torch.Tensor, steps: int
) -> torch.Tensor:
    """Denoise ``noise`` ``(B, c, h, w)`` given ``embedding`` ``(B, c, h, w)`` in ``steps`` DDIM steps.

    Deterministic (η = 0). Returns the clean latent estimate ``(B, c, h, w)``.
    """
    scheduler = make_scheduler(model.config)
    scheduler.set_timesteps(steps, device=noise.device)
    latent = noise
    for timestep in scheduler.timesteps:
        batch_t = timestep.expand(latent.shape[0]).to(noise.device)
        predicted = model.predict_noise(latent, embedding, batch_t)
        latent = scheduler.step(predicted, int(timestep), latent, return_dict=False)[0]
    return latent


@torch.no_grad()
def sample_probabilities(
    model: LDSegNetwork, images: torch.Tensor, noise: torch.Tensor, steps: int
) -> torch.Tensor:
    """Class probabilities of ``N`` samples for each of ``b`` images.

    ``images`` ``(b, 1, H, W)`` in the model range and ``noise`` ``(N, b, c, h, w)`` on the model's device.
    The image encoder runs once per image; its embedding is expanded to the ``N·b`` samples, which are
    denoised together and decoded once each. Returns ``(N, b, C, H, W)`` softmax probabilities in [0, 1].
    """
    samples, batch = noise.shape[:2]
    embedding = model.image_encoder(images)
    embedding = (
        embedding.unsqueeze(0)
        .expand(samples, *embedding.shape)
        .reshape(samples * batch, *embedding.shape[1:])
    )
    latent = ddim_sample_latents(model, embedding, noise.reshape(samples * batch, *noise.shape[2:]), steps)
    probabilities = F.softmax(model.label_decoder(latent).float(), dim=1)
    return probabilities.reshape(samples, batch, *probabilities.shape[1:])
