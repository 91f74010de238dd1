"""Latent Drift counterfactuals of whole volumes: slice, normalise, edit in batches, put back on the grid.

``counterfactual_volume`` is the engine call behind ``latentdrift counterfactual``, the Slicer panel and
the console: a :class:`~.volumes.Volume` and a loaded Stable Diffusion bundle in, a
:class:`VolumeCounterfactual` (the counterfactual and the signed difference, on the input's exact
geometry) out. The input volume is never modified.

How a volume is edited:

1. Display-oriented slices along ``axis`` (range ``slices``) are windowed to [-1, 1] with a robust
   window over the whole volume (0.5–99.5th percentiles) and resized to the model's resolution
   (UNet ``sample_size`` × VAE scale factor, a square field of view in mm).
2. Slices whose windowed pixels are all background (at the window's low end) are not edited: they
   are copied unchanged. The others go through :func:`latentdrift.counterfactual.edit.edit_slices` in batches
   (the same start noise for every slice, set by the seed; the batch halves on out-of-memory).
3. The edit is taken as a *change* at the model's resolution, ``edited − reference``. The reference
   is, for an InstructPix2Pix edit whose source attributes are known (``settings.factual_reference``,
   on by default), the *factual edit*: the same slices, noise and settings with the instruction to
   keep the source's attributes (:meth:`~latentdrift.counterfactual.edit.EditSettings.factual`), so only what the
   instruction's content changes remains, not what every pass through the editor changes. (It costs
   a second edit; for the bundled editor it is what leaves the rest of the brain alone and gets the
   size of the ventricle change right: ``benchmarks/evidence/results.md``, section 2, the
   reconstruction-reference row.) Otherwise the reference is the reconstruction, the model input
   through the VAE and back. Either way an edit that changes nothing changes nothing, instead of
   adding the VAE's reconstruction error everywhere. With
   ``blend`` = w > 0 each slice's change is mixed with its neighbours' (pixel space, along the slice
   axis): ``c'_n = (1 − w)·c_n + w·(c_{n−1} + c_{n+1}) / 2``, the ends of the range repeating their
   own change; this smooths the edit from slice to slice without blurring the anatomy.
4. The change is resized back to the slice size, scaled into the input's intensity units by the
   window, added to the input slice and clipped to the input's intensity range: the input keeps its
   own detail (finer than the model's resolution, and what the VAE cannot reproduce) and only the
   edit is added.
5. Slices are reassembled onto the input grid; voxels outside the range are the input's own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from ..core.devices import check_memory, parallel_workers, suggest_batch_size
from ..core.errors import ModelError
from ..core.progress import CountCallback, ProgressCallback
from ..core.resampling import SliceResizer
from ..core.values import MAX_RESOLUTION, Axis, check_blend
from ..core.volumes import FOREGROUND_MARGIN, SliceStack, Volume, nonempty_slices, reassemble, windowed_slices
from .edit import EditSettings, PipelineBundle, edit_slices, reconstruct_slices

LOG = logging.getLogger(__name__)

BACKGROUND = -1.0
"""Model-range value of the window's low end: padding, and what an empty slice holds everywhere."""
MAX_BATCH = 64
DOWNSAMPLING_WARNING = 2.0


@dataclass(frozen=True)
class VolumeCounterfactual:
    """A counterfactual on the input grid.

    ``counterfactual``: the edited volume in the input's intensity units, within the input's range
    (float32; float64 for float64 and 32/64-bit integer inputs, so the input's values stay exact);
    ``difference``: ``counterfactual − input`` (signed, same units, 0 outside the edited range and
    on empty slices); ``figures``: numbers for ``summary.json`` (see :func:`consistency_figures`);
    ``warnings``: what the user should know.
    """

    counterfactual: Volume
    difference: Volume
    axis: Axis
    indices: tuple[int, ...]
    figures: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def model_resolution(bundle: PipelineBundle) -> int:
    """The slice size (pixels) the model works at: UNet ``sample_size`` × VAE scale factor.

    Raises :class:`ModelError` when it is not a multiple of 8 (the pipelines need one), beyond
    :data:`MAX_RESOLUTION`, or so large that one activation of one slice does not fit in the memory
    available on the model's device: a config's size is checked before anything is allocated for it.
    """
    sample_size = bundle.unet.config.sample_size
    latent = int(sample_size if isinstance(sample_size, int) else sample_size[0])
    size = latent * 2 ** (len(bundle.vae.config.block_out_channels) - 1)
    if size % 8 or size < 8:
        raise ModelError(
            f"{bundle.folder} works at {size}×{size} pixels, not a multiple of 8: its unet/config.json "
            "sample_size or vae/config.json block_out_channels are unusual; use a standard SD folder."
        )
    if size > MAX_RESOLUTION:
        raise ModelError(
            f"{bundle.folder} works at {size}×{size} pixels (unet/config.json sample_size {latent}), beyond "
            f"{MAX_RESOLUTION}×{MAX_RESOLUTION}: check its sample_size, or use a model made for slices."
        )
    check_memory(bundle.device, _widest_activation(bundle, size), f"{bundle.folder} at {size}×{size} pixels")
    return size


def _widest_activation(bundle: PipelineBundle, size: int) -> int:
    """Bytes of one activation of one slice at full resolution in the widest block: a floor under any run."""
    widest = max(max(bundle.vae.config.block_out_channels), max(bundle.unet.config.block_out_channels))
    return size * size * widest * bundle.dtype.itemsize


def bytes_per_slice(bundle: PipelineBundle, settings: EditSettings, size: int) -> int:
    """A rough, generous estimate of peak device memory per slice of a batch.

    The largest activations are the VAE's at full resolution (its widest block) and the UNet's at
    latent resolution, times the classifier-free guidance copies (3 for InstructPix2Pix, 2 with
    guidance, else 1); 16 live tensors of that size are assumed. Out-of-memory still halves the batch.
    """
    copies = settings.edit_mode.guidance_copies(settings)
    return copies * 16 * _widest_activation(bundle, size)


def counterfactual_volume(
    volume: Volume,
    bundle: PipelineBundle,
    settings: EditSettings,
    axis: Axis = "axial",
    slices: str | None = None,
    blend: float = 0.0,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
) -> VolumeCounterfactual:
    """Edit every slice of ``volume`` along ``axis`` (range ``slices``) with ``bundle``; see the module docstring.

    ``settings.mode`` is img2img, instruct or direction; ``blend`` in [0, 1) mixes each slice's edit
    with its neighbours'; ``batch_size`` slices in flight at once (default: from free GPU memory, or
    available RAM on the CPU; :func:`latentdrift.core.devices.suggest_batch_size`), shared among
    ``settings.workers`` threads (default :func:`latentdrift.core.devices.parallel_workers`). Same settings and seed,
    same volume.
    """
    cut = windowed_slices(volume, axis, slices)
    check_blend(blend)
    size = model_resolution(bundle)
    stack, window, windowed = cut.stack, cut.window, cut.windowed
    edited = nonempty_slices(windowed, BACKGROUND)  # an empty slice is copied, not edited
    rows, cols = windowed.shape[1:]
    resizer = SliceResizer((rows, cols), stack.layout.pixel_spacing, size)
    chosen = choose_batch_size(bundle, settings, size) if batch_size is None else batch_size
    workers = settings.workers or parallel_workers(bundle.device)
    run = replace(settings, batch_size=chosen, workers=workers)
    changes = _edit_changes(bundle, run, windowed, edited, resizer, progress)
    changes = blend_neighbours(changes, blend)
    changes[~edited] = 0.0
    units = (window.high - window.low) / (window.target_max - window.target_min)
    output = _apply_change(stack.slices, resizer.from_model(changes) * units, volume.voxels)
    figures = {
        **consistency_figures(stack.slices, output, windowed > BACKGROUND + FOREGROUND_MARGIN),
        "drift": settings.drift,
        "reference": "reconstruction" if settings.factual() is None else "factual edit",
        "edited_slices": int(edited.sum()),
        "copied_empty_slices": int((~edited).sum()),
        "model_resolution": size,
        "batch_size": chosen,
        "workers": workers,
        "intensity_window": [window.low, window.high],
    }
    return _on_input_grid(volume, stack, output, figures, _warnings(stack, resizer, edited))


def blend_neighbours(changes: np.ndarray, weight: float) -> np.ndarray:
    """``(1 − w)·c_n + w·(c_{n−1} + c_{n+1}) / 2`` along axis 0 of ``changes`` ``[n, H, W]`` (ends repeated)."""
    if weight == 0.0 or len(changes) < 2:
        return changes
    padded = np.concatenate([changes[:1], changes, changes[-1:]])
    return ((1.0 - weight) * changes + weight * 0.5 * (padded[:-2] + padded[2:])).astype(np.float32)


def consistency_figures(
    before: np.ndarray, after: np.ndarray, foreground: np.ndarray
) -> dict[str, float | None]:
    """Slice-to-slice smoothness and size of an edit, from slice stacks ``[n, rows, cols]``.

    ``adjacent_difference_ratio``: mean |after[n+1] − after[n]| over mean |before[n+1] − before[n]|
    (1.0 = as smooth along the axis as the input; None with one slice); ``mean_abs_difference``:
    mean |after − before| over ``foreground`` (bool, same shape), in the input's units.
    """
    before64, after64 = before.astype(np.float64), after.astype(np.float64)
    ratio = None
    if len(before) > 1:
        reference = float(np.abs(np.diff(before64, axis=0)).mean())
        ratio = float(np.abs(np.diff(after64, axis=0)).mean()) / reference if reference > 0 else None
    inside = np.abs(after64 - before64)[foreground]
    return {
        "adjacent_difference_ratio": ratio,
        "mean_abs_difference": float(inside.mean()) if inside.size else 0.0,
    }


def _edit_changes(
    bundle: PipelineBundle,
    settings: EditSettings,
    windowed: np.ndarray,
    edited: np.ndarray,
    resizer: SliceResizer,
    progress: ProgressCallback | None,
) -> np.ndarray:
    """``edited − reference`` ``[n, S, S]`` at the model's resolution (0 on slices not ``edited``).

    The reference is the factual edit when ``settings.factual()`` gives one, else the reconstruction.
    """
    changes = np.zeros((len(windowed), resizer.size, resizer.size), np.float32)
    if edited.any():
        images = resizer.to_model(windowed[edited], background=BACKGROUND)
        factual = settings.factual()
        if factual is None:
            reference = reconstruct_slices(bundle, images, settings.batch_size)
        else:
            reference = edit_slices(bundle, images, factual, _reporter(progress, "factual edit"))
        changes[edited] = edit_slices(bundle, images, settings, _reporter(progress, "editing")) - reference
    return changes


def _reporter(progress: ProgressCallback | None, label: str) -> CountCallback | None:
    """``progress`` with ``label`` bound, for :func:`edit_slices` (None without a callback)."""
    if progress is None:
        return None
    return lambda done, total: progress(done, total, label)


def choose_batch_size(bundle: PipelineBundle, settings: EditSettings, size: int) -> int:
    """Slices per batch from free memory (GPU, or RAM on the CPU) and :func:`bytes_per_slice`, at most 64."""
    chosen = suggest_batch_size(bundle.device, bytes_per_slice(bundle, settings, size), ceiling=MAX_BATCH)
    LOG.info("Editing %d slice(s) per batch on %s", chosen, bundle.device)
    return chosen


def _apply_change(slices: np.ndarray, change: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """``slices + change`` clipped to the range of ``voxels``, in a float type that holds the input exactly."""
    dtype = np.promote_types(voxels.dtype, np.float32)
    low, high = voxels.min(), voxels.max()
    return np.clip(slices.astype(dtype) + change.astype(dtype), low, high).astype(dtype)


def _warnings(stack: SliceStack, resizer: SliceResizer, edited: np.ndarray) -> list[str]:
    warnings = []
    if not edited.any():
        warnings.append("Every slice in the range is background: nothing was edited.")
    padded = max(resizer.padded_shape)
    if padded > DOWNSAMPLING_WARNING * resizer.size:
        warnings.append(
            f"The model works at {resizer.size}×{resizer.size} pixels and the {stack.layout.axis} slices are "
            f"{padded} pixels across: the edit is made at {padded / resizer.size:.1f}× lower resolution "
            "(the input's finer detail is kept)."
        )
    for message in warnings:
        LOG.warning(message)
    return warnings


def _on_input_grid(
    volume: Volume, stack: SliceStack, output: np.ndarray, figures: dict, warnings: list[str]
) -> VolumeCounterfactual:
    """Edited slices ``[n, rows, cols]`` → counterfactual and difference volumes on the input grid."""
    dtype = output.dtype
    voxels = reassemble(output, stack, volume, fill=volume.voxels.astype(dtype))
    difference = voxels - volume.voxels.astype(dtype)
    return VolumeCounterfactual(
        counterfactual=volume.with_voxels(voxels, name=f"{volume.name} counterfactual"),
        difference=volume.with_voxels(difference, name=f"{volume.name} difference"),
        axis=stack.layout.axis,
        indices=stack.indices,
        figures=figures,
        warnings=warnings,
    )
