"""What agreement with an atlas labelling rewards: LDSeg alone against LDSeg weighted by the template's tissue prior.

    .venv/bin/python benchmarks/realhead/tissue_prior.py [--weights 0,0.5,1,2]

Writes ``benchmarks/realhead/tissue-prior.json`` and ``tissue-prior.md``. An experiment, not a feature:
the engine does not use a tissue prior. It answers one question of issue 19. Our grey matter agrees with
the ROBEX head's atlas labelling at Dice 0.79 (``results.md``), the bar is 0.80. Would the MNI152 tissue
prior close the gap, and at what cost?

For each weight ``w`` the labels inside the brain mask are ``argmax_c log p_LDSeg(c) + w · log prior(c)``,
where ``prior`` holds the template's CSF, grey- and white-matter probabilities
(:func:`latentdrift.fixtures.sample_data.tissue_map_paths`) carried onto the head by the front end's own
affine alignment. ``w = 0`` is the engine's segmentation. "Prior alone" labels every voxel by the prior,
ignoring the image. Each is scored three ways:

* against the **atlas labelling** (the template's labels carried by ANTs SyN, as in ``run.py``);
* against **ANTs Atropos** (intensity only: the peer that knows nothing of the template);
* on the **synthetic heads** against their true labels (the template deformed, so truth is known).

The weights are fixed in advance: none was chosen on the ROBEX head.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from run import (  # this folder's benchmark: the same engine calls and references, one home
    CLASSES,
    HERE,
    SYNTHETIC_SEEDS,
    Ours,
    _pad_like,
    ants_tissue,
    atlas_labels,
    class_dice,
    volumes_ml,
)

from latentdrift import __version__
from latentdrift.core.volumes import Volume, read_volume, volume_to_sitk
from latentdrift.fixtures.sample_data import robex_head_path, sample_volume_path, tissue_map_paths
from latentdrift.fixtures.synthetic import SubjectSettings, synthetic_head, synthetic_subject
from latentdrift.frontend.head import PreparedHead

WEIGHTS = (0.0, 0.5, 1.0, 2.0)
FLOOR = 1e-3
"""Probabilities are floored here before the log, so a zero in the prior or in LDSeg is a penalty, not a veto."""


def template_prior() -> tuple[Volume, np.ndarray]:
    """The template (for its grid) and its prior ``[3, k, j, i]``: CSF, grey, white matter in [0, 1]."""
    t1 = read_volume(sample_volume_path())
    maps = tissue_map_paths()
    grey = read_volume(maps["grey_matter"]).voxels.astype(np.float32) / 255.0
    white = read_volume(maps["white_matter"]).voxels.astype(np.float32) / 255.0
    csf = np.clip((t1.voxels > 0) - grey - white, 0.0, 1.0)
    return t1, np.stack([csf, grey, white])


def prior_on_head(head: PreparedHead, template: Volume, prior: np.ndarray) -> np.ndarray:
    """The template prior carried onto the head's grid by the front end's affine alignment: ``[3, k, j, i]``."""
    assert head.alignment is not None
    inverse = head.alignment.transform.GetInverse()
    reference = volume_to_sitk(head.source.with_voxels(np.zeros(head.source.voxels.shape, np.uint8)))
    return np.stack(
        [
            sitk.GetArrayFromImage(
                sitk.Resample(
                    volume_to_sitk(template.with_voxels(p)), reference, inverse, sitk.sitkLinear, 0.0
                )
            )
            for p in prior
        ]
    )


def weighted_labels(
    probabilities: np.ndarray, prior: np.ndarray, weight: float, inside: np.ndarray
) -> np.ndarray:
    """Labels 1–3 inside ``inside``: ``argmax log p_LDSeg + weight · log prior`` over the tissue classes."""
    score = np.log(np.maximum(probabilities[1:], FLOOR)) + weight * np.log(np.maximum(prior, FLOOR))
    return np.where(inside, 1 + score.argmax(axis=0), 0).astype(np.uint8)


def real_head(ours: Ours, weights: tuple[float, ...], template: Volume, prior: np.ndarray) -> dict[str, Any]:
    volume = read_volume(robex_head_path())
    segmentation, head, _ = ours.segment(volume)
    assert head.brain_mask is not None
    atlas, _ = atlas_labels(head)
    atlas = np.where(head.brain_mask, atlas, 0)
    ants, _ = ants_tissue(volume, head.brain_mask)
    on_head = prior_on_head(head, template, prior)
    rows = {}
    for name, labels in [
        *(
            (f"w = {w}", weighted_labels(segmentation.probabilities, on_head, w, head.brain_mask))
            for w in weights
        ),
        ("prior alone", np.where(head.brain_mask, 1 + on_head.argmax(axis=0), 0).astype(np.uint8)),
    ]:
        rows[name] = {
            "volumes_ml": volumes_ml(labels, volume),
            "dice_vs_atlas": class_dice(labels, atlas),
            "dice_vs_ants": class_dice(labels, ants),
        }
    return {
        "atlas_volumes_ml": volumes_ml(atlas, volume),
        "ants_volumes_ml": volumes_ml(ants, volume),
        "rows": rows,
    }


def synthetic(ours: Ours, weights: tuple[float, ...], template: Volume, prior: np.ndarray) -> dict[str, Any]:
    rows: dict[str, dict[str, list[float]]] = {f"w = {w}": {c: [] for c in CLASSES} for w in weights}
    for seed in SYNTHETIC_SEEDS:
        image, truth = synthetic_subject(seed, SubjectSettings(spacing_mm=1.5))
        head_volume, _ = synthetic_head(image, truth, seed)
        segmentation, head, _ = ours.segment(head_volume)
        inside = segmentation.labels.voxels > 0
        on_head = prior_on_head(head, template, prior)
        padded = _pad_like(truth.voxels, head_volume)
        for w in weights:
            for c, value in class_dice(
                weighted_labels(segmentation.probabilities, on_head, w, inside), padded
            ).items():
                rows[f"w = {w}"][c].append(value)
    return {"seeds": list(SYNTHETIC_SEEDS), "rows": rows}


def write_markdown(results: dict[str, Any], path: Path) -> None:
    real = results["real_head"]
    lines = [
        "# LDSeg with and without the template's tissue prior",
        "",
        f"Command: `{results['command']}` (latentdrift {results['version']}, {results['date']}, "
        f"{results['seconds']} s). Every figure is in `tissue-prior.json`. An experiment: the engine uses "
        "no tissue prior (`w = 0` is its segmentation). The method is in the script's docstring.",
        "",
        "## The ROBEX head",
        "",
        f"Atlas labelling: {_ml(real['atlas_volumes_ml'])}; ANTs Atropos: {_ml(real['ants_volumes_ml'])}. "
        '"Prior alone" ignores the image.',
        "",
        "| labels | CSF ml | GM ml | WM ml | GM Dice vs atlas | WM Dice vs atlas | CSF Dice vs atlas "
        "| GM Dice vs ANTs | WM Dice vs ANTs | CSF Dice vs ANTs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in real["rows"].items():
        v, a, n = row["volumes_ml"], row["dice_vs_atlas"], row["dice_vs_ants"]
        lines.append(
            f"| {name} | {v[CLASSES[0]]} | {v[CLASSES[1]]} | {v[CLASSES[2]]} | {a[CLASSES[1]]} | {a[CLASSES[2]]} | "
            f"{a[CLASSES[0]]} | {n[CLASSES[1]]} | {n[CLASSES[2]]} | {n[CLASSES[0]]} |"
        )
    lines += [
        "",
        f"## Synthetic heads (seeds {', '.join(map(str, results['synthetic']['seeds']))}, axial 1.5 mm): "
        "mean Dice against the true labels",
        "",
        "| labels | CSF | grey matter | white matter |",
        "|---|---|---|---|",
    ]
    for name, row in results["synthetic"]["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{np.mean(row[c]):.4f}" for c in CLASSES) + " |")
    lines += [
        "",
        "Read the ROBEX rows side by side: a weight that raises agreement with the atlas labelling and "
        "lowers it with ANTs (and with the synthetic truth) makes the labels more like the template, not "
        "necessarily more like this brain.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def _ml(volumes: dict[str, float]) -> str:
    return ", ".join(f"{name} {volumes[name]} ml" for name in CLASSES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", default=",".join(map(str, WEIGHTS)), help="comma-separated prior weights"
    )
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args(argv)
    if args.markdown_only:
        results = json.loads((HERE / "tissue-prior.json").read_text(encoding="utf-8"))
        write_markdown(results, HERE / "tissue-prior.md")
        return 0
    weights = tuple(float(w) for w in args.weights.split(","))
    started = time.perf_counter()
    ours = Ours()
    template, prior = template_prior()
    results: dict[str, Any] = {
        "command": "python benchmarks/realhead/tissue_prior.py"
        + ("" if weights == WEIGHTS else f" --weights {args.weights}"),
        "version": __version__,
        "date": time.strftime("%Y-%m-%d"),
        "weights": list(weights),
        "real_head": real_head(ours, weights, template, prior),
        "synthetic": synthetic(ours, weights, template, prior),
    }
    results["seconds"] = round(time.perf_counter() - started)
    (HERE / "tissue-prior.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_markdown(results, HERE / "tissue-prior.md")
    print((HERE / "tissue-prior.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
