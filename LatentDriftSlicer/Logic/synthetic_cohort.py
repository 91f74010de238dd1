"""Synthetic longitudinal cohorts: baseline and follow-up scans of the same synthetic subject under atrophy.

Everything here is **synthetic**: each subject is :func:`latentdrift.synthetic.synthetic_subject` (the
MNI152 template under a random deformation and intensity variation), and its follow-up scan is that
same image after a simulated atrophy model. A baseline/follow-up pair is therefore a *ground-truth
counterfactual pair*: the same anatomy, changed only by ageing and disease. No real patient data is
involved and nothing made here should be read as clinical.

Atrophy model (:func:`apply_atrophy`), for a fraction ``a`` of brain (grey + white matter) volume lost:

* **Ventricular enlargement** (``ventricle_share`` of the loss): the deep CSF (CSF farther than
  ``deep_csf_mm`` from the outside of the brain, i.e. mostly the ventricles) is smoothed into a field
  ``S``; the scan is resampled at ``x + k ∇S(x)``, which pushes tissue away from the ventricles. ``k`` is
  found by bisection so the tissue lost matches the target, and is capped so the map stays invertible
  (``k · |Hessian S| ≤ 0.8``). Image linear, labels nearest neighbour.
* **Cortical thinning / sulcal widening** (the rest): grey-matter voxels on the boundary with CSF or
  background are turned into CSF, the most exposed first (those with the most non-tissue around them),
  layer after layer, until the target is met; their intensity becomes the subject's CSF intensity.

Rates (:func:`atrophy_fraction`): annual brain volume loss of 0.2 %/year for cognitively normal (CN),
twice that for MCI and four times for AD, times 1.1 for men (a small sex term). Over an interval in
which the diagnosis progresses, the mean of the two diagnoses' rates is used (conversion assumed at
mid-interval). Annual conversion probabilities: CN→MCI 5 %, MCI→AD 15 %.

Cohort (:func:`make_cohort`): per subject a baseline (age 60–85, sex F/M, diagnosis CN/MCI/AD in fixed
proportions) and a follow-up 2–7 years later; with ``follow_ups > 1``, further follow-ups each 1–4
years after the previous one (sessions ``followup2``, ``followup3``, …). Every follow-up is the baseline
after the *cumulative* atrophy since baseline (the sum of each interval's loss), and the extra visits
are drawn from a generator of their own, so the baseline and first follow-up do not depend on
``follow_ups``. NRRD images and label maps and a ``cohort.csv`` in the format of
:mod:`latentdrift.train.cohorts` (subject, session, path, age, sex, diagnosis, label, ventricle_ml,
brain_ml, interval_years and atrophy_percent since baseline, synthetic). Everything is deterministic by
seed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .synthetic import BACKGROUND, CSF, GREY_MATTER, WHITE_MATTER, SubjectSettings, synthetic_subject
from .volumes import Volume, volume_from_sitk, volume_to_sitk, write_volume

DIAGNOSES = ("CN", "MCI", "AD")
ANNUAL_LOSS = {"CN": 0.002, "MCI": 0.004, "AD": 0.008}  # fraction of brain volume per year
SEX_FACTOR = {"F": 1.0, "M": 1.1}
CONVERSION = {"CN": ("MCI", 0.05), "MCI": ("AD", 0.15)}  # next diagnosis, annual probability
PROPORTIONS = (0.4, 0.35, 0.25)  # CN, MCI, AD at baseline
CSV_COLUMNS = (
    "subject",
    "session",
    "path",
    "age",
    "sex",
    "diagnosis",
    "label",
    "ventricle_ml",
    "brain_ml",
    "interval_years",
    "atrophy_percent",
    "synthetic",
)


MAX_JACOBIAN_STEP = 0.8
"""Cap on ``k · |Hessian S|``, which keeps the ventricular map ``x + k ∇S(x)`` invertible."""
BISECTION_STEPS = 14
"""Bisection steps of the search for ``k`` (solver precision, not a property of the atrophy)."""


@dataclass(frozen=True)
class AtrophySettings:
    """Shape of the atrophy model (see the module docstring)."""

    ventricle_share: float = 0.4
    """Part of the tissue loss made by enlarging the ventricles (the rest thins the cortex)."""
    deep_csf_mm: float = 12.0
    """CSF at least this far from the outside of the brain counts as deep (mostly the ventricles)."""
    smoothing_mm: float = 6.0
    """Gaussian width of the field ``S`` smoothed from the deep CSF."""


@dataclass(frozen=True)
class AtrophyResult:
    """A follow-up scan and what the model did: target and achieved brain volume loss (ml)."""

    image: Volume
    labels: Volume
    target_loss_ml: float
    ventricle_loss_ml: float
    cortical_loss_ml: float


def atrophy_fraction(years: float, sex: str, diagnosis: str, follow_up_diagnosis: str | None = None) -> float:
    """Fraction of brain volume lost over ``years`` (see the module docstring for the rates)."""
    if years < 0:
        raise ValueError("the interval must not be negative")
    rate = ANNUAL_LOSS[diagnosis.upper()]
    if follow_up_diagnosis is not None:
        rate = 0.5 * (rate + ANNUAL_LOSS[follow_up_diagnosis.upper()])
    return float(years * rate * SEX_FACTOR[sex.upper()[:1]])


def ventricle_mask(labels: np.ndarray, spacing: tuple[float, float, float], depth_mm: float) -> np.ndarray:
    """CSF deeper than ``depth_mm`` inside the brain (mostly the ventricles); ``spacing`` along i, j, k."""
    brain = sitk.GetImageFromArray((labels > BACKGROUND).astype(np.uint8))
    brain.SetSpacing(spacing)
    depth = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(
            brain, insideIsPositive=True, squaredDistance=False, useImageSpacing=True
        )
    )
    return (labels == CSF) & (depth > depth_mm)


def tissue_volumes_ml(labels: Volume, depth_mm: float = AtrophySettings.deep_csf_mm) -> tuple[float, float]:
    """(ventricle ml, brain ml): deep CSF (:func:`ventricle_mask`) and grey + white matter."""
    voxel_ml = float(np.prod(labels.geometry.spacing)) / 1000.0
    ventricles = ventricle_mask(labels.voxels, labels.geometry.spacing, depth_mm)
    brain = np.isin(labels.voxels, (GREY_MATTER, WHITE_MATTER))
    return float(ventricles.sum()) * voxel_ml, float(brain.sum()) * voxel_ml


def apply_atrophy(
    image: Volume, labels: Volume, fraction: float, seed: int = 0, settings: AtrophySettings | None = None
) -> AtrophyResult:
    """``image`` and ``labels`` after losing ``fraction`` of their brain volume (same grid, deterministic)."""
    settings = settings or AtrophySettings()
    voxel_ml = float(np.prod(labels.geometry.spacing)) / 1000.0
    brain_voxels = int(np.isin(labels.voxels, (GREY_MATTER, WHITE_MATTER)).sum())
    target = round(fraction * brain_voxels)
    warped_image, warped_labels = _enlarge_ventricles(
        image, labels, round(target * settings.ventricle_share), settings
    )
    warped_count = int(np.isin(warped_labels.voxels, (GREY_MATTER, WHITE_MATTER)).sum())
    ventricle_loss = brain_voxels - warped_count
    thinned_image, thinned_labels = _thin_cortex(
        warped_image, warped_labels, max(0, target - ventricle_loss), np.random.default_rng([seed, 1])
    )
    cortical_loss = warped_count - int(np.isin(thinned_labels.voxels, (GREY_MATTER, WHITE_MATTER)).sum())
    return AtrophyResult(
        thinned_image,
        thinned_labels,
        target * voxel_ml,
        ventricle_loss * voxel_ml,
        cortical_loss * voxel_ml,
    )


def _enlarge_ventricles(
    image: Volume, labels: Volume, target_voxels: int, settings: AtrophySettings
) -> tuple[Volume, Volume]:
    mask = ventricle_mask(labels.voxels, labels.geometry.spacing, settings.deep_csf_mm)
    if target_voxels <= 0 or not mask.any():
        return image, labels
    reference = volume_to_sitk(labels)
    field = sitk.GetImageFromArray(mask.astype(np.float32))
    field.CopyInformation(reference)
    smooth = sitk.SmoothingRecursiveGaussian(field, settings.smoothing_mm)
    gradient = sitk.GetArrayFromImage(sitk.Gradient(smooth, useImageSpacing=True, useImageDirection=True))
    spacing_kji = tuple(reversed(labels.geometry.spacing))
    hessian = sum(
        np.square(derivative)
        for component in range(3)
        for derivative in np.gradient(gradient[..., component], *spacing_kji)
    )
    k_max = MAX_JACOBIAN_STEP / max(float(np.sqrt(np.max(hessian))), 1e-12)
    source_labels = volume_to_sitk(labels)
    tissue = np.isin(labels.voxels, (GREY_MATTER, WHITE_MATTER))
    before = int(tissue.sum())

    def warp(k: float, volume: sitk.Image, interpolator: int) -> sitk.Image:
        displacement = sitk.GetImageFromArray((gradient * k).astype(np.float64), isVector=True)
        displacement.CopyInformation(reference)
        transform = sitk.DisplacementFieldTransform(displacement)
        return sitk.Resample(volume, reference, transform, interpolator, 0.0, volume.GetPixelID())

    def loss(k: float) -> int:
        warped = sitk.GetArrayFromImage(warp(k, source_labels, sitk.sitkNearestNeighbor))
        return before - int(np.isin(warped, (GREY_MATTER, WHITE_MATTER)).sum())

    low, high = 0.0, k_max
    if loss(high) > target_voxels:
        for _ in range(BISECTION_STEPS):
            middle = 0.5 * (low + high)
            low, high = (middle, high) if loss(middle) < target_voxels else (low, middle)
    k = high
    new_labels = volume_from_sitk(warp(k, source_labels, sitk.sitkNearestNeighbor))
    new_image = volume_from_sitk(warp(k, volume_to_sitk(image), sitk.sitkLinear))
    return (
        image.with_voxels(new_image.voxels.astype(np.float32)),
        labels.with_voxels(new_labels.voxels.astype(labels.voxels.dtype)),
    )


def _thin_cortex(
    image: Volume, labels: Volume, target_voxels: int, rng: np.random.Generator
) -> tuple[Volume, Volume]:
    """Turn ``target_voxels`` exposed grey-matter voxels into CSF, the most exposed first, layer by layer."""
    voxels = labels.voxels.copy()
    intensities = image.voxels.astype(np.float32, copy=True)
    csf_values = image.voxels[labels.voxels == CSF]
    csf_mean = float(np.median(csf_values)) if csf_values.size else 0.0
    csf_std = float(np.std(csf_values)) if csf_values.size else 0.0
    spacing = labels.geometry.spacing
    jitter = rng.uniform(0.0, 1e-3, voxels.shape)
    remaining = target_voxels
    while remaining > 0:
        outside = voxels <= CSF
        exposed_image = sitk.GetImageFromArray(outside.astype(np.float32))
        exposed_image.SetSpacing(spacing)
        exposure = sitk.GetArrayFromImage(
            sitk.DiscreteGaussian(exposed_image, [1.0] * 3, useImageSpacing=False)
        )
        grey = voxels == GREY_MATTER
        boundary = grey & (_dilate(outside) > 0)
        candidates = np.flatnonzero(boundary)
        if candidates.size == 0:
            break
        order = np.argsort(-(exposure.ravel()[candidates] + jitter.ravel()[candidates]), kind="stable")
        chosen = candidates[order[:remaining]]
        voxels.ravel()[chosen] = CSF
        intensities.ravel()[chosen] = np.clip(
            rng.normal(csf_mean, csf_std * 0.5, chosen.size), 0.0, None
        ).astype(np.float32)
        remaining -= chosen.size
    return image.with_voxels(intensities), labels.with_voxels(voxels)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """6-neighbour dilation of a boolean mask (no wrap-around)."""
    grown = mask.copy()
    for axis in range(3):
        forward = [slice(None)] * 3
        backward = [slice(None)] * 3
        forward[axis], backward[axis] = slice(1, None), slice(None, -1)
        grown[tuple(forward)] |= mask[tuple(backward)]
        grown[tuple(backward)] |= mask[tuple(forward)]
    return grown


# --------------------------------------------------------------------------- cohorts


@dataclass(frozen=True)
class Visit:
    """One scheduled scan of a synthetic subject."""

    subject: str
    session: str
    age: float
    sex: str
    diagnosis: str
    interval_years: float
    atrophy_fraction: float


def diagnosis_after(diagnosis: str, years: float, draw: float) -> str:
    """The diagnosis ``years`` later: the next one (:data:`CONVERSION`) when ``draw`` (uniform in
    [0, 1)) falls below the chance of converting within that time, else the same."""
    conversion = CONVERSION.get(diagnosis)
    if conversion is not None and draw < 1.0 - (1.0 - conversion[1]) ** years:
        return conversion[0]
    return diagnosis


def plan_subject(index: int, rng: np.random.Generator, years: tuple[float, float]) -> tuple[Visit, Visit]:
    """Baseline and follow-up visits of subject ``index`` (draws from ``rng`` in a fixed order)."""
    subject = f"sub-{index + 1:03d}"
    age = round(float(rng.uniform(60.0, 85.0)), 1)
    sex = "F" if rng.random() < 0.5 else "M"
    diagnosis = DIAGNOSES[int(rng.choice(3, p=PROPORTIONS))]
    interval = round(float(rng.uniform(*years)), 1)
    follow_up = diagnosis_after(diagnosis, interval, float(rng.random()))
    fraction = atrophy_fraction(interval, sex, diagnosis, follow_up)
    baseline = Visit(subject, "baseline", age, sex, diagnosis, 0.0, 0.0)
    return baseline, Visit(subject, "followup", round(age + interval, 1), sex, follow_up, interval, fraction)


def later_visits(first: Visit, count: int, rng: np.random.Generator) -> list[Visit]:
    """``count`` further follow-ups after ``first``, each 1–4 years after the previous one.

    Diagnoses progress by :func:`diagnosis_after` (a draw only where a conversion is possible);
    ``interval_years`` and ``atrophy_fraction`` are since baseline (the previous visit's fraction
    plus this interval's).
    """
    visits = []
    previous = first
    for number in range(2, count + 2):
        step = round(float(rng.uniform(1.0, 4.0)), 1)
        diagnosis = previous.diagnosis
        if diagnosis in CONVERSION:
            diagnosis = diagnosis_after(diagnosis, step, float(rng.random()))
        fraction = previous.atrophy_fraction + atrophy_fraction(
            step, previous.sex, previous.diagnosis, diagnosis
        )
        previous = Visit(
            previous.subject,
            f"followup{number}",
            round(previous.age + step, 1),
            previous.sex,
            diagnosis,
            round(previous.interval_years + step, 1),
            fraction,
        )
        visits.append(previous)
    return visits


def make_cohort(
    folder: str | Path,
    subjects: int = 8,
    seed: int = 0,
    spacing_mm: float = 2.0,
    years: tuple[float, float] = (2.0, 7.0),
    subject_settings: SubjectSettings | None = None,
    atrophy: AtrophySettings | None = None,
    follow_ups: int = 1,
    baseline_atrophy: tuple[float, float] = (0.0, 0.0),
) -> Path:
    """Write a synthetic longitudinal cohort into ``folder`` and return its ``cohort.csv`` (deterministic).

    Each subject has a baseline and ``follow_ups`` (≥ 1) follow-up scans (see the module docstring).
    ``baseline_atrophy`` (a range of brain-volume fractions, drawn per subject from a generator of its
    own) ages the baseline itself by the atrophy model, so that baselines differ in ventricle size and
    cortical thickness the way older brains do, and an editor cannot learn where the template's
    ventricles lie instead of how ventricles grow. With the default (none) the cohort is as before.
    """
    if follow_ups < 1:
        raise ValueError(f"follow_ups={follow_ups}: a longitudinal cohort needs at least one follow-up.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = replace(subject_settings or SubjectSettings(), spacing_mm=spacing_mm)
    rng = np.random.default_rng(seed)
    records: list[dict[str, str]] = []
    for index in range(subjects):
        subject_seed = int(rng.integers(0, 2**31 - 1))
        baseline, follow_up = plan_subject(index, rng, years)
        extra = later_visits(follow_up, follow_ups - 1, np.random.default_rng([seed, index, 2]))
        image, labels = synthetic_subject(subject_seed, settings)
        if baseline_atrophy != (0.0, 0.0):
            aged = float(np.random.default_rng([seed, index, 3]).uniform(*baseline_atrophy))
            older = apply_atrophy(image, labels, aged, subject_seed + 1, atrophy)
            image, labels = older.image, older.labels
        records.append(_write_visit(folder, baseline, image, labels, atrophy))
        for visit in (follow_up, *extra):
            result = apply_atrophy(image, labels, visit.atrophy_fraction, subject_seed, atrophy)
            records.append(_write_visit(folder, visit, result.image, result.labels, atrophy))
    csv_path = folder / "cohort.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    return csv_path


def _write_visit(
    folder: Path, visit: Visit, image: Volume, labels: Volume, atrophy: AtrophySettings | None
) -> dict[str, str]:
    stem = f"{visit.subject}/{visit.subject}_ses-{visit.session}"
    name = f"{visit.subject}_{visit.session}"
    write_volume(image.with_voxels(image.voxels, name=f"{name}_t1"), folder / f"{stem}_t1.nrrd")
    write_volume(labels.with_voxels(labels.voxels, name=f"{name}_labels"), folder / f"{stem}_labels.nrrd")
    ventricles, brain = tissue_volumes_ml(labels, (atrophy or AtrophySettings()).deep_csf_mm)
    return {
        "subject": visit.subject,
        "session": visit.session,
        "path": f"{stem}_t1.nrrd",
        "age": f"{visit.age:.1f}",
        "sex": visit.sex,
        "diagnosis": visit.diagnosis,
        "label": f"{stem}_labels.nrrd",
        "ventricle_ml": f"{ventricles:.2f}",
        "brain_ml": f"{brain:.2f}",
        "interval_years": f"{visit.interval_years:.1f}",
        "atrophy_percent": f"{100.0 * visit.atrophy_fraction:.3f}",
        "synthetic": "yes",
    }
