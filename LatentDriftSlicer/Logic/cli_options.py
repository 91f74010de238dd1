"""The ``latentdrift`` command's parser: each settings option is derived from its settings field.

The options of ``segment``, ``counterfactual``, ``generate``, ``demo``, ``batch``, ``finetune`` and
``train-ldseg`` are the fields of the engine's settings (``finetune``:
:class:`~latentdrift.finetune.config.FinetuneConfig`; ``train-ldseg``:
:class:`~latentdrift.core.settings.TrainLDSegSettings`) that declare a help text
(:func:`latentdrift.core.settings.option`): the flag, type, choices and help come from the field, and
an option left out of the command line is left out of the namespace (``default=GIVEN``), so the
settings' own default applies. ``--device`` and ``--seed`` are the run options every command shares.
Declared here is only what is no settings field: the options of ``jobs``, ``info`` and ``scene``
(which have no settings), ``--quiet``, ``--debug``, ``--progress-json``, the inputs, ``--output``,
``--scene``, ``--settings``, ``--job-dir`` and the brain front end's switches (which build the
settings' ``front_end``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, fields, replace
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .core.settings import (
    FRONT_END_STEPS,
    SCENE_CHOICES,
    SCENE_DEFAULT,
    CounterfactualSettings,
    DemoSettings,
    EditSettings,
    FrontEndSettings,
    GenerateSettings,
    SegmentSettings,
    TrainLDSegSettings,
    option_field,
)
from .core.values import AXES
from .counterfactual.modes import GENERATE
from .finetune.config import FinetuneConfig

Handler = Callable[[argparse.Namespace], int]
GIVEN = argparse.SUPPRESS
"""The default of every settings option: left out of the namespace, so the settings' own default applies."""
COMMON = ("device", "seed")
"""The settings options every command takes (in the common group)."""
INPUT_HELP = (
    "volume file (NRRD, NIfTI, MHA/MHD), DICOM series folder, or sample:mni152-t1 (the bundled sample)"
)

# --------------------------------------------------------------------------- options from settings fields


def settings_options(kind: type, names: Sequence[str] | None = None) -> list[Field[Any]]:
    """The fields of ``kind`` that are command-line options (they declare a help text), except
    :data:`COMMON`; only ``names`` when given."""
    return [
        f
        for f in fields(kind)
        if "help" in f.metadata and f.name not in COMMON and (names is None or f.name in names)
    ]


def add_settings_options(
    parser: Any,
    kind: type,
    names: Sequence[str] | None = None,
    overrides: Mapping[str, Mapping[str, str]] | None = None,
    skip: set[str] | None = None,
) -> set[str]:
    """Add an option per :func:`settings_options` field of ``kind`` (not in ``skip``); ``overrides`` replace
    a field's ``flag`` or ``help``. Returns the names added."""
    hints = get_type_hints(kind)
    added = set()
    for setting in settings_options(kind, names):
        if setting.name in (skip or set()):
            continue
        metadata = {**setting.metadata, **(overrides or {}).get(setting.name, {})}
        add_field_option(parser, setting, hints[setting.name], metadata)
        added.add(setting.name)
    return added


def add_field_option(parser: Any, setting: Field[Any], hint: Any, metadata: Mapping[str, Any]) -> None:
    """``--flag`` for one settings field: a switch for a bool (it turns the default over), else a value of
    the field's number type or choices."""
    default = setting.default
    text = metadata["help"].format(default=default) if default is not MISSING else metadata["help"]
    arguments: dict[str, Any] = {"dest": setting.name, "default": GIVEN, "help": text}
    if hint is bool:
        arguments["action"] = "store_false" if default else "store_true"
    else:
        arguments["type"] = _number_type(hint)
        arguments["choices"] = metadata.get("choices") or _literal_choices(hint)
        arguments["metavar"] = metadata.get("metavar")
    parser.add_argument(metadata.get("flag") or "--" + setting.name.replace("_", "-"), **arguments)


def _members(hint: Any) -> list[Any]:
    """The types of a union without None (the type itself otherwise)."""
    if get_origin(hint) in (Union, UnionType):
        return [member for member in get_args(hint) if member is not type(None)]
    return [hint]


def _number_type(hint: Any) -> type | None:
    """``int`` or ``float`` for a field of that type (or optional), else None (the value stays text)."""
    members = _members(hint)
    return members[0] if len(members) == 1 and members[0] in (int, float) else None


def _literal_choices(hint: Any) -> tuple[str, ...] | None:
    members = _members(hint)
    return get_args(members[0]) if len(members) == 1 and get_origin(members[0]) is Literal else None


def _add_common(group: Any) -> None:
    hints = get_type_hints(SegmentSettings)
    for name in COMMON:
        setting = option_field(SegmentSettings, name)
        add_field_option(group, setting, hints[name], setting.metadata)


# --------------------------------------------------------------------------- the parser


def build_parser(handlers: Mapping[str, Handler], version: str) -> argparse.ArgumentParser:
    """The full argument parser: one sub-parser per command, each calling its ``handlers[command]``."""
    common = _common_parser()
    parser = argparse.ArgumentParser(
        prog="latentdrift",
        description="Latent Drift counterfactuals and LDSeg segmentation for medical volumes.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", parents=[common], help="versions, devices and models found")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(handler=handlers["info"])

    scene = commands.add_parser(
        "scene", parents=[common], help="load volumes, slice and reassemble them, save a Slicer scene"
    )
    scene.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUT_HELP)
    _add_output(scene, with_scene=True)
    scene.add_argument("--axis", choices=AXES, default="axial", help="slice axis (default: axial)")
    scene.add_argument(
        "--slices", default=None, metavar="A:B", help="slice range along the axis (default: all)"
    )
    scene.set_defaults(handler=handlers["scene"])
    _add_task_parsers(commands, common, handlers)
    _add_finetune_parser(commands, common, handlers["finetune"])
    jobs = commands.add_parser(
        "jobs", parents=[common], help="list, inspect, cancel or resume fine-tuning jobs"
    )
    jobs.add_argument("action", choices=("list", "status", "cancel", "resume"))
    jobs.add_argument(
        "job_dir", nargs="?", default=".", metavar="JOB_DIR", help="job folder (list: a folder of jobs)"
    )
    jobs.add_argument("--json", action="store_true", help="print machine-readable JSON")
    jobs.add_argument("--keep-cancel", action="store_true", help=argparse.SUPPRESS)
    jobs.set_defaults(handler=handlers["jobs"])
    _add_batch_parser(commands, common, handlers["batch"])

    train = commands.add_parser(
        "train-ldseg", parents=[common], help="train an LDSeg model on image/label volume pairs"
    )
    train.add_argument(
        "data",
        metavar="DATA",
        help="CSV with image,label[,subject] columns, or a folder of *_image/*_label files",
    )
    add_settings_options(train, TrainLDSegSettings)
    _add_output(train)
    train.set_defaults(handler=handlers["train-ldseg"])
    return parser


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    _add_common(group)
    group.add_argument("--quiet", action="store_true", help="no progress bars or info messages")
    group.add_argument("--debug", action="store_true", help="show tracebacks and debug messages")
    group.add_argument(
        "--progress-json",
        action="store_true",
        help="print progress and the result as JSON lines on stdout (for GUIs; replaces the progress bar)",
    )
    return common


@dataclass(frozen=True)
class _Task:
    """A command that runs one task: its help, and the settings classes its options come from, each with
    None (all its options) or the names it takes and what differs in them. A ``volume`` task takes an
    INPUT volume, the brain front end's switches and ``--scene``."""

    help: str
    options: tuple[tuple[type, Mapping[str, Mapping[str, str]] | None], ...]
    volume: bool = True


TASKS = {
    "segment": _Task(
        "LDSeg segmentation with per-voxel uncertainty (N samples per slice)", ((SegmentSettings, None),)
    ),
    "counterfactual": _Task(
        "Latent Drift counterfactual of a volume: every slice edited, plus the signed difference",
        ((EditSettings, None), (CounterfactualSettings, None)),
    ),
    GENERATE.name: _Task(
        "new slices from text with Latent Drift (PNGs and a volume stack)",
        ((GenerateSettings, None), (EditSettings, GenerateSettings.EDIT_OPTIONS)),
        volume=False,
    ),
    "demo": _Task(
        "the main job with the default models: LDSeg segmentation + uncertainty and a CN→AD "
        "counterfactual of one volume, each with its scene and preview",
        ((DemoSettings, None),),
    ),
}
"""The commands whose options are settings fields (each also takes ``--settings FILE``)."""


def _add_task_parsers(
    commands: Any, common: argparse.ArgumentParser, handlers: Mapping[str, Handler]
) -> None:
    for name, task in TASKS.items():
        parser = commands.add_parser(name, parents=[common], help=task.help)
        if task.volume:
            parser.add_argument("input", metavar="INPUT", help=INPUT_HELP)
        for kind, taken in task.options:
            add_settings_options(parser, kind, None if taken is None else list(taken), taken)
        if task.volume:
            _add_front_end(parser)
        _add_settings_file(parser)
        _add_output(parser, with_scene=task.volume)
        parser.set_defaults(handler=handlers[name])


BATCH_HELP: dict[str, dict[str, str]] = {
    "model": {
        "help": "LDSeg model (segment) or Stable Diffusion folder (default: the task's; "
        f"{option_field(CounterfactualSettings, 'model').metadata['help']})"
    },
    "steps": {"help": f"sampling steps (default: segment the model's, counterfactual {EditSettings.steps})"},
    "batch_size": {
        "help": "slices per batch, halved on out-of-memory "
        f"(default: segment {SegmentSettings.batch_size}, counterfactual from free memory)"
    },
    "axis": {
        "help": f"slice axis (default: segment the model's, counterfactual {CounterfactualSettings.axis})"
    },
}
"""``batch``'s help for the options both its tasks have."""


def _add_batch_parser(commands: Any, common: argparse.ArgumentParser, handler: Handler) -> None:
    """``batch segment|counterfactual``: both tasks' options (a counterfactual's source is the cohort's)."""
    batch = commands.add_parser(
        "batch", parents=[common], help="segment or edit every volume of a cohort (resumable, multi-process)"
    )
    batch.add_argument("task", choices=("segment", "counterfactual"))
    batch.add_argument("cohort", metavar="COHORT", help="cohort CSV or folder of volumes")
    added = add_settings_options(batch, SegmentSettings, overrides=BATCH_HELP)
    added |= add_settings_options(batch, CounterfactualSettings, skip=added | {"blend"})
    add_settings_options(batch, EditSettings, skip=added | {"source"})
    _add_front_end(batch)
    _add_output(batch, with_scene=True)
    batch.set_defaults(handler=handler)


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


class _FrontEndOff(argparse.Action):
    """``--no-preprocess`` / ``--no-<step>``: turn the brain front end, or one of its steps, off.

    Builds the settings' ``front_end`` (:class:`~latentdrift.core.settings.FrontEndSettings`) flag by flag.
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


# --------------------------------------------------------------------------- fine-tuning


FINETUNE_EXCLUSIVE = ("drift", "search_drift")
"""The ``finetune`` options that exclude each other (a δ given, or one searched)."""


def _add_finetune_parser(commands: Any, common: argparse.ArgumentParser, handler: Handler) -> None:
    """``finetune``: ``--job-dir`` and the options of :class:`~latentdrift.finetune.config.FinetuneConfig`'s fields."""
    finetune = commands.add_parser(
        "finetune", parents=[common], help="fine-tune on a local cohort in a job folder (resumable)"
    )
    finetune.add_argument("--job-dir", required=True, metavar="DIR", help="the job folder (created)")
    hints = get_type_hints(FinetuneConfig)
    drift = finetune.add_mutually_exclusive_group()
    for setting in settings_options(FinetuneConfig):
        target = drift if setting.name in FINETUNE_EXCLUSIVE else finetune
        add_field_option(target, setting, hints[setting.name], setting.metadata)
    _add_settings_file(finetune)
    finetune.set_defaults(handler=handler)
