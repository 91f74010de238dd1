"""The ``latentdrift`` command: a thin shell over the engine's workflows.

Every subcommand shares ``--device``, ``--seed``, ``--quiet`` and ``--debug``; those that write results
take ``--output DIR`` and write ``DIR/summary.json``. Errors the user can fix print one line
(``latentdrift: error: …``) and exit non-zero; ``--debug`` shows the traceback as well.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from . import __version__
from .errors import LatentDriftError
from .progress import Progress, emit_event
from .volumes import AXES

LOG = logging.getLogger("latentdrift")

Handler = Callable[[argparse.Namespace], int]


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    group.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same result")
    group.add_argument("--quiet", action="store_true", help="no progress bars or info messages")
    group.add_argument("--debug", action="store_true", help="show tracebacks and debug messages")
    group.add_argument(
        "--progress-json",
        action="store_true",
        help="print progress and the result as JSON lines on stdout (for GUIs; replaces the progress bar)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one sub-parser per command)."""
    common = _common_parser()
    parser = argparse.ArgumentParser(
        prog="latentdrift",
        description="Latent Drift counterfactuals and LDSeg segmentation for medical volumes.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", parents=[common], help="versions, devices and models found")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(handler=_run_info)

    scene = commands.add_parser(
        "scene", parents=[common], help="load volumes, slice and reassemble them, save a Slicer scene"
    )
    scene.add_argument("inputs", nargs="+", metavar="INPUT", help=_INPUT_HELP)
    _add_output(scene)
    _add_slicing(scene)
    scene.set_defaults(handler=_run_scene)

    segment = commands.add_parser(
        "segment",
        parents=[common],
        help="LDSeg segmentation with per-voxel uncertainty (N samples per slice)",
    )
    segment.add_argument("input", metavar="INPUT", help=_INPUT_HELP)
    segment.add_argument(
        "--model",
        default=None,
        help=f"model name or folder (see `info`; default: {_default_name('segment')})",
    )
    segment.add_argument("--samples", type=int, default=8, help="samples per slice (uncertainty); 1 allowed")
    segment.add_argument(
        "--steps", type=int, default=None, help="DDIM steps (default: the model's, at most 15)"
    )
    segment.add_argument(
        "--batch-size", type=int, default=8, help="slices per batch (halved on out-of-memory)"
    )
    segment.add_argument(
        "--probabilities", action="store_true", help="also write per-class probability volumes"
    )
    _add_output(segment)
    _add_slicing(segment, default_axis=None)
    segment.set_defaults(handler=_run_segment)
    _add_counterfactual_parser(commands, common)
    _add_generate_parser(commands, common)
    _add_demo_parser(commands, common)
    _add_training_parsers(commands, common)

    train = commands.add_parser(
        "train-ldseg", parents=[common], help="train an LDSeg model on image/label volume pairs"
    )
    train.add_argument(
        "data",
        metavar="DATA",
        help="CSV with image,label[,subject] columns, or a folder of *_image/*_label files",
    )
    train.add_argument(
        "--classes", default=None, help="class names, background first, e.g. background,CSF,GM,WM"
    )
    train.add_argument(
        "--init-from",
        metavar="NAME|DIR",
        default=None,
        help="fine-tune this LDSeg model: start from its weights, keep its classes and architecture",
    )
    train.add_argument(
        "--axis", choices=AXES, default=None, help="slice axis the model learns (default: axial)"
    )
    train.add_argument(
        "--spatial-dims",
        type=int,
        choices=(2, 3),
        default=None,
        help="2: slices along --axis; 3: whole volumes at --image-size³ (default: 2)",
    )
    train.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="model resolution in pixels (default: 128 for 2D, 64 for 3D)",
    )
    train.add_argument(
        "--latent-downsampling", type=int, default=None, help="image size / latent size (default: 4)"
    )
    train.add_argument(
        "--latent-channels", type=int, default=None, help="channels of the label latent (default: 4)"
    )
    train.add_argument(
        "--reconstruction-weight",
        type=float,
        default=1.0,
        help="weight of the label autoencoder's own loss; 0 = the LDSeg reference (default: 1)",
    )
    train.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: 2000)")
    train.add_argument(
        "--batch-size", type=int, default=None, help="slices (3D: volumes) per step (default: 16; 3D: 2)"
    )
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument(
        "--lr-scheduler", default="constant", help="diffusers scheduler name: constant, cosine, linear, ..."
    )
    train.add_argument("--validation-fraction", type=float, default=0.2, help="share of subjects held out")
    train.add_argument("--no-augment", action="store_true", help="train without augmentation")
    train.add_argument(
        "--checkpoint-dir", default=None, help="resumable checkpoints (default: OUTPUT.checkpoints)"
    )
    train.add_argument("--checkpoint-every", type=int, default=250)
    train.add_argument("--card-notes", default=None, help="a Markdown file appended to the model card")
    _add_output(train)
    train.set_defaults(handler=_run_train_ldseg)
    return parser


_INPUT_HELP = (
    "volume file (NRRD, NIfTI, MHA/MHD), DICOM series folder, or sample:mni152-t1 (the bundled sample)"
)


def _default_name(task: str) -> str:
    """The name of ``task``'s default model, for help texts."""
    from .models import DEFAULT_MODELS

    return DEFAULT_MODELS[task].name


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "-o", required=True, metavar="DIR", help="result folder (written at the end)"
    )


def _add_slicing(parser: argparse.ArgumentParser, default_axis: str | None = "axial") -> None:
    shown = default_axis or "the model's axis"
    parser.add_argument("--axis", choices=AXES, default=default_axis, help=f"slice axis (default: {shown})")
    parser.add_argument(
        "--slices", default=None, metavar="A:B", help="slice range along the axis (default: all)"
    )


# --------------------------------------------------------------------------- commands


def _run_info(args: argparse.Namespace) -> int:
    from .devices import available_devices
    from .models import list_models, search_folders

    report: dict[str, Any] = {
        "latentdrift": __version__,
        "python": platform.python_version(),
        "packages": {name: _version_of(name) for name in _REPORTED_PACKAGES},
        "devices": [vars(d) for d in available_devices()],
        "model_folders": [str(p) for p in search_folders()],
        "models": [
            {"name": m.name, "kind": m.kind, "path": str(m.path), "bundled": m.bundled} for m in list_models()
        ],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"latentdrift {report['latentdrift']} on Python {report['python']}")
    for name, version in report["packages"].items():
        print(f"  {name:14s} {version}")
    print("devices:")
    for device in report["devices"]:
        memory = f", {device['memory_gb']} GB" if device["memory_gb"] else ""
        print(f"  {device['name']:8s} {device['description']}{memory}")
    print("models:" if report["models"] else "models: none found in " + ", ".join(report["model_folders"]))
    for model in report["models"]:
        print(f"  {model['name']:24s} {model['kind']:18s} {model['path']}")
    return 0


_REPORTED_PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "peft",
    "monai",
    "SimpleITK",
    "slicer-core",
)


def _version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _run_scene(args: argparse.Namespace) -> int:
    from .sample_data import resolve_input
    from .workflows.scene_check import scene_roundtrip

    inputs = [resolve_input(text) for text in args.inputs]
    summary = scene_roundtrip(inputs, args.output, axis=args.axis, slice_range=args.slices)
    _report(args, summary)
    return 0


def _run_segment(args: argparse.Namespace) -> int:
    from .sample_data import resolve_input
    from .segmentation import SegmentSettings
    from .workflows.segment import segment_file

    settings = SegmentSettings(
        samples=args.samples,
        steps=args.steps,
        axis=args.axis,
        slices=args.slices,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
    )
    summary = segment_file(
        resolve_input(args.input), args.model, args.output, settings, args.probabilities, args.progress
    )
    _report(args, summary)
    return 0


def _add_counterfactual_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "counterfactual",
        parents=[common],
        help="Latent Drift counterfactual of a volume: every slice edited, plus the signed difference",
    )
    parser.add_argument("input", metavar="INPUT", help=_INPUT_HELP)
    parser.add_argument(
        "--edit",
        choices=("instruct", "img2img", "direction"),
        default="instruct",
        help="instruct: InstructPix2Pix model + instruction; img2img: SDEdit with a prompt; "
        "direction: DDIM inversion + edit direction from --from to --to (default: instruct)",
    )
    parser.add_argument(
        "--instruction", default=None, help="instruct: the instruction (default: from --from/--to)"
    )
    parser.add_argument(
        "--from", dest="source", default=None, metavar="ATTRS", help="e.g. age=70,sex=F,dx=CN"
    )
    parser.add_argument(
        "--to",
        dest="target",
        default=None,
        metavar="ATTRS",
        help="e.g. age=77,dx=MCI (unset keys: from --from)",
    )
    _add_diffusion_options(parser)
    parser.add_argument("--strength", type=float, default=0.5, help="img2img: how far to noise, (0, 1]")
    parser.add_argument("--image-guidance", type=float, default=1.5, help="instruct: image guidance scale")
    parser.add_argument("--reconstruction-reference", action="store_true", help=REFERENCE_HELP)
    parser.add_argument(
        "--blend",
        type=float,
        default=0.0,
        help="mix each slice's edit with its neighbours', [0, 1) (default: 0)",
    )
    _add_output(parser)
    _add_slicing(parser)
    parser.set_defaults(handler=_run_counterfactual)


def _add_generate_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "generate", parents=[common], help="new slices from text with Latent Drift (PNGs and a volume stack)"
    )
    parser.add_argument(
        "--attributes", default=None, metavar="ATTRS", help="describe the patient, e.g. age=77,sex=F,dx=AD"
    )
    parser.add_argument("--count", type=int, default=4, help="how many slices (sample i uses seed + i)")
    _add_diffusion_options(parser)
    _add_output(parser)
    parser.set_defaults(handler=_run_generate)


def _add_diffusion_options(parser: argparse.ArgumentParser) -> None:
    """Options every Stable Diffusion command shares: model, prompt, drift, sampling, batching, precision."""
    parser.add_argument(
        "--model",
        default=None,
        help="diffusers-format Stable Diffusion folder or name (default: "
        f"{_default_name('instruct')} for --edit instruct, else {_default_name('generate')})",
    )
    parser.add_argument("--prompt", default=None, help="the text prompt (default: built from the attributes)")
    parser.add_argument(
        "--drift",
        default="0",
        help="Latent Drift δ: one number or one per latent channel, e.g. 0.05 or =-0.05,0,0,0.02 (default: 0)",
    )
    parser.add_argument("--drift-start", action="store_true", help="start sampling from N(δ, I)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    parser.add_argument("--guidance", type=float, default=7.5, help="text guidance scale (default: 7.5)")
    parser.add_argument(
        "--scheduler", choices=("ddim", "ddpm"), default="ddim", help="sampler (default: ddim)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per batch (default: from free GPU memory; halved on OOM)",
    )
    parser.add_argument(
        "--full-precision", action="store_true", help="float32 on CUDA (default there: float16)"
    )


REFERENCE_HELP = (
    "instruct: take the change against the VAE reconstruction, not against the factual edit "
    "(the instruction to keep the --from attributes): one edit per slice instead of two"
)
DEMO_SOURCE = "age=70,dx=CN"
DEMO_TARGET = "age=75,dx=AD"
DEMO_STEPS = 20


def _add_demo_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "demo",
        parents=[common],
        help="the main job with the default models: LDSeg segmentation + uncertainty and a CN→AD "
        "counterfactual of one volume, each with its scene and preview",
    )
    parser.add_argument("input", metavar="INPUT", help=_INPUT_HELP)
    parser.add_argument(
        "--from", dest="source", default=DEMO_SOURCE, metavar="ATTRS", help=f"default: {DEMO_SOURCE}"
    )
    parser.add_argument(
        "--to", dest="target", default=DEMO_TARGET, metavar="ATTRS", help=f"default: {DEMO_TARGET}"
    )
    parser.add_argument(
        "--drift", default=None, help="Latent Drift δ (default: the δ recorded with the editor, else 0)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEMO_STEPS,
        help=f"counterfactual denoising steps (default: {DEMO_STEPS})",
    )
    _add_output(parser)
    _add_slicing(parser)
    parser.set_defaults(handler=_run_demo)


def _edit_settings(args: argparse.Namespace, **specific: Any) -> Any:
    """:class:`~latentdrift.edit.EditSettings` from the shared options plus the command's own."""
    from .drift import parse_drift
    from .edit import EditSettings

    return EditSettings(
        prompt=args.prompt,
        drift=parse_drift(args.drift),
        drift_start=args.drift_start,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        scheduler=args.scheduler,
        **specific,
    )


def _attributes(text: str | None, base: Any = None) -> Any:
    from .prompts import Attributes

    return Attributes.parse(text, base=base) if text else None


def _run_counterfactual(args: argparse.Namespace) -> int:
    from .sample_data import resolve_input
    from .workflows.counterfactual import counterfactual_file

    source = _attributes(args.source)
    settings = _edit_settings(
        args,
        mode=args.edit,
        instruction=args.instruction,
        source=source,
        target=_attributes(args.target, source),
        strength=args.strength,
        image_guidance=args.image_guidance,
        factual_reference=not args.reconstruction_reference,
    )
    summary = counterfactual_file(
        resolve_input(args.input),
        args.model,
        args.output,
        settings,
        axis=args.axis,
        slices=args.slices,
        blend=args.blend,
        batch_size=args.batch_size,
        device=args.device,
        full_precision=args.full_precision,
        progress=args.progress,
    )
    _report(args, summary)
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from .workflows.counterfactual import generate_file

    settings = _edit_settings(args, mode="generate", target=_attributes(args.attributes))
    summary = generate_file(
        args.model,
        args.output,
        settings,
        args.count,
        batch_size=args.batch_size,
        device=args.device,
        full_precision=args.full_precision,
        progress=args.progress,
    )
    _report(args, summary)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .drift import parse_drift
    from .sample_data import resolve_input
    from .workflows.demo import DemoSettings, demo_file

    source = _attributes(args.source)
    settings = DemoSettings(
        source=source,
        target=_attributes(args.target, source),
        drift=parse_drift(args.drift) if args.drift is not None else None,
        steps=args.steps,
        axis=args.axis,
        slices=args.slices,
        seed=args.seed,
        device=args.device,
    )
    summary = demo_file(resolve_input(args.input), args.output, settings, args.progress)
    _report(args, summary)
    return 0


def _run_train_ldseg(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .ldseg import TrainSettings
    from .workflows.segment import train_segmentation_model

    config, layout = _ldseg_configs(args)
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size or (2 if layout.spatial_dims == 3 else 16),
        learning_rate=args.learning_rate,
        lr_scheduler=args.lr_scheduler,
        reconstruction_weight=args.reconstruction_weight,
        seed=args.seed,
        augment=not args.no_augment,
        flip_left_right=layout.axis != "sagittal",
        checkpoint_dir=args.checkpoint_dir or f"{Path(args.output).absolute()}.checkpoints",
        checkpoint_every=args.checkpoint_every,
        device=args.device,
    )
    notes = Path(args.card_notes).read_text() if args.card_notes else ""
    summary = train_segmentation_model(
        args.data,
        args.output,
        config,
        settings,
        args.validation_fraction,
        args.progress,
        notes,
        args.init_from,
    )
    _report(args, summary)
    return 0


_ARCHITECTURE_OPTIONS = ("axis", "spatial_dims", "image_size", "latent_downsampling", "latent_channels")


def _ldseg_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(config, layout)``: the config of a model trained from scratch (None with ``--init-from``,
    whose model's config is used) and the config whose axis and dimensions the training follows."""
    from .errors import ParameterError
    from .ldseg import default_classes, training_config
    from .workflows.segment import fine_tuning_config

    names = [name.strip() for name in (args.classes or "").split(",") if name.strip()]
    if args.init_from is not None:
        given = [
            f"--{name.replace('_', '-')}" for name in _ARCHITECTURE_OPTIONS if getattr(args, name) is not None
        ]
        if given:
            raise ParameterError(f"--init-from keeps the model's architecture: leave out {', '.join(given)}.")
        return None, fine_tuning_config(args.init_from, names)
    if not names:
        raise ParameterError("Give --classes (background first), or --init-from a model to fine-tune.")
    spatial_dims = args.spatial_dims or 2
    config = training_config(
        default_classes(names),
        axis=args.axis or "axial",
        image_size=args.image_size or (64 if spatial_dims == 3 else 128),
        latent_downsampling=args.latent_downsampling or 4,
        latent_channels=args.latent_channels or 4,
        spatial_dims=spatial_dims,
    )
    return config, config


# --------------------------------------------------------------------------- fine-tuning, jobs, batch


def _add_training_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """``finetune``, ``jobs list|status|cancel|resume`` and ``batch segment|counterfactual``."""
    from .train.config import SCHEMES

    finetune = commands.add_parser(
        "finetune", parents=[common], help="fine-tune on a local cohort in a job folder (resumable)"
    )
    finetune.add_argument(
        "--cohort", required=True, metavar="CSV|DIR", help="cohort CSV or folder of volumes"
    )
    finetune.add_argument("--scheme", required=True, choices=SCHEMES)
    finetune.add_argument("--job-dir", required=True, metavar="DIR", help="the job folder (created)")
    finetune.add_argument(
        "--model",
        default=None,
        help="base model folder or name (ldseg: an LDSeg model to fine-tune, keeping its classes, axis and resolution; default: train from scratch)",
    )
    finetune.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: 1000)")
    drift = finetune.add_mutually_exclusive_group()
    drift.add_argument(
        "--drift", default=None, help="train with Latent Drift δ (one number or one per channel)"
    )
    drift.add_argument("--search-drift", action="store_true", help="grid-search δ on the base model first")
    options = {
        "--batch-size": (int, 4, "items per process and micro-batch"),
        "--gradient-accumulation": (int, 1, "micro-batches per optimizer step"),
        "--learning-rate": (float, None, "default: the scheme's (as in the diffusers scripts)"),
        "--lr-scheduler": (str, "constant", "diffusers scheduler name: constant, cosine, linear, ..."),
        "--mixed-precision": (str, "auto", "auto (fp16 on CUDA), no, fp16, bf16"),
        "--resolution": (int, 64, "slice size in pixels (multiple of 8)"),
        "--axis": (str, "axial", "slice axis: axial, coronal, sagittal"),
        "--prompt-style": (str, "diverse", "simple or diverse"),
        "--age-format": (str, "numerical", "numerical, words or binned"),
        "--validation-fraction": (float, 0.1, "share of subjects held out"),
        "--checkpoint-every": (int, 100, "steps between checkpoints"),
        "--sample-every": (int, 100, "steps between sample images (0: none)"),
        "--sample-steps": (int, 20, "denoising steps of sample images"),
        "--log-every": (int, 1, "steps between status lines"),
        "--lora-rank": (int, 4, "lora: adapter rank"),
        "--num-class-images": (int, 16, "dreambooth: class images generated by the base model"),
        "--prior-loss-weight": (float, 1.0, "dreambooth: weight of the prior-preservation loss"),
        "--modifier-token": (str, "<new1>", "custom-diffusion: the new token ('' for none)"),
        "--search-samples": (int, 8, "δ search: samples per δ"),
        "--search-steps": (int, 20, "δ search: denoising steps per sample"),
        "--classes": (str, None, "ldseg: class names, background first (default: from the labels)"),
        "--cache-dir": (str, None, "slice cache (default: ~/.cache/latentdrift/cohorts)"),
    }
    for flag, (kind, default, text) in options.items():
        finetune.add_argument(flag, type=kind, default=default, help=text)
    finetune.add_argument(
        "--no-patient-info", action="store_true", help="prompts without age, sex, diagnosis"
    )
    finetune.add_argument("--no-merge-lora", action="store_true", help="lora: save the adapter only")
    finetune.add_argument(
        "--identity-pairs",
        action="store_true",
        help="instruct-pix2pix: also train each slice as a pair with itself (an instruction with nothing to change)",
    )
    finetune.add_argument(
        "--train-text-encoder", action="store_true", help="instruct-pix2pix: train the text encoder too"
    )
    finetune.set_defaults(handler=_run_finetune)

    jobs = commands.add_parser(
        "jobs", parents=[common], help="list, inspect, cancel or resume fine-tuning jobs"
    )
    jobs.add_argument("action", choices=("list", "status", "cancel", "resume"))
    jobs.add_argument(
        "job_dir", nargs="?", default=".", metavar="JOB_DIR", help="job folder (list: a folder of jobs)"
    )
    jobs.add_argument("--json", action="store_true", help="print machine-readable JSON")
    jobs.add_argument("--keep-cancel", action="store_true", help=argparse.SUPPRESS)
    jobs.set_defaults(handler=_run_jobs)

    batch = commands.add_parser(
        "batch", parents=[common], help="segment or edit every volume of a cohort (resumable, multi-process)"
    )
    batch.add_argument("task", choices=("segment", "counterfactual"))
    batch.add_argument("cohort", metavar="COHORT", help="cohort CSV or folder of volumes")
    batch.add_argument("--samples", type=int, default=8, help="segment: samples per slice")
    batch.add_argument("--probabilities", action="store_true", help="segment: per-class probability volumes")
    batch.add_argument("--edit", choices=("instruct", "img2img", "direction"), default="instruct")
    batch.add_argument(
        "--to", dest="target", default=None, metavar="ATTRS", help="counterfactual: target attributes"
    )
    batch.add_argument("--strength", type=float, default=0.5, help="counterfactual img2img strength")
    batch.add_argument(
        "--image-guidance", type=float, default=1.5, help="counterfactual instruct image guidance"
    )
    batch.add_argument(
        "--reconstruction-reference", action="store_true", help=f"counterfactual: {REFERENCE_HELP}"
    )
    batch.add_argument(
        "--model", default=None, help="LDSeg model (segment) or Stable Diffusion folder (default: the task's)"
    )
    batch.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: segment the model's, else 20)"
    )
    batch.add_argument(
        "--prompt", default=None, help="counterfactual: the prompt (default: from the attributes)"
    )
    batch.add_argument("--drift", default="0", help="counterfactual: Latent Drift δ (default: 0)")
    batch.add_argument("--drift-start", action="store_true", help="counterfactual: start from N(δ, I)")
    batch.add_argument("--guidance", type=float, default=7.5, help="counterfactual: text guidance scale")
    batch.add_argument("--scheduler", choices=("ddim", "ddpm"), default="ddim")
    batch.add_argument("--batch-size", type=int, default=None, help="slices per batch (halved on OOM)")
    batch.add_argument("--full-precision", action="store_true", help="float32 on CUDA")
    _add_output(batch)
    _add_slicing(batch, default_axis=None)
    batch.set_defaults(handler=_run_batch)


def _finetune_config(args: argparse.Namespace) -> Any:
    """The job's FinetuneConfig: every option named like a config field, plus the negated flags."""
    from dataclasses import fields

    from .drift import parse_drift
    from .train.config import FinetuneConfig

    names = {field.name for field in fields(FinetuneConfig)}
    values = {name: value for name, value in vars(args).items() if name in names}
    values.update(
        drift=parse_drift(args.drift) if args.drift is not None else None,
        patient_info=not args.no_patient_info,
        merge_lora=not args.no_merge_lora,
    )
    return FinetuneConfig(**values)


def _run_finetune(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from .train.jobs import create_job, run_job

    config = _finetune_config(args)
    if PartialState().is_main_process:
        create_job(args.job_dir, config)
    PartialState().wait_for_everyone()
    summary = run_job(args.job_dir, args.progress, clear_cancel=False)
    _report_job(args, args.job_dir, summary)
    return 0


def _run_jobs(args: argparse.Namespace) -> int:
    from .train import jobs

    if args.action == "resume":
        _report_job(args, args.job_dir, jobs.run_job(args.job_dir, args.progress, not args.keep_cancel))
        return 0
    if args.action == "cancel":
        signalled = jobs.cancel(args.job_dir)
        if not args.quiet:
            print("cancel requested" + (" (process signalled)" if signalled else " (no running process)"))
        return 0
    found = jobs.list_jobs(args.job_dir) if args.action == "list" else [jobs.status(args.job_dir)]
    if args.json:
        print(json.dumps(found if args.action == "list" else found[0], indent=2))
        return 0
    for job in found:
        loss = job["latest"].get("loss")
        text = f"  loss {loss:.4f}" if isinstance(loss, float) else ""
        print(f"{job['job_dir']}  {job['scheme']}  {job['state']}  step {job['step']}/{job['steps']}{text}")
    return 0


def _report_job(args: argparse.Namespace, job_dir: str, summary: dict[str, Any]) -> None:
    """Report the model folder of a finished job (the main process only; others return no summary)."""
    if summary:
        from pathlib import Path

        args.output = str(Path(job_dir).absolute() / "model")
        _report(args, summary)


def _run_batch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .train.batch import run_batch

    if args.task == "segment":
        from .segmentation import SegmentSettings
        from .workflows.segment import segment_file

        settings = SegmentSettings(
            samples=args.samples,
            steps=args.steps,
            axis=args.axis,
            slices=args.slices,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size or 8,
        )

        def process(row: Any, folder: Path) -> dict:
            return segment_file(row.image, args.model, folder, settings, args.probabilities)

    else:
        from .workflows.counterfactual import counterfactual_file

        args.steps = args.steps or 20

        def process(row: Any, folder: Path) -> dict:
            settings = _edit_settings(
                args,
                mode=args.edit,
                source=row.attributes,
                target=_attributes(args.target, row.attributes),
                strength=args.strength,
                image_guidance=args.image_guidance,
                factual_reference=not args.reconstruction_reference,
            )
            return counterfactual_file(
                row.image,
                args.model,
                folder,
                settings,
                axis=args.axis or "axial",
                slices=args.slices,
                batch_size=args.batch_size,
                device=args.device,
                full_precision=args.full_precision,
            )

    merged = run_batch(args.cohort, args.output, process, args.progress)
    if args.progress_json:
        emit_event("result", output=str(args.output), summary=merged)
    elif not args.quiet:
        print(
            f"{args.output}: {len(merged['done'])} done, {len(merged['already_done'])} already done, "
            f"{len(merged['failed'])} failed, {len(merged['bad_rows'])} bad rows"
        )
    return 1 if merged["failed"] else 0


def _report(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    if args.progress_json:
        emit_event("result", output=str(args.output), summary=summary)
    elif not args.quiet:
        print(f"wrote {args.output} ({summary['elapsed_seconds']:.1f} s): " + ", ".join(summary["outputs"]))


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s: %(message)s",
    )
    args.progress = Progress(quiet=args.quiet, json_lines=args.progress_json)
    handler: Handler = args.handler
    try:
        if args.device != "auto":
            from .devices import resolve_device

            resolve_device(args.device)  # fail early, before any work
        return handler(args)
    except LatentDriftError as error:
        if args.debug:
            LOG.exception("failed")
        print(f"latentdrift: error: {error}", file=sys.stderr)
        if args.progress_json:
            emit_event("error", kind=type(error).__name__, message=str(error))
        return error.exit_code
    except KeyboardInterrupt:
        print("latentdrift: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
