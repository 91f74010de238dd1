"""What an input volume already is, before the front end touches it: a CT, a skull-stripped brain, a head?

Cheap checks on the voxels and geometry only (no model). They decide which steps the front end can skip
(an already skull-stripped T1 needs no brain extraction) and which inputs a brain model must refuse with
a message that says why (a CT in Hounsfield units, a single slice, a field of view too small for a head).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.errors import InputError
from ..core.volumes import Volume

CT_AIR_HU = -900.0
"""Voxels at or below this are air in a CT (Hounsfield units); MR intensities are never this negative."""
CT_AIR_FRACTION = 0.05
MIN_HEAD_EXTENT_MM = 100.0
"""A head (or a brain) spans at least this along each of its two largest axes."""
MIN_SLICES = 8
BRAIN_ML = (600.0, 2600.0)
"""Plausible adult brain volumes (ml, CSF included): a skull-stripped input's foreground lies within."""
STRIPPED_BACKGROUND_FRACTION = 0.2
STRIPPED_LARGEST_COMPONENT = 0.95


@dataclass(frozen=True)
class Recognition:
    """What the checks found: ``skull_stripped`` (foreground is one brain-sized blob on an exactly constant
    background), ``foreground`` (bool ``[k, j, i]``, the voxels above that background; None otherwise)."""

    skull_stripped: bool
    foreground: np.ndarray | None


def refuse_unless_head_sized(volume: Volume) -> None:
    """Raise :class:`InputError` for a volume a brain model cannot work on: a CT, a slab, a tiny field of view.

    CT is recognised by its air: at least 5 % of the voxels at or below −900 (Hounsfield units).
    """
    voxels = volume.voxels
    sample = voxels[:: max(1, voxels.shape[0] // 64)]  # about 64 slices are enough to count the air
    if np.count_nonzero(sample <= CT_AIR_HU) >= CT_AIR_FRACTION * sample.size:
        raise InputError(
            f"'{volume.name}' looks like a CT (Hounsfield units: {100 * CT_AIR_FRACTION:.0f} % or more of the "
            f"voxels are at or below {CT_AIR_HU:g}): this model expects a T1-weighted MRI of the head. "
            "Give a T1 MRI, or run without the brain front end (--no-preprocess) at your own risk."
        )
    if min(voxels.shape) < MIN_SLICES:
        raise InputError(
            f"'{volume.name}' has only {min(voxels.shape)} slice(s) along one axis ({volume.shape_ijk} voxels): "
            "the brain front end needs a 3D head volume. Give the whole 3D scan, or run without the front end "
            "(--no-preprocess) to work slice by slice."
        )
    extent = sorted(n * s for n, s in zip(volume.shape_ijk, volume.geometry.spacing, strict=True))
    if extent[1] < MIN_HEAD_EXTENT_MM:
        raise InputError(
            f"'{volume.name}' spans only {extent[1]:.0f} × {extent[2]:.0f} mm: too small for a head (at least "
            f"{MIN_HEAD_EXTENT_MM:.0f} mm). Check the voxel spacing in the file's header, or run without the "
            "front end (--no-preprocess)."
        )


def recognise(volume: Volume) -> Recognition:
    """Whether ``volume`` is already a skull-stripped brain.

    Skull-stripped means: at least 20 % of the voxels hold exactly the minimum value (the background a
    brain extraction leaves), the rest is one connected blob (95 % in the largest component) whose volume
    is that of a brain (600–2600 ml). A head with skull and scalp fails every part of this: its air is
    noisy, and its foreground holds 3 litres and more.
    """
    voxels = volume.voxels
    background = voxels == voxels.min()
    if background.mean() < STRIPPED_BACKGROUND_FRACTION:
        return Recognition(False, None)
    foreground = ~background
    voxel_ml = float(np.prod(volume.geometry.spacing)) / 1000.0
    if not BRAIN_ML[0] <= foreground.sum() * voxel_ml <= BRAIN_ML[1]:
        return Recognition(False, None)
    components, count = ndimage.label(foreground)
    if count == 0:
        return Recognition(False, None)
    largest = np.bincount(components.ravel())[1:].max()
    if largest < STRIPPED_LARGEST_COMPONENT * foreground.sum():
        return Recognition(False, None)
    return Recognition(True, foreground)
