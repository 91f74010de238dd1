"""The same real head as a user might load it: other orientations, voxel sizes, intensity scales, a bias field.

    .venv/bin/python benchmarks/realhead/variants.py

Writes ``benchmarks/realhead/variants.json`` and ``variants.md``. ``sample:robex-head`` (with skull) is
turned into acquisitions a user may bring: resliced coronal 1.2 × 1.2 × 2.5 mm and sagittal
1 × 1 × 1.3 mm, stored as float in [0, 1] or as int32 × 20, under a strong extra bias field, with 60 mm of
empty field of view around it, with 5 % Gaussian noise. Each goes through ``latentdrift segment``'s engine
call with the defaults (the front end included). Reported: the brain mask's Dice against ROBEX's mask (carried
onto the variant's grid), tissue volumes, and each tissue's Dice against the segmentation of the head as it
is, carried onto the variant's grid (nearest neighbour). The same brain should give the same answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import SimpleITK as sitk
from run import CLASSES, HERE, Ours, class_dice, dice, volumes_ml  # this folder's benchmark: one home

from latentdrift import __version__
from latentdrift.core.volumes import Volume, read_volume, resample_volume, volume_to_sitk
from latentdrift.fixtures.sample_data import robex_brain_mask_path, robex_head_path

CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
SAGITTAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
PAD_VOXELS = 40
"""60 mm of empty field of view on every side at the head's 1.5 mm."""


def _bias(volume: Volume) -> Volume:
    """A multiplicative field 0.55 → 1.45 from bottom to top and 1.2 → 0.8 from front to back."""
    k, j, _ = volume.voxels.shape
    field = np.linspace(0.55, 1.45, k)[:, None, None] * np.linspace(1.2, 0.8, j)[None, :, None]
    return volume.with_voxels((volume.voxels * field).astype(np.float32))


def _padded(volume: Volume) -> Volume:
    """The volume inside :data:`PAD_VOXELS` empty voxels on every side, at the same physical place."""
    geometry = volume.geometry
    shift = np.asarray(geometry.direction) @ (np.asarray(geometry.spacing) * PAD_VOXELS)
    voxels = np.pad(volume.voxels, PAD_VOXELS)
    return Volume(voxels, replace(geometry, origin=tuple(np.asarray(geometry.origin) - shift)), volume.name)


def _noisy(volume: Volume) -> Volume:
    """5 % Gaussian noise (of the 99th intensity percentile), seeded."""
    voxels = volume.voxels.astype(np.float32)
    sigma = 0.05 * float(np.percentile(voxels, 99))
    return volume.with_voxels(
        voxels + np.random.default_rng(0).normal(0.0, sigma, voxels.shape).astype(np.float32)
    )


VARIANTS: dict[str, Callable[[Volume], Volume]] = {
    "as it is (axial 1.5 mm, int16)": lambda v: v,
    "coronal 1.2 × 1.2 × 2.5 mm": lambda v: resample_volume(v, (1.2, 1.2, 2.5), CORONAL),
    "sagittal 1 × 1 × 1.3 mm": lambda v: resample_volume(v, (1.0, 1.0, 1.3), SAGITTAL),
    "float in [0, 1]": lambda v: v.with_voxels(v.voxels.astype(np.float32) / float(v.voxels.max())),
    "int32 × 20": lambda v: v.with_voxels(v.voxels.astype(np.int32) * 20),
    "strong bias field (× 0.44–1.74)": _bias,
    "60 mm empty field of view around": _padded,
    "5 % Gaussian noise": _noisy,
}


def _on_grid(labels: Volume, grid: Volume) -> np.ndarray:
    """``labels`` carried onto ``grid``'s geometry (nearest neighbour, 0 outside)."""
    reference = volume_to_sitk(grid.with_voxels(np.zeros(grid.voxels.shape, np.uint8)))
    moved = sitk.Resample(volume_to_sitk(labels), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(moved)


def measure(ours: Ours) -> list[dict[str, Any]]:
    head = read_volume(robex_head_path())
    mask = read_volume(robex_brain_mask_path())
    rows: list[dict[str, Any]] = []
    reference: Volume | None = None
    for name, make in VARIANTS.items():
        volume = make(head)
        segmentation, prepared, seconds = ours.segment(volume)
        assert prepared.brain_mask is not None and prepared.alignment is not None
        labels = segmentation.labels
        reference = reference or labels
        rows.append(
            {
                "variant": name,
                "shape_kji": list(volume.voxels.shape),
                "seconds": round(seconds, 1),
                "brain_mask_dice_vs_robex": dice(prepared.brain_mask, _on_grid(mask, volume) > 0),
                "volumes_ml": volumes_ml(labels.voxels, volume),
                "dice_vs_as_it_is": class_dice(labels.voxels, _on_grid(reference, volume)),
                "alignment_correlation": round(prepared.alignment.correlation, 3),
                "warnings": list(prepared.warnings) + list(segmentation.warnings),
            }
        )
        print(name, rows[-1], flush=True)
    return rows


def write_markdown(results: dict[str, Any]) -> None:
    lines = [
        "# One real head, loaded eight ways",
        "",
        f"Command: `{results['command']}` (latentdrift {results['version']}, {results['date']}, "
        f"{results['seconds']} s). Every figure is in `variants.json`; the method is in the script's docstring.",
        "",
        "| variant | voxels (k, j, i) | seconds | brain mask Dice vs ROBEX | CSF / GM / WM ml "
        "| Dice vs as it is: CSF / GM / WM | warnings |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        ml = " / ".join(str(row["volumes_ml"][c]) for c in CLASSES)
        agreement = " / ".join(str(row["dice_vs_as_it_is"][c]) for c in CLASSES)
        shape = " × ".join(map(str, row["shape_kji"]))
        lines.append(
            f"| {row['variant']} | {shape} | {row['seconds']} | {row['brain_mask_dice_vs_robex']} | {ml} | "
            f"{agreement} | {len(row['warnings'])} |"
        )
    lines += [
        "",
        "Resliced variants are compared on their own grid, after interpolation of the head and of the "
        "reference labels: their Dice counts that interpolation as well as any change in the model's answer.",
        "",
    ]
    (HERE / "variants.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    started = time.perf_counter()
    results: dict[str, Any] = {
        "command": "python benchmarks/realhead/variants.py",
        "version": __version__,
        "date": time.strftime("%Y-%m-%d"),
        "rows": measure(Ours()),
    }
    results["seconds"] = round(time.perf_counter() - started)
    (HERE / "variants.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_markdown(results)
    print((HERE / "variants.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
