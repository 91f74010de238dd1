"""Offline evaluation metrics (latentdrift.evaluation.metrics): FID/KID on features, masked SSIM/PSNR, ventricles."""

from __future__ import annotations

import numpy as np
import pytest

from latentdrift.evaluation.metrics import (
    changed_region,
    frechet_distance,
    kernel_distance,
    masked_psnr,
    masked_ssim,
    ssim_outside,
    ventricle_measure,
)
from latentdrift.fixtures.synthetic import SubjectSettings, synthetic_subject
from latentdrift.fixtures.synthetic_cohort import apply_atrophy


@pytest.fixture
def features() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(400, 8))


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift(features: np.ndarray) -> None:
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    small = frechet_distance(features, features + 0.5)
    large = frechet_distance(features, features + 1.0)
    assert small == pytest.approx(8 * 0.25, rel=1e-6)  # a pure shift adds |Δμ|²
    assert large > small


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, _ = kernel_distance(a, b, subsets=20, subset_size=200)
    shifted, _ = kernel_distance(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.02 * shifted
    assert shifted > 0
    assert kernel_distance(a, b, subsets=5, seed=3) == kernel_distance(a, b, subsets=5, seed=3)


def test_fid_and_kid_refuse_mismatched_or_tiny_sets(features: np.ndarray) -> None:
    with pytest.raises(ValueError):
        frechet_distance(features, features[:, :4])
    with pytest.raises(ValueError):
        kernel_distance(features, features[:1])


def test_ssim_and_psnr_inside_a_mask() -> None:
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 1, (12, 14, 16))
    mask = np.ones(image.shape, bool)
    assert masked_ssim(image, image, mask, 1.0) == pytest.approx(1.0)
    assert masked_psnr(image, image, mask, 1.0) == float("inf")
    noisy = image + 0.01
    assert masked_psnr(noisy, image, mask, 1.0) == pytest.approx(40.0)
    assert masked_ssim(noisy + rng.normal(0, 0.2, image.shape), image, mask, 1.0) < 0.9


def test_ssim_outside_the_changed_region_is_one_when_only_the_region_changed() -> None:
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 1, (20, 20, 20))
    labels_a = np.zeros(image.shape, np.uint8)
    labels_b = labels_a.copy()
    labels_b[8:11, 8:11, 8:11] = 1
    region = changed_region(labels_a, labels_b, margin_voxels=3)  # margin ≥ half the 7-voxel window
    assert region.sum() > (labels_a != labels_b).sum()
    edited = image.copy()
    edited[labels_a != labels_b] = 0.0
    brain = np.ones(image.shape, bool)
    assert ssim_outside(image, image, region, brain, 1.0) == pytest.approx(1.0)
    assert ssim_outside(edited, image, region, brain, 1.0) == pytest.approx(1.0)
    assert masked_ssim(edited, image, brain, 1.0) < 1.0


def test_ventricle_measure_is_monotone_and_sees_atrophy() -> None:
    image, labels = synthetic_subject(7, SubjectSettings(spacing_mm=4.0))
    measure = ventricle_measure(image, labels)
    source = measure.volume_ml(image.voxels)
    assert source > 0
    scale = float(np.ptp(image.voxels))
    volumes = [measure.volume_ml(image.voxels - shift * scale) for shift in (0.0, 0.05, 0.2, 0.5)]
    assert volumes == sorted(volumes) and volumes[-1] > volumes[0]
    follow_up = apply_atrophy(image, labels, 0.05, seed=7)
    assert measure.volume_ml(follow_up.image.voxels) > source
    with pytest.raises(ValueError):
        measure.volume_ml(image.voxels[:-1])
