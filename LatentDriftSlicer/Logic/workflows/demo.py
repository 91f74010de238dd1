"""``latentdrift demo``: the main job in one command, with the default models.

On one volume: the LDSeg segmentation with its uncertainty (``latentdrift segment`` with its default
settings) and a counterfactual with the default InstructPix2Pix editor (``latentdrift counterfactual
--edit instruct``), each in its own result folder (files by role, preview, summary, the optional
scene) under one result folder whose ``summary.json`` points to both. The whole appears at once or
not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..core.models import default_model
from ..core.progress import ProgressCallback
from ..core.results import ResultFolder
from ..core.settings import (
    SCENE_DEFAULT,
    CounterfactualSettings,
    DemoSettings,
    EditSettings,
    SceneChoice,
    SegmentSettings,
)
from ..counterfactual.modes import INSTRUCT
from ..counterfactual.recorded_sampling import model_sampling
from ..counterfactual.workflow import counterfactual_file
from ..frontend.head import shared_preparation
from ..segmentation.workflow import segment_file
from .common import scene_wanted


def demo_file(
    input_path: str | Path,
    output: str | Path,
    settings: DemoSettings,
    *,
    progress: ProgressCallback | None = None,
    scene: SceneChoice = SCENE_DEFAULT,
) -> dict:
    """A volume file → ``segmentation/`` and ``counterfactual/`` result folders and a summary of both.

    Both default models are resolved before any work. The top-level ``summary.json`` lists every
    file of both parts by role (paths relative to the result folder), their figures under the part's
    name, and ``results``: each part's own ``summary.json``. ``scene`` applies to both parts.
    """
    scene_wanted(scene)
    segmenter, editor = default_model("segment"), default_model(INSTRUCT.name)
    edit = editor_settings(settings, editor.path)
    inputs = {"volume": str(input_path), "segmentation_model": str(segmenter.path), "model": str(editor.path)}
    record = {
        "source": asdict(settings.source),
        "target": asdict(settings.target),
        **{name: getattr(edit, name) for name in ("drift", "drift_start", "guidance", "steps")},
    }
    slicing = {"axis": settings.axis, "slices": settings.slices, "device": settings.device}
    shared: dict[str, Any] = {**slicing, "front_end": settings.front_end}
    parts: dict[str, tuple[Callable[..., dict], Any]] = {
        "segmentation": (
            segment_file,
            SegmentSettings(model=str(segmenter.path), seed=settings.seed, **shared),
        ),
        "counterfactual": (
            counterfactual_file,
            CounterfactualSettings(edit, model=str(editor.path), **shared),
        ),
    }
    with ResultFolder(output, "demo", inputs, settings=record, **slicing, results={}, warnings=[]) as result:
        models = (segmenter.path, editor.path)
        head = shared_preparation(input_path, models, settings.front_end, settings.device, progress)
        for part, (run_part, part_settings) in parts.items():
            summary = run_part(input_path, result.staging / part, part_settings, progress, scene, head)
            _adopt(result, part, summary)
    return result.summary()


def editor_settings(settings: DemoSettings, editor: Path) -> EditSettings:
    """Instruct-mode settings; without a δ, the one recorded with the editor, at every reverse step, and the
    text guidance recorded with it (its ``latentdrift.json``), else the default.

    The editor's recorded drifted start is not used: on held-out subjects it made the bundled editor's
    counterfactuals worse (``benchmarks/evidence/results.md``, section 2, the recorded-settings row).
    """
    recorded = model_sampling(editor)
    return EditSettings(
        mode=INSTRUCT.name,
        source=settings.source,
        target=settings.target,
        drift=recorded["drift"] if settings.drift is None else settings.drift,
        steps=settings.steps,
        seed=settings.seed,
        guidance=recorded.get("guidance", EditSettings.guidance),
    )


def _adopt(result: ResultFolder, part: str, summary: dict[str, Any]) -> None:
    """Record a part's files by role (as ``part/name``), its figures, warnings and summary."""
    for role, names in summary["outputs"].items():
        for name in [names] if isinstance(names, str) else names:
            result.record(role, f"{part}/{name}")
    result.figures[part] = summary["figures"]
    result.metadata["warnings"] += [f"{part}: {warning}" for warning in summary.get("warnings", [])]
    result.metadata["results"][part] = f"{part}/summary.json"
