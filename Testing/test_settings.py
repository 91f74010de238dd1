"""The engine's settings: built from flat options, across a process boundary as JSON and back, unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentdrift.core.errors import ParameterError, UnreadableFileError
from latentdrift.core.settings import (
    CounterfactualSettings,
    DemoSettings,
    EditSettings,
    SegmentSettings,
    build_settings,
    counterfactual_settings,
    demo_settings,
    generate_settings,
    read_settings,
    settings_from_json,
    settings_json,
)
from latentdrift.counterfactual.prompts import Attributes
from latentdrift.finetune.config import FinetuneConfig


def test_flat_options_become_nested_settings_with_text_read() -> None:
    settings = counterfactual_settings(
        source="age=70,sex=F,dx=CN", target="age=77", drift="0.05,0,0,-0.02", slices="3:5", model=Path("m")
    )
    assert settings.edit.source == Attributes(age=70, sex="female", diagnosis="CN")
    assert settings.edit.target == Attributes(
        age=77, sex="female", diagnosis="CN"
    )  # unset keys: the source's
    assert settings.edit.drift == (0.05, 0.0, 0.0, -0.02) and settings.slices == "3:5"
    assert (settings.edit.mode, settings.edit.steps, settings.axis) == (EditSettings.mode, 20, "axial")
    assert generate_settings(target="age=77").edit.mode == "generate"
    assert demo_settings(target="dx=AD").target == Attributes(age=70, diagnosis="AD")  # the demo's source age
    assert demo_settings() == DemoSettings()


@pytest.mark.parametrize(
    "settings",
    [
        counterfactual_settings(source="age=70,sex=F", target="age=75", drift="0.1,0,0,0", model=Path("/m")),
        SegmentSettings(model="brain-tissue-ldseg", samples=2, steps=3, slices="1:4", probabilities=True),
        DemoSettings(drift=0.05, slices="90:92"),
        FinetuneConfig(cohort="c.csv", scheme="lora", drift=(0.1, 0.0, 0.0, 0.0)),
    ],
    ids=lambda settings: type(settings).__name__,
)
def test_settings_cross_as_json_unchanged(settings: object) -> None:
    text = settings_json(settings)
    back = settings_from_json(type(settings), json.loads(text))
    if isinstance(settings, CounterfactualSettings):  # a path travels as text
        assert back.model == "/m" and back.edit == settings.edit
    else:
        assert back == settings


def test_unknown_missing_and_unreadable_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"Unknown SegmentSettings setting.*sample"):
        build_settings(SegmentSettings, {"sample": 2})
    with pytest.raises(ParameterError, match="FinetuneConfig needs cohort, scheme"):
        build_settings(FinetuneConfig, {})
    with pytest.raises(
        ParameterError, match=r"Unknown CounterfactualSettings setting.*colour: use axis, batch_size, blend"
    ):
        counterfactual_settings(instruction="older", colour="red")
    with pytest.raises(ParameterError, match="must be a JSON object"):
        settings_from_json(SegmentSettings, [1, 2])  # type: ignore[arg-type]
    broken = tmp_path / "settings.json"
    broken.write_text("{")
    with pytest.raises(UnreadableFileError, match=r"Cannot read the settings from '.*settings\.json'"):
        read_settings(SegmentSettings, broken)
    broken.write_text('{"samples": 3}')
    assert read_settings(SegmentSettings, broken) == SegmentSettings(samples=3)
