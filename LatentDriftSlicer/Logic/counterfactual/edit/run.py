"""Editing and generating slices in batches, with Latent Drift, on stock diffusers pipelines.

Slices go in and come out as float32 numpy arrays ``(B, H, W)`` in [-1, 1]; H and W are multiples
of 8. A slice is replicated to 3 channels for the VAE, and the 3 decoded channels are averaged back.

Every mode is one stock pipeline called once per batch (:func:`latentdrift.core.devices.run_in_batches`,
which halves the batch on out-of-memory), with :class:`latentdrift.counterfactual.drift.DriftCallback` as
``callback_on_step_end``. On a multi-core CPU the slices go as two shares at once, each through its
own copy of the pipeline over the same modules (:func:`latentdrift.core.devices.run_in_workers`,
``settings.workers``). The modes differ only in the pipeline and in what they pass it: each mode's
:meth:`~latentdrift.counterfactual.modes.base.EditMode.plan` (a :class:`~.plans.Plan`), in its own file of
:mod:`latentdrift.counterfactual.modes`.

Noise and seeds: item *i* gets a fresh CPU ``torch.Generator().manual_seed(seed_i)``; its first
draw is that item's (1, 4, h, w) start noise, later draws are the per-step noise of DDPM. In an
edit every slice has ``seed_i = seed``, so every slice of a volume gets the same noise (slice-to-
slice consistency), whatever the batch size; generated samples have ``seed_i = seed + i``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ...core.devices import parallel_workers, run_in_batches, run_in_workers
from ...core.errors import InputError, ParameterError
from ...core.progress import CountCallback
from ...core.settings import EditSettings
from ...core.values import validate_drift
from ..modes import GENERATE
from .loading import PipelineBundle, worker_pipeline
from .plans import Inputs, Plan

_RANGE_SLACK = 1e-3


def edit_slices(
    bundle: PipelineBundle,
    slices: np.ndarray,
    settings: EditSettings,
    on_batch_done: CountCallback | None = None,
) -> np.ndarray:
    """Edit ``slices`` (B, H, W) float32 in [-1, 1] with mode img2img, instruct or direction; same shape out."""
    mode = settings.edit_mode
    if not mode.edits:
        raise ParameterError(
            f"Mode {mode.name} makes new slices: call generate_slices instead of edit_slices."
        )
    check_model_fits(bundle, settings)
    pixels = slices_to_pixels(slices)
    inputs = Inputs(pixels, [settings.seed] * len(slices), slices.shape[1], slices.shape[2])
    return _run(bundle, mode.plan(bundle, settings, inputs), len(slices), settings, on_batch_done)


def generate_slices(
    bundle: PipelineBundle,
    count: int,
    height: int,
    width: int,
    settings: EditSettings,
    on_batch_done: CountCallback | None = None,
) -> np.ndarray:
    """Make ``count`` slices (count, height, width) float32 in [-1, 1] from text (mode generate)."""
    if settings.edit_mode.edits:
        raise ParameterError(
            f"generate_slices needs mode {GENERATE.name}, not {settings.mode}: use edit_slices."
        )
    if count < 1:
        raise ParameterError(f"count={count}: ask for at least one slice.")
    _check_size(height, width)
    check_model_fits(bundle, settings)
    inputs = Inputs(None, [settings.seed + index for index in range(count)], height, width)
    return _run(bundle, GENERATE.plan(bundle, settings, inputs), count, settings, on_batch_done)


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


def _run(
    bundle: PipelineBundle,
    plan: Plan,
    count: int,
    settings: EditSettings,
    on_batch_done: CountCallback | None,
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
    """Raise when the model does not fit the run: δ's channels, and the kind of model the mode needs."""
    validate_drift(settings.drift, bundle.latent_channels)
    settings.edit_mode.check_model(bundle)


def _check_size(height: int, width: int) -> None:
    if height % 8 or width % 8 or height < 8 or width < 8:
        raise InputError(
            f"Slice size {height}×{width} is not a multiple of 8: resample the slices (e.g. to 256×256 or 512×512)."
        )
