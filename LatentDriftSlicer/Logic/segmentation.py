"""LDSeg on whole volumes: slice, normalise, resample, sample, and put the results back on the input grid.

``segment_volume`` is the engine call behind ``latentdrift segment``, the Slicer panel and the console:
a :class:`~.volumes.Volume` in, a :class:`VolumeSegmentation` (labels, entropy, class probabilities on
the input's exact geometry) out. Slices outside the requested range get label 0 and entropy 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .devices import resolve_device
from .errors import ParameterError
from .ldseg import LDSegNetwork, segment_slices
from .progress import ProgressCallback
from .volumes import (
    AXES,
    Axis,
    IntensityWindow,
    SliceResizer,
    SliceStack,
    Volume,
    check_image_volume,
    extract_slices,
    reassemble,
)

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentSettings:
    """How to segment: samples per slice, DDIM steps, slice axis and range, seed, device, batch size."""

    samples: int = 8
    steps: int | None = None
    axis: Axis | None = None
    slices: str | None = None
    seed: int = 0
    device: str = "auto"
    batch_size: int = 8


@dataclass(frozen=True)
class VolumeSegmentation:
    """LDSeg results on the input grid.

    ``labels``: uint8 class per voxel (0 = background); ``entropy``: float32 normalised predictive
    entropy in [0, 1]; ``probabilities``: float32 ``[C, k, j, i]`` mean class probabilities;
    ``figures``: numbers for ``summary.json`` (voxel counts and volumes per class, mean entropy);
    ``axis``: the slice axis used; ``warnings``: things the user should know (e.g. unusual intensities).
    """

    labels: Volume
    entropy: Volume
    probabilities: np.ndarray
    axis: Axis
    figures: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def segment_volume(
    volume: Volume, model: LDSegNetwork, settings: SegmentSettings, progress: ProgressCallback | None = None
) -> VolumeSegmentation:
    """Segment ``volume`` slice by slice with ``model``; see the module docstring."""
    check_image_volume(volume)
    config = model.config
    axis = settings.axis or config.axis
    if axis not in AXES:
        raise ParameterError(f"Unknown slice axis '{axis}': use axial, coronal or sagittal.")
    if axis != config.axis:
        raise ParameterError(
            f"This model was trained on {config.axis} slices; segmenting {axis} slices would give wrong "
            f"results. Use --axis {config.axis} (or a model trained on {axis} slices)."
        )
    window = IntensityWindow.from_percentiles(
        volume.voxels, config.intensity_percentiles, config.intensity_range
    )
    stack = extract_slices(volume, axis, settings.slices)
    rows, cols = stack.slices.shape[1:]
    resizer = SliceResizer((rows, cols), stack.layout.pixel_spacing, config.image_size)
    background = config.intensity_range[0]
    images = resizer.to_model(window.forward(stack.slices), background=background)[:, None]
    warnings = intensity_warnings(intensity_statistics(images, background), config.intensity_reference)
    result = segment_slices(
        model,
        images,
        samples=settings.samples,
        steps=settings.steps,
        seed=settings.seed,
        batch_size=settings.batch_size,
        device=resolve_device(settings.device),
        on_progress=(lambda done, total: progress(done, total, "segmenting")) if progress else None,
    )
    probabilities = np.clip(resizer.from_model(result.probabilities), 0.0, 1.0)
    probabilities /= np.maximum(probabilities.sum(axis=1, keepdims=True), 1e-12)
    entropy = np.clip(resizer.from_model(result.entropy), 0.0, 1.0)
    return _on_input_grid(volume, stack, probabilities, entropy, model, warnings)


def _on_input_grid(
    volume: Volume,
    stack: SliceStack,
    probabilities: np.ndarray,
    entropy: np.ndarray,
    model: LDSegNetwork,
    warnings: list[str],
) -> VolumeSegmentation:
    """Slice-stack results (``[n, C, rows, cols]``, ``[n, rows, cols]``) → volumes on the input grid."""
    classes = probabilities.shape[1]
    full_probabilities = np.stack(
        [
            reassemble(np.ascontiguousarray(probabilities[:, c]), stack, volume, fill=1.0 if c == 0 else 0.0)
            for c in range(classes)
        ]
    )
    labels = full_probabilities.argmax(axis=0).astype(np.uint8)
    entropy_volume = reassemble(entropy.astype(np.float32), stack, volume, fill=0.0)
    voxel_ml = float(np.prod(volume.geometry.spacing)) / 1000.0
    figures = {
        "slices": stack.count,
        "mean_entropy": float(entropy_volume[labels > 0].mean()) if (labels > 0).any() else 0.0,
        "classes": {
            entry.name: {
                "voxels": int((labels == index).sum()),
                "volume_ml": round(float((labels == index).sum()) * voxel_ml, 3),
            }
            for index, entry in enumerate(model.config.classes)
            if index > 0
        },
    }
    return VolumeSegmentation(
        labels=volume.with_voxels(labels, name=f"{volume.name} segmentation"),
        entropy=volume.with_voxels(entropy_volume, name=f"{volume.name} uncertainty"),
        probabilities=full_probabilities.astype(np.float32),
        axis=stack.layout.axis,
        figures=figures,
        warnings=warnings,
    )


def intensity_statistics(images: np.ndarray, background: float) -> tuple[float, float, float]:
    """(foreground fraction, mean, std) of the non-empty slices among model-range ``images`` ``[n, ..., S, S]``.

    Foreground is what lies above ``background + 0.02``; empty slices (no foreground) are left out,
    so the figures describe the anatomy, not how many slices around it were included.
    """
    foreground = images > background + 0.02
    nonempty = foreground.reshape(len(images), -1).any(axis=1)
    if not nonempty.any():
        return (0.0, background, 0.0)
    foreground, values = foreground[nonempty], images[nonempty][foreground[nonempty]]
    return (float(foreground.mean()), float(values.mean()), float(values.std()))


def intensity_warnings(
    statistics: tuple[float, float, float], reference: tuple[float, float, float] | None
) -> list[str]:
    """Warnings when an input's windowed intensities are far from the training data's.

    Far means: a foreground fraction under 1 % or off by more than 3×, a foreground mean more than
    0.35 (of the [-1, 1] range) away, or a spread off by more than 1.6×. Models without a reference
    only get the foreground-fraction check.
    """
    fraction, mean, spread = statistics
    problems = []
    if fraction < 0.01:
        problems.append(f"only {fraction:.1%} of the pixels are foreground")
    if reference is not None:
        ref_fraction, ref_mean, ref_spread = reference
        if fraction > 0 and not 1 / 3 <= fraction / max(ref_fraction, 1e-9) <= 3:
            problems.append(f"{fraction:.0%} of the pixels are foreground (training: {ref_fraction:.0%})")
        if abs(mean - ref_mean) > 0.35:
            problems.append(f"the mean foreground intensity is {mean:+.2f} (training: {ref_mean:+.2f})")
        if spread > 0 and not 1 / 1.6 <= spread / max(ref_spread, 1e-9) <= 1.6:
            problems.append(f"the intensity spread is {spread:.2f} (training: {ref_spread:.2f})")
    if not problems:
        return []
    message = (
        "The input's intensities are far outside the training distribution ("
        + "; ".join(problems)
        + "): check the modality and pre-processing (e.g. skull stripping); results may be unreliable."
    )
    LOG.warning(message)
    return [message]
