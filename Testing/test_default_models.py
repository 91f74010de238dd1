"""Default models: one per task, found in front of the registry or in it, refused with how to get them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentdrift.bridge import console, panel_support
from latentdrift.core.errors import ModelError, ParameterError
from latentdrift.core.models import DEFAULT_MODELS, choose_model, default_model, find_default
from latentdrift.finetune.config import FinetuneConfig
from latentdrift.finetune.jobs import base_model


def test_every_task_has_its_default_in_front_of_the_registry(tiny_defaults: Path) -> None:
    expected = {
        "generate": "brain-mri-sd",
        "img2img": "brain-mri-sd",
        "direction": "brain-mri-sd",
        "instruct": "brain-mri-instruct",
        "segment": "brain-tissue-ldseg",
        "finetune": "mini-sd-natural",
    }
    assert {task: default.name for task, default in DEFAULT_MODELS.items()} == expected
    for task, name in expected.items():
        entry = default_model(task)
        assert entry.path == tiny_defaults / name and entry.kind in DEFAULT_MODELS[task].kinds
        assert choose_model(None, task) == entry == find_default(task)
        assert panel_support.default_model_folder(task) == tiny_defaults / name
    assert choose_model(tiny_defaults / "brain-mri-sd", "img2img").name == "brain-mri-sd"
    with pytest.raises(ModelError, match="this task needs: instruct-pix2pix"):
        choose_model(tiny_defaults / "brain-mri-sd", "instruct")


def test_missing_defaults_are_refused_with_how_to_get_them(no_models: Path) -> None:
    for task in DEFAULT_MODELS:
        assert find_default(task) is None and panel_support.default_model_folder(task) is None
    with pytest.raises(ModelError) as caught:
        default_model("instruct")
    message = str(caught.value)
    assert "'brain-mri-instruct' is not installed" in message and str(no_models) in message
    assert "scripts/train_default_generative.py" in message and "--model" in message and "\n" not in message
    with pytest.raises(ModelError, match=r"train_default_ldseg\.py"):
        choose_model(None, "segment")
    with pytest.raises(ParameterError, match="Unknown task 'paint'"):
        default_model("paint")


def _fake_model(folder: Path, pipeline: str) -> Path:
    """A folder the registry recognises by its model_index.json (no weights: nothing loads them here)."""
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    return folder


def test_registry_copies_count_and_a_wrong_kind_is_refused(
    no_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shelf = tmp_path / "shelf"
    found = _fake_model(shelf / "brain-mri-sd", "StableDiffusionPipeline")
    _fake_model(shelf / "brain-mri-instruct", "StableDiffusionPipeline")  # not an InstructPix2Pix model
    monkeypatch.setenv("LATENTDRIFT_MODELS", str(shelf))
    assert default_model("generate").path == found
    with pytest.raises(ModelError, match="'brain-mri-instruct' is a stable-diffusion model"):
        default_model("instruct")
    assert panel_support.default_model_folder("instruct") is None  # a selector simply preselects nothing


def test_fine_tuning_starts_from_the_default_base_model_first(
    no_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shelf = tmp_path / "shelf"
    other = _fake_model(shelf / "a-brain-editor", "StableDiffusionInstructPix2PixPipeline")
    monkeypatch.setenv("LATENTDRIFT_MODELS", str(shelf))
    assert base_model(FinetuneConfig(cohort="c.csv", scheme="lora")) == other  # no default: the first found
    natural = _fake_model(shelf / "mini-sd-natural", "StableDiffusionPipeline")
    for scheme in ("lora", "instruct-pix2pix"):
        assert base_model(FinetuneConfig(cohort="c.csv", scheme=scheme)) == natural
    assert base_model(FinetuneConfig(cohort="c.csv", scheme="lora", model=str(other))) == other


def test_console_runs_leave_the_model_to_the_command_when_none_is_given(session, oblique_nifti: Path) -> None:
    """The settings the console hands the engine say no model (null): the command picks its default."""
    from latentdrift.bridge.scene import load_volume_node
    from latentdrift.core.settings import SegmentSettings, counterfactual_settings, settings_json

    node = load_volume_node(session, oblique_nifti)
    runs = [
        console.prepare(node, SegmentSettings(), session=session),
        console.prepare(
            node, counterfactual_settings(source="age=70", target="age=75"), fade=1.0, session=session
        ),
        console.prepare(node, SegmentSettings(model="mine"), session=session),
    ]
    try:
        assert [json.loads(settings_json(run.settings))["model"] for run in runs] == [None, None, "mine"]
        assert not any("--model" in run.arguments for run in runs)
    finally:
        for run in runs:
            run.cleanup()


def test_the_self_tests_models_are_an_ldseg_model_and_an_instruct_editor(tmp_path: Path) -> None:
    """The models the Slicer self-test has its engine process build (seconds, tiny, random)."""
    from latentdrift.core.models import model_kind
    from latentdrift.fixtures.tiny_models import build_self_test_models

    folder = build_self_test_models(tmp_path / "models")
    assert model_kind(folder / "ldseg") == "ldseg"
    assert model_kind(folder / "instruct") == "instruct-pix2pix"
    assert panel_support.panel_model_choices("segment", "", [folder])[-1] == (
        "ldseg (" + str(folder) + ")",
        str(folder / "ldseg"),
    )
