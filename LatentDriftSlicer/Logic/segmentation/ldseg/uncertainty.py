"""Segment slices with N LDSeg samples each and summarise them: mean probabilities, entropy, variance.

Empty slices (constant image, e.g. all background after windowing) are not sampled: they get label 0,
probability 1 for the background and entropy 0. 3D models take whole volumes ``(B, 1, S, S, S)``
instead of slices; every result then has one more spatial axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...core.devices import parallel_workers, resolve_device, run_in_workers
from ...core.errors import ParameterError
from ...core.progress import CountCallback
from ...core.volumes import nonempty_slices
from .network import LDSegNetwork
from .sampler import sample_probabilities

EMPTY_RANGE = 1e-6
"""A slice whose image ``max - min`` is below this (in model units) counts as empty."""


@dataclass(frozen=True)
class SliceSegmentation:
    """Per-slice results of :func:`segment_slices`, as NumPy arrays for ``B`` slices and ``C`` classes.

    * ``labels``: ``(B, H, W)`` uint8, argmax of the mean probabilities;
    * ``probabilities``: ``(B, C, H, W)`` float32 mean class probabilities (sum to 1 over C);
    * ``entropy``: ``(B, H, W)`` float32 predictive entropy of the mean divided by ``log C``, in [0, 1];
    * ``variance``: ``(B, C, H, W)`` float32 per-class variance over the samples (0 for one sample).

    For 3D models ``B`` counts volumes and ``H, W`` become ``D, H, W``.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    entropy: np.ndarray
    variance: np.ndarray


@dataclass(frozen=True)
class SampleSummary:
    """Torch counterparts of :class:`SliceSegmentation` fields (same shapes, on the samples' device)."""

    labels: torch.Tensor
    probabilities: torch.Tensor
    entropy: torch.Tensor
    variance: torch.Tensor


def summarise_samples(probabilities: torch.Tensor) -> SampleSummary:
    """``(N, B, C, H, W)`` sample probabilities (N ≥ 1, C ≥ 2) → mean, normalised entropy, variance, labels.

    3D ``(N, B, C, D, H, W)`` works the same way.
    """
    if probabilities.ndim not in (5, 6) or probabilities.shape[2] < 2:
        raise ValueError(
            f"expected (N, B, C, H, W) or (N, B, C, D, H, W) with C >= 2, got {tuple(probabilities.shape)}"
        )
    probabilities = probabilities.float()
    mean = probabilities.mean(dim=0)
    entropy = torch.special.entr(mean).sum(dim=1) / math.log(mean.shape[1])
    variance = probabilities.var(dim=0, correction=0)
    return SampleSummary(mean.argmax(dim=1), mean, entropy.clamp(0.0, 1.0), variance)


def segment_slices(
    model: LDSegNetwork,
    images: np.ndarray | torch.Tensor,
    samples: int = 8,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    on_progress: CountCallback | None = None,
    workers: int | None = None,
) -> SliceSegmentation:
    """Segment ``images`` ``(B, 1, H, W)`` (model range, ``H = W = image_size``) with ``samples`` draws each.

    For a 3D model ``images`` are volumes ``(B, 1, S, S, S)`` and the results have one more axis.

    ``steps`` DDIM steps (default ``config.sampling_steps``); ``config.mirror_samples`` draws half of
    the samples on the mirrored image (:func:`~.sampler.sample_probabilities`). Results depend only on ``seed``, not on
    ``batch_size``, ``workers`` or out-of-memory retries (up to float rounding): the initial noise of
    every slice and sample is drawn up front from a fresh CPU generator. ``batch_size`` slices (times
    ``samples``) are in the model at once, halved on out-of-memory, shared among ``workers`` threads
    (default: 2 on a multi-core CPU, else 1; :func:`latentdrift.core.devices.run_in_workers`). ``device``:
    where to run (the model is moved there); default the model's device. ``on_progress(done, total)``
    counts slices.
    """
    images_t = _check_images(model, images)
    if samples < 1:
        raise ParameterError(f"samples must be at least 1, got {samples}.")
    steps = model.config.sampling_steps if steps is None else steps
    if not 1 <= steps <= model.config.train_timesteps:
        raise ParameterError(f"steps must be between 1 and {model.config.train_timesteps}, got {steps}.")
    target = model.device if device is None else _as_device(device)
    model.to(target)
    noise = _initial_noise(model, len(images_t), samples, seed)
    result = _empty_result(model, len(images_t))
    nonempty = _nonempty_indices(images_t)

    def run_batch(indices: Sequence[int]) -> list[tuple[int, SampleSummary]]:
        index = torch.as_tensor(list(indices))
        batch_noise = noise[:, index].to(target)
        summary = summarise_samples(
            sample_probabilities(
                model, images_t[index].to(target), batch_noise, steps, model.config.mirror_samples
            )
        )
        return list(zip(indices, _split(summary), strict=True))

    was_training = model.training
    model.eval()
    try:
        threads = workers or parallel_workers(target)
        for index, summary in run_in_workers(lambda: run_batch, nonempty, batch_size, threads, on_progress):
            _store(result, index, summary)
    finally:
        model.train(was_training)
    return SliceSegmentation(**result)


def _as_device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def _check_images(model: LDSegNetwork, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate ``(B, 1, S, S)`` (3D: ``(B, 1, S, S, S)``) finite images; return a float32 CPU tensor."""
    tensor = torch.as_tensor(images).detach().cpu().float()
    shape = model.config.image_shape
    if tensor.ndim != 2 + len(shape) or tensor.shape[1] != 1 or tuple(tensor.shape[2:]) != shape:
        kind = "slices" if len(shape) == 2 else "volumes"
        raise ParameterError(
            f"LDSeg expects {kind} of shape (B, 1, {', '.join(map(str, shape))}) (the model's training "
            f"resolution), got {tuple(tensor.shape)}."
        )
    if not torch.isfinite(tensor).all():
        raise ParameterError("The slices hold NaN or infinite values.")
    return tensor


def _initial_noise(model: LDSegNetwork, count: int, samples: int, seed: int) -> torch.Tensor:
    """Initial latents ``(samples, count, c, h, w)`` from a fresh CPU generator seeded with ``seed``."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    per_slice = torch.randn((count, samples, *model.config.latent_shape), generator=generator)
    return per_slice.transpose(0, 1)


def _nonempty_indices(images: torch.Tensor) -> list[int]:
    """Indices of slices whose values spread more than :data:`EMPTY_RANGE` (a constant slice is empty)."""
    nonempty = nonempty_slices(images.detach().cpu().numpy(), margin=EMPTY_RANGE)
    return [int(i) for i in np.flatnonzero(nonempty)]


def _empty_result(model: LDSegNetwork, count: int) -> dict[str, np.ndarray]:
    """Arrays for ``count`` slices filled with the empty-slice answer (background, certain)."""
    classes, shape = model.config.num_classes, model.config.image_shape
    probabilities = np.zeros((count, classes, *shape), np.float32)
    probabilities[:, 0] = 1.0
    return {
        "labels": np.zeros((count, *shape), np.uint8),
        "probabilities": probabilities,
        "entropy": np.zeros((count, *shape), np.float32),
        "variance": np.zeros((count, classes, *shape), np.float32),
    }


def _split(summary: SampleSummary) -> list[SampleSummary]:
    """One :class:`SampleSummary` per slice of a batch summary, moved to the CPU."""
    parts = [getattr(summary, name).cpu() for name in ("labels", "probabilities", "entropy", "variance")]
    return [SampleSummary(*(part[i] for part in parts)) for i in range(len(parts[0]))]


def _store(result: dict[str, np.ndarray], index: int, summary: SampleSummary) -> None:
    """Write one slice's summary into the result arrays."""
    for name in result:
        result[name][index] = getattr(summary, name).numpy()
