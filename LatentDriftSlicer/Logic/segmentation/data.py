"""Training data for LDSeg: pairs of image and label volumes → model-ready slices.

Pairs come from a CSV (columns ``image`` and ``label``, paths relative to the CSV; an optional
``subject`` column keeps a subject's pairs together when splitting) or a folder holding
``<name>_image.<ext>`` / ``<name>_label.<ext>`` files. Each pair is checked (same grid, integer labels
within the model's classes), windowed with the model's intensity percentiles, cut along the model's
axis, padded to a square field of view and resized to the model size; labels are resized through
their one-hot channels (bilinear, then argmax) so thin structures are not aliased. For 3D models
(``config.spatial_dims == 3``) each pair gives one volume instead: the whole slice stack padded to a cube
field of view and resampled to ``image_size³`` (:func:`pair_volume`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from ..core.errors import InputError, MissingFileError
from ..core.resampling import SliceResizer, VolumeResizer
from ..core.values import Axis
from ..core.volumes import (
    VOLUME_SUFFIXES,
    IntensityWindow,
    Volume,
    extract_slices,
    foreground_fraction,
    read_volume,
)
from ..finetune.cohorts import split_subjects
from .ldseg import LDSegConfig


@dataclass(frozen=True)
class VolumePair:
    """An image volume, its label volume and the subject they belong to."""

    subject: str
    image: Path
    label: Path


def find_pairs(source: str | Path) -> list[VolumePair]:
    """Pairs listed in a CSV file or found in a folder (see the module docstring)."""
    source = Path(source)
    if not source.exists():
        raise MissingFileError(f"Training data '{source}' does not exist.")
    pairs = _pairs_from_csv(source) if source.is_file() else _pairs_from_folder(source)
    if not pairs:
        raise InputError(
            f"No image/label pairs in '{source}': give a CSV with 'image' and 'label' columns or a folder "
            "of <name>_image.nrrd / <name>_label.nrrd files."
        )
    return pairs


def _pairs_from_csv(path: Path) -> list[VolumePair]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"image", "label"} <= set(rows[0]):
        raise InputError(f"'{path}' needs the columns 'image' and 'label' (found: {', '.join(rows[0])}).")
    return [
        VolumePair(
            row.get("subject") or Path(row["image"]).name,
            path.parent / row["image"],
            path.parent / row["label"],
        )
        for row in rows
    ]


def _pairs_from_folder(folder: Path) -> list[VolumePair]:
    pairs = []
    for image in sorted(folder.iterdir()):
        name = image.name
        suffix = next((s for s in VOLUME_SUFFIXES if name.endswith("_image" + s)), None)
        if suffix is None:
            continue
        stem = name[: -len("_image" + suffix)]
        label = folder / f"{stem}_label{suffix}"
        if not label.exists():
            raise MissingFileError(f"'{image.name}' has no label volume '{label.name}' beside it.")
        pairs.append(VolumePair(stem, image, label))
    return pairs


def pair_slices(
    image: Volume, labels: Volume, config: LDSegConfig, min_foreground: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Model-ready slices of one pair: images ``(n, S, S)`` float32 in the model range, labels ``(n, S, S)`` uint8.

    Slices whose label foreground fraction is at most ``min_foreground`` are dropped (with the
    default 0, slices without any labelled voxel are dropped).
    """
    window = _checked_window(image, labels, config)
    axis = cast(Axis, config.axis)
    image_stack = extract_slices(image, axis)
    label_stack = extract_slices(labels, axis).slices.astype(np.int64)
    keep = foreground_fraction(label_stack, 0) > min_foreground
    rows, cols = image_stack.slices.shape[1:]
    resizer = SliceResizer((rows, cols), image_stack.layout.pixel_spacing, config.image_size)
    images = resizer.to_model(window.forward(image_stack.slices[keep]), background=config.intensity_range[0])
    return images, _labels_to_model(label_stack[keep], config.num_classes, resizer.to_model, class_axis=1)


def pair_volume(image: Volume, labels: Volume, config: LDSegConfig) -> tuple[np.ndarray, np.ndarray]:
    """One model-ready volume of a pair, for 3D models: images ``(1, S, S, S)`` float32, labels ``(1, S, S, S)`` uint8.

    The whole volume, cut along ``config.axis`` into a display-oriented stack (the layout
    :func:`latentdrift.segmentation.volume_segmentation.segment_volume` uses), padded to a cube field of view and resampled
    to ``S = config.image_size`` (:class:`~.resampling.VolumeResizer`). Checks as :func:`pair_slices`.
    """
    window = _checked_window(image, labels, config)
    axis = cast(Axis, config.axis)
    image_stack = extract_slices(image, axis)
    label_stack = extract_slices(labels, axis).slices.astype(np.int64)
    resizer = VolumeResizer(image_stack.slices.shape, image_stack.layout.spacing, config.image_size)
    images = resizer.to_model(window.forward(image_stack.slices), background=config.intensity_range[0])
    volume_labels = _labels_to_model(label_stack, config.num_classes, resizer.to_model, class_axis=0)
    return images[None], volume_labels[None]


def _labels_to_model(
    label_stack: np.ndarray,
    num_classes: int,
    to_model: Callable[..., np.ndarray],
    class_axis: int,
) -> np.ndarray:
    """Integer labels resized through their one-hot channels (``to_model`` each, stacked on ``class_axis``).

    Padding (no class) becomes background; returns the argmax over classes as uint8.
    """
    resized = np.stack(
        [to_model((label_stack == c).astype(np.float32), background=0.0) for c in range(num_classes)],
        axis=class_axis,
    )
    background = (slice(None),) * class_axis + (0,)
    resized[background] += (resized.sum(axis=class_axis) < 0.5) * 1.0  # padding is background
    return resized.argmax(axis=class_axis).astype(np.uint8)


def _checked_window(image: Volume, labels: Volume, config: LDSegConfig) -> IntensityWindow:
    """Refuse a pair on different grids or with labels outside the classes; the image's intensity window."""
    if not image.geometry.is_close(labels.geometry, 1e-4) or image.voxels.shape != labels.voxels.shape:
        raise InputError(
            f"'{image.name}' and '{labels.name}' are not on the same grid: resample the labels first."
        )
    label_values = np.unique(labels.voxels)
    if (
        label_values.min() < 0
        or label_values.max() >= config.num_classes
        or not np.all(label_values == np.round(label_values))
    ):
        raise InputError(
            f"'{labels.name}' holds label values {label_values.tolist()[:10]}, but the model has classes "
            f"0..{config.num_classes - 1} ({', '.join(config.class_names)})."
        )
    return IntensityWindow.from_percentiles(
        image.voxels, config.intensity_percentiles, config.intensity_range
    )


def load_training_slices(pairs: list[VolumePair], config: LDSegConfig) -> tuple[np.ndarray, np.ndarray]:
    """All model-ready slices of ``pairs``, concatenated (see :func:`pair_slices`).

    For a 3D config: one volume per pair, ``(N, S, S, S)`` (see :func:`pair_volume`).
    """
    images, labels = [], []
    for pair in pairs:
        image, label = read_volume(pair.image), read_volume(pair.label)
        pair_images, pair_labels = (
            pair_volume(image, label, config)
            if config.spatial_dims == 3
            else pair_slices(image, label, config)
        )
        images.append(pair_images)
        labels.append(pair_labels)
    return np.concatenate(images), np.concatenate(labels)


def split_by_subject(
    pairs: list[VolumePair], validation_fraction: float, seed: int
) -> tuple[list[VolumePair], list[VolumePair]]:
    """Training and validation pairs, never splitting a subject (:func:`split_subjects`)."""
    held_out = split_subjects([p.subject for p in pairs], validation_fraction, seed)
    return [p for p in pairs if p.subject not in held_out], [p for p in pairs if p.subject in held_out]
