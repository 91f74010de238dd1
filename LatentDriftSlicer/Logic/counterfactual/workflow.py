"""``latentdrift counterfactual`` and ``latentdrift generate``: Latent Drift on volume files and from text."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..bridge.scene import COUNTERFACTUAL_ROLES
from ..core.models import choose_model
from ..core.progress import ProgressCallback
from ..core.results import ResultFolder
from ..core.settings import (
    SCENE_DEFAULT,
    CounterfactualSettings,
    DiffusionRun,
    EditSettings,
    GenerateSettings,
    SceneChoice,
)
from ..core.volumes import Geometry, Volume, extract_slices, read_volume, write_volume
from ..evaluation.reports import Panel, pick_preview_slices, save_preview
from ..frontend.tasks import counterfactual_head
from ..workflows.common import SceneLayer, outputs_of, record_front_end, scene_wanted, write_scene
from .edit import PipelineBundle, generate_slices, load_bundle
from .modes import GENERATE
from .volume_editing import VolumeCounterfactual, choose_batch_size, model_resolution

if TYPE_CHECKING:
    from ..frontend.head import PreparedHead

FADE = 0.5
"""Opacity of the counterfactual over the input in the saved scene's slice views."""


def open_model(run: DiffusionRun) -> PipelineBundle:
    """Resolve and load the run's Stable Diffusion folder, checked to fit its edit mode before any weights load.

    ``run.model`` None means the mode's default model (:data:`latentdrift.core.models.DEFAULT_MODELS`).
    """
    return load_bundle(choose_model(run.model, run.edit.mode).path, run.device, run.full_precision)


def counterfactual_file(
    input_path: str | Path,
    output: str | Path,
    settings: CounterfactualSettings,
    progress: ProgressCallback | None = None,
    scene: SceneChoice = SCENE_DEFAULT,
    head: PreparedHead | None = None,
) -> dict:
    """A volume file → its counterfactual and signed difference, preview and summary, by role.

    Writes ``counterfactual.nrrd`` (in the input's intensities), ``difference.nrrd`` (counterfactual −
    input), ``preview.png`` (input | counterfactual | difference) and ``summary.json``, on the input's
    grid; then the Slicer scene when ``scene`` asks for it (:func:`~.common.scene_wanted`: input in
    the background, the counterfactual in the foreground at opacity 0.5, the difference with a
    diverging colour table). ``settings.model`` None means the edit mode's default model (its folder
    is the ``model`` input recorded).

    A brain model on a head runs through the brain front end (:mod:`latentdrift.frontend`): only the
    brain changes (nothing farther than 3 mm from its mask), the brain mask is written too
    (``brain_mask.seg.nrrd``) and ``summary.json`` records each step under ``front_end``. ``head``
    reuses a preparation of the same file (the demo's).
    """
    with_scene = scene_wanted(scene)
    folder = choose_model(settings.model, settings.edit.mode).path
    inputs = {"volume": str(input_path), "model": str(folder)}
    run = {"axis": settings.axis, "slices": settings.slices, "blend": settings.blend}
    record = _settings_record(settings.edit)
    with ResultFolder(output, "counterfactual", inputs, settings=record, **run) as result:
        bundle = load_bundle(folder, settings.device, settings.full_precision)
        result.inputs["model"] = str(bundle.folder)
        result.metadata.update(device=str(bundle.device), dtype=str(bundle.dtype))
        model_resolution(bundle)  # a model too large to run is refused before the volume is read
        volume = read_volume(input_path)
        edit, prepared = counterfactual_head(volume, bundle, settings, progress, head)
        warnings = record_front_end(result, prepared)
        write_volume(edit.counterfactual, result.path("counterfactual", "counterfactual.nrrd"))
        write_volume(edit.difference, result.path("difference", "difference.nrrd"))
        _preview(volume, edit, settings.slices, prepared.brain_mask, result.path("preview", "preview.png"))
        result.figures.update(edit.figures)
        result.metadata["warnings"] = [*warnings, *edit.warnings]
        if with_scene:
            layer = SceneLayer(volume, outputs_of(result, COUNTERFACTUAL_ROLES))
            write_scene(result, [layer], foreground_opacity=FADE)
    return result.summary()


def _preview(
    volume: Volume, edit: VolumeCounterfactual, slices: str | None, brain_mask: np.ndarray | None, path: Path
) -> None:
    stack = extract_slices(volume, edit.axis, slices)
    edited = extract_slices(edit.counterfactual, edit.axis, slices).slices
    difference = extract_slices(edit.difference, edit.axis, slices).slices
    outline = (
        None
        if brain_mask is None
        else extract_slices(volume.with_voxels(brain_mask), edit.axis, slices).slices
    )
    positions = pick_preview_slices(stack.count, outline=outline)
    panels = [
        Panel("input" if outline is None else "input, brain mask", stack.slices, outline=outline),
        Panel("counterfactual", edited),
        Panel("difference (counterfactual − input)", difference, "signed"),
    ]
    title = f"{volume.name}: {edit.axis} slices {[stack.indices[p] for p in positions]}"
    save_preview(path, panels, positions, stack.layout.pixel_spacing, title)


def generate_file(
    output: str | Path, settings: GenerateSettings, progress: ProgressCallback | None = None
) -> dict:
    """Text (and δ) → ``settings.count`` new slices at the model's resolution, as PNGs and as one volume.

    Writes ``slice_000.png`` … (role ``image``, grey, [-1, 1] mapped to 0–255), ``generated.nrrd``
    (role ``volume``: float32 in the model range [-1, 1], slices stacked along k, 1 mm spacing,
    identity direction, so its axial slices are the generated images as shown) and ``summary.json``.
    Sample *i* uses seed ``settings.edit.seed + i``; ``settings.model`` None means the default
    text-to-image model.
    """
    bundle = open_model(settings)
    size = model_resolution(bundle)
    chosen = settings.batch_size or choose_batch_size(bundle, settings.edit, size)
    edit = replace(settings.edit, batch_size=chosen)
    inputs = {"model": str(bundle.folder)}
    with ResultFolder(
        output,
        GENERATE.name,
        inputs,
        settings=_settings_record(edit),
        count=settings.count,
        device=str(bundle.device),
    ) as result:
        report = (lambda done, total: progress(done, total, "generating")) if progress else None
        images = generate_slices(bundle, settings.count, size, size, edit, report)
        for index, image in enumerate(images):
            _save_png(image, result.path("image", f"slice_{index:03d}.png"))
        stacked = Volume(images.astype(np.float32), Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), "generated")
        write_volume(stacked, result.path("volume", "generated.nrrd"))
        result.figures.update(
            {
                "count": settings.count,
                "size": size,
                "drift": edit.drift,
                "batch_size": chosen,
                "mean": float(images.mean()),
            }
        )
    return result.summary()


def _save_png(image: np.ndarray, path: Path) -> None:
    """A slice ``[H, W]`` in [-1, 1] as an 8-bit grey PNG."""
    from PIL import Image

    pixels = np.round((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _settings_record(settings: EditSettings) -> dict[str, Any]:
    """The settings as JSON-ready values, with the text the model was conditioned on and the text its
    guidance steered away from (``negative_text``: for instruct with a factual reference, the factual
    instruction, while ``negative_prompt`` stays as given).

    The batch size is left out: the one used is in the figures (it depends on the device).
    """
    record = {**asdict(settings), "text": settings.text(), "negative_text": settings.negative_text()}
    del record["batch_size"]
    return record
