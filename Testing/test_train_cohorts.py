"""Cohorts: bad rows are skipped with a reason, slices are cached, pairs and splits follow subjects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from train_support import quick_config, tiny_base, write_blob, write_cohort

from latentdrift.core.errors import InputError
from latentdrift.core.volumes import read_volume, write_dicom_series
from latentdrift.finetune import cohorts
from latentdrift.finetune.cohorts import (
    SliceSettings,
    longitudinal_pairs,
    prepare_cohort,
    read_cohort,
    split_subjects,
    validate_rows,
    write_report,
)
from latentdrift.finetune.jobs import create_job, run_job

SETTINGS = SliceSettings(size=16)


def _bad_cohort(folder: Path) -> Path:
    """A cohort with 4 good rows and one row of every kind of problem (lines 6–13)."""
    four_d = sitk.GetImageFromArray(
        np.random.default_rng(0).normal(size=(2, 4, 8, 8)).astype(np.float32), isVector=False
    )
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(four_d, str(folder / "fourd.nii.gz"))
    labels = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 3, (6, 20, 20)).astype(np.uint8))
    sitk.WriteImage(labels, str(folder / "labels.nrrd"))
    (folder / "garbage.nrrd").write_bytes(b"not a volume at all")
    return write_cohort(
        folder,
        subjects=2,
        extra_lines=[
            "m1,t0,missing.nrrd,70,F,CN,A",  # line 6
            "m2,t0,fourd.nii.gz,70,F,CN,A",  # line 7
            "m3,t0,s0_t0.nrrd,old,F,CN,A",  # line 8
            "m4,t0,,70,F,CN,A",  # line 9
            "m5,t0,s0_t0.nrrd,70,F",  # line 10
            "m6,t0,labels.nrrd,70,F,CN,A",  # line 11
            "m7,t0,garbage.nrrd,70,F,CN,A",  # line 12
            "m8,t0,s0_t0.nrrd,70,X,CN,A",  # line 13
        ],
    )


def test_bad_rows_are_skipped_named_and_the_job_trains_on_the_good_ones(tmp_path: Path) -> None:
    cohort = _bad_cohort(tmp_path / "cohort")
    data = prepare_cohort(cohort, SETTINGS, tmp_path / "cache")
    assert data.report["rows_total"] == 12 and data.report["rows_used"] == 4
    reasons = {p["line"]: p["reason"] for p in data.report["problems"]}
    assert sorted(reasons) == list(range(6, 14))
    assert "does not exist" in reasons[6]
    assert "4D" in reasons[7] or "dimension" in reasons[7].lower()
    assert "not a number" in reasons[8]
    assert "path is empty" in reasons[9]
    assert "malformed row" in reasons[10]
    assert "label map" in reasons[11]
    assert "read" in reasons[12].lower()
    assert "Unknown sex" in reasons[13]
    _json, markdown = write_report(data.report, tmp_path / "report")
    text = markdown.read_text(encoding="utf-8")
    assert all(f"| {line} |" in text for line in range(6, 14))

    job = tmp_path / "job"
    create_job(job, quick_config(cohort, tiny_base(tmp_path / "base"), "basic", tmp_path / "cache", steps=1))
    summary = run_job(job)
    assert summary["figures"]["last"] > 0
    report = json.loads((job / "cohort_report.json").read_text(encoding="utf-8"))
    assert len(report["problems"]) == 8 and report["rows_used"] == 4
    assert "8 cohort row(s) were skipped" in (job / "model" / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_slices_are_cached_and_a_changed_file_invalidates_the_cache(tmp_path: Path, monkeypatch) -> None:
    cohort = write_cohort(tmp_path / "cohort", subjects=2, sessions=1)
    first = prepare_cohort(cohort, SETTINGS, tmp_path / "cache")
    assert first.images.shape[1:] == (16, 16) and first.images.dtype == np.float32
    assert first.images.min() >= -1.0 and first.images.max() <= 1.0
    assert {p.name for p in (tmp_path / "cache" / first.key).iterdir()} == {"slices.npz", "index.json"}

    def no_extraction(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(cohorts, "_extract", no_extraction)
    again = prepare_cohort(cohort, SETTINGS, tmp_path / "cache")
    assert again.key == first.key and np.array_equal(again.images, first.images)
    monkeypatch.undo()
    write_blob(tmp_path / "cohort" / "s1_t0.nrrd", seed=99, shape=(7, 20, 20))
    changed = prepare_cohort(cohort, SETTINGS, tmp_path / "cache")
    assert changed.key != first.key and len(changed.slices) == len(first.slices) + 1
    assert prepare_cohort(cohort, SliceSettings(size=24), tmp_path / "cache").key != changed.key


def test_prompts_follow_the_job_style(tmp_path: Path) -> None:
    from latentdrift.counterfactual.prompts import PromptOptions

    data = prepare_cohort(write_cohort(tmp_path / "c", subjects=1), SETTINGS, tmp_path / "cache")
    simple = data.prompt(0, PromptOptions("simple", True))
    assert simple == "a brain MRI of a 70 year old female with CN"
    assert data.prompt(1, PromptOptions("diverse", False)) == "an image of a brain MRI"
    assert data.prompt(0, PromptOptions("simple", True), "<tok> brain MRI").startswith("a <tok> brain MRI of")


def test_longitudinal_pairs_are_ordered_and_need_one_grid(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    cohort = write_cohort(folder, subjects=2, sessions=2)
    write_blob(folder / "s1_t1.nrrd", seed=11, spacing=1.5)  # subject s1: the later session on another grid
    data = prepare_cohort(cohort, SETTINGS, tmp_path / "cache")
    pairs, problems = longitudinal_pairs(data)
    assert len(pairs) == 6  # s0: 6 common slices; s1 refused
    for source, target in pairs:
        assert data.attributes(source).age == 70 and data.attributes(target).age == 75
        assert data.slices[source]["index"] == data.slices[target]["index"]
    assert (
        len(problems) == 1 and "inconsistent geometry" in problems[0].reason and problems[0].subject == "s1"
    )


def test_split_keeps_subjects_together() -> None:
    subjects = [f"s{i}" for i in range(10) for _ in range(3)]
    held = split_subjects(subjects, 0.2, seed=0)
    assert len(held) == 2 and held == split_subjects(subjects, 0.2, seed=0)
    assert split_subjects(["a", "a"], 0.5, 0) == set()


def test_folder_cohorts_with_dicom_series(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    write_blob(folder / "a.nrrd", 1)
    volume = read_volume(write_blob(tmp_path / "b.nrrd", 2))
    write_dicom_series(volume.with_voxels(np.round(volume.voxels).astype(np.int16)), folder / "b_dicom")
    rows, problems = read_cohort(folder)
    assert [r.subject for r in rows] == ["a", "b_dicom"] and not problems
    data = prepare_cohort(folder, SETTINGS, tmp_path / "cache")
    assert data.report["rows_used"] == 2


def test_segmentation_rows_need_labels_on_the_grid_with_known_values(tmp_path: Path) -> None:
    folder = tmp_path / "seg"
    folder.mkdir()
    write_blob(folder / "img.nrrd", 1)
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[:, 8:12, 8:12] = 1
    for name, values, spacing in (("ok", labels, 1.0), ("bad", labels * 5, 1.0), ("grid", labels, 2.0)):
        image = sitk.GetImageFromArray(values)
        image.SetSpacing((spacing,) * 3)
        sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
    (folder / "cohort.csv").write_text(
        "subject,path,label\na,img.nrrd,ok.nrrd\nb,img.nrrd,bad.nrrd\nc,img.nrrd,grid.nrrd\nd,img.nrrd,\n",
        encoding="utf-8",
    )
    rows, _ = read_cohort(folder / "cohort.csv")
    good, bad = validate_rows(rows, label_classes=2)
    assert [r.subject for r in good] == ["a"]
    reasons = {p.subject: p.reason for p in bad}
    assert "unknown labels [5]" in reasons["b"]
    assert "inconsistent geometry" in reasons["c"]
    assert "no label path" in reasons["d"]


def test_a_cohort_without_any_usable_row_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("path\nmissing.nrrd\n", encoding="utf-8")
    with pytest.raises(InputError, match="No usable slice"):
        prepare_cohort(tmp_path / "c.csv", SETTINGS, tmp_path / "cache")
