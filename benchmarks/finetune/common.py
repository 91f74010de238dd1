"""Shared set-up of the fine-tuning benchmarks: a tiny cohort, a tiny model, machine information."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

HERE = Path(__file__).resolve().parent


def machine() -> dict[str, object]:
    """Where the benchmark ran."""
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo"], capture_output=True, text=True)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu.stdout.split(":")[-1].strip(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def tiny_cohort(folder: Path, subjects: int = 4) -> Path:
    """``subjects`` × 2 sessions of 8×32×32 blob volumes and their cohort.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["subject,session,path,age,sex,diagnosis"]
    for subject in range(subjects):
        for session in range(2):
            seed = subject * 10 + session
            _k, j, i = np.mgrid[:8, :32, :32]
            voxels = 100 * np.exp(-((j - 16) ** 2 + (i - 16) ** 2) / (40 + seed)) + np.random.default_rng(
                seed
            ).normal(0, 1, (8, 32, 32))
            sitk.WriteImage(sitk.GetImageFromArray(voxels.astype(np.float32)), str(folder / f"s{seed}.nrrd"))
            lines.append(f"s{subject},t{session},s{seed}.nrrd,{70 + 5 * session},F,CN")
    (folder / "cohort.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "cohort.csv"
