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
    return parser


_INPUT_HELP = (
    "volume file (NRRD, NIfTI, MHA/MHD), DICOM series folder, or sample:mni152-t1 (the bundled sample)"
)


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "-o", required=True, metavar="DIR", help="result folder (written at the end)"
    )


def _add_slicing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--axis", choices=("axial", "coronal", "sagittal"), default="axial", help="slice axis"
    )
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
    from .workflows import scene_roundtrip

    inputs = [resolve_input(text) for text in args.inputs]
    summary = scene_roundtrip(inputs, args.output, axis=args.axis, slice_range=args.slices)
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
