"""The brain front end and the default brain models on real and synthetic heads, with ANTs as the peer.

    pip install -e ".[benchmarks]"          # antspyx 0.6.3, the classical peer
    .venv/bin/python benchmarks/realhead/run.py [--quick] [--markdown-only]

Writes ``benchmarks/realhead/results.json``, ``results.md`` and ``preview.png``. Everything runs on
the CPU with torch's default thread count; times are of this run, on this machine.

1. **A real head with skull** (``sample:robex-head``: ROBEX's reference T1, 1.5 mm, with its brain mask).
   *Ours*: ``latentdrift segment``'s engine call with the defaults (front end: N4, deepbet, affine
   alignment to MNI152; ``brain-tissue-ldseg``): each step's time, the brain mask's Dice against ROBEX's
   mask, tissue volumes. *The peer a user would pick instead*: ANTs (antspyx) N4 and Atropos 3-class
   k-means inside the same brain mask (ANTs ships no brain extractor that works offline: its
   template-based extraction downloads its templates). Time as a ratio in the same run, and the tissue
   agreement between the two. *An atlas labelling* of the same brain: the MNI152 template's tissue
   labels (:func:`latentdrift.fixtures.synthetic.brain_tissue_template`) carried onto the head by ANTs SyN
   (template brain → the head's corrected brain), the kind of reference "atlas labelling" means; both
   segmentations' per-class Dice against it. Counterfactual ``--from age=70,dx=CN --to age=78,dx=AD``
   with the defaults: the CSF change measured by running our segmentation on the input and on the
   counterfactual (each through the whole front end, as a user would), and how far from the brain any
   voxel changed.
2. **Synthetic heads**, where the truth is known: synthetic subjects (the template under random
   deformations and intensity changes, seeds the models never saw) inside a simulated skull and scalp
   (:func:`latentdrift.fixtures.synthetic.synthetic_head`), as acquired (1.5 mm axial) and resliced as an oblique
   coronal 2 × 2 × 3 mm scan: brain-mask Dice, per-class Dice against the true labels, and the Dice of
   the union of the tissue segments against the true brain mask.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from latentdrift import __version__
from latentdrift.core.models import default_model
from latentdrift.core.settings import CounterfactualSettings, DemoSettings, FrontEndSettings, SegmentSettings
from latentdrift.core.volumes import Volume, read_volume, resample_volume, volume_to_sitk
from latentdrift.counterfactual.edit import load_bundle
from latentdrift.counterfactual.prompts import Attributes
from latentdrift.fixtures.sample_data import robex_brain_mask_path, robex_head_path
from latentdrift.fixtures.synthetic import (
    SubjectSettings,
    brain_tissue_template,
    labels_on_head,
    synthetic_head,
    synthetic_subject,
)
from latentdrift.frontend.head import PreparedHead
from latentdrift.frontend.tasks import counterfactual_head, segment_head
from latentdrift.segmentation.segmenters import load_segmenter
from latentdrift.segmentation.volume_segmentation import VolumeSegmentation
from latentdrift.workflows.demo import editor_settings

HERE = Path(__file__).resolve().parent
CLASSES = ("Cerebrospinal fluid", "Grey matter", "White matter")
SOURCE, TARGET = "age=70,dx=CN", "age=78,dx=AD"
FAR_MM = 8.0
SYNTHETIC_SEEDS = (2000, 2001, 2002)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two bool arrays (1.0 when both are empty)."""
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else round(2.0 * float((a & b).sum()) / total, 4)


def class_dice(labels: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Per-class Dice of two label arrays (1 CSF, 2 grey matter, 3 white matter)."""
    return {name: dice(labels == value, reference == value) for value, name in enumerate(CLASSES, start=1)}


def volumes_ml(labels: np.ndarray, volume: Volume) -> dict[str, float]:
    voxel_ml = float(np.prod(volume.geometry.spacing)) / 1000.0
    return {
        name: round(float((labels == value).sum()) * voxel_ml, 1)
        for value, name in enumerate(CLASSES, start=1)
    }


class Ours:
    """The engine's defaults: the bundled LDSeg model and editor, through the brain front end.

    The counterfactual goes from ``source`` to ``target`` (attribute strings) with the editor's recorded
    δ and text guidance, or ``drift`` and ``guidance`` when given (``benchmarks/realhead/calibrate.py`` sweeps them).
    """

    def __init__(self, source: str = SOURCE, target: str = TARGET, guidance: float | None = None) -> None:
        self.segmenter = load_segmenter(default_model("segment").path, "cpu")
        self.editor_path = default_model("instruct").path
        self.editor = load_bundle(self.editor_path, "cpu")
        self.source, self.target = Attributes.parse(source), Attributes.parse(target)
        self.guidance = guidance
        self.edit_settings = self.settings(None)

    def settings(self, drift: float | None) -> CounterfactualSettings:
        """The counterfactual's settings at ``drift`` (None: the editor's recorded δ), as ``demo`` makes them."""
        edit = editor_settings(DemoSettings(self.source, self.target, drift), self.editor_path)
        if self.guidance is not None:
            edit = replace(edit, guidance=self.guidance)
        return CounterfactualSettings(edit, model=str(self.editor_path), device="cpu")

    def segment(
        self, volume: Volume, head: PreparedHead | None = None
    ) -> tuple[VolumeSegmentation, PreparedHead, float]:
        """Segment ``volume`` through the front end (``head``: one already prepared from it); seconds."""
        started = time.perf_counter()
        result, head = segment_head(volume, self.segmenter, SegmentSettings(device="cpu"), head=head)
        return result, head, time.perf_counter() - started

    def counterfactual(
        self, volume: Volume, head: PreparedHead, drift: float | None = None
    ) -> tuple[Volume, float]:
        """The counterfactual of ``volume`` (prepared as ``head``) on its own grid; seconds."""
        started = time.perf_counter()
        settings = self.edit_settings if drift is None else self.settings(drift)
        edit, _ = counterfactual_head(volume, self.editor, settings, head=head)
        return edit.counterfactual, time.perf_counter() - started


def ants_image(volume: Volume) -> Any:
    import ants

    return ants.from_sitk(volume_to_sitk(volume.with_voxels(volume.voxels.astype(np.float32))))


def ants_tissue(volume: Volume, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """ANTs N4 (in ANTs' own head mask), then Atropos 3-class k-means on the brain inside ``mask``.

    The brain's intensities are truncated to their 1st–99th percentiles first, as ANTs' own pipelines
    truncate them (antsCorticalThickness): without it k-means gives a class to the few brightest voxels
    (vessels, dura) and lumps grey and white matter together. Labels 1 CSF, 2 GM, 3 WM; seconds.
    """
    import ants
    import SimpleITK as sitk

    started = time.perf_counter()
    image = ants_image(volume)
    corrected = ants.n4_bias_field_correction(image, mask=ants.get_mask(image)).numpy()
    inside = mask.transpose(2, 1, 0)  # ants arrays are indexed [i, j, k]
    low, high = np.quantile(corrected[inside], [0.01, 0.99])
    brain = ants.from_numpy(
        (np.clip(corrected, low, high) * inside).astype(np.float32),
        origin=image.origin,
        spacing=image.spacing,
        direction=image.direction,
    )
    brain_mask = ants_image(volume.with_voxels(mask.astype(np.float32)))
    atropos = ants.atropos(a=brain, x=brain_mask, i="kmeans[3]", m="[0.2,1x1x1]", c="[5,0]")
    labels = sitk.GetArrayFromImage(ants.to_sitk(atropos["segmentation"])).astype(np.uint8)
    return labels, time.perf_counter() - started


def atlas_labels(head: PreparedHead) -> tuple[np.ndarray, float]:
    """The MNI152 tissue labels carried onto the head's corrected brain by ANTs SyN (nearest neighbour)."""
    import ants
    import SimpleITK as sitk

    started = time.perf_counter()
    template, labels = brain_tissue_template()
    fixed = ants_image(head.brain())
    registration = ants.registration(
        fixed=fixed, moving=ants_image(template), type_of_transform="SyN", random_seed=1
    )
    warped = ants.apply_transforms(
        fixed=fixed,
        moving=ants_image(labels),
        transformlist=registration["fwdtransforms"],
        interpolator="nearestNeighbor",
    )
    return sitk.GetArrayFromImage(ants.to_sitk(warped)).round().astype(
        np.uint8
    ), time.perf_counter() - started


def real_head(ours: Ours) -> dict[str, Any]:
    """Section 1 on ``sample:robex-head``."""
    volume = read_volume(robex_head_path())
    reference_mask = read_volume(robex_brain_mask_path()).voxels > 0
    segmentation, head, seconds = ours.segment(volume)
    assert head.brain_mask is not None
    labels = segmentation.labels.voxels
    ants_labels, ants_seconds = ants_tissue(volume, head.brain_mask)
    atlas, atlas_seconds = atlas_labels(head)
    atlas = np.where(head.brain_mask, atlas, 0)
    result: dict[str, Any] = {
        "input": {
            "name": "sample:robex-head",
            "shape_ijk": volume.shape_ijk,
            "spacing_mm": volume.geometry.spacing,
        },
        "front_end": head.record(),
        "brain_mask_dice_vs_robex": dice(head.brain_mask, reference_mask),
        "seconds": {
            "ours_segment_total": round(seconds, 1),
            "ants_n4_atropos": round(ants_seconds, 1),
            "atlas_syn": round(atlas_seconds, 1),
        },
        "time_ratio_ours_over_ants": round(seconds / ants_seconds, 2),
        "volumes_ml": {
            "ours": volumes_ml(labels, volume),
            "ants": volumes_ml(ants_labels, volume),
            "atlas": volumes_ml(atlas, volume),
        },
        "dice_ours_vs_ants": class_dice(labels, ants_labels),
        "dice_vs_atlas": {"ours": class_dice(labels, atlas), "ants": class_dice(ants_labels, atlas)},
    }
    edited, edit_seconds = ours.counterfactual(volume, head)
    changed = edited.voxels != volume.voxels
    distance = ndimage.distance_transform_edt(~head.brain_mask, sampling=volume.geometry.spacing[::-1])
    after, _, after_seconds = ours.segment(edited)
    before_csf = result["volumes_ml"]["ours"][CLASSES[0]]
    after_csf = volumes_ml(after.labels.voxels, volume)[CLASSES[0]]
    result["counterfactual"] = {
        "from": SOURCE,
        "to": TARGET,
        "settings": {
            "drift": ours.edit_settings.edit.drift,
            "guidance": ours.edit_settings.edit.guidance,
            "steps": ours.edit_settings.edit.steps,
            "model": str(default_model("instruct").name),
        },
        "seconds": round(edit_seconds, 1),
        "changed_voxels": int(changed.sum()),
        "changed_farther_than_8mm": int((changed & (distance > FAR_MM)).sum()),
        "max_distance_of_a_changed_voxel_mm": round(float(distance[changed].max()), 2)
        if changed.any()
        else 0.0,
        "csf_ml_before": before_csf,
        "csf_ml_after": after_csf,
        "csf_ratio": round(after_csf / before_csf, 4) if before_csf else None,
        "segment_seconds_of_the_counterfactual": round(after_seconds, 1),
    }
    save_preview(volume, head.brain_mask, labels, ants_labels, edited, HERE / "preview.png")
    return result


def synthetic_heads(ours: Ours, quick: bool) -> list[dict[str, Any]]:
    """Section 2: synthetic subjects in simulated heads, axial 1.5 mm and oblique coronal 2 × 2 × 3 mm."""
    rows = []
    for seed in SYNTHETIC_SEEDS[: 1 if quick else None]:
        image, truth_labels = synthetic_subject(seed, SubjectSettings(spacing_mm=1.5))
        head_volume, truth_mask = synthetic_head(image, truth_labels, seed)
        padded_truth = labels_on_head(truth_labels, head_volume)
        segmentation, head, seconds = ours.segment(head_volume)
        assert head.brain_mask is not None
        labels = segmentation.labels.voxels
        rows.append(
            {
                "seed": seed,
                "acquisition": "axial 1.5 mm",
                "seconds": round(seconds, 1),
                "brain_mask_dice": dice(head.brain_mask, truth_mask.voxels > 0),
                "tissue_union_dice_vs_brain_mask": dice(labels > 0, truth_mask.voxels > 0),
                "class_dice": class_dice(labels, padded_truth),
            }
        )
        if seed == SYNTHETIC_SEEDS[0]:
            rows.append(_coronal(ours, head_volume, truth_mask, padded_truth, seed))
    return rows


def _coronal(
    ours: Ours, head_volume: Volume, truth_mask: Volume, truth: np.ndarray, seed: int
) -> dict[str, Any]:
    """The same head resliced as an oblique (12°) coronal 2 × 2 × 3 mm acquisition."""
    angle = np.radians(12.0)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    coronal = tilt @ np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    spacing = (2.0, 2.0, 3.0)
    resliced = resample_volume(head_volume, spacing, coronal)
    mask = (
        resample_volume(truth_mask.with_voxels(truth_mask.voxels.astype(np.float32)), spacing, coronal).voxels
        > 0.5
    )
    labels_on_grid = _nearest(head_volume.with_voxels(truth), spacing, coronal)
    segmentation, head, seconds = ours.segment(resliced)
    assert head.brain_mask is not None
    labels = segmentation.labels.voxels
    return {
        "seed": seed,
        "acquisition": "oblique coronal 2 × 2 × 3 mm",
        "seconds": round(seconds, 1),
        "brain_mask_dice": dice(head.brain_mask, mask),
        "tissue_union_dice_vs_brain_mask": dice(labels > 0, mask),
        "class_dice": class_dice(labels, labels_on_grid),
    }


def _nearest(labels: Volume, spacing: tuple[float, float, float], direction: np.ndarray) -> np.ndarray:
    """Labels resliced like :func:`resample_volume` (per-class linear, then the most likely class)."""
    stack = [
        resample_volume(
            labels.with_voxels((labels.voxels == v).astype(np.float32)), spacing, direction
        ).voxels
        for v in range(4)
    ]
    return np.argmax(np.stack(stack), axis=0).astype(np.uint8)


def save_preview(
    volume: Volume, mask: np.ndarray, ours: np.ndarray, ants: np.ndarray, edited: Volume, path: Path
) -> None:
    """Axial, coronal and sagittal mid-brain slices: input with the mask, our tissue, ANTs tissue, the change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from latentdrift.core.volumes import extract_slices

    centre = np.array(ndimage.center_of_mass(mask)).round().astype(int)
    axes = ("axial", "coronal", "sagittal")
    fig, grid = plt.subplots(3, 4, figsize=(12, 9))
    colours = matplotlib.colors.ListedColormap(
        [(0, 0, 0, 0), (0.3, 0.7, 1, 0.6), (0.9, 0.5, 0.2, 0.5), (1, 1, 0.6, 0.5)]
    )
    difference = edited.voxels.astype(np.float32) - volume.voxels.astype(np.float32)
    bound = float(np.abs(difference).max()) or 1.0
    for row, axis in enumerate(axes):
        stack = extract_slices(volume, axis)
        index = _slice_through(volume, axis, centre)
        image = stack.slices[index]
        panels = [
            (mask, "brain mask (deepbet)"),
            (ours, "ours: LDSeg tissue"),
            (ants, "ANTs Atropos"),
        ]
        for column, (overlay, title) in enumerate(panels):
            grid[row, column].imshow(image, cmap="gray")
            cut = extract_slices(volume.with_voxels(overlay.astype(np.uint8)), axis).slices[index]
            if column == 0:
                grid[row, column].contour(cut, levels=[0.5], colors="lime", linewidths=0.8)
            else:
                grid[row, column].imshow(cut, cmap=colours, vmin=0, vmax=3, interpolation="nearest")
            grid[row, column].set_title(f"{title} ({axis})", fontsize=8)
        change = extract_slices(volume.with_voxels(difference), axis).slices[index]
        grid[row, 3].imshow(change, cmap="RdBu_r", vmin=-bound, vmax=bound)
        grid[row, 3].set_title(f"counterfactual − input ({axis})", fontsize=8)
    for ax in grid.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _slice_through(volume: Volume, axis: str, centre: np.ndarray) -> int:
    """The index (as extract_slices counts along ``axis``) of the slice through voxel ``centre`` [k, j, i]."""
    from latentdrift.core.volumes import slice_layout

    layout = slice_layout(volume.geometry, axis)  # type: ignore[arg-type]
    position = int(centre[layout.permutation[0]])
    size = volume.voxels.shape[layout.permutation[0]]
    return size - 1 - position if layout.flips[0] else position


def write_markdown(results: dict[str, Any], path: Path) -> None:
    real = results["real_head"]
    cf = real["counterfactual"]
    lines = [
        "# The brain front end on real and synthetic heads",
        "",
        f"Command: `{results['command']}` ({results['machine']}, latentdrift {results['version']}, {results['date']}).",
        "Rerun it to reproduce; every figure below is in `results.json`.",
        "",
        "## 1. A real head with skull: `sample:robex-head` (ROBEX's reference T1, 1.5 mm)",
        "",
        f"Brain mask (deepbet, after N4) against ROBEX's own mask: **Dice {real['brain_mask_dice_vs_robex']}**.",
        "",
        "| front-end step | seconds | details |",
        "|---|---|---|",
    ]
    for step in real["front_end"]["steps"]:
        details = ", ".join(f"{k} {v}" for k, v in step.items() if k not in ("name", "seconds"))
        lines.append(f"| {step['name']} | {step['seconds']} | {details} |")
    seconds = real["seconds"]
    lines += [
        "",
        f"Whole segmentation (front end, LDSeg, results back on the head's grid): {seconds['ours_segment_total']} s; "
        f"ANTs N4 + Atropos in the same brain mask: {seconds['ants_n4_atropos']} s "
        f"(ours / ANTs = **{real['time_ratio_ours_over_ants']}×**; ANTs' time leaves out the brain mask it was given).",
        "",
        "| tissue | ours (ml) | ANTs (ml) | atlas labelling (ml) | Dice ours–ANTs | Dice ours–atlas | Dice ANTs–atlas |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in CLASSES:
        lines.append(
            f"| {name} | {real['volumes_ml']['ours'][name]} | {real['volumes_ml']['ants'][name]} | "
            f"{real['volumes_ml']['atlas'][name]} | {real['dice_ours_vs_ants'][name]} | "
            f"{real['dice_vs_atlas']['ours'][name]} | {real['dice_vs_atlas']['ants'][name]} |"
        )
    lines += [
        "",
        "The atlas labelling is the MNI152 template's tissue labels carried onto this brain by ANTs SyN "
        f"({seconds['atlas_syn']} s): a reference of the same kind as the project's training labels, not a "
        "manual segmentation. Atropos labels by intensity alone; the two references disagree with each other "
        "as much as with us, so read each column as agreement, not accuracy.",
        "",
        f"Counterfactual `--from {cf['from']} --to {cf['to']}` (defaults: {cf['settings']}), {cf['seconds']} s: "
        f"CSF {cf['csf_ml_before']} → {cf['csf_ml_after']} ml (**×{cf['csf_ratio']}**, our segmentation of each, "
        f"front end included); {cf['changed_voxels']} voxels changed, {cf['changed_farther_than_8mm']} of them "
        f"farther than 8 mm from the brain mask (the farthest {cf['max_distance_of_a_changed_voxel_mm']} mm).",
        "",
        "![preview](preview.png)",
        "",
        "## 2. Synthetic heads (truth known)",
        "",
        "| seed | acquisition | seconds | brain-mask Dice | tissue union vs brain mask | CSF | grey matter | white matter |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["synthetic_heads"]:
        dices = row["class_dice"]
        lines.append(
            f"| {row['seed']} | {row['acquisition']} | {row['seconds']} | {row['brain_mask_dice']} | "
            f"{row['tissue_union_dice_vs_brain_mask']} | {dices[CLASSES[0]]} | {dices[CLASSES[1]]} | {dices[CLASSES[2]]} |"
        )
    lines += [
        "",
        "Synthetic subjects come from the same template as the models' training data (other seeds): these "
        "figures bound what the front end loses, they do not say how the models fare on real anatomy.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one synthetic head (a smoke test)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite results.md from results.json")
    args = parser.parse_args(argv)
    if args.markdown_only:
        write_markdown(json.loads((HERE / "results.json").read_text(encoding="utf-8")), HERE / "results.md")
        return 0
    ours = Ours()
    results = {
        "command": "python benchmarks/realhead/run.py" + (" --quick" if args.quick else ""),
        "version": __version__,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {sys.version.split()[0]}",
        "date": time.strftime("%Y-%m-%d"),
        "real_head": real_head(ours),
        "synthetic_heads": synthetic_heads(ours, args.quick),
        "front_end_settings": asdict(FrontEndSettings()),
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    write_markdown(results, HERE / "results.md")
    print((HERE / "results.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
