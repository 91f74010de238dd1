"""Retrain the bundled generative models from scratch (the one command behind their model cards).

    .venv/bin/python scripts/train_default_generative.py [--quick]

1. ``mini-sd-natural``: a miniature Stable Diffusion pre-trained from random weights on scikit-image's
   sample images (:mod:`latentdrift.finetune.pretrain`).
2. A synthetic longitudinal brain cohort (:func:`latentdrift.fixtures.synthetic_cohort.make_cohort`: 48
   subjects at baseline and follow-up, seed 0) in ``data/generative/cohort``, and for the editor a
   cohort of 48 subjects with three follow-ups each whose anatomy varies more
   (``data/generative/longitudinal-varied``: B-spline deformations of 6 mm, and baselines already aged
   by 0–10 % brain-volume loss, so that ventricles of every size grow).
3. ``brain-mri-sd``: text-to-image fine-tuning of ``mini-sd-natural`` on the first cohort's axial
   slices with the project's own job (scheme ``basic``), with Latent Drift at the δ searched on the
   base model.
4. ``brain-mri-instruct``: an InstructPix2Pix editor fine-tuned (scheme ``instruct-pix2pix``) from
   ``brain-mri-sd`` on every earlier → later pair of the varied cohort plus identity pairs,
   text encoder trained too, with the same δ; then a stage on the same pairs augmented alike
   (``scanner_variation``: warps, other scanners' contrast, sharper anatomy, front-end leftovers), at
   half the learning rate: on a real head the editor trained on template-derived brains alone made
   a coarse, global darkening instead of an edit (``benchmarks/realhead/calibration.md``).

``--editor-only`` retrains the editor alone, from the published ``brain-mri-sd``. The editor's sampling
δ and text guidance are chosen afterwards on a real head and synthetic ones (``benchmarks/realhead/calibrate.py``,
then its ``--apply``), which records them in the editor's ``latentdrift.json`` and model card.

Every stage is resumable (checkpoints under ``data/generative/``): rerun the command after an
interruption. The models are written to ``LatentDriftSlicer/Logic/bundled_models/`` (``--output``
elsewhere). ``--quick`` runs every stage at toy size into ``data/generative-quick`` (a smoke test).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latentdrift.core.progress import Progress
from latentdrift.finetune.config import FinetuneConfig
from latentdrift.finetune.jobs import create_job, run_job, status
from latentdrift.finetune.metadata import recorded_drift, update_metadata
from latentdrift.finetune.pretrain import PretrainSettings, pretrain
from latentdrift.fixtures.synthetic import SubjectSettings
from latentdrift.fixtures.synthetic_cohort import make_cohort
from latentdrift.frontend import BRAIN_T1

ROOT = Path(__file__).resolve().parents[1]
BRAIN_MODEL_INPUT = replace(BRAIN_T1, spacing_mm=2.0)
"""What the brain models expect (their ``latentdrift.json`` ``input``): skull-stripped, bias-corrected T1
brains on the MNI152 grid at the cohorts' 2 mm, which the brain front end prepares real heads into."""
BUNDLED = ROOT / "LatentDriftSlicer" / "Logic" / "bundled_models"
REPRODUCE = """
## Data and reproduction

Fine-tuned only on a **synthetic** longitudinal cohort made from the MNI152 template
(`latentdrift.fixtures.synthetic_cohort`, 48 subjects, seed 0; the text-to-image model on a baseline and one
follow-up each, the editor on a cohort of its own whose anatomy varies more — 6 mm deformations,
baselines aged by 0–10 % brain loss — a baseline and three follow-ups each, with identity pairs and its
text encoder trained, then 1000 steps more with each pair augmented alike by scanner variation): a
demonstration model, not a clinical tool. Retrain every default generative model, then choose the
editor's sampling δ and text guidance on a real head and synthetic heads whose true change is known, with

    .venv/bin/python scripts/train_default_generative.py
    .venv/bin/python benchmarks/realhead/calibrate.py --drifts=-0.05,0 --synthetic 1
    .venv/bin/python benchmarks/realhead/calibrate.py --drifts=0 --synthetic 2 --guidance 14
    .venv/bin/python benchmarks/realhead/calibrate.py --apply 0 --apply-guidance 14

Measured behaviour on held-out synthetic subjects (drift on/off, counterfactual fidelity against
ground-truth follow-ups, classifier AUC): `benchmarks/evidence/results.md` (measured on the editor before
its retraining on the varied cohort; not rerun since). On a real head through the brain front end:
`benchmarks/realhead/results.md`.
"""


@dataclass(frozen=True)
class Budget:
    """How much of each stage to run."""

    pretrain: PretrainSettings
    subjects: int
    follow_ups: int
    spacing_mm: float
    editor_subjects: SubjectSettings
    baseline_atrophy: tuple[float, float]
    text_steps: int
    instruct_steps: int
    scanner_steps: int
    batch_size: int
    search_samples: int


FULL = Budget(
    PretrainSettings(vae_steps=500, unet_steps=1000),
    48,
    3,
    2.0,
    SubjectSettings(deformation_mm=6.0),
    (0.0, 0.10),
    1000,
    5000,
    1000,
    16,
    8,
)
QUICK = Budget(
    PretrainSettings(
        resolution=32, vae_resolution=16, vae_steps=4, unet_steps=4, batch_size=2, checkpoint_every=2
    ),
    2,
    2,
    4.0,
    SubjectSettings(deformation_mm=6.0),
    (0.0, 0.10),
    3,
    3,
    2,
    2,
    2,
)


def finetune(job_dir: Path, config: FinetuneConfig) -> Path:
    """Run (or resume) one fine-tuning job; the finished model folder."""
    if not (job_dir / "config.json").is_file():
        create_job(job_dir, config)
    if status(job_dir)["state"] != "finished":
        run_job(job_dir, Progress(f"fine-tuning {config.scheme}"))
    return job_dir / "model"


def store_half_precision(folder: Path) -> None:
    """Rewrite every safetensors file under ``folder`` with float16 weights (half the size).

    diffusers and transformers load them into float32 models unchanged in code; the rounding is far
    below what these small models resolve. The bundled models are stored this way to stay within
    the repository's budget for default models.
    """
    for path in sorted(folder.rglob("*.safetensors")):
        tensors = load_file(path)
        if all(t.dtype != torch.float32 for t in tensors.values()):
            continue
        half = {k: t.half() if t.dtype == torch.float32 else t for k, t in tensors.items()}
        save_file(half, path, metadata={"format": "pt"})


def publish(model: Path, destination: Path) -> Path:
    """Copy a job's model folder to ``destination`` (float16 weights, paths in this repository relative)."""
    staging = destination.with_name(f".partial-{destination.name}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model, staging, ignore=shutil.ignore_patterns("summary.json"))
    store_half_precision(staging)
    for path in staging.rglob("*"):
        if path.suffix in (".json", ".md"):
            path.write_text(path.read_text(encoding="utf-8").replace(f"{ROOT}/", ""), encoding="utf-8")
    with (staging / "MODEL_CARD.md").open("a", encoding="utf-8") as card:
        card.write(REPRODUCE)
    if destination.exists():
        shutil.rmtree(destination)
    staging.rename(destination)
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes, into data/generative-quick")
    parser.add_argument("--output", type=Path, default=None, help="where the model folders go")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--editor-only",
        action="store_true",
        help="retrain brain-mri-instruct from the published brain-mri-sd",
    )
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    work = ROOT / "data" / ("generative-quick" if args.quick else "generative")
    output = args.output or (work / "models" if args.quick else BUNDLED)
    output.mkdir(parents=True, exist_ok=True)
    settings = replace(budget.pretrain, device=args.device)

    base = output / "mini-sd-natural"
    if not (base / "model_index.json").is_file():
        pretrain(base, work / "pretrain", settings, Progress("pre-training"))
    store_half_precision(base)
    longitudinal = work / "longitudinal-varied" / "cohort.csv"
    if not longitudinal.is_file():
        make_cohort(
            longitudinal.parent,
            subjects=budget.subjects,
            seed=0,
            spacing_mm=budget.spacing_mm,
            follow_ups=budget.follow_ups,
            subject_settings=budget.editor_subjects,
            baseline_atrophy=budget.baseline_atrophy,
        )

    common = {
        "resolution": settings.resolution,
        "batch_size": budget.batch_size,
        "learning_rate": 2e-4,
        "checkpoint_every": 100,
        "sample_every": 0,
        "device": args.device,
        "cache_dir": str(work / "cache"),
    }
    if args.editor_only:
        text_model = output / "brain-mri-sd"
    else:
        text_model = publish(train_text_model(work, base, budget, common), output / "brain-mri-sd")
    delta, _ = recorded_drift(text_model)
    editor = FinetuneConfig(
        scheme="instruct-pix2pix",
        model=str(text_model),
        steps=budget.instruct_steps,
        drift=delta,
        cohort=str(longitudinal),
        lr_scheduler="cosine",
        identity_pairs=True,
        train_text_encoder=True,
        **common,
    )
    instruct_model = finetune(work / "jobs" / "brain-mri-instruct", editor)
    scanner_stage = replace(
        editor,
        model=str(instruct_model),
        steps=budget.scanner_steps,
        learning_rate=1e-4,
        scanner_variation=True,
    )
    scanner_model = finetune(work / "jobs" / "brain-mri-instruct-scanner", scanner_stage)
    publish(scanner_model, output / "brain-mri-instruct")
    for name in ("brain-mri-sd", "brain-mri-instruct"):
        update_metadata(output / name, input=BRAIN_MODEL_INPUT.to_dict())
    print(f"Models in {output}: mini-sd-natural, brain-mri-sd, brain-mri-instruct (δ = {delta})")
    return 0


def train_text_model(work: Path, base: Path, budget: Budget, common: dict) -> Path:
    """The text-to-image job (scheme ``basic``, δ searched on the base model) on its own cohort; its model folder."""
    cohort = work / "cohort" / "cohort.csv"
    if not cohort.is_file():
        make_cohort(cohort.parent, subjects=budget.subjects, seed=0, spacing_mm=budget.spacing_mm)
    return finetune(
        work / "jobs" / "brain-mri-sd",
        FinetuneConfig(
            scheme="basic",
            cohort=str(cohort),
            model=str(base),
            steps=budget.text_steps,
            search_drift=True,
            search_samples=budget.search_samples,
            **common,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
