"""Shared helpers of the fine-tuning tests (no tests here): tiny volumes, cohorts, models, configs.

Everything is tiny (6×20×20 volumes, 16-pixel slices, the tiny SD of ``latentdrift.fixtures.tiny_models``)
and torch runs on one thread: on a loaded 2-core machine more threads make tiny models far slower.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from latentdrift.finetune.checkpoints import MANIFEST, TRAINER_STATE, checkpoints
from latentdrift.finetune.config import FinetuneConfig
from latentdrift.fixtures.tiny_models import build_tiny_sd

torch.set_num_threads(1)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_blob(
    path: Path, seed: int, shape: tuple[int, int, int] = (6, 20, 20), spacing: float = 1.0
) -> Path:
    """A float volume with a bright blob (so every slice holds 'anatomy') and a little noise."""
    _k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
    blob = 100 * np.exp(-((j - shape[1] / 2) ** 2 + (i - shape[2] / 2) ** 2) / (2 + seed % 5) / 10)
    voxels = blob + np.random.default_rng(seed).normal(0, 1, shape)
    image = sitk.GetImageFromArray(voxels.astype(np.float32))
    image.SetSpacing((spacing, spacing, spacing))
    sitk.WriteImage(image, str(path))
    return path


def write_cohort(
    folder: Path, subjects: int = 3, sessions: int = 2, extra_lines: list[str] | None = None
) -> Path:
    """``cohort.csv`` of ``subjects`` × ``sessions`` volumes (ages 70, 75, …), plus ``extra_lines``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["subject,session,path,age,sex,diagnosis,site"]
    for subject in range(subjects):
        for session in range(sessions):
            name = f"s{subject}_t{session}.nrrd"
            write_blob(folder / name, subject * 10 + session)
            lines.append(
                f"s{subject},t{session},{name},{70 + 5 * session},F,{'CN' if session == 0 else 'MCI'},A"
            )
    path = folder / "cohort.csv"
    path.write_text("\n".join(lines + (extra_lines or [])) + "\n", encoding="utf-8")
    return path


def tiny_base(folder: Path, instruct: bool = False) -> Path:
    """A tiny random SD (or InstructPix2Pix) folder."""
    return build_tiny_sd(folder, instruct=instruct)


def quick_config(
    cohort: Path, model: Path | None, scheme: str, cache: Path, **changes: Any
) -> FinetuneConfig:
    """A 2-step job on 16-pixel slices, checkpoint every step, one 2-step sample at the end."""
    config = FinetuneConfig(
        cohort=str(cohort),
        scheme=scheme,
        model=str(model) if model else None,
        steps=2,
        resolution=16,
        batch_size=2,
        checkpoint_every=1,
        sample_every=2,
        sample_steps=2,
        num_class_images=2,
        device="cpu",
        cache_dir=str(cache),
        search_samples=2,
        search_steps=2,
    )
    return replace(config, **changes)


def rewrite_trainer_state(folder: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Apply ``change`` to the trainer state of the newest checkpoint in ``folder``, manifest included, as
    if the checkpoint had been written that way (by an older version, say)."""
    newest = checkpoints(folder)[0]
    document = json.loads((newest / TRAINER_STATE).read_text(encoding="utf-8"))
    change(document)
    (newest / TRAINER_STATE).write_text(json.dumps(document), encoding="utf-8")
    manifest = json.loads((newest / MANIFEST).read_text(encoding="utf-8"))
    manifest["files"][TRAINER_STATE] = (newest / TRAINER_STATE).stat().st_size
    (newest / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
