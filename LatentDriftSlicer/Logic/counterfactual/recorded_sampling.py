"""How a model asks to be sampled: the δ and text guidance recorded with it, for the options a run leaves out.

A fine-tuned or calibrated model records them in its ``latentdrift.json`` (``drift``, ``guidance``;
:mod:`latentdrift.finetune.metadata`). ``counterfactual``, ``batch``, ``demo`` and the console then sample it
as it was calibrated unless they are given other values. Light: no torch, so Slicer's own process can
import it (the console builds its settings here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import LatentDriftError
from ..core.models import choose_model
from ..core.settings import CounterfactualSettings, counterfactual_settings
from ..finetune.metadata import recorded_drift, recorded_guidance
from .modes import DEFAULT_EDIT


def counterfactual_options(**options: Any) -> CounterfactualSettings:
    """:func:`~latentdrift.core.settings.counterfactual_settings` from flat options, with
    :func:`recorded_sampling`'s values where the options give none."""
    return counterfactual_settings(**{**recorded_sampling(options), **options})


def recorded_sampling(options: dict[str, Any]) -> dict[str, Any]:
    """``drift`` and ``guidance`` as recorded with the model ``options`` name (or their mode's default
    model); none when the model is not found here (loading it later says why) or records none."""
    try:
        folder = choose_model(options.get("model"), options.get("mode") or DEFAULT_EDIT.name).path
    except LatentDriftError:
        return {}
    return model_sampling(folder)


def model_sampling(folder: Path) -> dict[str, Any]:
    """``drift`` (0 when none is recorded) and ``guidance`` (only when recorded) of the model in ``folder``."""
    guidance = recorded_guidance(folder)
    return {"drift": recorded_drift(folder)[0], **({} if guidance is None else {"guidance": guidance})}
