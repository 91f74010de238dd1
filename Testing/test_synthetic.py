"""Synthetic subjects from the MNI152 template: labels, determinism, variety, geometry."""

from __future__ import annotations

import numpy as np

from latentdrift.fixtures.synthetic import (
    CSF,
    GREY_MATTER,
    WHITE_MATTER,
    SubjectSettings,
    brain_tissue_template,
    synthetic_subject,
)

FAST = SubjectSettings(spacing_mm=3.0)


def test_template_labels_cover_the_brain() -> None:
    image, labels = brain_tissue_template()
    assert labels.geometry.is_close(image.geometry)
    counts = np.bincount(labels.voxels.ravel(), minlength=4)
    assert counts[CSF] > 50_000 and counts[GREY_MATTER] > 500_000 and counts[WHITE_MATTER] > 500_000
    brain = image.voxels > 0
    assert np.array_equal(labels.voxels > 0, brain)
    # white matter is brighter than grey matter, which is brighter than CSF, in a T1
    means = [image.voxels[labels.voxels == t].mean() for t in (CSF, GREY_MATTER, WHITE_MATTER)]
    assert means[0] < means[1] < means[2]


def test_subjects_are_deterministic_and_differ_by_seed() -> None:
    image_a, labels_a = synthetic_subject(7, FAST)
    image_b, labels_b = synthetic_subject(7, FAST)
    _, labels_c = synthetic_subject(8, FAST)
    assert np.array_equal(image_a.voxels, image_b.voxels) and np.array_equal(labels_a.voxels, labels_b.voxels)
    assert not np.array_equal(labels_a.voxels, labels_c.voxels)
    assert image_a.geometry.spacing == (3.0, 3.0, 3.0)
    assert image_a.geometry.is_close(labels_a.geometry)
    assert set(np.unique(labels_a.voxels)) == {0, 1, 2, 3}
    assert np.isfinite(image_a.voxels).all() and image_a.voxels.min() >= 0
