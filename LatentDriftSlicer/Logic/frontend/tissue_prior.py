"""The MNI152 template's tissue prior, weighted into a brain model's class probabilities.

Classical tissue segmentation combines what the image says with where each tissue usually lies (SPM's
unified segmentation, FSL FAST and ANTs Atropos with prior maps). A brain model on the template grid
(``input.space`` ``mni152``) with ``tissue_prior_weight`` ``w > 0`` does the same: its tissue
probabilities ``p`` become

    q_c = (1 − p_0) · max(p_c, ε) · max(π_c, ε)^w / Σ_t max(p_t, ε) · max(π_t, ε)^w

over the tissue classes ``c`` (:data:`~.contract.TEMPLATE_TISSUES`); the background's ``p_0`` is kept.
``π`` is the template's prior on the model grid: nilearn's MNI152 2009c grey- and white-matter maps,
and CSF the rest of the template brain. ``ε`` (:data:`FLOOR`) makes a zero a penalty, not a veto.
``w = 0`` gives ``p`` back. The brain reaches the template grid by the front end's affine alignment,
so the prior is as sharp as that alignment is good. The bundled model's weight is chosen on held-out
synthetic heads (``benchmarks/realhead/tissue_prior.py --apply``: the lowest negative log-likelihood of
the true labels). Written here because no maintained Python library applies a template prior to
another model's probabilities; the formula is the one of a Bayesian tissue classifier with a tempered prior.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from scipy.special import entr

from ..core.errors import ModelError
from ..core.volumes import volume_to_sitk
from ..fixtures.synthetic import template_tissue_probabilities
from ..segmentation.volume_segmentation import VolumeSegmentation
from .alignment import model_grid
from .contract import TEMPLATE_TISSUES

FLOOR = 1e-3
"""Probabilities (the model's and the prior's) are floored here before they are combined."""
ATLAS = "MNI152 2009c tissue maps (nilearn)"


@lru_cache(maxsize=2)
def template_tissue_prior(spacing_mm: float) -> np.ndarray:
    """The template's prior on the model grid at ``spacing_mm``: float32 ``[3, k, j, i]`` in [0, 1].

    Channels follow :data:`~.contract.TEMPLATE_TISSUES` (CSF, grey matter, white matter); they sum to 1
    inside the template brain and to 0 outside it.
    """
    template, probabilities = template_tissue_probabilities()
    grid = model_grid(spacing_mm)
    on_grid = [
        sitk.GetArrayFromImage(sitk.Resample(volume_to_sitk(template.with_voxels(channel)), grid))
        for channel in probabilities
    ]
    return np.stack(on_grid).astype(np.float32)


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


def with_tissue_prior(
    result: VolumeSegmentation, class_names: list[str], weight: float, spacing_mm: float
) -> VolumeSegmentation:
    """A segmentation on the model grid at ``spacing_mm`` (``result``) with the prior weighted in.

    Labels, probabilities and the entropy (normalised, of the new probabilities) change; the figures
    are the model's (:func:`~.tasks.segmentation_on_input` computes those of the result it returns).
    """
    probabilities = weighted_probabilities(
        result.probabilities, template_tissue_prior(spacing_mm), tissue_channels(class_names), weight
    )
    entropy = np.clip(entr(probabilities).sum(axis=0) / np.log(len(class_names)), 0.0, 1.0)
    return replace(
        result,
        labels=result.labels.with_voxels(probabilities.argmax(axis=0).astype(np.uint8)),
        entropy=result.entropy.with_voxels(entropy.astype(np.float32)),
        probabilities=probabilities,
    )
