"""The ``latentdrift`` command: a thin shell over the engine's workflows.

Every subcommand shares ``--device``, ``--seed``, ``--quiet`` and ``--debug``; those that write results
take ``--output DIR`` and write ``DIR/summary.json``. Errors the user can fix print one line
(``latentdrift: error: …``) and exit non-zero; ``--debug`` shows the traceback as well.

The options of ``segment``, ``counterfactual``, ``generate``, ``demo``, ``finetune`` and ``batch`` are
fields of the engine's settings (:mod:`.settings`, :class:`~.train.config.FinetuneConfig`): an option
left out takes the default declared there, and ``--settings FILE`` gives them all at once as JSON
(how the Slicer panel and the console hand a run to the engine process).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields, replace
from importlib import metadata
from typing import Any

from . import __version__
from .errors import LatentDriftError, ParameterError
from .interrupts import StopState, stop_on_signals
from .progress import Progress, emit_event
from .settings import (
    AXES,
    DEMO_SOURCE,
    DEMO_TARGET,
    EDIT_MODES,
    FRONT_END_STEPS,
    SCENE_CHOICES,
    SCENE_DEFAULT,
    SCHEDULERS,
    CounterfactualSettings,
    DemoSettings,
    EditSettings,
    FrontEndSettings,
    GenerateSettings,
    SegmentSettings,
    counterfactual_settings,
    demo_settings,
    edit_fields,
    generate_settings,
    read_settings,
)

LOG = logging.getLogger("latentdrift")

Handler = Callable[[argparse.Namespace], int]
GIVEN = argparse.SUPPRESS
"""The default of every settings option: left out of the namespace, so the settings' own default applies."""


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument(
        "--device", default=GIVEN, help=f"auto, cpu, cuda, cuda:N or mps (default: {SegmentSettings.device})"
    )
    group.add_argument(
        "--seed",
        type=int,
        default=GIVEN,
        help=f"random seed: the same seed gives the same result (default: {SegmentSettings.seed})",
    )
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
    _add_output(scene, with_scene=True)
    scene.add_argument("--axis", choices=AXES, default="axial", help="slice axis (default: axial)")
    scene.add_argument(
        "--slices", default=None, metavar="A:B", help="slice range along the axis (default: all)"
    )
    scene.set_defaults(handler=_run_scene)

    segment = commands.add_parser(
        "segment",
        parents=[common],
        help="LDSeg segmentation with per-voxel uncertainty (N samples per slice)",
    )
    segment.add_argument("input", metavar="INPUT", help=_INPUT_HELP)
    segment.add_argument(
        "--model",
        default=GIVEN,
        help=f"model name or folder (see `info`; default: {_default_name('segment')})",
    )
    _add_segment_options(segment)
    _add_steps(segment, "DDIM steps (default: the model's, at most 15)")
    _add_batch_size(segment, f"default: {SegmentSettings.batch_size}")
    _add_slicing(segment, "the model's axis")
    _add_front_end(segment)
    _add_settings_file(segment)
    _add_output(segment, with_scene=True)
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


def _add_output(parser: argparse.ArgumentParser, with_scene: bool = False) -> None:
    parser.add_argument(
        "--output", "-o", required=True, metavar="DIR", help="result folder (written at the end)"
    )
    if with_scene:
        parser.add_argument(
            "--scene",
            choices=SCENE_CHOICES,
            default=SCENE_DEFAULT,
            help="also save the results as a Slicer scene (scene.mrml, scene.mrb): yes, no, or auto = "
            f"when Slicer's MRML core (slicer-core) is installed (default: {SCENE_DEFAULT})",
        )


def _add_settings_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--settings",
        metavar="FILE",
        default=None,
        help="every setting of the command as JSON, from FILE or from standard input for '-' (how the "
        "Slicer panel hands a run over), instead of the options",
    )


def _add_slicing(parser: argparse.ArgumentParser, default_axis: str) -> None:
    parser.add_argument("--axis", choices=AXES, default=GIVEN, help=f"slice axis (default: {default_axis})")
    parser.add_argument(
        "--slices", default=GIVEN, metavar="A:B", help="slice range along the axis (default: all)"
    )


class _FrontEndOff(argparse.Action):
    """``--no-preprocess`` / ``--no-<step>``: turn the brain front end, or one of its steps, off.

    Builds the settings' ``front_end`` (:class:`~latentdrift.settings.FrontEndSettings`) flag by flag.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, step: str, **kwargs: Any) -> None:
        super().__init__(option_strings, "front_end", nargs=0, default=GIVEN, **kwargs)
        self.step = step

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None) -> None:
        current = getattr(namespace, "front_end", FrontEndSettings())
        namespace.front_end = replace(current, **{self.step: False})


def _add_front_end(parser: argparse.ArgumentParser) -> None:
    """The brain front end's switches (every step runs by default where the model's contract needs it)."""
    group = parser.add_argument_group(
        "brain front end",
        "a brain model on a head gets N4 bias correction, brain extraction (deepbet) and alignment to "
        "the MNI152 template first, and its results come back on the input's grid (docs/front-end.md)",
    )
    group.add_argument("--no-preprocess", action=_FrontEndOff, step="enabled", help="none of the steps")
    for step in FRONT_END_STEPS:
        flag = "--no-" + step.replace("_", "-")
        group.add_argument(flag, action=_FrontEndOff, step=step, help=f"no {step.replace('_', ' ')}")


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
    from .sample_data import resolve_input
    from .workflows.scene_check import scene_roundtrip

    inputs = [resolve_input(text) for text in args.inputs]
    summary = scene_roundtrip(inputs, args.output, args.axis, args.slices, args.scene)
    _report(args, summary)
    return 0


SEGMENT_OPTIONS = _names(SegmentSettings)


def _add_segment_options(parser: argparse.ArgumentParser) -> None:
    """The options of :class:`~latentdrift.settings.SegmentSettings` only ``segment`` and ``batch segment`` have."""
    parser.add_argument(
        "--samples",
        type=int,
        default=GIVEN,
        help=f"samples per slice (uncertainty); 1 allowed (default: {SegmentSettings.samples})",
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        default=GIVEN,
        help="also write per-class probability volumes",
    )


def _run_segment(args: argparse.Namespace) -> int:
    from .sample_data import resolve_input
    from .workflows.segment import segment_file

    settings = _settings(args, SegmentSettings, SEGMENT_OPTIONS, SegmentSettings)
    summary = segment_file(resolve_input(args.input), args.output, settings, args.progress, args.scene)
    _report(args, summary)
    return 0


COUNTERFACTUAL_OPTIONS = _names(EditSettings, CounterfactualSettings)
GENERATE_OPTIONS = _names(EditSettings, GenerateSettings)


def _add_counterfactual_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "counterfactual",
        parents=[common],
        help="Latent Drift counterfactual of a volume: every slice edited, plus the signed difference",
    )
    parser.add_argument("input", metavar="INPUT", help=_INPUT_HELP)
    parser.add_argument(
        "--from", dest="source", default=GIVEN, metavar="ATTRS", help="e.g. age=70,sex=F,dx=CN"
    )
    _add_model(parser, _SD_MODEL_HELP)
    _add_edit_options(parser)
    _add_denoising(parser)
    parser.add_argument(
        "--blend",
        type=float,
        default=GIVEN,
        help=f"mix each slice's edit with its neighbours', [0, 1) (default: {CounterfactualSettings.blend})",
    )
    _add_slicing(parser, CounterfactualSettings.axis)
    _add_front_end(parser)
    _add_settings_file(parser)
    _add_output(parser, with_scene=True)
    parser.set_defaults(handler=_run_counterfactual)


def _add_edit_options(parser: argparse.ArgumentParser) -> None:
    """The options of a volume edit (``counterfactual``, ``batch counterfactual``), besides the source."""
    parser.add_argument(
        "--edit",
        dest="mode",
        choices=EDIT_MODES,
        default=GIVEN,
        help="instruct: InstructPix2Pix model + instruction; img2img: SDEdit with a prompt; "
        f"direction: DDIM inversion + edit direction from --from to --to (default: {EditSettings.mode})",
    )
    parser.add_argument(
        "--instruction", default=GIVEN, help="instruct: the instruction (default: from --from/--to)"
    )
    parser.add_argument(
        "--to",
        dest="target",
        default=GIVEN,
        metavar="ATTRS",
        help="e.g. age=77,dx=MCI (unset keys: from --from)",
    )
    _add_diffusion_options(parser)
    parser.add_argument(
        "--strength",
        type=float,
        default=GIVEN,
        help=f"img2img: how far to noise, (0, 1] (default: {EditSettings.strength})",
    )
    parser.add_argument(
        "--image-guidance",
        type=float,
        default=GIVEN,
        help=f"instruct: image guidance scale (default: {EditSettings.image_guidance})",
    )
    parser.add_argument(
        "--reconstruction-reference",
        dest="factual_reference",
        action="store_false",
        default=GIVEN,
        help=REFERENCE_HELP,
    )


def _add_generate_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "generate", parents=[common], help="new slices from text with Latent Drift (PNGs and a volume stack)"
    )
    parser.add_argument(
        "--attributes",
        dest="target",
        default=GIVEN,
        metavar="ATTRS",
        help="describe the patient, e.g. age=77,sex=F,dx=AD",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=GIVEN,
        help=f"how many slices; sample i uses seed + i (default: {GenerateSettings.count})",
    )
    _add_model(parser, f"Stable Diffusion folder or name (default: {_default_name('generate')})")
    _add_diffusion_options(parser)
    _add_denoising(parser)
    _add_settings_file(parser)
    _add_output(parser)
    parser.set_defaults(handler=_run_generate)


def _add_diffusion_options(parser: argparse.ArgumentParser) -> None:
    """Options every Stable Diffusion command shares: prompt, drift, sampling, precision."""
    parser.add_argument(
        "--prompt", default=GIVEN, help="the text prompt (default: built from the attributes)"
    )
    parser.add_argument(
        "--drift",
        default=GIVEN,
        help="Latent Drift δ: one number or one per latent channel, e.g. 0.05 or =-0.05,0,0,0.02 "
        f"(default: {EditSettings.drift:g})",
    )
    parser.add_argument(
        "--drift-start", action="store_true", default=GIVEN, help="start sampling from N(δ, I)"
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=GIVEN,
        help=f"text guidance scale (default: {EditSettings.guidance})",
    )
    parser.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default=GIVEN,
        help=f"sampler (default: {EditSettings.scheduler})",
    )
    parser.add_argument(
        "--full-precision",
        action="store_true",
        default=GIVEN,
        help="float32 on CUDA (default there: float16)",
    )


_SD_MODEL_HELP = (
    "diffusers-format Stable Diffusion folder or name (default: "
    f"{_default_name('instruct')} for --edit instruct, else {_default_name('generate')})"
)


def _add_model(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--model", default=GIVEN, help=text)


def _add_denoising(parser: argparse.ArgumentParser) -> None:
    """``--steps`` and ``--batch-size`` of the Stable Diffusion commands."""
    _add_steps(parser, f"denoising steps (default: {EditSettings.steps})")
    _add_batch_size(parser, "default: from free GPU memory")


def _add_steps(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--steps", type=int, default=GIVEN, help=text)


def _add_batch_size(parser: argparse.ArgumentParser, default_text: str) -> None:
    parser.add_argument(
        "--batch-size",
        type=int,
        default=GIVEN,
        help=f"slices per batch, halved on out-of-memory ({default_text})",
    )


REFERENCE_HELP = (
    "instruct: take the change against the VAE reconstruction, not against the factual edit "
    "(the instruction to keep the --from attributes): one edit per slice instead of two"
)


def _add_demo_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "demo",
        parents=[common],
        help="the main job with the default models: LDSeg segmentation + uncertainty and a CN→AD "
        "counterfactual of one volume, each with its scene and preview",
    )
    parser.add_argument("input", metavar="INPUT", help=_INPUT_HELP)
    parser.add_argument(
        "--from", dest="source", default=GIVEN, metavar="ATTRS", help=f"default: {DEMO_SOURCE}"
    )
    parser.add_argument("--to", dest="target", default=GIVEN, metavar="ATTRS", help=f"default: {DEMO_TARGET}")
    parser.add_argument(
        "--drift", default=GIVEN, help="Latent Drift δ (default: the δ recorded with the editor, else 0)"
    )
    _add_steps(parser, f"counterfactual denoising steps (default: {DemoSettings.steps})")
    _add_slicing(parser, DemoSettings.axis)
    _add_front_end(parser)
    _add_settings_file(parser)
    _add_output(parser, with_scene=True)
    parser.set_defaults(handler=_run_demo)


def _run_counterfactual(args: argparse.Namespace) -> int:
    from .sample_data import resolve_input
    from .workflows.counterfactual import counterfactual_file

    settings = _settings(args, CounterfactualSettings, COUNTERFACTUAL_OPTIONS, counterfactual_settings)
    summary = counterfactual_file(resolve_input(args.input), args.output, settings, args.progress, args.scene)
    _report(args, summary)
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from .workflows.counterfactual import generate_file

    settings = _settings(args, GenerateSettings, GENERATE_OPTIONS, generate_settings)
    summary = generate_file(args.output, settings, args.progress)
    _report(args, summary)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .sample_data import resolve_input
    from .workflows.demo import demo_file

    settings = _settings(args, DemoSettings, _names(DemoSettings), demo_settings)
    summary = demo_file(resolve_input(args.input), args.output, settings, args.progress, args.scene)
    _report(args, summary)
    return 0


def _run_train_ldseg(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .ldseg import TrainSettings
    from .workflows.segment import train_segmentation_model

    config, layout = _ldseg_configs(args)
    settings = TrainSettings(
        steps=args.steps,
        batch_size=(2 if layout.spatial_dims == 3 else 16) if args.batch_size is None else args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler=args.lr_scheduler,
        reconstruction_weight=args.reconstruction_weight,
        augment=not args.no_augment,
        flip_left_right=layout.axis != "sagittal",
        checkpoint_dir=args.checkpoint_dir or f"{Path(args.output).absolute()}.checkpoints",
        checkpoint_every=args.checkpoint_every,
        **_given(args, ("seed", "device")),
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


_FINETUNE_OPTIONS: dict[str, tuple[type, str]] = {
    "--batch-size": (int, "items per process and micro-batch"),
    "--gradient-accumulation": (int, "micro-batches per optimizer step"),
    "--lr-scheduler": (str, "diffusers scheduler name: constant, cosine, linear, ..."),
    "--mixed-precision": (str, "auto (fp16 on CUDA), no, fp16, bf16"),
    "--resolution": (int, "slice size in pixels (multiple of 8)"),
    "--axis": (str, "slice axis: axial, coronal, sagittal"),
    "--prompt-style": (str, "simple or diverse"),
    "--age-format": (str, "numerical, words or binned"),
    "--validation-fraction": (float, "share of subjects held out"),
    "--checkpoint-every": (int, "steps between checkpoints"),
    "--sample-every": (int, "steps between sample images (0: none)"),
    "--sample-steps": (int, "denoising steps of sample images"),
    "--log-every": (int, "steps between status lines"),
    "--lora-rank": (int, "lora: adapter rank"),
    "--num-class-images": (int, "dreambooth: class images generated by the base model"),
    "--prior-loss-weight": (float, "dreambooth: weight of the prior-preservation loss"),
    "--modifier-token": (str, "custom-diffusion: the new token ('' for none)"),
    "--search-samples": (int, "δ search: samples per δ"),
    "--search-steps": (int, "δ search: denoising steps per sample"),
}
"""``finetune`` options that set the :class:`~latentdrift.train.config.FinetuneConfig` field of their name
(with the field's default); the others are declared one by one in :func:`_add_finetune_parser`."""


def _add_training_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """``finetune``, ``jobs list|status|cancel|resume`` and ``batch segment|counterfactual``."""
    _add_finetune_parser(commands, common)
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
    _add_model(
        batch, f"LDSeg model (segment) or Stable Diffusion folder (default: the task's; {_SD_MODEL_HELP})"
    )
    _add_segment_options(batch)
    _add_edit_options(batch)
    _add_steps(batch, f"sampling steps (default: segment the model's, counterfactual {EditSettings.steps})")
    _add_batch_size(batch, f"default: segment {SegmentSettings.batch_size}, counterfactual from free memory")
    _add_slicing(batch, f"segment the model's, counterfactual {CounterfactualSettings.axis}")
    _add_front_end(batch)
    _add_output(batch, with_scene=True)
    batch.set_defaults(handler=_run_batch)


def _add_finetune_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    from .train.config import SCHEMES, FinetuneConfig

    finetune = commands.add_parser(
        "finetune", parents=[common], help="fine-tune on a local cohort in a job folder (resumable)"
    )
    finetune.add_argument(
        "--cohort", default=GIVEN, metavar="CSV|DIR", help="cohort CSV or folder of volumes"
    )
    finetune.add_argument("--scheme", default=GIVEN, choices=SCHEMES)
    finetune.add_argument("--job-dir", required=True, metavar="DIR", help="the job folder (created)")
    finetune.add_argument(
        "--model",
        default=GIVEN,
        help="base model folder or name (ldseg: an LDSeg model to fine-tune, keeping its classes, axis "
        f"and resolution; default: {_default_name('finetune')}, for ldseg a new model)",
    )
    finetune.add_argument(
        "--steps", type=int, default=GIVEN, help=f"optimizer steps (default: {FinetuneConfig.steps})"
    )
    drift = finetune.add_mutually_exclusive_group()
    drift.add_argument(
        "--drift", default=GIVEN, help="train with Latent Drift δ (one number or one per channel)"
    )
    drift.add_argument(
        "--search-drift", action="store_true", default=GIVEN, help="grid-search δ on the base model first"
    )
    for flag, (kind, text) in _FINETUNE_OPTIONS.items():
        default = getattr(FinetuneConfig, flag[2:].replace("-", "_"))
        finetune.add_argument(flag, type=kind, default=GIVEN, help=f"{text} (default: {default})")
    finetune.add_argument(
        "--learning-rate",
        type=float,
        default=GIVEN,
        help="default: the scheme's (as in the diffusers scripts)",
    )
    finetune.add_argument(
        "--classes", default=GIVEN, help="ldseg: class names, background first (default: from the labels)"
    )
    finetune.add_argument(
        "--cache-dir", default=GIVEN, help="slice cache (default: ~/.cache/latentdrift/cohorts)"
    )
    flags = {
        "--no-patient-info": ("patient_info", "store_false", "prompts without age, sex, diagnosis"),
        "--no-merge-lora": ("merge_lora", "store_false", "lora: save the adapter only"),
        "--identity-pairs": (
            "identity_pairs",
            "store_true",
            "instruct-pix2pix: also train each slice as a pair with itself (an instruction with nothing to change)",
        ),
        "--train-text-encoder": (
            "train_text_encoder",
            "store_true",
            "instruct-pix2pix: train the text encoder too",
        ),
    }
    for flag, (dest, action, text) in flags.items():
        finetune.add_argument(flag, dest=dest, action=action, default=GIVEN, help=text)
    _add_settings_file(finetune)
    finetune.set_defaults(handler=_run_finetune)


def _finetune_config(args: argparse.Namespace) -> Any:
    """The job's FinetuneConfig: the options given (δ as text), or the ``--settings`` file."""
    from .settings import build_settings
    from .train.config import FinetuneConfig

    def build(**given: Any) -> FinetuneConfig:
        return build_settings(FinetuneConfig, edit_fields(given))

    return _settings(args, FinetuneConfig, _names(FinetuneConfig), build)


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
        from .workflows.segment import segment_file

        settings = SegmentSettings(**_given(args, SEGMENT_OPTIONS))

        def process(row: Any, folder: Path) -> dict:
            return segment_file(row.image, folder, settings, scene=args.scene)

    else:
        from .workflows.counterfactual import counterfactual_file

        given = _given(args, COUNTERFACTUAL_OPTIONS - {"source"})

        def process(row: Any, folder: Path) -> dict:
            settings = counterfactual_settings(**given, source=row.attributes)
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
                from .devices import resolve_device

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
