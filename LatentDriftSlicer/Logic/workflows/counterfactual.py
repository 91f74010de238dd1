"""``latentdrift counterfactual`` and ``latentdrift generate``: Latent Drift on volume files and from text."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..counterfactual import VolumeCounterfactual, choose_batch_size, counterfactual_volume, model_resolution
from ..edit import EditSettings, PipelineBundle, generate_slices, load_bundle
from ..models import choose_model
from ..progress import ProgressCallback
from ..reports import Panel, pick_preview_slices, save_preview
from ..results import ResultFolder
from ..scene import (
    DIFFERENCE_COLORMAP,
    SceneSession,
    add_map_node,
    load_volume_node,
    match_display,
    node_to_volume,
    show_in_slice_views,
    volume_to_node,
)
from ..volumes import Axis, Geometry, Volume, extract_slices, write_volume
from .common import write_scene

FADE = 0.5
"""Opacity of the counterfactual over the input in the saved scene's slice views."""


def open_model(
    model: str | Path | None, settings: EditSettings, device: str = "auto", full_precision: bool = False
) -> PipelineBundle:
    """Resolve and load a Stable Diffusion folder that fits ``settings.mode`` (checked before any weights load).

    ``model`` None means the mode's default model (:data:`latentdrift.models.DEFAULT_MODELS`).
    """
    return load_bundle(choose_model(model, settings.mode).path, device, full_precision)


def counterfactual_file(
    input_path: str | Path,
    model: str | Path | None,
    output: str | Path,
    settings: EditSettings,
    axis: Axis = "axial",
    slices: str | None = None,
    blend: float = 0.0,
    batch_size: int | None = None,
    device: str = "auto",
    full_precision: bool = False,
    progress: ProgressCallback | None = None,
) -> dict:
    """A volume file → its counterfactual and signed difference, scene, preview and summary.

    Writes ``scene.mrml`` (input in the background, the counterfactual in the foreground at opacity
    0.5, the difference as a map with a diverging colour table and a symmetric window) with NRRD
    data recorded by role (``input``, ``counterfactual``, ``difference``), ``scene.mrb``,
    ``preview.png`` (input | counterfactual | difference) and ``summary.json``; returns the summary.
    ``model`` None means the edit mode's default model (its folder is the ``model`` input recorded).
    """
    bundle = open_model(model, settings, device, full_precision)
    session = SceneSession.headless()
    inputs = {"volume": str(input_path), "model": str(bundle.folder)}
    run = {
        "axis": axis,
        "slices": slices,
        "blend": blend,
        "device": str(bundle.device),
        "dtype": str(bundle.dtype),
    }
    with ResultFolder(output, "counterfactual", inputs, settings=_settings_record(settings), **run) as result:
        input_node = load_volume_node(session, input_path)
        volume = node_to_volume(input_node)
        edit = counterfactual_volume(volume, bundle, settings, axis, slices, blend, batch_size, progress)
        roles = _add_nodes(session, input_node, edit)
        write_scene(session, result, roles)
        _preview(volume, edit, slices, result.path("preview", "preview.png"))
        result.figures.update(edit.figures)
        result.metadata["warnings"] = edit.warnings
    return result.summary()


def _add_nodes(session: SceneSession, input_node: Any, edit: VolumeCounterfactual) -> dict[str, str]:
    """Add the counterfactual and difference nodes and set up the views; returns roles by node ID."""
    counterfactual_node = volume_to_node(session, edit.counterfactual, edit.counterfactual.name)
    match_display(counterfactual_node, input_node)
    bound = float(np.max(np.abs(edit.difference.voxels))) or 1.0
    difference_node = add_map_node(
        session, edit.difference, edit.difference.name, DIFFERENCE_COLORMAP, (-bound, bound)
    )
    show_in_slice_views(session, input_node, counterfactual_node, foreground_opacity=FADE)
    return {
        input_node.GetID(): "input",
        counterfactual_node.GetID(): "counterfactual",
        difference_node.GetID(): "difference",
    }


def _preview(volume: Volume, edit: VolumeCounterfactual, slices: str | None, path: Path) -> None:
    stack = extract_slices(volume, edit.axis, slices)
    edited = extract_slices(edit.counterfactual, edit.axis, slices).slices
    difference = extract_slices(edit.difference, edit.axis, slices).slices
    positions = pick_preview_slices(stack.count)
    panels = [
        Panel("input", stack.slices),
        Panel("counterfactual", edited),
        Panel("difference (counterfactual − input)", difference, "signed"),
    ]
    title = f"{volume.name}: {edit.axis} slices {[stack.indices[p] for p in positions]}"
    save_preview(path, panels, positions, stack.layout.pixel_spacing, title)


def generate_file(
    model: str | Path | None,
    output: str | Path,
    settings: EditSettings,
    count: int,
    batch_size: int | None = None,
    device: str = "auto",
    full_precision: bool = False,
    progress: ProgressCallback | None = None,
) -> dict:
    """Text (and δ) → ``count`` new slices at the model's resolution, as PNGs and as one volume.

    Writes ``slice_000.png`` … (role ``image``, grey, [-1, 1] mapped to 0–255), ``generated.nrrd``
    (role ``volume``: float32 in the model range [-1, 1], slices stacked along k, 1 mm spacing,
    identity direction, so its axial slices are the generated images as shown) and ``summary.json``.
    Sample *i* uses seed ``settings.seed + i``; ``model`` None means the default text-to-image model.
    """
    bundle = open_model(model, settings, device, full_precision)
    size = model_resolution(bundle)
    chosen = choose_batch_size(bundle, settings, size) if batch_size is None else batch_size
    settings = replace(settings, batch_size=chosen)
    inputs = {"model": str(bundle.folder)}
    with ResultFolder(
        output,
        "generate",
        inputs,
        settings=_settings_record(settings),
        count=count,
        device=str(bundle.device),
    ) as result:
        report = (lambda done, total: progress(done, total, "generating")) if progress else None
        images = generate_slices(bundle, count, size, size, settings, report)
        for index, image in enumerate(images):
            _save_png(image, result.path("image", f"slice_{index:03d}.png"))
        stacked = Volume(images.astype(np.float32), Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), "generated")
        write_volume(stacked, result.path("volume", "generated.nrrd"))
        result.figures.update(
            {
                "count": count,
                "size": size,
                "drift": settings.drift,
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
    """The settings as JSON-ready values, with the text the model was conditioned on.

    The batch size is left out: the one used is in the figures (it depends on the device).
    """
    record = {**asdict(settings), "text": settings.text()}
    del record["batch_size"]
    return record
