"""The template's tissue prior: which weight, and what it does on a real head and on synthetic heads.

    .venv/bin/python benchmarks/realhead/tissue_prior.py           # measure (about 10 minutes on 2 cores)
    .venv/bin/python benchmarks/realhead/tissue_prior.py --apply   # put the chosen weight into the model

Writes ``tissue-prior.json`` and ``tissue-prior.md`` next to this file. A brain segmentation model with
``tissue_prior_weight`` ``w > 0`` gets the MNI152 template's tissue prior weighted into its class
probabilities (``latentdrift.frontend.tissue_prior``). For each candidate ``w`` in :data:`WEIGHTS` this
script runs the engine's own steps: the front end prepares a head, LDSeg segments it once on the model
grid, :func:`~latentdrift.frontend.tissue_prior.subject_prior` carries the template's prior onto the
brain, :func:`~latentdrift.frontend.tissue_prior.with_tissue_prior` weights the probabilities by ``w``
and :func:`~latentdrift.frontend.tasks.segmentation_on_input` brings them back (what ``segment_head``
does, with the segmentation shared by the weights).

* **The choice** uses only synthetic heads of :data:`CHOICE_SEEDS` (the template deformed, inside a
  simulated skull and scalp; seeds no model trained on and no other benchmark uses): the weight whose
  probabilities give the true tissue labels inside the brain the lowest mean negative log-likelihood
  (a proper scoring rule), on a tie within :data:`TIE` the smaller weight. ``--apply`` writes it into the
  bundled ``brain-tissue-ldseg`` model's ``config.json``.
* **Measured after the choice, not used by it**: the ROBEX head (agreement with an atlas labelling and
  with ANTs Atropos as in ``run.py``, tissue volumes, and the CSF growth of the default counterfactual
  ``--from age=70,dx=CN --to age=78,dx=AD`` measured with each weight) and the synthetic heads of
  ``run.SYNTHETIC_SEEDS`` (Dice against their true labels).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from run import (  # this folder's benchmark: the same engine calls and references, one home
    CLASSES,
    HERE,
    SYNTHETIC_SEEDS,
    Ours,
    ants_tissue,
    atlas_labels,
    class_dice,
    volumes_ml,
)

from latentdrift import __version__
from latentdrift.core.atomic_files import write_json_atomic
from latentdrift.core.models import default_model
from latentdrift.core.settings import FrontEndSettings, SegmentSettings
from latentdrift.core.volumes import Volume, read_volume
from latentdrift.fixtures.sample_data import robex_head_path
from latentdrift.fixtures.synthetic import SubjectSettings, labels_on_head, synthetic_head, synthetic_subject
from latentdrift.frontend.head import PreparedHead, prepare_head
from latentdrift.frontend.tasks import segmentation_on_input
from latentdrift.frontend.tissue_prior import subject_prior, with_tissue_prior
from latentdrift.segmentation.ldseg import load_ldseg_model
from latentdrift.segmentation.ldseg.model_io import CONFIG_FILE, config_document
from latentdrift.segmentation.volume_segmentation import VolumeSegmentation, segment_volume

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
CHOICE_SEEDS = (3000, 3001, 3002, 3003)
TIE = 0.001
"""Negative log-likelihoods closer than this are a tie (the smaller weight wins)."""
SMALLEST = 1e-6
"""A true class's probability is floored here before its log."""


class Weighted:
    """One head segmented once by the bundled LDSeg model; its segmentation at any prior weight."""

    def __init__(self, ours: Ours, volume: Volume) -> None:
        spec = ours.segmenter.spec
        self.spec = spec
        self.head: PreparedHead = prepare_head(volume, spec.input, FrontEndSettings(), torch.device("cpu"))
        brain = self.head.model_input(spec.input)
        self.on_grid = segment_volume(brain, ours.segmenter, SegmentSettings(device="cpu"))
        self.prior = subject_prior(brain)

    def at(self, weight: float) -> VolumeSegmentation:
        """The segmentation on the head's grid with the prior at ``weight`` (0: none)."""
        names = self.spec.class_names
        result = with_tissue_prior(self.on_grid, names, weight, self.prior)
        return segmentation_on_input(self.head, result, names, self.spec.axis, None)


def negative_log_likelihood(segmentation: VolumeSegmentation, truth: np.ndarray) -> float:
    """Mean ``−log q(true tissue)`` over the voxels that are tissue in ``truth`` and brain in the segmentation.

    ``q`` is the segmentation's tissue probabilities renormalised over the tissue classes (inside the
    brain mask a voxel is tissue; the labels are their argmax).
    """
    inside = (truth > 0) & (segmentation.labels.voxels > 0)
    tissue = segmentation.probabilities[1:, inside]
    tissue = tissue / np.maximum(tissue.sum(axis=0, keepdims=True), SMALLEST)
    true = tissue[truth[inside].astype(int) - 1, np.arange(tissue.shape[1])]
    return float(-np.log(np.maximum(true, SMALLEST)).mean())


def synthetic(ours: Ours, seeds: tuple[int, ...], weights: tuple[float, ...]) -> dict[str, Any]:
    """Per weight: mean negative log-likelihood and mean Dice per class over the synthetic heads of ``seeds``."""
    scores: dict[float, dict[str, list[float]]] = {
        w: {"nll": [], **{c: [] for c in CLASSES}} for w in weights
    }
    for seed in seeds:
        image, truth = synthetic_subject(seed, SubjectSettings(spacing_mm=1.5))
        head_volume, _ = synthetic_head(image, truth, seed)
        padded = labels_on_head(truth, head_volume)
        weighted = Weighted(ours, head_volume)
        for w in weights:
            segmentation = weighted.at(w)
            scores[w]["nll"].append(negative_log_likelihood(segmentation, padded))
            for name, value in class_dice(segmentation.labels.voxels, padded).items():
                scores[w][name].append(value)
    return {
        "seeds": list(seeds),
        "rows": {
            str(w): {k: round(float(np.mean(v)), 4) for k, v in row.items()} for w, row in scores.items()
        },
    }


def chosen_weight(choice: dict[str, Any]) -> float:
    """The weight with the lowest negative log-likelihood on the choice heads (a tie goes to the smaller)."""
    rows = {float(w): row["nll"] for w, row in choice["rows"].items()}
    best = min(rows.values())
    return min(w for w, nll in rows.items() if nll <= best + TIE)


def real_head(ours: Ours, weights: tuple[float, ...]) -> dict[str, Any]:
    """The ROBEX head at each weight: agreement with the atlas labelling and ANTs, volumes, counterfactual CSF."""
    volume = read_volume(robex_head_path())
    weighted = Weighted(ours, volume)
    mask = weighted.head.brain_mask
    assert mask is not None
    atlas, _ = atlas_labels(weighted.head)
    atlas = np.where(mask, atlas, 0)
    ants, _ = ants_tissue(volume, mask)
    after, _ = ours.counterfactual(volume, weighted.head)
    edited = Weighted(ours, after)
    rows = {}
    for w in weights:
        labels = weighted.at(w).labels.voxels
        before_csf = volumes_ml(labels, volume)[CLASSES[0]]
        after_csf = volumes_ml(edited.at(w).labels.voxels, volume)[CLASSES[0]]
        rows[str(w)] = {
            "volumes_ml": volumes_ml(labels, volume),
            "dice_vs_atlas": class_dice(labels, atlas),
            "dice_vs_ants": class_dice(labels, ants),
            "counterfactual_csf_ratio": round(after_csf / before_csf, 4),
        }
    return {
        "atlas_volumes_ml": volumes_ml(atlas, volume),
        "ants_volumes_ml": volumes_ml(ants, volume),
        "rows": rows,
    }


def write_markdown(results: dict[str, Any], path: Path) -> None:
    choice, real, test = results["choice"], results["real_head"], results["synthetic_test"]
    chosen = results["chosen_weight"]
    lines = [
        "# The template's tissue prior: the weight and what it does",
        "",
        f"Command: `{results['command']}` (latentdrift {results['version']}, {results['date']}, "
        f"{results['seconds']} s). Every figure is in `tissue-prior.json`; the method is in the script's "
        "docstring. Weight 0 is LDSeg alone.",
        "",
        f"## The choice: synthetic heads of seeds {', '.join(map(str, choice['seeds']))}",
        "",
        "Mean over the heads; NLL is the true tissue's negative log-likelihood inside the brain (lower is "
        f"better). **Chosen: w = {chosen}** (the lowest NLL; a tie within {TIE} goes to the smaller weight).",
        "",
        *_synthetic_table(choice["rows"]),
        "",
        "## Not used by the choice: the ROBEX head",
        "",
        f"Atlas labelling (the template's labels carried by ANTs SyN, as in `results.md`): "
        f"{_ml(real['atlas_volumes_ml'])}; ANTs Atropos: {_ml(real['ants_volumes_ml'])}. The last column "
        "is the CSF growth of the default counterfactual (CN 70 → AD 78), measured by the segmentation "
        "with that weight.",
        "",
        "| w | CSF ml | GM ml | WM ml | GM Dice vs atlas | WM Dice vs atlas | CSF Dice vs atlas "
        "| GM Dice vs ANTs | WM Dice vs ANTs | CSF Dice vs ANTs | counterfactual CSF |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w, row in real["rows"].items():
        v, a, n = row["volumes_ml"], row["dice_vs_atlas"], row["dice_vs_ants"]
        lines.append(
            f"| {w} | {v[CLASSES[0]]} | {v[CLASSES[1]]} | {v[CLASSES[2]]} | {a[CLASSES[1]]} | {a[CLASSES[2]]} | "
            f"{a[CLASSES[0]]} | {n[CLASSES[1]]} | {n[CLASSES[2]]} | {n[CLASSES[0]]} | "
            f"×{row['counterfactual_csf_ratio']} |"
        )
    lines += [
        "",
        f"## Not used by the choice: synthetic heads of seeds {', '.join(map(str, test['seeds']))}",
        "",
        *_synthetic_table(test["rows"]),
        "",
        "The atlas labelling is itself the template's labels, so agreement with it rises with any weight; "
        "agreement with ANTs (which knows nothing of the template) falls. The synthetic heads, whose truth "
        "is known, are what the choice rests on.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def _synthetic_table(rows: dict[str, dict[str, float]]) -> list[str]:
    """The Markdown table of a synthetic set's rows: NLL and Dice per tissue, one row a weight."""
    header = ["| w | NLL | CSF Dice | GM Dice | WM Dice |", "|---|---|---|---|---|"]
    return header + [
        f"| {w} | {row['nll']} | " + " | ".join(str(row[c]) for c in CLASSES) + " |"
        for w, row in rows.items()
    ]


def _ml(volumes: dict[str, float]) -> str:
    return ", ".join(f"{name} {volumes[name]} ml" for name in CLASSES)


def apply(weight: float) -> Path:
    """Write ``weight`` into the bundled segmentation model's ``config.json``; the folder."""
    folder = default_model("segment").path
    config = replace(load_ldseg_model(folder).config, tissue_prior_weight=weight)
    write_json_atomic(folder / CONFIG_FILE, config_document(config))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--apply",
        action="store_true",
        help="write the weight chosen in tissue-prior.json into the bundled model",
    )
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args(argv)
    if args.apply or args.markdown_only:
        results = json.loads((HERE / "tissue-prior.json").read_text(encoding="utf-8"))
        if args.markdown_only:
            write_markdown(results, HERE / "tissue-prior.md")
        else:
            print(f"{apply(results['chosen_weight'])}: tissue_prior_weight {results['chosen_weight']}")
        return 0
    started = time.perf_counter()
    ours = Ours()
    choice = synthetic(ours, CHOICE_SEEDS, WEIGHTS)
    results: dict[str, Any] = {
        "command": "python benchmarks/realhead/tissue_prior.py",
        "version": __version__,
        "date": time.strftime("%Y-%m-%d"),
        "weights": list(WEIGHTS),
        "choice": choice,
        "chosen_weight": chosen_weight(choice),
        "real_head": real_head(ours, WEIGHTS),
        "synthetic_test": synthetic(ours, SYNTHETIC_SEEDS, WEIGHTS),
    }
    results["seconds"] = round(time.perf_counter() - started)
    (HERE / "tissue-prior.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_markdown(results, HERE / "tissue-prior.md")
    print((HERE / "tissue-prior.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
