"""Bias-field correction: SimpleITK's N4, fitted on a downsampled image and applied at full resolution."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..core.volumes import Volume, volume_to_sitk

FIT_SPACING_MM = 4.0
"""N4 is fitted on the image shrunk to about this voxel size: the field is smooth, and 4 mm fits in seconds."""
ITERATIONS = (50, 50, 30, 20)
"""N4's iterations per fitting level (four B-spline levels, each doubling the control-point grid)."""


def head_mask(volume: Volume) -> np.ndarray:
    """Bool ``[k, j, i]``: the voxels brighter than the background (Otsu's threshold), where N4 fits."""
    image = sitk.Cast(volume_to_sitk(volume), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1)).astype(bool)


def correct_bias_field(volume: Volume, mask: np.ndarray) -> tuple[Volume, np.ndarray]:
    """N4 bias-field correction of ``volume`` fitted inside ``mask`` (bool ``[k, j, i]``).

    Returns the corrected volume (float32, ``voxels / field``) and the multiplicative field (float32,
    ``[k, j, i]`` on the input grid, scaled to mean 1 inside ``mask`` so the corrected intensities keep the
    input's units). The field is fitted on the image shrunk to about :data:`FIT_SPACING_MM` and evaluated
    at full resolution from its B-spline control points.
    """
    image = sitk.Cast(volume_to_sitk(volume), sitk.sitkFloat32)
    image = sitk.Maximum(image, 1e-3)  # N4 fits the log intensity: keep it finite
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(image)
    shrink = [max(1, round(FIT_SPACING_MM / spacing)) for spacing in image.GetSpacing()]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(ITERATIONS))
    corrector.Execute(sitk.Shrink(image, shrink), sitk.Shrink(mask_image, shrink))
    field = np.exp(sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image))).astype(np.float32)
    field /= np.float32(field[mask].mean())
    corrected = (volume.voxels.astype(np.float32) / field).astype(np.float32)
    return volume.with_voxels(corrected, name=volume.name), field
