"""What a mode passes its stock pipeline: the :class:`Plan` of a run, and the arguments every mode shares.

Each edit mode (:mod:`latentdrift.counterfactual.modes`) builds its plan from these pieces; :mod:`.run` calls the
pipeline once per batch with ``{**plan.shared, **plan.batch_kwargs(pipeline, items)}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from ..drift import DriftCallback, drifted_start
from .loading import PipelineBundle

if TYPE_CHECKING:
    from ...core.settings import EditSettings

BatchKwargs = Callable[[Any, list[int]], dict[str, Any]]


@dataclass(frozen=True)
class Plan:
    """One mode's run: the pipeline, the arguments every batch shares, and the per-batch arguments.

    ``batch_kwargs(pipeline, items)`` gets the pipeline the batch runs on (``pipeline`` itself or a
    :func:`~.loading.worker_pipeline` copy of it).
    """

    pipeline: Any
    shared: dict[str, Any]
    batch_kwargs: BatchKwargs


@dataclass(frozen=True)
class Inputs:
    """What a run works on: CPU pixels (B, 3, H, W) in [-1, 1] (None when generating), seeds, size."""

    pixels: torch.Tensor | None
    seeds: list[int]
    height: int
    width: int

    def edited_pixels(self) -> torch.Tensor:
        """The pixels of an edit (a generating run has none)."""
        assert self.pixels is not None
        return self.pixels


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One fresh CPU generator per item."""
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def start_noise(pipeline: Any, gens: list[torch.Generator], height: int, width: int) -> torch.Tensor:
    """Each generator's first (1, C, h, w) standard-normal draw, stacked to (B, C, h, w)."""
    factor = pipeline.vae_scale_factor
    shape = (len(gens), pipeline.unet.config.out_channels, height // factor, width // factor)
    return randn_tensor(shape, generator=gens, device=pipeline.device, dtype=pipeline.unet.dtype)


def sampler(bundle: PipelineBundle, settings: EditSettings) -> Any:
    """The bundle's scheduler of ``settings.scheduler`` (DDIM or DDPM)."""
    return bundle.scheduler(DDIMScheduler if settings.scheduler == "ddim" else DDPMScheduler)


def start_latents(pipeline: Any, settings: EditSettings, inputs: Inputs, items: list[int]) -> dict[str, Any]:
    """Start latents (ε, or ε + δ with drift_start) and the generators that drew them."""
    gens = generators([inputs.seeds[i] for i in items])
    noise = start_noise(pipeline, gens, inputs.height, inputs.width)
    latents = drifted_start(noise, settings.drift) if settings.drift_start else noise
    return {"latents": latents, "generator": gens}


def shared_arguments(settings: EditSettings, **extra: Any) -> dict[str, Any]:
    """The arguments every batch of every mode passes: steps, guidance, the drift callback, ``extra``."""
    return {
        "num_inference_steps": settings.steps,
        "guidance_scale": settings.guidance,
        "callback_on_step_end": DriftCallback(settings.drift),
        **extra,
    }


def text_arguments(settings: EditSettings, count: int) -> dict[str, list[str]]:
    """The prompt (or instruction) and what guidance steers away from (:meth:`EditSettings.negative_text`), once per item."""
    return {"prompt": [settings.text()] * count, "negative_prompt": [settings.negative_text()] * count}
