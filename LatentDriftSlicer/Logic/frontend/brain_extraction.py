"""Brain extraction with deepbet (Fisch et al., 2024; MIT licence), a maintained extractor that works offline.

deepbet's two networks ship as TorchScript files inside its PyPI wheel, installed in a top-level
``data/models/`` folder of site-packages; they are located from the installed distribution's own file
list (:func:`deepbet_weights`), never by guessing paths. Loading these files of a pinned dependency is the
one exception to the engine's safetensors-only rule: users' model folders are still never unpickled.
deepbet itself re-orients the head to RAS, finds the brain's bounding box with a small network, segments
it at 256³ and keeps the largest connected component with its holes filled. It is given the head cropped
to its bounding box (:func:`head_box`), so that an empty field of view around the head changes nothing.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import InputError, ModelError
from ..core.volumes import Volume
from .bias_field import head_mask

WEIGHT_FILES = ("data/models/model.pt", "data/models/bbox_model.pt")
HEAD_MARGIN_MM = 15.0
"""Empty margin left around the head when the volume is cropped for deepbet (:func:`head_box`)."""
BRAIN_ML = (400.0, 2800.0)
"""A brain deepbet finds outside this range (ml) is none: the input is not a head MRI (a newborn's brain
is about 400 ml, a large adult's with its CSF under 2.5 l)."""


def deepbet_weights() -> tuple[Path, Path]:
    """The installed deepbet's (segmentation, bounding-box) TorchScript files, from its distribution's file list."""
    try:
        distribution = metadata.distribution("deepbet")
    except metadata.PackageNotFoundError as error:
        raise ModelError("Brain extraction needs deepbet: pip install 'deepbet==1.0.2'.") from error
    listed = {str(path).replace("\\", "/"): path for path in distribution.files or []}
    located = []
    for name in WEIGHT_FILES:
        if name not in listed:
            raise ModelError(
                f"The installed deepbet lists no '{name}': reinstall it (pip install 'deepbet==1.0.2')."
            )
        path = Path(str(distribution.locate_file(listed[name])))
        if not path.is_file():
            raise ModelError(
                f"deepbet's '{name}' is missing at {path}: reinstall it (pip install 'deepbet==1.0.2')."
            )
        located.append(path)
    return located[0], located[1]


@lru_cache(maxsize=2)
def _extractor(device: str) -> Any:
    """deepbet's ``BrainExtraction`` with both networks on ``device`` (loaded once per process)."""
    from deepbet.bet import BrainExtraction

    model, bbox_model = deepbet_weights()
    extractor = BrainExtraction(no_gpu=True, model_path=str(model), bbox_model_path=str(bbox_model))
    extractor.model.to(device)
    extractor.bbox_model.to(device)
    return extractor


def extract_brain(volume: Volume, device: torch.device) -> np.ndarray:
    """The brain mask of a T1 head: bool ``[k, j, i]`` on ``volume``'s grid.

    Raises :class:`InputError` when deepbet finds no brain, or a "brain" of a volume no brain has
    (:data:`BRAIN_ML`): the input is then not a head MRI.
    """
    import nibabel as nib

    box = head_box(volume)
    corner = np.eye(4)
    corner[:3, 3] = [box[2].start, box[1].start, box[0].start]  # the box's first voxel, (i, j, k)
    image = nib.Nifti1Image(
        np.ascontiguousarray(volume.voxels[box].transpose(2, 1, 0), dtype=np.float32),
        volume.geometry.ijk_to_ras() @ corner,
    )
    try:
        _, mask_image, _ = _extractor(str(device)).run(image)
    except (AssertionError, ValueError) as error:  # deepbet's own checks: no foreground, no component
        raise InputError(_no_brain(volume, 0.0)) from error
    mask = np.zeros(volume.voxels.shape, bool)
    mask[box] = np.asarray(mask_image.dataobj).transpose(2, 1, 0) > 0
    brain_ml = float(mask.sum()) * float(np.prod(volume.geometry.spacing)) / 1000.0
    if not BRAIN_ML[0] <= brain_ml <= BRAIN_ML[1]:
        raise InputError(_no_brain(volume, brain_ml))
    return np.ascontiguousarray(mask)


def head_box(volume: Volume) -> tuple[slice, slice, slice]:
    """The ``[k, j, i]`` slices of the head's bounding box (:func:`~.bias_field.head_mask`) with
    :data:`HEAD_MARGIN_MM` around it, within the volume.

    deepbet finds the brain's box on the whole volume shrunk to 128³ and normalises intensities by that
    volume's quantiles: a large empty field of view around the head coarsens the one and shifts the other
    (60 mm of empty border grew the ROBEX head's brain mask by 5 %). Cropping to the head first makes the
    mask independent of the field of view.
    """
    head = head_mask(volume)
    if not head.any():
        return (slice(None), slice(None), slice(None))
    margins = [round(HEAD_MARGIN_MM / s) for s in volume.geometry.spacing[::-1]]
    box = []
    for axis, margin in enumerate(margins):
        inside = np.flatnonzero(head.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(0, inside[0] - margin), min(head.shape[axis], inside[-1] + margin + 1)))
    return (box[0], box[1], box[2])


def _no_brain(volume: Volume, brain_ml: float) -> str:
    return (
        f"No brain found in '{volume.name}' (brain extraction found {brain_ml:.0f} ml, where a brain has "
        f"{BRAIN_ML[0]:.0f}–{BRAIN_ML[1]:.0f} ml): this model expects a T1-weighted MRI of the head. Give a "
        "head MRI, or run without the brain front end (--no-preprocess)."
    )
