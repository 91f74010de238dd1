"""Evidence for Latent Drift on held-out synthetic subjects: one command, JSON + Markdown + PNG plots.

    .venv/bin/python benchmarks/evidence/run.py                # full mode (about 30 min on 2 CPU cores)
    .venv/bin/python benchmarks/evidence/run.py --quick        # toy sizes, a few minutes: a smoke test

Sections (see ``benchmarks/evidence/README.md``): (1) drift on vs off per fine-tuning scheme, FID/KID
on features of an encoder trained here and L1 to the held-out slices; (2) counterfactual fidelity of the
InstructPix2Pix editor vs δ against the true follow-ups of the synthetic longitudinal cohort; (3) a
CN-vs-AD classifier trained on synthetic, cohort and mixed slices; (4) prompt style and age format.

Every stage is cached under ``--work`` (default ``data/evidence/<mode>/``): fine-tuning jobs resume
from their checkpoints (``latentdrift.finetune.jobs``), generated slices, counterfactual volumes, the
encoder and the classifiers are stored with a key of their settings, so a rerun skips what is done.
Outputs (``results.json``, ``results.md``, ``*.png``) go to ``--output`` (default
``benchmarks/evidence/`` in full mode, ``data/evidence/quick/report/`` in quick mode).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from common import FULL, QUICK, Sizes, Stages, key_of, make_cohorts, model_key, sizes_json, write_json  # noqa: E402
from networks import apply, load_encoder, position_labels, train_encoder  # noqa: E402
from report import figures, markdown  # noqa: E402
from sections import Context, section_classifier, section_counterfactual, section_drift, section_prompts  # noqa: E402

from latentdrift.core.models import find_default  # noqa: E402
from latentdrift.counterfactual.edit import clear_bundle_cache, load_bundle  # noqa: E402
from latentdrift.counterfactual.volume_editing import model_resolution  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; size options default to the mode's sizes (``common.QUICK`` / ``common.FULL``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="toy sizes with a random-weight 32×32 base model")
    p.add_argument("--output", type=Path, help="where results.json, results.md and the PNGs go")
    p.add_argument("--work", type=Path, help="cache folder (default data/evidence/<mode>/)")
    p.add_argument(
        "--base",
        type=Path,
        help="base Stable Diffusion folder (default: the registry's fine-tuning base, mini-sd-natural)",
    )
    p.add_argument(
        "--editor", type=Path, help="InstructPix2Pix editor folder (default: bundled, else fine-tuned here)"
    )
    p.add_argument("--generator", type=Path, help="text-to-image model for the classifier's synthetic slices")
    p.add_argument("--drift", type=float, help="δ for every drift job (default: search on the base model)")
    p.add_argument("--device", default="cpu", help="torch device for training and sampling (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    sizes = {
        "train_subjects": int, "test_subjects": int, "pair_subjects": int, "spacing_mm": float, "steps": int, "editor_steps": int,
        "batch_size": int, "samples": int, "sample_steps": int, "guidance": float, "cf_steps": int,
        "image_guidance": float, "search_samples": int, "search_steps": int, "feature_dim": int,
        "encoder_epochs": int, "classifier_samples": int, "classifier_epochs": int, "num_class_images": int,
        "seed": int,
    }  # fmt: skip
    for name, kind in sizes.items():
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            help=f"full {getattr(FULL, name)}, quick {getattr(QUICK, name)}",
        )
    p.add_argument("--subjects", type=int, dest="train_subjects", help="alias of --train-subjects")
    p.add_argument(
        "--deltas", help=f"comma-separated δ sweep of section 2 (full {FULL.deltas}, quick {QUICK.deltas})"
    )
    p.add_argument("--search-grid", help="comma-separated δ grid of the search")
    return p.parse_args(argv)


def chosen_sizes(args: argparse.Namespace) -> Sizes:
    """The mode's sizes with every option given on the command line."""
    sizes = QUICK if args.quick else FULL
    given = {name: getattr(args, name) for name in sizes_json(sizes) if getattr(args, name, None) is not None}
    for name in ("deltas", "search_grid"):
        if isinstance(given.get(name), str):
            given[name] = tuple(float(v) for v in given[name].split(","))
    return replace(sizes, **given)


def command_line() -> str:
    """The command as typed from the repository root."""
    python = Path(sys.executable)
    try:
        python_text = str(python.relative_to(ROOT)) if python.is_relative_to(ROOT) else str(python)
    except ValueError:
        python_text = str(python)
    script = Path(sys.argv[0]).resolve()
    script_text = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else str(script)
    return shlex.join([python_text, script_text, *sys.argv[1:]])


def git_commit() -> str:
    """The repository's HEAD commit (short), ``unknown`` outside git."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def base_model(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    """The base model folder and a note on what it is (quick mode builds a tiny random one)."""
    if args.base is not None:
        return args.base, "given with --base"
    if args.quick:
        from latentdrift.fixtures.tiny_models import build_tiny_sd

        folder = work / "base-tiny-sd"
        if not (folder / "model_index.json").is_file():
            build_tiny_sd(folder, seed=0)
        return folder, "tiny random-weight Stable Diffusion from latentdrift.fixtures.tiny_models, 32×32"
    base = find_default("finetune")
    if base is None:
        raise SystemExit("No base model installed: give --base DIR (a diffusers Stable Diffusion folder).")
    return base.path, "the bundled miniature natural-image Stable Diffusion (latentdrift.finetune.pretrain)"


def installed_default(given: Path | None, task: str, quick: bool) -> Path | None:
    """``given``, else the task's installed default in full mode, else None (the pipeline trains one)."""
    if given is not None or quick:
        return given
    entry = find_default(task)
    return None if entry is None else entry.path


def build_context(
    args: argparse.Namespace, sizes: Sizes, work: Path, stages: Stages
) -> tuple[Context, dict[str, Any]]:
    """Base model, cohorts, the encoder and its held-out features; plus what the outputs record."""
    base, base_note = base_model(args, work)
    resolution = model_resolution(load_bundle(base, args.device, full_precision=True))
    clear_bundle_cache()
    cohorts = make_cohorts(work, sizes, resolution)
    encoder_key = {
        "data": cohorts.train.key,
        "dim": sizes.feature_dim,
        "epochs": sizes.encoder_epochs,
        "seed": sizes.seed,
    }
    encoder_path = work / "encoder" / key_of(encoder_key) / "encoder.safetensors"
    info = stages.json(
        "encoder",
        encoder_key,
        lambda: train_encoder(
            encoder_path, cohorts.train, sizes.feature_dim, sizes.encoder_epochs, sizes.seed
        ),
    )
    if not encoder_path.is_file():  # the stage record outlived its weights: train again
        info = train_encoder(encoder_path, cohorts.train, sizes.feature_dim, sizes.encoder_epochs, sizes.seed)
    encoder = load_encoder(encoder_path, sizes.feature_dim)
    held_out = float(
        (
            apply(encoder, cohorts.test.images, features=False).argmax(axis=1)
            == position_labels(cohorts.test)
        ).mean()
    )
    ctx = Context(
        sizes,
        stages,
        args.device,
        base,
        resolution,
        cohorts,
        encoder,
        apply(encoder, cohorts.test.images, features=True),
        args.drift,
    )
    inputs = {
        "base": str(base),
        "base_note": base_note,
        "resolution": resolution,
        "train_cohort": str(cohorts.train_csv),
        "test_cohort": str(cohorts.test_csv),
        "pairs_cohort": str(cohorts.pairs_csv),
        "train_seed": cohorts.train_seed,
        "test_seed": cohorts.test_seed,
        "pairs_seed": cohorts.pairs_seed,
        "train_subjects": sizes.train_subjects,
        "test_subjects": sizes.test_subjects,
        "pair_subjects": sizes.pair_subjects,
        "train_slices": len(cohorts.train.images),
        "test_slices": len(cohorts.test.images),
    }
    encoder_info = {
        **info,
        "held_out_accuracy": held_out,
        "task": "axial slice position, 8 bins",
        "features": sizes.feature_dim,
    }
    return ctx, {"inputs": inputs, "encoder": encoder_info}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) every section and write the outputs; the results dict."""
    args = parse_args(argv)
    started, clock = datetime.now(timezone.utc), time.monotonic()
    mode = "quick" if args.quick else "full"
    sizes = chosen_sizes(args)
    torch.set_num_threads(
        args.threads
    )  # two OpenMP threads on the shared 2-core machine stalled (10× slower)
    work = (args.work or ROOT / "data" / "evidence" / mode).resolve()
    output = (
        args.output or (ROOT / "data" / "evidence" / "quick" / "report" if args.quick else HERE)
    ).resolve()
    stages = Stages(work)
    ctx, recorded = build_context(args, sizes, work, stages)
    section1 = section_drift(ctx)
    editor = installed_default(args.editor, "instruct", args.quick)
    section2 = section_counterfactual(ctx, editor)
    montage = section2.pop("_montage")
    generator = installed_default(args.generator, "generate", args.quick)
    if generator is None:
        generator, source, key = (
            ctx.models["basic-drift"],
            "section 1's basic + drift model",
            key_of(str(ctx.models["basic-drift"])),
        )
    else:
        source, key = "given or bundled", model_key(generator)
    section3 = section_classifier(ctx, generator, source, key)
    section4 = section_prompts(ctx)
    results: dict[str, Any] = {
        "command": command_line(),
        "mode": mode,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - clock, 1),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "device": args.device,
        "git_commit": git_commit(),
        "work": str(work),
        "sizes": sizes_json(sizes),
        **recorded,
        "section1_drift": section1,
        "section2_counterfactual": section2,
        "section3_classifier": section3,
        "section4_prompts": section4,
        "stage_seconds": stages.timings,
    }
    results = json.loads(
        json.dumps(results, default=str).replace(f"{ROOT}/", "")
    )  # paths relative to the repo
    output.mkdir(parents=True, exist_ok=True)
    pngs = figures(results, montage, ctx.samples, output)
    results["figures"] = pngs
    write_json(output / "results.json", results)
    (output / "results.md").write_text(markdown(results, pngs), encoding="utf-8")
    print(f"[evidence] wrote {output / 'results.md'} ({results['elapsed_s']:.0f} s)", flush=True)
    return results


if __name__ == "__main__":
    main()
