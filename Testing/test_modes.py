"""The edit modes live in their own files and the registry; the CLI, console and panel take them from there.

Also: every option of the settings commands is a settings field (the parser is derived from the schema).
"""

from __future__ import annotations

import argparse
import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from latentdrift.bridge import console
from latentdrift.cli import build_parser
from latentdrift.cli_options import COMMON
from latentdrift.core.errors import ParameterError
from latentdrift.core.models import DEFAULT_MODELS
from latentdrift.core.settings import (
    CounterfactualSettings,
    DemoSettings,
    EditSettings,
    GenerateSettings,
    SegmentSettings,
    TrainLDSegSettings,
    counterfactual_settings,
)
from latentdrift.counterfactual.modes import DEFAULT_EDIT, REGISTRY, edit_mode, volume_edit_names

MODULE = Path(__file__).resolve().parent.parent / "LatentDriftSlicer"
MODES = MODULE / "Logic" / "counterfactual" / "modes"
DATA = ("bundled_models", "bundled_samples")
"""Folders of model and sample files: a tokenizer's vocabulary holds words such as "direction"."""


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def _option(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(action for action in parser._actions if action.dest == dest)


def test_every_volume_edit_mode_is_a_registered_mode_that_edits_and_the_default_comes_first() -> None:
    names = volume_edit_names()
    assert names[0] == DEFAULT_EDIT.name == EditSettings.mode
    assert set(names) == {name for name, mode in REGISTRY.items() if mode.edits}
    assert all(edit_mode(name).name == name for name in REGISTRY)
    with pytest.raises(ParameterError, match="use one of " + ", ".join(REGISTRY)):
        edit_mode("sketch")


@pytest.mark.parametrize("command", ["counterfactual", "batch"])
def test_the_cli_edit_choices_and_help_come_from_the_registry(command: str) -> None:
    edit = _option(_subparser(command), "mode")
    assert edit.option_strings == ["--edit"]
    assert tuple(edit.choices or ()) == volume_edit_names()
    for name in volume_edit_names():
        assert f"{name}: {REGISTRY[name].summary}" in str(edit.help)


def test_the_console_accepts_every_registered_mode_and_refuses_others() -> None:
    for name in volume_edit_names():
        settings = counterfactual_settings(mode=name, source="age=70", target="age=75", prompt="a brain")
        assert settings.edit.edit_mode is REGISTRY[name]
    with pytest.raises(ParameterError, match="use one of " + ", ".join(REGISTRY)):
        console.counterfactual(None, mode="sketch", instruction="older")


def test_the_panel_offers_the_registry_edit_modes() -> None:
    """The panel's editMode parameter is a choice of ``volume_edit_names()`` with the settings' default."""
    tree = ast.parse((MODULE / "LatentDriftSlicer.py").read_text())
    edit_mode_field = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == "editMode"
    )
    assert ast.unparse(edit_mode_field.annotation) == "Annotated[str, Choice(volume_edit_names())]"
    assert edit_mode_field.value is not None and ast.unparse(edit_mode_field.value) == "EditSettings.mode"


def test_each_mode_has_its_default_model_and_model_kind() -> None:
    for name, mode in REGISTRY.items():
        assert DEFAULT_MODELS[name].name == mode.default_model
        kinds = ("instruct-pix2pix",) if mode.instruct_model else ("stable-diffusion",)
        assert DEFAULT_MODELS[name].kinds == kinds


def test_a_mode_name_is_quoted_only_in_its_own_file_and_the_registry() -> None:
    """``grep -rln "['\\"]NAME['\\"]" LatentDriftSlicer``, model and sample data left out."""
    files = [
        path
        for path in MODULE.rglob("*")
        if path.is_file()
        and not any(part in DATA or part == "__pycache__" for part in path.relative_to(MODULE).parts)
    ]
    assert len(files) > 50
    for name in REGISTRY:
        quoted = re.compile(rf"[\"']{re.escape(name)}[\"']")
        found = sorted(
            str(path.relative_to(MODULE))
            for path in files
            if quoted.search(path.read_text(encoding="utf-8", errors="ignore"))
        )
        own = str((MODES / f"{name}.py").relative_to(MODULE))
        assert own in found, f"{name}: its own file does not name it"
        assert set(found) <= {own, str((MODES / "__init__.py").relative_to(MODULE))}, f"{name}: {found}"


TASK_SETTINGS = {
    "segment": (SegmentSettings,),
    "counterfactual": (EditSettings, CounterfactualSettings),
    "demo": (DemoSettings,),
    "batch": (SegmentSettings, EditSettings, CounterfactualSettings),
    "train-ldseg": (TrainLDSegSettings,),
}


@pytest.mark.parametrize("command", [*TASK_SETTINGS, "generate"])
def test_every_settings_option_is_a_settings_field_with_its_help(command: str) -> None:
    parser = _subparser(command)
    kinds = TASK_SETTINGS.get(command, (EditSettings, GenerateSettings))
    declared = {f.name: f for kind in kinds for f in fields(kind) if "help" in f.metadata}
    dests = {a.dest for a in parser._actions if a.default == argparse.SUPPRESS and a.option_strings}
    dests -= {"help", "front_end", *COMMON}
    assert dests <= set(declared)
    if command == "generate":
        assert dests == set(GenerateSettings.EDIT_OPTIONS) | {
            "model",
            "batch_size",
            "full_precision",
            "count",
        }
    elif command == "batch":
        assert dests == set(declared) - {"source", "blend"} - set(COMMON)
    else:
        assert dests == set(declared) - set(COMMON)
    steps = _option(parser, "steps")
    assert steps.type is int


def test_the_panel_takes_the_bounds_of_engine_options_from_the_schema() -> None:
    """Every panel parameter defaulting to an engine setting ``Kind.name`` with a numeric range reads it
    with ``slider_range(Kind, "name")``: no bound of an engine option is written in the panel."""
    tree = ast.parse((MODULE / "LatentDriftSlicer.py").read_text())
    ranged = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign)
        and "WithinRange" in ast.unparse(node.annotation)
        and node.value is not None
        and isinstance(node.value, ast.Attribute)
        and ast.unparse(node.value).split(".")[0].endswith("Settings")
    ]
    assert len(ranged) >= 7
    for node in ranged:
        assert isinstance(node.value, ast.Attribute)
        kind, name = ast.unparse(node.value).split(".")
        assert f"slider_range({kind}, {name!r})".replace("'", '"') in ast.unparse(node.annotation).replace(
            "'", '"'
        ), ast.unparse(node)


def test_a_slider_range_is_the_declared_slider_else_the_range() -> None:
    from latentdrift.core.settings import EditSettings, SegmentSettings, slider_range
    from latentdrift.core.values import DRIFT_LIMIT

    assert slider_range(EditSettings, "drift") == (-0.2, 0.2) and DRIFT_LIMIT > 0.2  # the paper's range
    assert slider_range(EditSettings, "strength") == (0.0, 1.0)  # no slider: the range itself
    assert slider_range(SegmentSettings, "samples") == (1, 64)
