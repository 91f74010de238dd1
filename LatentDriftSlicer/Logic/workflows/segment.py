"""``latentdrift segment`` and ``latentdrift train-ldseg``: LDSeg on volume files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from ..devices import resolve_device
from ..errors import ModelError, ParameterError
from ..ldseg import (
    LDSegConfig,
    TrainSettings,
    load_ldseg_model,
    read_config,
    save_ldseg_model,
    train_ldseg,
)
from ..model_cards import ldseg_training_card
from ..models import choose_model, resolve_model
from ..progress import ProgressCallback
from ..reports import Panel, pick_preview_slices, save_preview
from ..results import ResultFolder
from ..scene import (
    PROBABILITY_COLORMAP,
    UNCERTAINTY_COLORMAP,
    SceneSession,
    SegmentClass,
    add_map_node,
    add_segmentation_node,
    load_volume_node,
    node_to_volume,
    show_in_slice_views,
)
from ..segmentation import SegmentSettings, VolumeSegmentation, intensity_statistics, segment_volume
from ..segmentation_data import find_pairs, load_training_slices, split_by_subject
from ..volumes import Volume, extract_slices
from .common import write_scene


def segment_file(
    input_path: Path,
    model_name: str | Path | None,
    output: str | Path,
    settings: SegmentSettings,
    probability_maps: bool = False,
    progress: ProgressCallback | None = None,
) -> dict:
    """``latentdrift segment``: a volume file → segmentation, uncertainty, preview, scene, summary.

    Writes ``scene.mrml`` (input, segmentation ``.seg.nrrd``, uncertainty, optional per-class
    probability volumes, display set up), ``scene.mrb``, ``preview.png`` and ``summary.json``.
    ``model_name`` None means the default segmentation model.
    """
    entry = choose_model(model_name, "segment")
    model = load_ldseg_model(entry.path, resolve_device(settings.device))
    session = SceneSession.headless()
    inputs = {"volume": str(input_path), "model": str(entry.path)}
    with ResultFolder(output, "segment", inputs, settings=asdict(settings), model=entry.name) as result:
        input_node = load_volume_node(session, input_path)
        volume = node_to_volume(input_node)
        segmentation = segment_volume(volume, model, settings, progress)
        classes = [
            SegmentClass(index, c.name, tuple(v / 255.0 for v in c.color), c.terminology)  # type: ignore[arg-type]
            for index, c in enumerate(model.config.classes)
            if index > 0
        ]
        roles = {input_node.GetID(): "input"}
        segmentation_node = add_segmentation_node(
            session, segmentation.labels, classes, segmentation.labels.name, input_node
        )
        uncertainty_node = add_map_node(
            session, segmentation.entropy, segmentation.entropy.name, UNCERTAINTY_COLORMAP
        )
        roles.update({segmentation_node.GetID(): "segmentation", uncertainty_node.GetID(): "uncertainty"})
        if probability_maps:
            for index, segment_class in enumerate(classes, start=1):
                node = add_map_node(
                    session,
                    volume.with_voxels(segmentation.probabilities[index]),
                    f"{volume.name} p({segment_class.name})",
                    PROBABILITY_COLORMAP,
                )
                roles[node.GetID()] = "probability"
        show_in_slice_views(session, input_node, uncertainty_node, foreground_opacity=0.0)
        write_scene(session, result, roles)
        _segmentation_preview(volume, segmentation, classes, settings, result.path("preview", "preview.png"))
        result.figures.update(segmentation.figures)
        result.metadata["warnings"] = segmentation.warnings
    return result.summary()


def _segmentation_preview(
    volume: Volume,
    segmentation: VolumeSegmentation,
    classes: Sequence[SegmentClass],
    settings: SegmentSettings,
    path: Path,
) -> None:
    axis = segmentation.axis
    stack = extract_slices(volume, axis, settings.slices)
    labels = extract_slices(segmentation.labels, axis, settings.slices).slices
    entropy = extract_slices(segmentation.entropy, axis, settings.slices).slices
    positions = pick_preview_slices(stack.count)
    panels = [
        Panel("input", stack.slices),
        Panel("segmentation", labels, "labels", background=stack.slices, colors=[c.color for c in classes]),
        Panel("uncertainty (entropy)", entropy, "map", value_range=(0.0, 1.0)),
    ]
    title = f"{volume.name}: {axis} slices {[stack.indices[p] for p in positions]}"
    save_preview(path, panels, positions, stack.layout.pixel_spacing, title)


def fine_tuning_config(
    start_from: str | Path, classes: Sequence[str] = (), axis: str | None = None
) -> LDSegConfig:
    """The config of the LDSeg model ``start_from`` (name or folder), checked against what the user asked.

    ``classes`` (background first; empty: not given) and ``axis`` (None: not given) must be the model's:
    fine-tuning keeps both. :class:`ModelError` says which differs, before any data is read.
    """
    config = read_config(resolve_model(start_from, ("ldseg",)).path)
    if classes and list(classes) != config.class_names:
        raise ModelError(
            f"--classes {','.join(classes)} differ from the model's ({','.join(config.class_names)}): "
            "fine-tuning keeps the model's classes; leave out --classes or train from scratch."
        )
    if axis is not None and axis != config.axis:
        raise ModelError(
            f"'{start_from}' segments {config.axis} slices; fine-tune it with --axis {config.axis} "
            "(or train from scratch, without a model to start from, on another axis)."
        )
    return config


def train_segmentation_model(
    data: str | Path,
    output: str | Path,
    config: LDSegConfig | None,
    settings: TrainSettings,
    validation_fraction: float = 0.2,
    progress: ProgressCallback | None = None,
    card_notes: str = "",
    start_from: str | Path | None = None,
) -> dict:
    """``latentdrift train-ldseg``: image/label volume pairs → an LDSeg model folder.

    Pairs are split by subject; validation Dice is measured each epoch; checkpoints go to
    ``settings.checkpoint_dir`` (resumable). The model folder (``config.json``, ``model.safetensors``,
    ``MODEL_CARD.md``, ``training.json``) appears only when training finishes. ``start_from`` (a model
    name or folder) fine-tunes that model: training starts from its weights, and ``config`` None takes
    its config (classes, architecture, sampler).
    """
    initial = load_ldseg_model(resolve_model(start_from, ("ldseg",)).path) if start_from is not None else None
    if config is None:
        if initial is None:
            raise ParameterError("Give a model config to train from scratch, or a model to start from.")
        config = initial.config
    pairs = find_pairs(data)
    train_pairs, val_pairs = split_by_subject(pairs, validation_fraction, settings.seed)
    train_images, train_labels = load_training_slices(train_pairs, config)
    reference = intensity_statistics(train_images, config.intensity_range[0])
    config = replace(config, intensity_reference=reference)
    val_images, val_labels = load_training_slices(val_pairs, config) if val_pairs else (None, None)
    inputs = {"data": str(data), "train_subjects": len(train_pairs), "validation_subjects": len(val_pairs)}
    if start_from is not None:
        inputs["start_from"] = str(start_from)
    with ResultFolder(output, "train-ldseg", inputs, settings=asdict(settings)) as result:

        def report(event: dict) -> None:
            if progress is not None and event.get("kind") == "step":
                progress(int(event["step"]), int(event["steps"]), "training")

        trained = train_ldseg(
            train_images, train_labels, val_images, val_labels, config, settings, report, initial
        )
        history = trained.history
        result.figures.update({"train_slices": len(train_images), "final": history[-1] if history else {}})
        card = ldseg_training_card(trained.model, history, inputs, settings, card_notes)
        save_ldseg_model(trained.model, result.staging, card)
        for name in ("config.json", "model.safetensors", "MODEL_CARD.md"):
            result.record("model", name)
        history_path = result.path("history", "training.json")
        history_path.write_text(json.dumps(history, indent=2) + "\n")
    return result.summary()
