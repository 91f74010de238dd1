"""Segmentation of whole volumes: slice, normalise, resample, predict, and put the results back on the input grid.

``segment_volume`` is the engine call behind ``latentdrift segment``, the Slicer panel and the console:
a :class:`~.volumes.Volume` and any :class:`~.segmenters.Segmenter` (LDSeg, or another registered kind)
in, a :class:`VolumeSegmentation` (labels, entropy, class probabilities on the input's exact geometry)
out. The model's :class:`~.segmenters.InputSpec` says how its input is prepared. Slices outside the
requested range get label 0 and entropy 0.

3D models (``spec.spatial_dims == 3``) take the same path with one difference: instead of resizing
each slice, the whole slice stack (display-oriented along ``spec.axis``) is padded to a cube field of
view and resampled to ``image_size³`` (:class:`~.resampling.VolumeResizer`), predicted as one volume, and
the results are resampled back onto the stack and reassembled on the input grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import ParameterError
from ..core.progress import ProgressCallback
from ..core.resampling import SliceResizer, VolumeResizer
from ..core.settings import SegmentSettings
from ..core.values import Axis
from ..core.volumes import FOREGROUND_MARGIN, SliceStack, Volume, nonempty_slices, reassemble, windowed_slices
from .segmenters import InputSpec, Segmenter

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeSegmentation:
    """Segmentation results on the input grid.

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


SlicePredictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Model-range slices ``(n, 1, S, S)`` → (class probabilities ``(n, C, S, S)``, entropy ``(n, S, S)`` in [0, 1]).

For 3D specs the input is one volume ``(1, 1, S, S, S)`` and the outputs ``(1, C, S, S, S)``, ``(1, S, S, S)``.
"""


def segment_volume(
    volume: Volume, segmenter: Segmenter, settings: SegmentSettings, progress: ProgressCallback | None = None
) -> VolumeSegmentation:
    """Segment ``volume`` slice by slice (3D models: as one volume) with ``segmenter``; see the module docstring."""
    spec = segmenter.spec
    axis = settings.axis or spec.axis
    if axis != spec.axis:
        raise ParameterError(
            f"This model was trained on {spec.axis} slices; segmenting {axis} slices would give wrong "
            f"results. Use --axis {spec.axis} (or a model trained on {axis} slices)."
        )

    def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        on_progress = (lambda done, total: progress(done, total, "segmenting")) if progress else None
        result = segmenter.predict(images, settings, on_progress)
        return result.probabilities, result.entropy

    return segment_volume_with(volume, spec, settings.slices, predict)


def segment_volume_with(
    volume: Volume, spec: InputSpec, slices: str | None, predict: SlicePredictor
) -> VolumeSegmentation:
    """The volume pipeline around any slice predictor that follows ``spec``'s input conventions.

    Window (``spec.intensity_percentiles`` → ``spec.intensity_range``), cut along ``spec.axis``,
    pad and resize to ``spec.image_size``, ``predict``, resize back, renormalise the probabilities and
    reassemble onto the input grid. Used by every :class:`~.segmenters.Segmenter` and by the
    benchmarks' deterministic baseline. With ``spec.spatial_dims == 3`` the whole stack is resampled
    to one ``image_size³`` volume.
    """
    cut = windowed_slices(volume, spec.axis, slices, spec.intensity_percentiles, spec.intensity_range)
    stack = cut.stack
    to_model, from_model = stack_resampling(stack, spec)
    background = spec.intensity_range[0]
    images = to_model(cut.windowed, background)
    warnings = intensity_warnings(intensity_statistics(images, background), spec.intensity_reference)
    model_probabilities, model_entropy = predict(images)
    probabilities = np.clip(from_model(model_probabilities), 0.0, 1.0)
    probabilities /= np.maximum(probabilities.sum(axis=1, keepdims=True), 1e-12)
    entropy = np.clip(from_model(model_entropy), 0.0, 1.0)
    return _on_input_grid(volume, stack, probabilities, entropy, spec, warnings)


def stack_resampling(
    stack: SliceStack, spec: InputSpec
) -> tuple[Callable[[np.ndarray, float], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """(to model, from model) for a slice stack at ``spec``'s resolution and dimensionality.

    2D: ``to_model(slices [n, rows, cols], background)`` → images ``(n, 1, S, S)``; ``from_model`` maps
    ``(n, [C,] S, S)`` → ``(n, [C,] rows, cols)``. 3D: the whole stack → one volume ``(1, 1, S, S, S)``
    (:class:`~.resampling.VolumeResizer`); ``from_model`` maps ``(1, [C,] S, S, S)`` → ``(n, [C,] rows, cols)``,
    the same stack-first layout as 2D.
    """
    if spec.spatial_dims == 2:
        resizer = SliceResizer(stack.slices.shape[1:], stack.layout.pixel_spacing, spec.image_size)
        return (lambda slices, background: resizer.to_model(slices, background)[:, None]), resizer.from_model
    cube = VolumeResizer(stack.slices.shape, stack.layout.spacing, spec.image_size)

    def from_model(volumes: np.ndarray) -> np.ndarray:
        resized = cube.from_model(volumes[0])  # ([C,] n, rows, cols)
        return np.ascontiguousarray(np.moveaxis(resized, 0, 1)) if resized.ndim == 4 else resized

    return (lambda slices, background: cube.to_model(slices, background)[None, None]), from_model


def _on_input_grid(
    volume: Volume,
    stack: SliceStack,
    probabilities: np.ndarray,
    entropy: np.ndarray,
    spec: InputSpec,
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
    return assemble_segmentation(
        volume, labels, entropy_volume, full_probabilities, spec.class_names, stack, warnings
    )


def assemble_segmentation(
    volume: Volume,
    labels: np.ndarray,
    entropy: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    stack: SliceStack,
    warnings: list[str],
) -> VolumeSegmentation:
    """A :class:`VolumeSegmentation` on ``volume``'s grid, with its figures (volumes per class, mean entropy).

    ``labels`` uint8 and ``entropy`` ``[k, j, i]``, ``probabilities`` ``[C, k, j, i]``; ``class_names[0]``
    is the background; ``stack`` the slices that were segmented (their axis and count are recorded).
    """
    voxel_ml = float(np.prod(volume.geometry.spacing)) / 1000.0
    figures = {
        "slices": stack.count,
        "mean_entropy": float(entropy[labels > 0].mean()) if (labels > 0).any() else 0.0,
        "classes": {
            name: {
                "voxels": int((labels == index).sum()),
                "volume_ml": round(float((labels == index).sum()) * voxel_ml, 3),
            }
            for index, name in enumerate(class_names)
            if index > 0
        },
    }
    return VolumeSegmentation(
        labels=volume.with_voxels(labels, name=f"{volume.name} segmentation"),
        entropy=volume.with_voxels(entropy.astype(np.float32), name=f"{volume.name} uncertainty"),
        probabilities=probabilities.astype(np.float32),
        axis=stack.layout.axis,
        figures=figures,
        warnings=warnings,
    )


def intensity_statistics(images: np.ndarray, background: float) -> tuple[float, float, float]:
    """(foreground fraction, mean, std) of the non-empty slices among model-range ``images`` ``[n, ..., S, S]``.

    Foreground is what lies :data:`~latentdrift.core.volumes.FOREGROUND_MARGIN` above ``background``; empty
    slices (:func:`~latentdrift.core.volumes.nonempty_slices`) are left out, so the figures describe the
    anatomy, not how many slices around it were included.
    """
    foreground = images > background + FOREGROUND_MARGIN
    nonempty = nonempty_slices(images, background)
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
