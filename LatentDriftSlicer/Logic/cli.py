"""The ``latentdrift`` command: a thin shell over the engine's workflows.

Every subcommand shares ``--device``, ``--seed``, ``--quiet`` and ``--debug``; those that write results
take ``--output DIR`` and write ``DIR/summary.json``. Errors the user can fix print one line
(``latentdrift: error: …``) and exit non-zero; ``--debug`` shows the traceback as well.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
        "--model", default=DEFAULT_SEGMENTATION_MODEL, help="model name or folder (see `info`)"
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

    train = commands.add_parser(
        "train-ldseg", parents=[common], help="train an LDSeg model on image/label volume pairs"
    )
    train.add_argument(
        "data",
        metavar="DATA",
        help="CSV with image,label[,subject] columns, or a folder of *_image/*_label files",
    )
    train.add_argument(
        "--classes", required=True, help="class names, background first, e.g. background,CSF,GM,WM"
    )
    train.add_argument(
        "--axis", choices=AXES, default="axial", help="slice axis the model learns (default: axial)"
    )
    train.add_argument(
        "--image-size", type=int, default=128, help="model resolution in pixels (default: 128)"
    )
    train.add_argument(
        "--latent-downsampling", type=int, default=4, help="image size / latent size (default: 4)"
    )
    train.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: 2000)")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--learning-rate", type=float, default=1e-3)
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


DEFAULT_SEGMENTATION_MODEL = "brain-tissue-ldseg"
_INPUT_HELP = (
    "volume file (NRRD, NIfTI, MHA/MHD), DICOM series folder, or sample:mni152-t1 (the bundled sample)"
)


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


def _run_train_ldseg(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from .ldseg import LDSegConfig, TrainSettings, default_classes
    from .workflows.segment import train_segmentation_model

    names = [name.strip() for name in args.classes.split(",") if name.strip()]
    base = LDSegConfig()
    levels = int(math.log2(args.latent_downsampling)) + 1  # encoder widths: one per resolution
    config = replace(
        base,
        classes=default_classes(names),
        axis=args.axis,
        image_size=args.image_size,
        latent_downsampling=args.latent_downsampling,
        label_channels=base.label_channels[:levels],
        image_channels=base.image_channels[:levels],
    )
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        augment=not args.no_augment,
        flip_left_right=args.axis != "sagittal",
        checkpoint_dir=args.checkpoint_dir or f"{Path(args.output).absolute()}.checkpoints",
        checkpoint_every=args.checkpoint_every,
        device=args.device,
    )
    notes = Path(args.card_notes).read_text() if args.card_notes else ""
    summary = train_segmentation_model(
        args.data, args.output, config, settings, args.validation_fraction, args.progress, notes
    )
    _report(args, summary)
    return 0


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
