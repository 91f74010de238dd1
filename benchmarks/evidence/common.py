"""Shared pieces of the evidence pipeline: sizes, cached stages, cohorts, fine-tuning jobs, generation.

Every stage writes its outputs under the work folder with a *key* (a hash of everything that decides
them); a later run with the same key reads them back instead of recomputing, so an interrupted run
resumes where it stopped and a changed size recomputes only what depends on it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentdrift.counterfactual.edit import EditSettings, clear_bundle_cache, generate_slices, load_bundle
from latentdrift.counterfactual.prompts import Attributes, PromptOptions, describe
from latentdrift.finetune.cohorts import CohortData, CohortRow, SliceSettings, prepare_cohort, read_cohort
from latentdrift.finetune.config import FinetuneConfig
from latentdrift.finetune.job_folder import JobFolder
from latentdrift.finetune.jobs import create_job, run_job
from latentdrift.finetune.metadata import recorded_drift
from latentdrift.finetune.schemes import make_scheme
from latentdrift.fixtures.synthetic_cohort import make_cohort, plan_subject

NEEDED_DIAGNOSES = ("CN", "AD")


@dataclass(frozen=True)
class Sizes:
    """Every size of one evidence run (recorded in the outputs); see ``run.py --help`` for each."""

    train_subjects: int
    test_subjects: int
    pair_subjects: int
    spacing_mm: float
    steps: int
    editor_steps: int
    batch_size: int
    samples: int
    sample_steps: int
    guidance: float
    deltas: tuple[float, ...]
    cf_steps: int
    image_guidance: float
    search_grid: tuple[float, ...]
    search_samples: int
    search_steps: int
    feature_dim: int
    encoder_epochs: int
    classifier_samples: int
    classifier_epochs: int
    num_class_images: int
    seed: int


QUICK = Sizes(
    train_subjects=3,
    test_subjects=3,
    pair_subjects=2,
    spacing_mm=4.0,
    steps=3,
    editor_steps=3,
    batch_size=2,
    samples=6,
    sample_steps=2,
    guidance=7.5,
    deltas=(0.0, 0.1),
    cf_steps=2,
    image_guidance=1.5,
    search_grid=(-0.1, 0.0, 0.1),
    search_samples=2,
    search_steps=2,
    feature_dim=16,
    encoder_epochs=3,
    classifier_samples=8,
    classifier_epochs=3,
    num_class_images=2,
    seed=0,
)
FULL = Sizes(  # about an hour on 2 CPU cores (1 thread) with the bundled base; see README.md
    train_subjects=8,
    test_subjects=6,
    pair_subjects=20,
    spacing_mm=2.0,
    steps=300,
    editor_steps=400,
    batch_size=4,
    samples=64,
    sample_steps=20,
    guidance=7.5,
    deltas=(-0.1, -0.05, 0.0, 0.05, 0.1),
    cf_steps=10,
    image_guidance=1.5,
    search_grid=tuple(round(-0.2 + 0.05 * i, 2) for i in range(9)),
    search_samples=8,
    search_steps=10,
    feature_dim=32,
    encoder_epochs=10,
    classifier_samples=128,
    classifier_epochs=10,
    num_class_images=16,
    seed=0,
)


# --------------------------------------------------------------------------- caching


def key_of(value: Any) -> str:
    """A short stable hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def model_key(folder: Path) -> str:
    """A key of a model folder's contents (path and the bytes of every JSON and safetensors file in it).

    Cached results of a given or bundled model are redone when its weights or settings change, even
    where the folder has no ``summary.json`` (published models have none).
    """
    digests = [
        [str(path.relative_to(folder)), hashlib.sha256(path.read_bytes()).hexdigest()]
        for path in sorted(folder.rglob("*"))
        if path.suffix in (".json", ".safetensors")
    ]
    return key_of([str(folder.resolve()), digests])


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (NaN/inf refused: they must be reported as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


class Stages:
    """Cached stages under ``root`` and how long each took in this run (0 s and ``cached`` when reused)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.timings: dict[str, dict[str, Any]] = {}

    def json(self, name: str, key: Any, compute: Callable[[], Any]) -> Any:
        """The JSON value of stage ``name`` for ``key``: read back, or computed and stored."""
        path = self.root / "stages" / f"{name}.json"
        digest = key_of(key)
        if path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("key") == digest:
                self._time(name, 0.0, True)
                return stored["value"]
        started = time.monotonic()
        value = compute()
        write_json(path, {"key": digest, "value": value})
        self._time(name, time.monotonic() - started, False)
        return value

    def arrays(
        self, name: str, key: Any, compute: Callable[[], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """The arrays of stage ``name`` for ``key`` (an ``.npz`` without pickle, its key beside it)."""
        path = self.root / "stages" / f"{name}.npz"
        marker = path.with_suffix(".key")
        digest = key_of(key)
        if path.is_file() and marker.is_file() and marker.read_text().strip() == digest:
            self._time(name, 0.0, True)
            with np.load(path, allow_pickle=False) as stored:
                return {k: stored[k] for k in stored.files}
        started = time.monotonic()
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.stem + ".partial.npz")
        np.savez(partial, **value)  # type: ignore[arg-type]  # numpy's stub types the first **kwarg as allow_pickle
        os.replace(partial, path)
        marker.write_text(digest + "\n")
        self._time(name, time.monotonic() - started, False)
        return value

    def timed(self, name: str, seconds: float, cached: bool) -> None:
        """Record a stage timed elsewhere (fine-tuning jobs)."""
        self._time(name, seconds, cached)

    def _time(self, name: str, seconds: float, cached: bool) -> None:
        self.timings[name] = {"seconds": round(seconds, 2), "cached": cached}
        print(f"[evidence] {name}: {'cached' if cached else f'{seconds:.1f} s'}", flush=True)


# --------------------------------------------------------------------------- cohorts


def planned_diagnoses(subjects: int, seed: int, years: tuple[float, float] = (2.0, 7.0)) -> set[str]:
    """The diagnoses (baseline and follow-up) ``make_cohort(subjects=…, seed=…)`` will write.

    Replays make_cohort's draws (one subject seed, then :func:`plan_subject`, per subject) without
    making images; :func:`make_cohorts` checks the written CSV against it.
    """
    rng = np.random.default_rng(seed)
    found: set[str] = set()
    for index in range(subjects):
        rng.integers(0, 2**31 - 1)
        baseline, follow_up = plan_subject(index, rng, years)
        found |= {baseline.diagnosis, follow_up.diagnosis}
    return found


def cohort_seed(subjects: int, start: int) -> int:
    """The first seed from ``start`` whose cohort has CN and AD rows (the classifier needs both)."""
    for seed in range(start, start + 1000):
        if set(NEEDED_DIAGNOSES) <= planned_diagnoses(subjects, seed):
            return seed
    raise RuntimeError(f"No seed in {start}–{start + 999} gives CN and AD among {subjects} subjects.")


PAIRS_SEED = 30_000
"""Seed (plus the run's seed) of the counterfactual pairs cohort: a third set of synthetic subjects."""


@dataclass
class Cohorts:
    """The training, held-out and counterfactual-pairs cohorts (different seeds: disjoint synthetic subjects).

    The pairs cohort is section 2's alone: more held-out baseline → follow-up pairs than the held-out
    cohort of sections 1 and 3, without changing those sections' reference slices.
    """

    train_csv: Path
    test_csv: Path
    pairs_csv: Path
    train_seed: int
    test_seed: int
    pairs_seed: int
    train: CohortData
    test: CohortData
    test_rows: list[CohortRow]
    train_rows: list[CohortRow]
    pair_rows: list[CohortRow]


def make_cohorts(work: Path, sizes: Sizes, resolution: int) -> Cohorts:
    """Write (once) the three synthetic cohorts and cut the model-ready slices of two (cached under ``work``)."""
    seeds = {
        "train": cohort_seed(sizes.train_subjects, 100 + sizes.seed),
        "test": cohort_seed(sizes.test_subjects, 10_000 + sizes.seed),
        "pairs": PAIRS_SEED + sizes.seed,
    }
    counts = {"train": sizes.train_subjects, "test": sizes.test_subjects, "pairs": sizes.pair_subjects}
    paths = {}
    for name, seed in seeds.items():
        folder = work / "cohorts" / f"{name}-s{seed}-n{counts[name]}-{sizes.spacing_mm:g}mm"
        csv_path = folder / "cohort.csv"
        if not csv_path.is_file():
            make_cohort(folder, subjects=counts[name], seed=seed, spacing_mm=sizes.spacing_mm)
        written = {row["diagnosis"] for row in csv.DictReader(csv_path.open(encoding="utf-8"))}
        if name != "pairs" and not set(NEEDED_DIAGNOSES) <= written:
            raise RuntimeError(f"{csv_path} lacks CN or AD rows: the cohort plan replay is out of date.")
        paths[name] = csv_path
    settings = SliceSettings("axial", resolution)
    cache = work / "slice-cache"
    return Cohorts(
        paths["train"],
        paths["test"],
        paths["pairs"],
        seeds["train"],
        seeds["test"],
        seeds["pairs"],
        prepare_cohort(paths["train"], settings, cache),
        prepare_cohort(paths["test"], settings, cache),
        read_cohort(paths["test"])[0],
        read_cohort(paths["train"])[0],
        read_cohort(paths["pairs"])[0],
    )


# --------------------------------------------------------------------------- fine-tuning


def job_config(
    cohorts: Cohorts, base: Path, sizes: Sizes, resolution: int, device: str, **fields: Any
) -> FinetuneConfig:
    """A job on the training cohort with the run's sizes; ``fields`` set the scheme, δ and prompt style."""
    steps = fields.pop("steps", sizes.steps)
    return FinetuneConfig(
        cohort=str(cohorts.train_csv.resolve()),
        model=str(base.resolve()),
        steps=steps,
        batch_size=sizes.batch_size,
        resolution=resolution,
        validation_fraction=0.0,  # every training subject trains; evaluation uses the other cohort
        checkpoint_every=max(1, steps // 4),
        sample_every=0,
        sample_steps=max(1, sizes.sample_steps),
        num_class_images=sizes.num_class_images,
        search_grid=sizes.search_grid,
        search_samples=sizes.search_samples,
        search_steps=sizes.search_steps,
        seed=sizes.seed,
        device=device,
        cache_dir=str((cohorts.train_csv.parents[2] / "slice-cache").resolve()),
        **fields,
    )


def finetuned_model(stages: Stages, name: str, config: FinetuneConfig) -> Path:
    """The model folder of job ``name`` with ``config``: trained (or resumed) through the job API."""
    job_dir = stages.root / "jobs" / f"{name}-{key_of(config.to_json())}"
    model = JobFolder(job_dir).model
    if (model / "summary.json").is_file():
        stages.timed(f"finetune {name}", 0.0, True)
        return model
    started = time.monotonic()
    if not (job_dir / "config.json").is_file():
        create_job(job_dir, config)
    run_job(job_dir)
    stages.timed(f"finetune {name}", time.monotonic() - started, False)
    return model


@dataclass(frozen=True)
class Sampling:
    """How a text-to-image model is sampled: its δ, drifted start, prompt style and modality text."""

    drift: float
    drift_start: bool
    options: PromptOptions
    modality: str


def model_sampling(folder: Path) -> Sampling:
    """Read a model folder's δ (``latentdrift.json``) and its training prompts (``summary.json``)."""
    drift, start = recorded_drift(folder)
    summary = folder / "summary.json"
    settings = json.loads(summary.read_text(encoding="utf-8")).get("settings") if summary.is_file() else None
    if not settings:
        return Sampling(float(np.mean(drift)), start, PromptOptions(), Attributes().modality)
    config = FinetuneConfig.from_json(settings)
    return Sampling(float(np.mean(drift)), start, config.prompt_options(), make_scheme(config).modality)


def row_attributes(row: CohortRow, sampling: Sampling, diagnosis: str | None = None) -> Attributes:
    """A row's patient attributes with the model's modality text (``diagnosis`` overrides the row's)."""
    a = row.attributes
    return Attributes(a.age, a.sex, diagnosis or a.diagnosis, sampling.modality)


def generate(
    folder: Path,
    prompts: list[tuple[str, int]],
    size: int,
    sizes: Sizes,
    sampling: Sampling,
    device: str,
) -> np.ndarray:
    """Slices (sum of counts, size, size) in [-1, 1]: ``count`` samples per ``(prompt, count)``.

    Prompt group *g* uses seeds ``seed + 1000 g + i``; the model's own δ and drifted start.
    """
    bundle = load_bundle(folder, device, full_precision=True)
    out = []
    for group, (prompt, count) in enumerate(prompts):
        if count < 1:
            continue
        settings = EditSettings(
            mode="generate",
            prompt=prompt,
            drift=sampling.drift,
            drift_start=sampling.drift_start,
            steps=sizes.sample_steps,
            guidance=sizes.guidance,
            seed=sizes.seed + 1000 * group,
            batch_size=8,
        )
        out.append(generate_slices(bundle, count, size, size, settings))
    clear_bundle_cache()
    return np.concatenate(out).astype(np.float32)


def held_out_prompts(rows: list[CohortRow], sampling: Sampling, total: int) -> list[tuple[str, int]]:
    """``total`` samples spread over the held-out rows: row *r* gets its own description (paraphrase r)."""
    counts = [total // len(rows) + (1 if r < total % len(rows) else 0) for r in range(len(rows))]
    return [
        (describe(row_attributes(row, sampling), sampling.options, r), counts[r])
        for r, row in enumerate(rows)
    ]


def sizes_json(sizes: Sizes) -> dict[str, Any]:
    """The sizes as a JSON-ready dict."""
    return asdict(sizes)
