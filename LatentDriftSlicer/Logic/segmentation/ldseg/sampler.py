"""DDIM sampling of LDSeg label latents, on diffusers' ``DDIMScheduler``.

Step spacing: with ``timestep_spacing="leading"`` diffusers schedules ``t_k = k · (T // N)`` and each
step moves from ``t`` to ``t - T // N``, which is exactly the next scheduled timestep, so every step
uses ᾱ of the timestep the sampler visits next (the last step goes to ᾱ = 1). MONAI's DDIMScheduler,
and diffusers with ``"linspace"``/``"trailing"`` spacing, mismatch the two when ``T`` is not a
multiple of ``N``. With T = 1000 and N = 15 the schedule is 924, 858, …, 66, 0.

Start: the leading schedule starts at ``(N − 1)·(T // N)``, so one step runs the denoiser at t = 0 on
pure noise. ``config.first_timestep`` shifts the whole schedule up (diffusers' ``steps_offset``) so it
starts there instead: N = 1 at t = 924 is a single x̂₀ prediction from noise; every step still lands on
the next scheduled timestep and the last on ᾱ = 1.

Shapes are written for 2D; 3D models (``config.spatial_dims == 3``) use the same functions with one
more spatial axis everywhere (latents ``(B, c, d, h, w)``, ``c = config.latent_channels``; images ``(b, 1, D, H, W)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_ddim import DDIMScheduler

from .network import LDSegConfig, LDSegNetwork


def make_scheduler(config: LDSegConfig, steps_offset: int = 0) -> DDIMScheduler:
    """A fresh DDIM scheduler for ``config`` (ε-prediction, x̂₀ clipped to ``±config.latent_bound``).

    ``steps_offset`` is added to every timestep that ``set_timesteps`` schedules.
    """
    return DDIMScheduler(
        num_train_timesteps=config.train_timesteps,
        beta_schedule=config.beta_schedule,
        clip_sample=True,
        clip_sample_range=config.latent_bound,
        set_alpha_to_one=True,
        steps_offset=steps_offset,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )


def predict_original(
    noisy: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Standard x̂₀ = (z_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t for latents ``(B, c, h, w)`` and timesteps ``(B,)``."""
    alpha = alphas_cumprod.to(noisy.device)[timesteps].float().view(-1, *(1,) * (noisy.ndim - 1))
    return (noisy - (1 - alpha).sqrt() * noise) / alpha.sqrt()


def sampling_scheduler(config: LDSegConfig, steps: int, device: torch.device | str = "cpu") -> DDIMScheduler:
    """A DDIM scheduler with ``steps`` timesteps set, starting at ``config.first_timestep`` when given.

    The schedule is ``s, s − T//N, …, s − (N−1)·(T//N)`` with ``s = max(first_timestep, (N−1)·(T//N))``
    (``s = (N−1)·(T//N)``, diffusers' leading schedule, when ``first_timestep`` is ``None``).
    """
    leading_start = (steps - 1) * (config.train_timesteps // steps)
    start = leading_start if config.first_timestep is None else max(config.first_timestep, leading_start)
    scheduler = make_scheduler(config, steps_offset=start - leading_start)
    scheduler.set_timesteps(steps, device=device)
    return scheduler


def describe_sampling(config: LDSegConfig) -> str:
    """The default sampler in words, e.g. ``"15 DDIM steps"`` or ``"1 DDIM step from t = 924"``
    (``", half of the samples on the mirrored slice"`` added with ``config.mirror_samples``)."""
    steps = config.sampling_steps
    words = f"{steps} DDIM step{'s' if steps > 1 else ''}"
    if config.first_timestep is not None:
        words += f" from t = {int(sampling_scheduler(config, steps).timesteps[0])}"
    return words + (", half of the samples on the mirrored slice" if config.mirror_samples else "")


@torch.no_grad()
def ddim_sample_latents(
    model: LDSegNetwork, embedding: torch.Tensor, noise: torch.Tensor, steps: int
) -> torch.Tensor:
    """Denoise ``noise`` ``(B, c, h, w)`` given ``embedding`` ``(B, c, h, w)`` in ``steps`` DDIM steps
    (:func:`sampling_scheduler`).

    Deterministic (η = 0). Returns the clean latent estimate ``(B, c, h, w)``.
    """
    scheduler = sampling_scheduler(model.config, steps, noise.device)
    latent = noise
    for timestep in scheduler.timesteps:
        batch_t = timestep.expand(latent.shape[0]).to(noise.device)
        predicted = model.predict_noise(latent, embedding, batch_t)
        latent = scheduler.step(predicted, int(timestep), latent, return_dict=False)[0]
    return latent


@torch.no_grad()
def sample_probabilities(
    model: LDSegNetwork, images: torch.Tensor, noise: torch.Tensor, steps: int, mirror: bool = False
) -> torch.Tensor:
    """Class probabilities of ``N`` samples for each of ``b`` images.

    ``images`` ``(b, 1, H, W)`` in the model range and ``noise`` ``(N, b, c, h, w)`` on the model's device.
    The image encoder runs once per image; its embedding is expanded to the ``N·b`` samples, which are
    denoised together and decoded once each. Returns ``(N, b, C, H, W)`` softmax probabilities in [0, 1].
    With ``mirror`` the last ``N // 2`` samples are drawn for the images mirrored along their last
    (column) axis and mirrored back (the encoder then runs twice per image).
    """
    mirrored = noise.shape[0] // 2 if mirror else 0
    if not mirrored:
        return _sample_probabilities(model, images, noise, steps)
    straight = _sample_probabilities(model, images, noise[:-mirrored], steps)
    flipped = _sample_probabilities(model, images.flip(-1), noise[-mirrored:], steps).flip(-1)
    return torch.cat([straight, flipped])


def _sample_probabilities(
    model: LDSegNetwork, images: torch.Tensor, noise: torch.Tensor, steps: int
) -> torch.Tensor:
    """:func:`sample_probabilities` without mirroring."""
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
