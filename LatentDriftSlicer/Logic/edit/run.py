"""Editing and generating slices in batches, with Latent Drift, on stock diffusers pipelines.

Slices go in and come out as float32 numpy arrays ``(B, H, W)`` in [-1, 1]; H and W are multiples
of 8. A slice is replicated to 3 channels for the VAE, and the 3 decoded channels are averaged back.

Every mode is one stock pipeline called once per batch (:func:`latentdrift.devices.run_in_batches`,
which halves the batch on out-of-memory), with :class:`latentdrift.drift.DriftCallback` as
``callback_on_step_end``. On a multi-core CPU the slices go as two shares at once, each through its
own copy of the pipeline over the same modules (:func:`latentdrift.devices.run_in_workers`,
``settings.workers``). The modes differ only in the pipeline and in what they pass it
(:class:`_Plan`):

* ``generate``: ``StableDiffusionPipeline`` with ``prompt`` and explicit start ``latents``;
* ``img2img``: ``StableDiffusionImg2ImgPipeline`` with the slices encoded by the VAE (mean of the
  latent distribution, scaled), passed as ``image`` latents;
* ``instruct``: ``StableDiffusionInstructPix2PixPipeline`` with the slices as ``image`` and the
  instruction as ``prompt``;
* ``direction``: see :mod:`latentdrift.edit.direction`.

Noise and seeds: item *i* gets a fresh CPU ``torch.Generator().manual_seed(seed_i)``; its first
draw is that item's (1, 4, h, w) start noise, later draws are the per-step noise of DDPM. In an
edit every slice has ``seed_i = seed``, so every slice of a volume gets the same noise (slice-to-
slice consistency), whatever the batch size; generated samples have ``seed_i = seed + i``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
)
from diffusers.utils.torch_utils import randn_tensor

from ..devices import parallel_workers, run_in_batches, run_in_workers
from ..drift import DriftCallback, drifted_img2img_latents, drifted_start
from ..errors import InputError, ModelError, ParameterError
from ..settings import EditSettings, validate_drift
from .direction import plan_direction
from .loading import PipelineBundle, worker_pipeline

BatchKwargs = Callable[[Any, list[int]], dict[str, Any]]
ProgressCallback = Callable[[int, int], None]

_RANGE_SLACK = 1e-3


@dataclass(frozen=True)
class _Plan:
    """One mode: the pipeline, the arguments every batch shares, and the per-batch arguments.

    ``batch_kwargs(pipeline, items)`` gets the pipeline the batch runs on (``pipeline`` itself or a
    :func:`~.loading.worker_pipeline` copy of it).
    """

    pipeline: Any
    shared: dict[str, Any]
    batch_kwargs: BatchKwargs


@dataclass(frozen=True)
class _Inputs:
    """What a run works on: CPU pixels (B, 3, H, W) in [-1, 1] (None when generating), seeds, size."""

    pixels: torch.Tensor | None
    seeds: list[int]
    height: int
    width: int


def edit_slices(
    bundle: PipelineBundle,
    slices: np.ndarray,
    settings: EditSettings,
    on_batch_done: ProgressCallback | None = None,
) -> np.ndarray:
    """Edit ``slices`` (B, H, W) float32 in [-1, 1] with mode img2img, instruct or direction; same shape out."""
    if settings.mode == "generate":
        raise ParameterError("Mode generate makes new slices: call generate_slices instead of edit_slices.")
    check_model_fits(bundle, settings)
    pixels = slices_to_pixels(slices)
    inputs = _Inputs(pixels, [settings.seed] * len(slices), slices.shape[1], slices.shape[2])
    plan = _PLANNERS[settings.mode](bundle, settings, inputs)
    return _run(bundle, plan, len(slices), settings, on_batch_done)


def generate_slices(
    bundle: PipelineBundle,
    count: int,
    height: int,
    width: int,
    settings: EditSettings,
    on_batch_done: ProgressCallback | None = None,
) -> np.ndarray:
    """Make ``count`` slices (count, height, width) float32 in [-1, 1] from text (mode generate)."""
    if settings.mode != "generate":
        raise ParameterError(f"generate_slices needs mode generate, not {settings.mode}: use edit_slices.")
    if count < 1:
        raise ParameterError(f"count={count}: ask for at least one slice.")
    _check_size(height, width)
    check_model_fits(bundle, settings)
    inputs = _Inputs(None, [settings.seed + index for index in range(count)], height, width)
    return _run(bundle, _plan_generate(bundle, settings, inputs), count, settings, on_batch_done)


def reconstruct_slices(bundle: PipelineBundle, slices: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """``slices`` (B, H, W) in [-1, 1] through the VAE and back (latent mode, no noise); same shape.

    An edit that changes nothing returns about this, not the input: the VAE's own reconstruction
    error. Comparing an edit with it (not with the input) isolates what the edit changed.
    """
    pixels = slices_to_pixels(slices)

    def run_batch(items: Sequence[int]) -> list[np.ndarray]:
        decoded = bundle.decode(bundle.encode(pixels[list(items)]))
        return list(pixels_to_slices((decoded.clamp(-1, 1) + 1) / 2))

    return np.stack(run_in_batches(run_batch, list(range(len(slices))), batch_size))


def slices_to_pixels(slices: np.ndarray) -> torch.Tensor:
    """(B, H, W) in [-1, 1] → a CPU float32 view (B, 3, H, W); raises :class:`InputError`.

    Batches move to the device one at a time, so a whole volume never sits on the GPU.
    """
    if not isinstance(slices, np.ndarray) or slices.ndim != 3 or slices.shape[0] == 0:
        shape = getattr(slices, "shape", None)
        raise InputError(f"Slices must be a non-empty numpy array (B, H, W), got shape {shape}.")
    _check_size(slices.shape[1], slices.shape[2])
    if not np.isfinite(slices).all():
        raise InputError("Slices contain NaN or infinite values: clean the volume first.")
    low, high = float(slices.min()), float(slices.max())
    if low < -1 - _RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise InputError(f"Slice values span {low:.3g}…{high:.3g}: normalise intensities to [-1, 1] first.")
    tensor = torch.from_numpy(np.clip(slices, -1, 1).astype(np.float32))
    return tensor[:, None].expand(-1, 3, -1, -1)


def pixels_to_slices(images: torch.Tensor) -> np.ndarray:
    """Pipeline output (B, 3, H, W) in [0, 1] → (B, H, W) float32 in [-1, 1] (channel mean)."""
    return (images.float().mean(dim=1) * 2 - 1).cpu().numpy().astype(np.float32)


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One fresh CPU generator per item."""
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def start_noise(pipeline: Any, gens: list[torch.Generator], height: int, width: int) -> torch.Tensor:
    """Each generator's first (1, C, h, w) standard-normal draw, stacked to (B, C, h, w)."""
    factor = pipeline.vae_scale_factor
    shape = (len(gens), pipeline.unet.config.out_channels, height // factor, width // factor)
    return randn_tensor(shape, generator=gens, device=pipeline.device, dtype=pipeline.unet.dtype)


def _scheduler(bundle: PipelineBundle, settings: EditSettings) -> Any:
    return bundle.scheduler(DDIMScheduler if settings.scheduler == "ddim" else DDPMScheduler)


def _start(pipeline: Any, settings: EditSettings, inputs: _Inputs, items: list[int]) -> dict[str, Any]:
    """Start latents (ε, or ε + δ with drift_start) and the generators that drew them."""
    gens = generators([inputs.seeds[i] for i in items])
    noise = start_noise(pipeline, gens, inputs.height, inputs.width)
    latents = drifted_start(noise, settings.drift) if settings.drift_start else noise
    return {"latents": latents, "generator": gens}


def _plan_generate(bundle: PipelineBundle, settings: EditSettings, inputs: _Inputs) -> _Plan:
    pipeline = bundle.pipeline(StableDiffusionPipeline, _scheduler(bundle, settings))

    def batch_kwargs(runner: Any, items: list[int]) -> dict[str, Any]:
        return {**_texts(settings, len(items)), **_start(runner, settings, inputs, items)}

    return _Plan(pipeline, _shared(settings, height=inputs.height, width=inputs.width), batch_kwargs)


def _plan_img2img(bundle: PipelineBundle, settings: EditSettings, inputs: _Inputs) -> _Plan:
    pipeline = bundle.pipeline(StableDiffusionImg2ImgPipeline, _scheduler(bundle, settings))
    assert inputs.pixels is not None
    pixels = inputs.pixels

    def batch_kwargs(runner: Any, items: list[int]) -> dict[str, Any]:
        latents = bundle.encode(pixels[items])
        if settings.drift_start:
            timestep = _first_timestep(runner, settings)
            latents = drifted_img2img_latents(latents, settings.drift, runner.scheduler, timestep)
        gens = generators([inputs.seeds[i] for i in items])
        return {**_texts(settings, len(items)), "image": latents, "generator": gens}

    return _Plan(pipeline, _shared(settings, strength=settings.strength), batch_kwargs)


def _plan_instruct(bundle: PipelineBundle, settings: EditSettings, inputs: _Inputs) -> _Plan:
    pipeline = bundle.pipeline(StableDiffusionInstructPix2PixPipeline, _scheduler(bundle, settings))
    assert inputs.pixels is not None
    pixels = inputs.pixels

    def batch_kwargs(runner: Any, items: list[int]) -> dict[str, Any]:
        # The pipeline's own preprocessing and encoding (mode latents), done here in VAE chunks; a
        # 4-channel image is taken as these latents by the pipeline.
        image = bundle.encode_mode(runner.image_processor.preprocess((pixels[items] + 1) / 2))
        return {**_texts(settings, len(items)), "image": image, **_start(runner, settings, inputs, items)}

    return _Plan(pipeline, _shared(settings, image_guidance_scale=settings.image_guidance), batch_kwargs)


def _plan_direction(bundle: PipelineBundle, settings: EditSettings, inputs: _Inputs) -> _Plan:
    assert inputs.pixels is not None
    pipeline, batch_kwargs = plan_direction(bundle, settings, inputs.pixels)
    return _Plan(pipeline, _shared(settings, height=inputs.height, width=inputs.width), batch_kwargs)


_PLANNERS: dict[str, Callable[[PipelineBundle, EditSettings, _Inputs], _Plan]] = {
    "generate": _plan_generate,
    "img2img": _plan_img2img,
    "instruct": _plan_instruct,
    "direction": _plan_direction,
}


def _shared(settings: EditSettings, **extra: Any) -> dict[str, Any]:
    return {
        "num_inference_steps": settings.steps,
        "guidance_scale": settings.guidance,
        "callback_on_step_end": DriftCallback(settings.drift),
        **extra,
    }


def _texts(settings: EditSettings, count: int) -> dict[str, list[str]]:
    return {"prompt": [settings.text()] * count, "negative_prompt": [settings.negative_prompt] * count}


def _first_timestep(pipeline: Any, settings: EditSettings) -> torch.Tensor:
    """The timestep img2img noises the image to (what the pipeline itself will compute)."""
    pipeline.scheduler.set_timesteps(settings.steps, device=pipeline.device)
    timesteps, _ = pipeline.get_timesteps(settings.steps, settings.strength, pipeline.device)
    return timesteps[:1]


def _run(
    bundle: PipelineBundle,
    plan: _Plan,
    count: int,
    settings: EditSettings,
    on_batch_done: ProgressCallback | None,
) -> np.ndarray:
    workers = settings.workers or parallel_workers(bundle.device)

    def make_run_batch() -> Callable[[Sequence[int]], list[np.ndarray]]:
        runner = plan.pipeline if workers == 1 else worker_pipeline(plan.pipeline)

        def run_batch(items: Sequence[int]) -> list[np.ndarray]:
            kwargs = {**plan.shared, **plan.batch_kwargs(runner, list(items))}
            return list(call_pipeline(bundle, runner, kwargs))

        return run_batch

    results = run_in_workers(make_run_batch, list(range(count)), settings.batch_size, workers, on_batch_done)
    return np.stack(results)


def call_pipeline(bundle: PipelineBundle, pipeline: Any, kwargs: dict[str, Any]) -> np.ndarray:
    """One stock pipeline call to latents, decoded in VAE chunks; slices (B, H, W) float32 in [-1, 1].

    The decoding and post-processing are the pipeline's own (``vae.decode(latents / scaling)``, then
    ``image_processor.postprocess``), done by :meth:`PipelineBundle.decode` in chunks.
    """
    latents = pipeline(**kwargs, output_type="latent").images
    images = pipeline.image_processor.postprocess(
        bundle.decode(latents), output_type="pt", do_denormalize=[True] * len(latents)
    )
    return pixels_to_slices(images)


def check_model_fits(bundle: PipelineBundle, settings: EditSettings) -> None:
    validate_drift(settings.drift, bundle.latent_channels)
    if settings.mode == "instruct" and not bundle.instruct:
        raise ModelError(
            f"{bundle.folder} is not an InstructPix2Pix model (its UNet has {bundle.unet.config.in_channels} input "
            "channels, not 8): use mode img2img or direction with it, or give an InstructPix2Pix model."
        )
    if settings.mode != "instruct" and bundle.instruct:
        raise ModelError(
            f"{bundle.folder} is an InstructPix2Pix model (8 UNet input channels): it only fits mode instruct."
        )


def _check_size(height: int, width: int) -> None:
    if height % 8 or width % 8 or height < 8 or width < 8:
        raise InputError(
            f"Slice size {height}×{width} is not a multiple of 8: resample the slices (e.g. to 256×256 or 512×512)."
        )
