"""Alignment to the MNI152 template: affine registration (SimpleITK) and resampling both ways.

The bundled brain models were trained on subjects made from the MNI152 2009c template
(:mod:`latentdrift.fixtures.synthetic`), on the template's field of view. A real brain, skull-stripped and bias
corrected, is registered affinely to the template (Mattes mutual information, two resolutions, moments
initialisation: any acquisition orientation and voxel size, since everything happens in physical
space) and resampled onto the *model grid*: the template's field of view at the model's voxel size.
Results come back to the input's grid through the inverse transform, on the input's exact geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk

from ..core.volumes import Volume, volume_from_sitk, volume_to_sitk
from ..fixtures.sample_data import sample_volume_path

TEMPLATE_SPACING_MM = 2.0
"""The template is registered at this voxel size (and half of it at the coarse level)."""
SAMPLING_FRACTION = 0.2
SEED = 20_241_203
"""Seed of the registration's random metric sampling: the same input always gives the same transform."""


@lru_cache(maxsize=1)
def template() -> sitk.Image:
    """The MNI152 2009c T1 template as shipped in nilearn (skull-stripped; float32, 0–255, 1 mm)."""
    return sitk.Cast(sitk.ReadImage(str(sample_volume_path())), sitk.sitkFloat32)


def model_grid(spacing_mm: float) -> sitk.Image:
    """An empty image on the template's field of view at ``spacing_mm``: where a model's input is resampled."""
    reference = template()
    size = [
        max(1, round(n * s / spacing_mm))
        for n, s in zip(reference.GetSize(), reference.GetSpacing(), strict=True)
    ]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetOrigin(reference.GetOrigin())
    grid.SetDirection(reference.GetDirection())
    return grid


@dataclass(frozen=True)
class Alignment:
    """An affine map from template space to the input's physical space, and how well it fits.

    ``transform`` maps template points to input points (ITK's convention for resampling the input onto
    the template); ``correlation`` is Pearson's r between the aligned brain and the template where both
    are brain (T1 contrast gives a clearly positive r, an inverted contrast a negative one).
    """

    transform: sitk.Transform
    correlation: float

    def to_model_grid(self, volume: Volume, grid: sitk.Image) -> Volume:
        """``volume`` (on the input grid) resampled linearly onto a model ``grid`` (0 outside the input)."""
        image = sitk.Cast(volume_to_sitk(volume), sitk.sitkFloat32)
        resampled = sitk.Resample(image, grid, self.transform, sitk.sitkLinear, 0.0)
        return volume_from_sitk(resampled, name=volume.name)

    def to_input_grid(self, values: Volume, template_of_input: Volume, fill: float = 0.0) -> np.ndarray:
        """``values`` (a volume on a model grid) resampled linearly onto the input's grid: float32 ``[k, j, i]``."""
        image = sitk.Cast(volume_to_sitk(values), sitk.sitkFloat32)
        reference = volume_to_sitk(
            template_of_input.with_voxels(np.zeros(template_of_input.voxels.shape, np.uint8))
        )
        resampled = sitk.Resample(image, reference, self.transform.GetInverse(), sitk.sitkLinear, fill)
        return sitk.GetArrayFromImage(resampled).astype(np.float32)


def align_to_template(brain: Volume) -> Alignment:
    """Register a skull-stripped, bias-corrected brain (zero outside) affinely to the MNI152 template."""
    fixed = sitk.Shrink(template(), [round(TEMPLATE_SPACING_MM / s) for s in template().GetSpacing()])
    moving = sitk.Cast(volume_to_sitk(brain), sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_FRACTION, SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=200, gradientMagnitudeTolerance=1e-6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    transform = method.Execute(fixed, moving)
    return Alignment(transform, _correlation(moving, fixed, transform))


def _correlation(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform) -> float:
    """Pearson's r between the aligned brain and the template where both are brain: their tissue contrast."""
    aligned = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    reference = sitk.GetArrayFromImage(fixed)
    both = (aligned > 0) & (reference > 0)
    if both.sum() < 2 or aligned[both].std() == 0:
        return 0.0
    return float(np.corrcoef(aligned[both], reference[both])[0, 1])
