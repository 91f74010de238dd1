"""Synthetic longitudinal cohorts: atrophy model, determinism, cohort CSV accepted by the cohort reader."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from latentdrift.core.volumes import read_volume
from latentdrift.finetune.cohorts import read_cohort, validate_rows
from latentdrift.fixtures.synthetic import CSF, GREY_MATTER, WHITE_MATTER, SubjectSettings, synthetic_subject
from latentdrift.fixtures.synthetic_cohort import (
    apply_atrophy,
    atrophy_fraction,
    make_cohort,
    tissue_volumes_ml,
)

FAST = SubjectSettings(spacing_mm=3.0)


@pytest.fixture(scope="module")
def subject():
    return synthetic_subject(5, FAST)


def test_rates_follow_diagnosis_sex_and_interval() -> None:
    assert atrophy_fraction(1.0, "F", "CN") == pytest.approx(0.002)
    assert atrophy_fraction(5.0, "F", "MCI") == pytest.approx(2 * atrophy_fraction(5.0, "F", "CN"))
    assert atrophy_fraction(5.0, "F", "AD") == pytest.approx(4 * atrophy_fraction(5.0, "F", "CN"))
    assert atrophy_fraction(5.0, "M", "CN") > atrophy_fraction(5.0, "F", "CN")
    assert atrophy_fraction(4.0, "F", "CN", "MCI") == pytest.approx(4.0 * 0.003)
    assert atrophy_fraction(0.0, "M", "AD") == 0.0


def test_atrophy_enlarges_ventricles_and_shrinks_brain_more_in_ad(subject) -> None:
    image, labels = subject
    ventricles0, brain0 = tissue_volumes_ml(labels)
    results = {
        dx: apply_atrophy(image, labels, atrophy_fraction(5.0, "F", dx), seed=5) for dx in ("CN", "AD")
    }
    volumes = {dx: tissue_volumes_ml(r.labels) for dx, r in results.items()}
    for dx, (ventricles, brain) in volumes.items():
        result = results[dx]
        assert ventricles > ventricles0 and brain < brain0
        # the loss achieved is the planned one (to a voxel), and split between both mechanisms
        assert brain0 - brain == pytest.approx(result.target_loss_ml, abs=0.03)
        assert result.ventricle_loss_ml > 0 and result.cortical_loss_ml > 0
        # same grid, same labels, finite image; background untouched
        assert result.image.geometry.is_close(image.geometry) and result.labels.geometry.is_close(
            labels.geometry
        )
        assert (
            result.image.voxels.shape == image.voxels.shape
            and result.labels.voxels.dtype == labels.voxels.dtype
        )
        assert set(np.unique(result.labels.voxels)) <= {0, 1, 2, 3}
        assert np.isfinite(result.image.voxels).all()
        # voxels that became CSF look like CSF in the image (darker than the tissue they were)
        became_csf = (result.labels.voxels == CSF) & (labels.voxels != CSF)
        assert result.image.voxels[became_csf].mean() < image.voxels[became_csf].mean()
    assert volumes["AD"][0] > volumes["CN"][0]  # more ventricular growth in AD at the same interval
    assert volumes["AD"][1] < volumes["CN"][1]  # more brain loss in AD
    # tissue only turns into CSF: no new tissue appears where there was none
    grown = np.isin(results["AD"].labels.voxels, (GREY_MATTER, WHITE_MATTER)) & ~np.isin(
        labels.voxels, (GREY_MATTER, WHITE_MATTER)
    )
    assert grown.sum() < 0.01 * np.isin(labels.voxels, (GREY_MATTER, WHITE_MATTER)).sum()


def test_atrophy_is_deterministic(subject) -> None:
    image, labels = subject
    a = apply_atrophy(image, labels, 0.02, seed=3)
    b = apply_atrophy(image, labels, 0.02, seed=3)
    assert np.array_equal(a.labels.voxels, b.labels.voxels) and np.array_equal(a.image.voxels, b.image.voxels)


def _cohort(folder: Path, seed: int) -> Path:
    return make_cohort(folder, subjects=2, seed=seed, spacing_mm=3.0)


def test_cohort_is_deterministic_valid_and_longitudinal(tmp_path: Path) -> None:
    csv_a = _cohort(tmp_path / "a", 11)
    csv_b = _cohort(tmp_path / "b", 11)
    csv_c = _cohort(tmp_path / "c", 12)
    assert csv_a.read_text() == csv_b.read_text()
    assert csv_a.read_text() != csv_c.read_text()

    rows, problems = read_cohort(csv_a)
    assert problems == [] and len(rows) == 4
    good, bad = validate_rows(rows, label_classes=4)
    assert bad == [] and len(good) == 4
    for row_a, row_b in zip(rows, read_cohort(csv_b)[0], strict=True):
        assert np.array_equal(read_volume(row_a.image).voxels, read_volume(row_b.image).voxels)

    by_subject: dict[str, dict[str, object]] = {}
    for row in rows:
        by_subject.setdefault(row.subject, {})[row.session] = row
    assert len(by_subject) == 2
    for sessions in by_subject.values():
        base, follow = sessions["baseline"], sessions["followup"]
        assert 60 <= base.attributes.age <= 85
        interval = float(follow.extra["interval_years"])
        assert 2.0 <= interval <= 7.0
        assert follow.attributes.age == pytest.approx(base.attributes.age + interval, abs=0.11)
        assert base.attributes.sex == follow.attributes.sex
        assert base.attributes.diagnosis in ("CN", "MCI", "AD")
        assert (base.attributes.diagnosis, follow.attributes.diagnosis) in {
            ("CN", "CN"),
            ("CN", "MCI"),
            ("MCI", "MCI"),
            ("MCI", "AD"),
            ("AD", "AD"),
        }
        assert float(follow.extra["ventricle_ml"]) > float(base.extra["ventricle_ml"])
        assert float(follow.extra["brain_ml"]) < float(base.extra["brain_ml"])
        assert base.extra["synthetic"] == "yes"
        base_image, follow_image = read_volume(base.image), read_volume(follow.image)
        assert follow_image.voxels.shape == base_image.voxels.shape
        assert follow_image.geometry.is_close(base_image.geometry)
        assert read_volume(follow.label).geometry.is_close(base_image.geometry)
        assert base_image.geometry.spacing == pytest.approx((3.0, 3.0, 3.0))


def test_further_follow_ups_extend_the_cohort_without_changing_its_first_visits(tmp_path: Path) -> None:
    one = make_cohort(tmp_path / "one", subjects=2, seed=11, spacing_mm=3.0)
    three = make_cohort(tmp_path / "three", subjects=2, seed=11, spacing_mm=3.0, follow_ups=3)
    first_visits = [
        line for line in three.read_text().splitlines() if "followup2" not in line and "followup3" not in line
    ]
    assert first_visits == one.read_text().splitlines()

    rows, problems = read_cohort(three)
    assert problems == [] and len(rows) == 8
    by_subject: dict[str, list] = {}
    for row in rows:
        by_subject.setdefault(row.subject, []).append(row)
    for visits in by_subject.values():
        assert [v.session for v in visits] == ["baseline", "followup", "followup2", "followup3"]
        ages = [v.attributes.age for v in visits]
        intervals = [float(v.extra["interval_years"]) for v in visits]
        assert all(0.89 <= b - a <= 4.11 for a, b in itertools.pairwise(ages[1:]))
        assert all(i == pytest.approx(a - ages[0], abs=0.21) for i, a in zip(intervals, ages, strict=True))
        atrophy = [float(v.extra["atrophy_percent"]) for v in visits]
        ventricles = [float(v.extra["ventricle_ml"]) for v in visits]
        brain = [float(v.extra["brain_ml"]) for v in visits]
        assert atrophy == sorted(atrophy) and len(set(atrophy)) == 4
        assert ventricles == sorted(ventricles) and brain == sorted(brain, reverse=True)
        order = {"CN": 0, "MCI": 1, "AD": 2}
        stages = [order[v.attributes.diagnosis] for v in visits]
        assert stages == sorted(stages)


def test_a_cohort_needs_a_follow_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one follow-up"):
        make_cohort(tmp_path, subjects=1, follow_ups=0)


def test_aged_baselines_have_larger_ventricles_and_still_grow(tmp_path: Path) -> None:
    young = make_cohort(tmp_path / "young", subjects=2, seed=11, spacing_mm=3.0)
    aged = make_cohort(tmp_path / "aged", subjects=2, seed=11, spacing_mm=3.0, baseline_atrophy=(0.05, 0.1))
    ventricles = {}
    for name, csv in (("young", young), ("aged", aged)):
        rows, problems = read_cohort(csv)
        assert problems == []
        ventricles[name] = {(r.subject, r.session): float(r.extra["ventricle_ml"]) for r in rows}
    for (subject, session), volume in ventricles["aged"].items():
        if session == "baseline":
            assert volume > ventricles["young"][(subject, session)]
            assert ventricles["aged"][(subject, "followup")] > volume
