"""The MNI152 template's tissue prior, carried onto a brain and weighted into a model's class probabilities.

Classical tissue segmentation combines what the image says with where each tissue usually lies (SPM's
unified segmentation, FSL FAST and ANTs Atropos with prior maps). A brain model on the template grid
(``input.space`` ``mni152``) with ``tissue_prior_weight`` ``w > 0`` does the same: its tissue
probabilities ``p`` become

    q_c = (1 − p_0) · max(p_c, ε) · max(π_c, ε)^w / Σ_t max(p_t, ε) · max(π_t, ε)^w

over the tissue classes ``c`` (:data:`~.contract.TEMPLATE_TISSUES`); the background's ``p_0`` is kept.
``ε`` (:data:`FLOOR`) makes a zero a penalty, not a veto; ``w = 0`` gives ``p`` back.

``π`` is the template's prior (nilearn's MNI152 2009c grey- and white-matter maps, CSF the rest of the
template brain) *on this brain*: the front end's affine alignment brings the brain onto the template
grid, then :func:`subject_prior` registers the template to the brain deformably (SimpleITK's fast
symmetric-forces demons, three resolutions, as atlas-based segmentation does) and warps the prior with
that field, so the prior follows this brain's own folds and ventricles rather than the template's. The
bundled model's weight is chosen on synthetic heads (``benchmarks/realhead/tissue_prior.py --apply``: the
lowest negative log-likelihood of the true labels). Written here because no maintained Python library
applies a template prior to another model's probabilities; the formula is the one of a Bayesian tissue
classifier with a tempered prior.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import SimpleITK as sitk
from scipy.special import entr

from ..core.errors import ModelError
from ..core.volumes import Volume, volume_to_sitk
from ..fixtures.synthetic import template_tissue_probabilities
from ..segmentation.volume_segmentation import VolumeSegmentation
from .alignment import model_grid, template
from .contract import TEMPLATE_TISSUES

FLOOR = 1e-3
"""Probabilities (the model's and the prior's) are floored here before they are combined."""
ATLAS = "MNI152 2009c tissue maps (nilearn)"
REGISTRATION = "SimpleITK fast symmetric-forces demons, template to brain"
REGISTRATION_SPACING_MM = 2.0
"""The deformable registration runs on the template grid at this voxel size (its finest level)."""
DEMONS_SHRINK_FACTORS = (4, 2, 1)
"""Its resolutions, coarse to fine: 8, 4 and 2 mm."""
DEMONS_ITERATIONS = 50
"""Iterations at each resolution."""
DEMONS_SMOOTHING_MM = 1.5
"""Standard deviation of the Gaussian that regularises the displacement field after each iteration."""


def tissue_channels(class_names: list[str]) -> list[int]:
    """The indices of :data:`~.contract.TEMPLATE_TISSUES` among a model's ``class_names``."""
    missing = [name for name in TEMPLATE_TISSUES if name not in class_names]
    if missing:
        raise ModelError(
            f"The model asks for the template's tissue prior but has no class {missing[0]!r}; "
            f"its classes are {', '.join(class_names)}. Set its tissue_prior_weight to 0."
        )
    return [class_names.index(name) for name in TEMPLATE_TISSUES]


def weighted_probabilities(
    probabilities: np.ndarray, prior: np.ndarray, channels: list[int], weight: float
) -> np.ndarray:
    """``probabilities`` ``[C, …]`` with the tissue ``channels`` weighted by ``prior`` ``[3, …]`` (module formula).

    The result sums to 1 over ``C`` wherever the input does; ``weight`` 0 returns the input's values.
    """
    if weight == 0:
        return probabilities.copy()
    tissue = probabilities[channels]
    score = np.log(np.maximum(tissue, FLOOR)) + weight * np.log(np.maximum(prior, FLOOR))
    score -= score.max(axis=0, keepdims=True)
    share = np.exp(score)
    share /= share.sum(axis=0, keepdims=True)
    result = probabilities.copy()
    result[channels] = share * tissue.sum(axis=0, keepdims=True)
    return result.astype(np.float32)


def subject_prior(brain: Volume) -> np.ndarray:
    """The template's prior warped onto ``brain``: float32 ``[3, k, j, i]`` on ``brain``'s grid, in [0, 1].

    ``brain`` is a skull-stripped, bias-corrected brain (zero outside) on a model grid, as the front end
    gives it to the model (:meth:`~.head.PreparedHead.model_input`). The template, histogram-matched to
    the brain, is registered to it at :data:`REGISTRATION_SPACING_MM`; the displacement field ``u``
    (on the brain's side, ``template(x + u(x)) ≈ brain(x)``) carries the prior: ``π(x) = prior(x + u(x))``.
    """
    brain_image = sitk.Cast(volume_to_sitk(brain), sitk.sitkFloat32)
    coarse = model_grid(REGISTRATION_SPACING_MM)
    fixed = sitk.Resample(brain_image, coarse)
    moving = sitk.HistogramMatching(
        sitk.Resample(template(), coarse), fixed, numberOfHistogramLevels=256, numberOfMatchPoints=15
    )
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(DEMONS_ITERATIONS)
    demons.SetStandardDeviations(DEMONS_SMOOTHING_MM)
    field = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64, 3)
    field.CopyInformation(fixed)
    for shrink in DEMONS_SHRINK_FACTORS:
        level_fixed, level_moving = (sitk.Shrink(image, [shrink] * 3) for image in (fixed, moving))
        start = sitk.Resample(
            field, level_fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64
        )
        field = demons.Execute(level_fixed, level_moving, start)
    warp = sitk.DisplacementFieldTransform(
        sitk.Resample(field, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    )
    template_volume, probabilities = template_tissue_probabilities()
    warped = [
        sitk.GetArrayFromImage(
            sitk.Resample(
                volume_to_sitk(template_volume.with_voxels(channel)), brain_image, warp, sitk.sitkLinear, 0.0
            )
        )
        for channel in probabilities
    ]
    return np.stack(warped).astype(np.float32)


def with_tissue_prior(
    result: VolumeSegmentation, class_names: list[str], weight: float, prior: np.ndarray
) -> VolumeSegmentation:
    """A segmentation on a model grid (``result``) with ``prior`` ``[3, k, j, i]`` (on that grid) weighted in.

    Labels, probabilities and the entropy (normalised, of the new probabilities) change; the figures
    are the model's (:func:`~.tasks.segmentation_on_input` computes those of the result it returns).
    """
    probabilities = weighted_probabilities(result.probabilities, prior, tissue_channels(class_names), weight)
    entropy = np.clip(entr(probabilities).sum(axis=0) / np.log(len(class_names)), 0.0, 1.0)
    return replace(
        result,
        labels=result.labels.with_voxels(probabilities.argmax(axis=0).astype(np.uint8)),
        entropy=result.entropy.with_voxels(entropy.astype(np.float32)),
        probabilities=probabilities,
    )
