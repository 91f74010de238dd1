"""Slicer segmentation files (``.seg.nrrd``) from label volumes, without Slicer.

The engine process writes every segmentation it makes (the ``segmentation`` role of ``latentdrift
segment``; any role of the same kind, such as ``brain_mask``) as a ``.seg.nrrd`` file: one labelmap
layer on the volume's exact grid, and per segment its name, colour and terminology entry in the
header, as 3D Slicer writes them. The header is written by ``slicerio`` (PyPI; maintained with Slicer),
so the file opens in Slicer (``slicer.util.loadSegmentation``, or the module's loader in
:mod:`.scene`) with named, coloured segments, and in any NRRD reader as a label volume.

    write_segmentation_file(labels, [SegmentClass(1, "Brain", (0.9, 0.7, 0.6), TERMINOLOGY)], path)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import slicerio
from slicerio.segmentation import terminology_entry_from_string, terminology_entry_to_string

from ..core.errors import InputError
from ..core.volumes import Geometry, Volume

SUFFIX = ".seg.nrrd"
TERMINOLOGY_FIELDS = 7
"""A Slicer terminology entry: context~category~type~type modifier~anatomic context~region~region modifier."""


@dataclass(frozen=True)
class SegmentClass:
    """One structure of a label volume: its label value there, name, colour (RGB in [0, 1]) and terminology.

    ``terminology`` is Slicer's terminology entry string (``context~category~type~…``, codes as
    ``scheme^value^meaning``), e.g. ``"Segmentation category and type - 3D Slicer General Anatomy
    list~SCT^123037004^Anatomical Structure~SCT^12738006^Brain~^^~Anatomic codes - DICOM master
    list~^^~^^"``; empty for none. Any other text is kept as the segment's terminology tag as given.
    """

    label: int
    name: str
    color: tuple[float, float, float]
    terminology: str = ""


def write_segmentation_file(
    labels: Volume, classes: Sequence[SegmentClass], path: str | os.PathLike[str]
) -> Path:
    """Write ``labels`` (an integer label volume) as a Slicer ``.seg.nrrd`` with one segment per class.

    Each class's voxels (``labels.voxels == label``) become one segment, in the order of ``classes``,
    with label values 1, 2, … in the file (as Slicer numbers the segments of a layer). A class with
    no voxel still gets its (empty) segment, so every run of a model writes the same segments; label
    values of no class (background) are left out. The geometry is ``labels.geometry``, exactly.
    """
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise InputError(f"A segmentation file name must end in {SUFFIX}: got '{path.name}'.")
    if not np.issubdtype(labels.voxels.dtype, np.integer):
        raise InputError(
            f"'{labels.name}' holds {labels.voxels.dtype} values: a label volume holds integers."
        )
    segmentation = slicerio.create_segmentation(labels.shape_ijk, labels.geometry.ijk_to_lps())
    segmentation["containedRepresentationNames"] = ["Binary labelmap"]
    segmentation["masterRepresentation"] = "Binary labelmap"
    ijk_labels = labels.voxels.transpose(2, 1, 0)  # slicerio indexes voxels [i, j, k]
    for segment_class in classes:
        slicerio.add_segment(segmentation, ijk_labels == segment_class.label, _segment_fields(segment_class))
    path.parent.mkdir(parents=True, exist_ok=True)
    slicerio.write_segmentation(str(path), segmentation)
    return path


def read_segmentation_file(path: str | os.PathLike[str]) -> tuple[Volume, list[SegmentClass]]:
    """A ``.seg.nrrd`` with one labelmap layer as (label volume uint8 ``[k, j, i]``, its segments).

    The inverse of :func:`write_segmentation_file`: each segment's label value, name, colour and
    terminology entry string (empty when it has none). Files of several layers (overlapping segments)
    are refused: they hold no single label volume.
    """
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"Cannot read the segmentation '{path}': {error}") from error
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim != 3:
        raise InputError(
            f"'{path}' holds overlapping segments in several layers: it is no single label volume."
        )
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    geometry = Geometry(
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin=(float(ijk_to_lps[0, 3]), float(ijk_to_lps[1, 3]), float(ijk_to_lps[2, 3])),
        direction=ijk_to_lps[:3, :3] / spacing,
    )
    classes = [
        SegmentClass(
            int(segment["labelValue"]),
            str(segment["name"]),
            tuple(float(v) for v in segment["color"]),  # type: ignore[arg-type]
            terminology_entry_to_string(segment["terminology"]) if "terminology" in segment else "",
        )
        for segment in segmentation["segments"]
    ]
    labels = np.ascontiguousarray(voxels.transpose(2, 1, 0).astype(np.uint8))
    return Volume(labels, geometry, Path(path).name.removesuffix(SUFFIX)), classes


def _segment_fields(segment_class: SegmentClass) -> dict[str, Any]:
    """The segment's header fields: ID, name, colour and its terminology (parsed when it is a full entry)."""
    fields: dict[str, Any] = {
        "id": f"Segment_{segment_class.label}",
        "name": segment_class.name,
        "color": [float(value) for value in segment_class.color],
    }
    entry = segment_class.terminology
    if entry.count("~") == TERMINOLOGY_FIELDS - 1:
        fields["terminology"] = terminology_entry_from_string(entry)
    elif entry:
        fields["tags"] = {"TerminologyEntry": entry}
    return fields
