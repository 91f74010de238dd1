"""Offline evaluation metrics: distribution distances on features, masked image similarity, ventricles.

Used by the evidence benchmark (``benchmarks/evidence/``) and usable on any model outputs:

* :func:`frechet_distance` — FID on feature vectors (MONAI's ``FIDMetric``); :func:`kernel_distance` —
  KID, the unbiased polynomial-kernel MMD² of Bińkowski et al. (torchmetrics'
  ``KernelInceptionDistance`` with the features passed through an identity extractor). Both take
  features from any encoder: with no Inception weights offline the numbers compare only with each
  other under the same encoder, never with published FID/KID.
* :func:`masked_ssim`, :func:`masked_psnr` — SSIM (scikit-image's local SSIM map, averaged over a
  mask) and PSNR over the voxels of a mask; :func:`changed_region` and :func:`ssim_outside` — the
  similarity to the source away from where the truth changed.
* :class:`VentricleMeasure` — one ventricle-volume measurement applied identically to a source, a
  counterfactual and a true follow-up (see :func:`ventricle_measure`).

scikit-image and torchmetrics come with the ``dev`` extra (``pip install -e .[dev]``); they are imported
when a function needs them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..core.volumes import Volume
from ..fixtures.synthetic import CSF, GREY_MATTER
from ..fixtures.synthetic_cohort import AtrophySettings, ventricle_mask


def frechet_distance(real: np.ndarray, generated: np.ndarray) -> float:
    """FID between feature sets ``real`` (N, D) and ``generated`` (M, D), N, M ≥ 2 (MONAI ``FIDMetric``).

    ≥ 0 up to rounding; 0 for identical sets. Features, not images: the encoder is the caller's.
    """
    from monai.metrics import FIDMetric

    _check_features(real, generated)
    value = FIDMetric()(
        torch.as_tensor(generated, dtype=torch.float64), torch.as_tensor(real, dtype=torch.float64)
    )
    return float(value)


def kernel_distance(
    real: np.ndarray, generated: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over ``subsets`` random subsets) of feature sets (N, D) and (M, D), N, M ≥ 2.

    Unbiased polynomial-kernel MMD², kernel ``(x·y / D + 1)³`` (torchmetrics'
    ``KernelInceptionDistance`` given the features through ``nn.Identity``). Each subset draws
    ``min(subset_size, N, M)`` features of each set without replacement (seeded by ``seed``). The
    estimate is unbiased, so it is ≈ 0 (and may be slightly negative) for two samples of one
    distribution.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_features(real, generated)
    size = min(subset_size, len(real), len(generated))
    with warnings.catch_warnings():  # "will save all extracted features": they are already in memory
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=subsets, subset_size=size)
    metric.update(torch.as_tensor(real, dtype=torch.float64), real=True)
    metric.update(torch.as_tensor(generated, dtype=torch.float64), real=False)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        mean, std = metric.compute()
    finally:
        torch.random.set_rng_state(state)
    return float(mean), float(std)


def _check_features(real: np.ndarray, generated: np.ndarray) -> None:
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {real.shape} and {generated.shape}")
    if len(real) < 2 or len(generated) < 2:
        raise ValueError("FID and KID need at least two feature vectors in each set")


def masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """Mean of the local SSIM map of ``a`` and ``b`` (same shape, 2D or 3D) over ``mask`` (bool).

    scikit-image ``structural_similarity`` (7-voxel uniform window, or the largest odd window that
    fits); in [-1, 1], 1 for identical images. ``data_range``: the intensity range of the images.
    """
    from skimage.metrics import structural_similarity

    if a.shape != b.shape or mask.shape != a.shape:
        raise ValueError(f"shapes differ: {a.shape}, {b.shape}, mask {mask.shape}")
    if not mask.any():
        raise ValueError("the mask is empty")
    window = min(7, *(size - 1 + size % 2 for size in a.shape))
    _, local = structural_similarity(
        a.astype(np.float64), b.astype(np.float64), data_range=data_range, full=True, win_size=window
    )
    return float(local[mask].mean())


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """PSNR (dB) of ``a`` against ``b`` over the voxels of ``mask`` (scikit-image); inf when equal there."""
    from skimage.metrics import peak_signal_noise_ratio

    if not mask.any():
        raise ValueError("the mask is empty")
    reference, test = b[mask].astype(np.float64), a[mask].astype(np.float64)
    if np.array_equal(reference, test):
        return float("inf")
    return float(peak_signal_noise_ratio(reference, test, data_range=data_range))


def changed_region(labels_a: np.ndarray, labels_b: np.ndarray, margin_voxels: int = 2) -> np.ndarray:
    """Voxels whose label differs between two label maps (same grid), dilated by ``margin_voxels`` (bool).

    The dilation uses full connectivity (a cube of side ``2 · margin_voxels + 1``), the shape of an
    SSIM window: with a margin ≥ half the window, SSIM outside the region never sees the change.
    """
    changed = labels_a != labels_b
    if margin_voxels > 0 and changed.any():
        cube = ndimage.generate_binary_structure(changed.ndim, changed.ndim)
        changed = ndimage.binary_dilation(changed, structure=cube, iterations=margin_voxels)
    return changed


def ssim_outside(
    image: np.ndarray, source: np.ndarray, region: np.ndarray, mask: np.ndarray, data_range: float
) -> float:
    """SSIM of ``image`` to ``source`` over ``mask`` minus ``region`` (1 for an unchanged image there)."""
    return masked_ssim(image, source, mask & ~region, data_range)


@dataclass(frozen=True)
class VentricleMeasure:
    """Ventricle volume from intensities: voxels darker than ``threshold`` inside ``roi``, in ml.

    The threshold and the region come from the *source* scan only (:func:`ventricle_measure`), so the
    same measurement applies unchanged to the source, a counterfactual of it and the true follow-up
    (all on the source's grid). Darker voxels (more CSF) never decrease the volume.
    """

    threshold: float
    roi: np.ndarray
    voxel_ml: float

    def volume_ml(self, voxels: np.ndarray) -> float:
        """The measured ventricle volume (ml) of ``voxels`` [k, j, i] on the source's grid."""
        if voxels.shape != self.roi.shape:
            raise ValueError(f"volume shape {voxels.shape} differs from the source's {self.roi.shape}")
        return float(((voxels < self.threshold) & self.roi).sum()) * self.voxel_ml


def ventricle_measure(
    image: Volume,
    labels: Volume,
    roi_mm: float = 6.0,
    depth_mm: float = AtrophySettings.deep_csf_mm,
) -> VentricleMeasure:
    """The measurement of a source scan ``image`` with its tissue ``labels`` (0–3, same grid).

    * threshold: halfway between the median intensity of the source's CSF and of its grey matter;
    * region: the source's ventricles (:func:`latentdrift.fixtures.synthetic_cohort.ventricle_mask`, CSF deeper
      than ``depth_mm``) dilated by ``roi_mm`` (room for them to grow), within the source's brain
      (label > 0).
    """
    voxels = labels.voxels
    values = image.voxels
    if not (voxels == CSF).any() or not (voxels == GREY_MATTER).any():
        raise ValueError("the source labels need CSF and grey matter to set the threshold")
    threshold = 0.5 * (
        float(np.median(values[voxels == CSF])) + float(np.median(values[voxels == GREY_MATTER]))
    )
    spacing = labels.geometry.spacing
    ventricles = ventricle_mask(voxels, spacing, depth_mm)
    steps = max(1, round(roi_mm / min(spacing)))
    roi = ndimage.binary_dilation(ventricles, iterations=steps) if ventricles.any() else ventricles
    roi = roi & (voxels > 0)
    return VentricleMeasure(threshold, roi, float(np.prod(spacing)) / 1000.0)
