"""The ``latentdrift`` command: a thin shell over the engine's workflows.

Every subcommand shares ``--device``, ``--seed``, ``--quiet`` and ``--debug``; those that write results
take ``--output DIR`` and write ``DIR/summary.json``. Errors the user can fix print one line
(``latentdrift: error: …``) and exit non-zero; ``--debug`` shows the traceback as well.

The options of ``segment``, ``counterfactual``, ``generate``, ``demo``, ``finetune``, ``batch`` and
``train-ldseg`` are fields of the engine's settings (:mod:`.core.settings`,
:class:`~.finetune.config.FinetuneConfig`), the parser derived from them in :mod:`.cli_options`: an
option left out takes the default declared there, and ``--settings FILE`` (every command above but
``batch`` and ``train-ldseg``) gives them all at once as JSON (how the Slicer panel and the console hand
a run to the engine process).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from importlib import metadata
from typing import Any

from . import __version__
from .cli_options import Handler
from .cli_options import build_parser as parser_with
from .core.errors import LatentDriftError, ParameterError
from .core.interrupts import StopState, stop_on_signals
from .core.progress import Progress, emit_event
from .core.settings import (
    CounterfactualSettings,
    DemoSettings,
    EditSettings,
    GenerateSettings,
    SegmentSettings,
    TrainLDSegSettings,
    counterfactual_settings,
    demo_settings,
    edit_fields,
    generate_settings,
    read_settings,
)
from .counterfactual.modes import GENERATE

LOG = logging.getLogger("latentdrift")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one sub-parser per command; :mod:`.cli_options`)."""
    return parser_with(HANDLERS, __version__)


def _names(*kinds: type) -> set[str]:
    """The settings fields of ``kinds`` (an option's ``dest`` is the field it sets)."""
    return {f.name for kind in kinds for f in fields(kind)} - {"edit"}


def _given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` that were given on the command line (the others take the settings' defaults)."""
    wanted = set(names)
    return {name: value for name, value in vars(args).items() if name in wanted}


def _settings(args: argparse.Namespace, kind: type, names: Iterable[str], build: Callable[..., Any]) -> Any:
    """The command's settings: ``build`` from the options given, or the ``--settings`` file (then alone)."""
    given = _given(args, names)
    if args.settings is None:
        return build(**given)
    if given:
        options = ", ".join(f"--{name.replace('_', '-')}" for name in sorted(given))
        raise ParameterError(f"--settings gives every setting of the command: leave out {options}.")
    return read_settings(kind, args.settings)


# --------------------------------------------------------------------------- commands


def _run_info(args: argparse.Namespace) -> int:
    from .core.devices import available_devices
    from .core.models import list_models, search_folders

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
    if args.progress_json:
        emit_event("result", summary=report)
        return 0
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
    "slicerio",
    "slicer-core",
)


def _version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _run_scene(args: argparse.Namespace) -> int:
    from .fixtures.sample_data import resolve_input
    from .workflows.scene_check import scene_roundtrip

    inputs = [resolve_input(text) for text in args.inputs]
    summary = scene_roundtrip(inputs, args.output, args.axis, args.slices, args.scene)
    _report(args, summary)
    return 0


SEGMENT_OPTIONS = _names(SegmentSettings)


def _run_segment(args: argparse.Namespace) -> int:
    from .fixtures.sample_data import resolve_input
    from .segmentation.workflow import segment_file

    settings = _settings(args, SegmentSettings, SEGMENT_OPTIONS, SegmentSettings)
    summary = segment_file(resolve_input(args.input), args.output, settings, args.progress, args.scene)
    _report(args, summary)
    return 0


COUNTERFACTUAL_OPTIONS = _names(EditSettings, CounterfactualSettings)
GENERATE_OPTIONS = _names(EditSettings, GenerateSettings)


def _run_counterfactual(args: argparse.Namespace) -> int:
    from .counterfactual.recorded_sampling import counterfactual_options
    from .counterfactual.workflow import counterfactual_file
    from .fixtures.sample_data import resolve_input

    settings = _settings(args, CounterfactualSettings, COUNTERFACTUAL_OPTIONS, counterfactual_options)
    summary = counterfactual_file(resolve_input(args.input), args.output, settings, args.progress, args.scene)
    _report(args, summary)
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from .counterfactual.workflow import generate_file

    settings = _settings(args, GenerateSettings, GENERATE_OPTIONS, generate_settings)
    summary = generate_file(args.output, settings, args.progress)
    _report(args, summary)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .fixtures.sample_data import resolve_input
    from .workflows.demo import demo_file

    settings = _settings(args, DemoSettings, _names(DemoSettings), demo_settings)
    summary = demo_file(
        resolve_input(args.input), args.output, settings, progress=args.progress, scene=args.scene
    )
    _report(args, summary)
    return 0


TRAIN_LDSEG_OPTIONS = _names(TrainLDSegSettings)


def _run_train_ldseg(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .segmentation.workflow import ldseg_training, train_segmentation_model

    options = TrainLDSegSettings(**_given(args, TRAIN_LDSEG_OPTIONS))
    config, settings = ldseg_training(options, args.output)
    notes = Path(options.card_notes).read_text() if options.card_notes else ""
    summary = train_segmentation_model(
        args.data,
        args.output,
        config,
        settings,
        options.validation_fraction,
        args.progress,
        notes,
        options.init_from,
    )
    _report(args, summary)
    return 0


# --------------------------------------------------------------------------- fine-tuning, jobs, batch


def _finetune_config(args: argparse.Namespace) -> Any:
    """The job's FinetuneConfig: the options given (δ as text), or the ``--settings`` file."""
    from .core.settings import build_settings
    from .finetune.config import FinetuneConfig

    def build(**given: Any) -> FinetuneConfig:
        return build_settings(FinetuneConfig, edit_fields(given))

    return _settings(args, FinetuneConfig, _names(FinetuneConfig), build)


def _run_finetune(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from .finetune.jobs import create_job, run_job

    config = _finetune_config(args)
    if PartialState().is_main_process:
        create_job(args.job_dir, config)
    PartialState().wait_for_everyone()
    summary = run_job(args.job_dir, args.progress, clear_cancel=False)
    _report_job(args, args.job_dir, summary)
    return 0


def _run_jobs(args: argparse.Namespace) -> int:
    from .finetune import jobs

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

    from .workflows.batch import run_batch

    if args.task == "segment":
        from .segmentation.workflow import segment_file

        settings = SegmentSettings(**_given(args, SEGMENT_OPTIONS))

        def process(row: Any, folder: Path) -> dict:
            return segment_file(row.image, folder, settings, scene=args.scene)

    else:
        from .counterfactual.recorded_sampling import recorded_sampling
        from .counterfactual.workflow import counterfactual_file

        given = _given(args, COUNTERFACTUAL_OPTIONS - {"source"})
        options = {**recorded_sampling(given), **given}  # the model's δ and guidance, read once

        def process(row: Any, folder: Path) -> dict:
            settings = counterfactual_settings(**options, source=row.attributes)
            return counterfactual_file(row.image, folder, settings, scene=args.scene)

    merged = run_batch(args.cohort, args.output, process, args.progress)
    if args.progress_json:
        emit_event("result", output=str(args.output), summary=merged)
    elif not args.quiet:
        print(
            f"{args.output}: {len(merged['done'])} done, {len(merged['already_done'])} already done, "
            f"{len(merged['failed'])} failed, {len(merged['bad_rows'])} bad rows"
        )
    return 1 if merged["failed"] else 0


HANDLERS: dict[str, Handler] = {
    "info": _run_info,
    "scene": _run_scene,
    "segment": _run_segment,
    "counterfactual": _run_counterfactual,
    GENERATE.name: _run_generate,
    "demo": _run_demo,
    "finetune": _run_finetune,
    "jobs": _run_jobs,
    "batch": _run_batch,
    "train-ldseg": _run_train_ldseg,
}
"""What each command runs."""


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
    stopping = StopState()
    try:
        with stop_on_signals() as stopping:
            if vars(args).get("device") not in (None, "auto"):
                from .core.devices import resolve_device

                resolve_device(args.device)  # fail early, before any work
            return handler(args)
    except BaseException as error:
        return _failed(args, error, stopping.received)


def _failed(args: argparse.Namespace, error: BaseException, signum: int | None) -> int:
    """The exit status of a run that raised ``error`` (``signum``: the stop signal it received, if any),
    reported in one line on stderr; an error that is not the engine's is a bug and goes on up."""
    if signum is None and isinstance(error, KeyboardInterrupt):
        signum = signal.SIGINT
    if signum is not None:  # whatever the signal broke on its way out, the run was interrupted
        print(f"latentdrift: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    if not isinstance(error, LatentDriftError):
        raise error
    if args.debug:
        LOG.error("failed", exc_info=error)
    print(f"latentdrift: error: {error}", file=sys.stderr)
    if args.progress_json:
        emit_event("error", kind=type(error).__name__, message=str(error))
    return error.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
