"""Choosing δ: a grid search that brings generated slices closest (in L1) to the cohort's slices.

For every δ of the grid (default −0.2 … 0.2, step 0.05), ``samples`` slices are generated (DDIM,
``steps`` steps, guidance 7.5) from the cohort's own prompts — sample *i* uses prompt *i* of the
reference slices and seed ``seed + i`` for every δ (common random numbers, so the curve compares δ
and not noise). δ is applied by the project's sampler (mean shift at every reverse step; with
``drift_start`` also ``z_T ~ N(δ, I)``, for models trained with drift). Two distances to the
reference slices R (model range [-1, 1]) are computed:

* ``mean_image_l1`` — **the criterion**: the mean absolute difference, over pixels, between the mean
  generated slice and the mean reference slice, ``mean_p |mean_i G_i(p) − mean_j R_j(p)|``. It is the
  Monte-Carlo L1 distance between the first moments of the two distributions, which is what a mean
  shift of the latents moves.
* ``nearest_l1`` (reported): the mean over samples of the per-pixel L1 distance to the nearest
  reference slice, ``mean_i min_j mean_p |G_i(p) − R_j(p)|`` (at most 256 reference slices).

The best δ minimises the criterion (ties: the smallest |δ|). :func:`store_search` writes the curve as
``drift_curve.json`` and ``drift_curve.png`` and records δ in the model's ``latentdrift.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ParameterError
from ..counterfactual.edit import EditSettings, PipelineBundle, generate_slices
from ..counterfactual.modes import GENERATE
from .metadata import update_metadata
from .sampling import save_curve

CRITERION = "mean_image_l1"
MAX_REFERENCE = 256


@dataclass(frozen=True)
class DriftPoint:
    """The distances measured at one δ."""

    delta: float
    mean_image_l1: float
    nearest_l1: float


@dataclass(frozen=True)
class DriftCurve:
    """The whole search: one point per δ, the chosen δ and how it was measured."""

    points: list[DriftPoint]
    best: float
    samples: int
    steps: int
    criterion: str = CRITERION

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "points": [asdict(p) for p in self.points]}


def l1_distances(generated: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """``(mean_image_l1, nearest_l1)`` of generated (K, S, S) to reference (N, S, S) slices (see above)."""
    mean_image = float(np.abs(generated.mean(axis=0) - reference.mean(axis=0)).mean())
    step = max(1, len(reference) // MAX_REFERENCE)
    subset = reference[::step].reshape(len(reference[::step]), -1)
    flat = generated.reshape(len(generated), -1)
    nearest = np.array([np.abs(subset - row).mean(axis=1).min() for row in flat])
    return mean_image, float(nearest.mean())


def search_drift(
    bundle: PipelineBundle,
    reference: np.ndarray,
    prompts: list[str],
    grid: tuple[float, ...],
    samples: int = 8,
    steps: int = 20,
    seed: int = 0,
    drift_start: bool = False,
) -> DriftCurve:
    """Measure every δ of ``grid`` (see the module docstring) and pick the best one.

    ``reference`` (N, S, S) in [-1, 1]; ``prompts`` one per reference slice (sample *i* uses
    ``prompts[i % len(prompts)]``).
    """
    if not grid or samples < 1 or not prompts or len(reference) == 0:
        raise ParameterError(
            "The δ search needs a non-empty grid, reference slices, prompts and samples ≥ 1."
        )
    size = int(reference.shape[-1])
    points = []
    for delta in grid:
        generated = np.concatenate(
            [
                generate_slices(
                    bundle,
                    1,
                    size,
                    size,
                    EditSettings(
                        mode=GENERATE.name,
                        prompt=prompts[index % len(prompts)],
                        drift=float(delta),
                        drift_start=drift_start,
                        steps=steps,
                        seed=seed + index,
                    ),
                )
                for index in range(samples)
            ]
        )
        points.append(DriftPoint(float(delta), *l1_distances(generated, reference)))
    best = min(points, key=lambda p: (round(p.mean_image_l1, 9), abs(p.delta)))
    return DriftCurve(points, best.delta, samples, steps)


def store_search(curve: DriftCurve, folder: Path, model_folder: Path | None = None) -> dict[str, Path]:
    """Write ``drift_curve.json`` and ``drift_curve.png`` into ``folder``; record δ in ``model_folder``."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "drift_curve.json"
    json_path.write_text(json.dumps(curve.to_json(), indent=2) + "\n", encoding="utf-8")
    png_path = save_curve(
        [p.delta for p in curve.points],
        [p.mean_image_l1 for p in curve.points],
        folder / "drift_curve.png",
        "δ",
        "L1(mean generated, mean cohort)",
        f"δ search: best δ = {curve.best:g}",
    )
    if model_folder is not None:
        update_metadata(model_folder, drift=curve.best, drift_curve=curve.to_json())
    return {"json": json_path, "png": png_path}
