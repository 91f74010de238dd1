"""Retrain the bundled brain-tissue LDSeg model from scratch (the one command behind its model card).

    .venv/bin/python scripts/train_default_ldseg.py [--steps 5000] [--restart-steps 3000] [--final-steps 1500]
        [--scanner-steps 0]

1. Writes synthetic subjects made from the MNI152 template (``latentdrift.fixtures.synthetic``: random smooth
   deformations, tissue contrast, gamma, bias field, noise) as image/label NRRD pairs under
   ``data/brain-tissue/`` with a CSV. Seeds 0…N-1 are used here; the benchmarks evaluate on seeds from
   1000 on, which training never sees.
2. Stage 1 trains from scratch with ``latentdrift train-ldseg`` settings (augmentation on, validation
   Dice each epoch on held-out subjects, cosine decay from 1e-3, resumable checkpoints in
   ``data/brain-tissue-ldseg.checkpoints``) into ``data/brain-tissue-ldseg-stage1``.
3. Stage 2, a warm restart: fine-tunes that model (``train-ldseg --init-from``) with a second cosine
   decay from 3e-4 (checkpoints in ``data/brain-tissue-ldseg.checkpoints-stage2``), same subject split,
   into ``data/brain-tissue-ldseg-stage2``.
4. Stage 3, progressive resizing: the same networks (fully convolutional) fine-tuned at 144×144 instead
   of 128×128 (a 36×36 latent), cosine from 3e-4 (``data/brain-tissue-ldseg.checkpoints-stage3``), into
   ``data/brain-tissue-ldseg-stage3``.
5. Writes the stage-3 model to ``LatentDriftSlicer/Logic/bundled_models/brain-tissue-ldseg``;
   ``benchmarks/ldseg/choose_sampling.py`` then chooses its sampler.

``--scanner-steps N`` adds a stage 4 (stage 3 then goes to ``data/brain-tissue-ldseg-stage3``): the
stage-3 model fine-tuned N steps with the scanner-variation augmentation as well
(:mod:`latentdrift.segmentation.ldseg.augment`: per-tissue contrast, sharper borders, blur along one axis, a rim of
non-brain tissue outside the brain), cosine from 1e-4. Tried with 800 steps: held-out synthetic mean
Dice 0.707 → 0.782, but on the real ROBEX head no measured gain (grey matter against the atlas labelling
0.788 vs 0.786, CSF 0.394 vs 0.406: ``benchmarks/realhead/results-ldseg-stage4.md`` against ``results.md``),
so the bundled model is stage 3.

The model declares the brain front end's contract (a skull-stripped, bias-corrected T1 on the MNI152
grid at 1.5 mm, the subjects' spacing): real heads are prepared into that domain before it runs.

Takes about 100 minutes of a quiet 2-core CPU (5000 + 3000 steps at 128², 1500 at 144²);
rerunning resumes from the last checkpoint of each stage, and skips the stages before the latest
stage whose model folder exists.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import replace
from pathlib import Path

from latentdrift.core.progress import Progress
from latentdrift.core.volumes import write_volume
from latentdrift.fixtures.synthetic import TISSUE_NAMES, synthetic_subject
from latentdrift.frontend import BRAIN_T1
from latentdrift.segmentation.ldseg import (
    LabelClass,
    LDSegConfig,
    TrainSettings,
    read_config,
    training_config,
)
from latentdrift.segmentation.workflow import train_segmentation_model

ROOT = Path(__file__).resolve().parents[1]
# Relative to ROOT, which the run changes into, so that the model card names no machine's paths.
DATA = Path("data") / "brain-tissue"
OUTPUT = ROOT / "LatentDriftSlicer" / "Logic" / "bundled_models" / "brain-tissue-ldseg"
STAGE1 = Path("data") / "brain-tissue-ldseg-stage1"
STAGE2 = Path("data") / "brain-tissue-ldseg-stage2"
STAGE3 = Path("data") / "brain-tissue-ldseg-stage3"
INPUT = replace(BRAIN_T1, spacing_mm=1.5)
"""What the model expects: the brain front end prepares real heads into the training subjects' domain."""
FINAL_SIZE = 144

# Names, colours and codes follow 3D Slicer's GenericAnatomyColors / General Anatomy terminology
# (coding scheme SRT, as DICOM SEG uses them).
_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMY = "Anatomic codes - DICOM master list"
CLASSES = (
    LabelClass(TISSUE_NAMES[0], (0, 0, 0)),
    LabelClass(
        TISSUE_NAMES[1],
        (85, 188, 255),
        f"{_CONTEXT}~SRT^T-D000A^Anatomical Structure~SRT^T-A0109^Brain Cerebrospinal Fluid Pathway~^^~{_ANATOMY}~^^~^^",
    ),
    LabelClass(
        TISSUE_NAMES[2],
        (200, 200, 215),
        f"{_CONTEXT}~SRT^T-D0050^Tissue~SRT^T-A2020^Cerebral Gray Matter~^^~{_ANATOMY}~^^~^^",
    ),
    LabelClass(
        TISSUE_NAMES[3],
        (250, 250, 225),
        f"{_CONTEXT}~SRT^T-D000A^Anatomical Structure~SRT^T-A2032^Cerebral White Matter~^^~{_ANATOMY}~^^~^^",
    ),
)

STAGES = """## Stages

Stage 1: {steps} steps from scratch at 128×128 (cosine decay from 1e-3, same settings otherwise).
Stage 2: {restart} steps, a warm restart from the stage-1 model (cosine decay from 3e-4), on the same
subject split. Stage 3: the stage-2 networks fine-tuned at {size}×{size} (progressive resizing; cosine
decay from 3e-4). Stage 4 (only with `--scanner-steps`), reported above when it ran: the stage-3 model fine-tuned with the scanner-variation
augmentation as well (per-tissue contrast, sharper borders, blur along one axis, a rim of non-brain
tissue around the brain: what a real scan keeps after the brain front end), cosine decay from 1e-4.

"""

NOTES = """## Data and intended use

Trained only on **synthetic** subjects derived from one real brain: the MNI ICBM152 2009c T1 template
and its tissue maps as shipped in nilearn (see `docs/data.md`), under random smooth deformations,
tissue-contrast, gamma, bias-field and noise variation, plus on-the-fly augmentation. It expects a
skull-stripped T1-weighted brain MRI. It has never seen a real patient scan other than the template:
treat it as a demonstration model, not a clinical tool.

Labels: CSF = inside the brain mask where grey + white matter probability < 0.5; grey / white matter =
the larger of the two template probabilities elsewhere.

## Reproduce

    .venv/bin/python scripts/train_default_ldseg.py
    .venv/bin/python benchmarks/ldseg/choose_sampling.py && .venv/bin/python benchmarks/ldseg/choose_sampling.py --apply

The second line chooses the default sampler (where one DDIM step starts, and whether half of the
samples are mirrored) on the validation subjects.

Held-out accuracy, calibration, robustness and speed: `benchmarks/ldseg/` (`results.md`).
"""


def write_subjects(count: int) -> Path:
    """Image/label NRRD pairs for seeds 0..count-1 and their CSV (existing files are reused)."""
    DATA.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in range(count):
        image_path, label_path = (
            DATA / f"subject{seed:04d}_image.nrrd",
            DATA / f"subject{seed:04d}_label.nrrd",
        )
        if not (image_path.exists() and label_path.exists()):
            image, labels = synthetic_subject(seed)
            write_volume(image, image_path)
            write_volume(labels, label_path)
        rows.append({"subject": f"subject{seed:04d}", "image": image_path.name, "label": label_path.name})
    csv_path = DATA / "pairs.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["subject", "image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def default_config() -> LDSegConfig:
    """128×128 axial slices, a 32×32×4 latent, 15 DDIM steps (:func:`latentdrift.segmentation.ldseg.training_config`).

    The LDSeg reference's 32×32×1 latent (at 512²/16) cannot hold thin CSF at this scale: its
    autoencoder's own reconstruction of the true labels scores low (``benchmarks/ldseg``, autoencoder
    ceiling). Four channels carry it at the same denoiser cost.
    """
    return replace(training_config(CLASSES, latent_channels=4), input=INPUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="stage 1: from scratch")
    parser.add_argument("--restart-steps", type=int, default=3000, help="stage 2: warm restart")
    parser.add_argument(
        "--final-steps", type=int, default=1500, help=f"stage 3: at {FINAL_SIZE}×{FINAL_SIZE}"
    )
    parser.add_argument(
        "--scanner-steps",
        type=int,
        default=0,
        help="stage 4, with the scanner-variation augmentation (0: none)",
    )
    parser.add_argument("--subjects", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    args.output = args.output.absolute()
    os.chdir(ROOT)
    pairs = write_subjects(args.subjects)
    progress = Progress(json_lines=not sys.stderr.isatty())
    stage1 = stage_settings(args.steps, args.batch_size, 1e-3, "brain-tissue-ldseg.checkpoints")
    stage2 = stage_settings(
        args.restart_steps, args.batch_size, 3e-4, "brain-tissue-ldseg.checkpoints-stage2"
    )
    stage3 = stage_settings(args.final_steps, args.batch_size, 3e-4, "brain-tissue-ldseg.checkpoints-stage3")
    stage4 = replace(
        stage_settings(args.scanner_steps, args.batch_size, 1e-4, "brain-tissue-ldseg.checkpoints-stage4"),
        scanner_variation=True,
    )
    notes = STAGES.format(steps=args.steps, restart=args.restart_steps, size=FINAL_SIZE) + NOTES
    stage3_output = STAGE3 if args.scanner_steps else args.output
    summary = None
    if not _trained(stage3_output):  # each stage runs unless its model, or a later stage's, is there
        if not _trained(STAGE2):
            if not _trained(STAGE1):
                train_segmentation_model(pairs, STAGE1, default_config(), stage1, 0.2, progress, NOTES)
            train_segmentation_model(pairs, STAGE2, None, stage2, 0.2, progress, NOTES, STAGE1)
        larger = replace(read_config(STAGE2), image_size=FINAL_SIZE)
        summary = train_segmentation_model(pairs, stage3_output, larger, stage3, 0.2, progress, notes, STAGE2)
    if args.scanner_steps:
        summary = train_segmentation_model(pairs, args.output, None, stage4, 0.2, progress, notes, STAGE3)
    if summary is None:
        print(f"{stage3_output} is already trained: nothing to do.")
        return 0
    print(summary["figures"]["final"])
    return 0


def _trained(stage: Path) -> bool:
    """Whether a stage's model folder is there (its stage is then skipped)."""
    return (stage / "model.safetensors").is_file()


def stage_settings(steps: int, batch_size: int, learning_rate: float, checkpoints: str) -> TrainSettings:
    """One cosine stage; seed 0 in every stage, so all hold out the same validation subjects."""
    return TrainSettings(
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler="cosine",
        reconstruction_weight=1.0,
        seed=0,
        augment=True,
        flip_left_right=True,
        validation_steps=5,
        checkpoint_dir=str(Path("data") / checkpoints),
        checkpoint_every=100,
        device="auto",
    )


if __name__ == "__main__":
    raise SystemExit(main())
