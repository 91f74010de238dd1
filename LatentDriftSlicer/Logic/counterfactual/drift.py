"""Latent Drift: the one place where the drift δ touches sampling and training.

Definitions (Latent Drifting, CVPR 2025, Eq. 4, and the project's reading of it):

* **δ** is a signed float, or one float per latent channel (shape ``(C,)``, broadcast over latents
  of shape ``(B, C, h, w)``). δ = 0 changes nothing: the sampled result is bit-for-bit the stock
  diffusers result for the same seed (adding an exact 0.0 is exact; the tests pin it).
* **Reverse process** (Eq. 4): ``x_{t-1} = μθ(x_t, t) + δ + σ_t z`` at every reverse step,
  the last one (to x_0) included. ``scheduler.step()`` returns ``prev_sample = μ + σ_t z``, so adding
  δ to ``prev_sample`` is exactly the mean shift. This is done by :class:`DriftCallback`, passed as
  ``callback_on_step_end`` to stock ``StableDiffusionPipeline``, ``StableDiffusionImg2ImgPipeline``
  and ``StableDiffusionInstructPix2PixPipeline``; it is the only sampling-side mechanism.
* **Schedulers**: the mean shift is defined for one-step ancestral/DDIM updates whose next step
  depends on the current sample only: DDPM and DDIM (and their Parallel variants). Multistep
  and ODE solvers (DPM-Solver, UniPC, PNDM, Euler, Heun, LMS, ...) keep a history or work in
  sigma space, where "μ + δ" has no meaning: they are refused with a :class:`ParameterError`.
* **Forward process / training**: the forward-process noise and the ε-target become ``ε + δ``
  (:func:`drift_training_noise`, to be called right after ``noise = torch.randn_like(latents)``).
  The terminal distribution is then ``N(δ, I)``.
* **Drifted start** (optional, for models trained that way): text-to-image and InstructPix2Pix
  start from ``z_T = ε + δ ~ N(δ, I)`` (:func:`drifted_start`). For img2img the encoded image x_0
  is noised with ``ε + δ`` as well: ``x_t = √ᾱ_t x_0 + √(1-ᾱ_t)(ε + δ)``. Stock img2img draws ε
  itself, so :func:`drifted_img2img_latents` shifts x_0 by ``√((1-ᾱ_t)/ᾱ_t) δ`` beforehand, which
  gives the same x_t up to float rounding.
* **DDIM inversion** (direction edit) inverts the *drifted* reverse step
  ``x_{t-1} = S_t(x_t) + δ``: ``x_t = S_t⁻¹(x_{t-1} - δ)``, i.e. δ is subtracted before every
  inverse step (:func:`inversion_start` before the first, :class:`DriftCallback` with
  ``inverse=True`` after every inverse step but the last). Inverting and sampling back with the
  same δ therefore returns the source image (up to the usual DDIM inversion error), and the edit
  changes only what the prompt change changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    DDIMInverseScheduler,
    DDIMParallelScheduler,
    DDIMScheduler,
    DDPMParallelScheduler,
    DDPMScheduler,
)

from ..core.errors import ParameterError
from ..core.values import Drift, validate_drift

DRIFT_SCHEDULERS = (DDPMScheduler, DDIMScheduler, DDPMParallelScheduler, DDIMParallelScheduler)
INVERSE_SCHEDULERS = (DDIMInverseScheduler,)


def drift_tensor(delta: Drift, like: torch.Tensor) -> torch.Tensor:
    """δ as a tensor that broadcasts over ``like`` (B, C, h, w): 0-d for a scalar, (1, C, 1, 1) per channel."""
    validate_drift(delta, like.shape[1])
    values = torch.tensor(delta, dtype=like.dtype, device=like.device)
    return values.view(1, -1, 1, 1) if values.ndim == 1 else values


def apply_drift(latents: torch.Tensor, delta: Drift) -> torch.Tensor:
    """``latents + δ`` with δ broadcast per channel; latents (B, C, h, w), same dtype and device."""
    return latents + drift_tensor(delta, latents)


def drift_training_noise(noise: torch.Tensor, delta: Drift) -> torch.Tensor:
    """Training side: the forward-process noise and ε-target ``ε + δ`` (call right after drawing ε)."""
    return apply_drift(noise, delta)


def drifted_start(noise: torch.Tensor, delta: Drift) -> torch.Tensor:
    """Sampling start ``z_T = ε + δ ~ N(δ, I)`` from standard normal noise ε (B, C, h, w)."""
    return apply_drift(noise, delta)


def drifted_img2img_latents(
    image_latents: torch.Tensor, delta: Drift, scheduler: Any, timestep: torch.Tensor
) -> torch.Tensor:
    """Shift encoded images x_0 so that stock ``add_noise(x_0', ε, t)`` equals ``add_noise(x_0, ε + δ, t)``.

    ``image_latents`` (B, C, h, w) are already scaled by the VAE scaling factor; ``timestep`` is the
    first timestep img2img will denoise from (``pipeline.get_timesteps(...)[0][:1]``).
    """
    alpha_bar = scheduler.alphas_cumprod[int(timestep.reshape(-1)[0])].item()
    return apply_drift(image_latents, _scaled(delta, math.sqrt((1 - alpha_bar) / alpha_bar)))


def inversion_start(latents: torch.Tensor, delta: Drift) -> torch.Tensor:
    """The latents handed to the first DDIM inverse step: ``x_0 - δ`` (see the module docstring)."""
    return apply_drift(latents, _scaled(delta, -1.0))


def check_scheduler(scheduler: Any, inverse: bool = False) -> None:
    """Raise :class:`ParameterError` unless Latent Drift is defined for this scheduler."""
    allowed = INVERSE_SCHEDULERS if inverse else DRIFT_SCHEDULERS
    if not isinstance(scheduler, allowed):
        names = ", ".join(kind.__name__ for kind in allowed)
        raise ParameterError(
            f"Latent Drift is not defined for {type(scheduler).__name__}: the mean shift of Eq. 4 needs a "
            f"one-step sampler ({names}). Use the DDIM or DDPM scheduler."
        )


@dataclass(frozen=True)
class DriftCallback:
    """``callback_on_step_end`` for stock diffusers pipelines: adds δ after every scheduler step.

    ``callback(pipeline, step, timestep, {"latents": x})`` returns ``{"latents": x + δ}``. With
    ``inverse=True`` (a pipeline running ``DDIMInverseScheduler``) it returns ``x - δ`` instead, after
    every step but the last, so that the next inverse step sees ``x - δ``.
    The pipeline's scheduler is checked on every call (:func:`check_scheduler`).
    """

    delta: Drift
    inverse: bool = False

    def __call__(self, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        check_scheduler(pipeline.scheduler, self.inverse)
        latents = callback_kwargs["latents"]
        if not self.inverse:
            return {"latents": apply_drift(latents, self.delta)}
        if step == pipeline.num_timesteps - 1:
            return {"latents": latents}
        return {"latents": inversion_start(latents, self.delta)}


def _scaled(delta: Drift, factor: float) -> Drift:
    if isinstance(delta, int | float):
        return float(delta) * factor
    return tuple(float(value) * factor for value in delta)
