"""``latentdrift segment`` (any registered segmentation model) and ``latentdrift train-ldseg`` on volume files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..bridge.scene import SEGMENT_ROLES
from ..core.errors import ModelError, ParameterError
from ..core.models import choose_model, resolve_model
from ..core.progress import ProgressCallback, TrainingCallback, TrainingEvent
from ..core.results import ResultFolder
from ..core.settings import SCENE_DEFAULT, SceneChoice, SegmentSettings, TrainLDSegSettings
from ..core.volumes import Volume, extract_slices, read_volume, write_volume
from ..evaluation.model_cards import ldseg_training_card
from ..evaluation.reports import Panel, pick_preview_slices, save_preview
from ..frontend.tasks import segment_head
from ..workflows.common import SceneLayer, outputs_of, record_front_end, scene_wanted, write_scene
from .data import find_pairs, load_training_slices, split_by_subject
from .ldseg import (
    LDSegConfig,
    TrainSettings,
    default_classes,
    load_ldseg_model,
    read_config,
    save_ldseg_model,
    train_ldseg,
    training_config,
)
from .seg_files import SegmentClass, write_segmentation_file
from .segmenters import InputSpec, load_segmenter
from .volume_segmentation import VolumeSegmentation, intensity_statistics

if TYPE_CHECKING:
    from ..frontend.head import PreparedHead


def segment_file(
    input_path: str | Path,
    output: str | Path,
    settings: SegmentSettings,
    progress: ProgressCallback | None = None,
    scene: SceneChoice = SCENE_DEFAULT,
    head: PreparedHead | None = None,
) -> dict:
    """``latentdrift segment``: a volume file → segmentation, uncertainty, preview and summary, by role.

    Writes ``segmentation.seg.nrrd`` (one named, coloured segment per class with its terminology),
    ``uncertainty.nrrd`` (normalised entropy in [0, 1]), with ``settings.probabilities`` one
    ``probability_<n>.nrrd`` per class, ``preview.png`` and ``summary.json``, all on the input's grid;
    then the Slicer scene when ``scene`` asks for it (:func:`~.common.scene_wanted`). Needs no
    ``slicer`` otherwise. ``settings.model`` None means the default segmentation model.

    A brain model on a head runs through the brain front end (:mod:`latentdrift.frontend`): the brain
    mask is written too (``brain_mask.seg.nrrd``), ``summary.json`` records each step under
    ``front_end``, and the segmentation and uncertainty are zero outside the brain. ``head`` reuses a
    preparation of the same file (the demo's).
    """
    entry = choose_model(settings.model, "segment")
    with_scene = scene_wanted(scene)
    inputs = {"volume": str(input_path), "model": str(entry.path)}
    with ResultFolder(output, "segment", inputs, settings=asdict(settings), model=entry.name) as result:
        segmenter = load_segmenter(entry.path, settings.device)
        volume = read_volume(input_path)
        segmentation, prepared = segment_head(volume, segmenter, settings, progress, head)
        warnings = record_front_end(result, prepared)
        classes = segment_classes(segmenter.spec)
        write_segmentation_file(
            segmentation.labels, classes, result.path("segmentation", "segmentation.seg.nrrd")
        )
        write_volume(segmentation.entropy, result.path("uncertainty", "uncertainty.nrrd"))
        if settings.probabilities:
            for segment_class in classes:
                probability = volume.with_voxels(segmentation.probabilities[segment_class.label])
                write_volume(
                    probability, result.path("probability", f"probability_{segment_class.label}.nrrd")
                )
        _segmentation_preview(
            volume,
            segmentation,
            classes,
            settings,
            prepared.brain_mask,
            result.path("preview", "preview.png"),
        )
        result.figures.update(segmentation.figures)
        result.metadata["warnings"] = [*warnings, *segmentation.warnings]
        if with_scene:
            write_scene(
                result, [SceneLayer(volume, outputs_of(result, SEGMENT_ROLES))], foreground_opacity=0.0
            )
    return result.summary()


def segment_classes(spec: InputSpec) -> list[SegmentClass]:
    """The segments of a model's label values: every class but the background (0), colours in [0, 1]."""
    return [
        SegmentClass(index, c.name, tuple(v / 255.0 for v in c.color), c.terminology)  # type: ignore[arg-type]
        for index, c in enumerate(spec.classes)
        if index > 0
    ]


def _segmentation_preview(
    volume: Volume,
    segmentation: VolumeSegmentation,
    classes: Sequence[SegmentClass],
    settings: SegmentSettings,
    brain_mask: np.ndarray | None,
    path: Path,
) -> None:
    axis = segmentation.axis
    stack = extract_slices(volume, axis, settings.slices)
    labels = extract_slices(segmentation.labels, axis, settings.slices).slices
    entropy = extract_slices(segmentation.entropy, axis, settings.slices).slices
    outline = (
        None
        if brain_mask is None
        else extract_slices(volume.with_voxels(brain_mask), axis, settings.slices).slices
    )
    positions = pick_preview_slices(stack.count, outline=outline)
    panels = [
        Panel("input" if outline is None else "input, brain mask", stack.slices, outline=outline),
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


def ldseg_training(
    options: TrainLDSegSettings, output: str | Path
) -> tuple[LDSegConfig | None, TrainSettings]:
    """``(config, settings)`` of ``latentdrift train-ldseg`` for :func:`train_segmentation_model`.

    ``config``: the new model's (:meth:`~TrainLDSegSettings.architecture`), or None with
    ``options.init_from``, whose model's config is kept (:func:`fine_tuning_config` checks the classes
    given). The default batch size and the left-right flips follow the dimensions and axis of the model
    trained; checkpoints go to ``OUTPUT.checkpoints`` unless ``options.checkpoint_dir`` says otherwise.
    """
    if options.init_from is None:
        config = training_config(default_classes(options.class_names()), **options.architecture())
        trained = config
    else:
        config, trained = None, fine_tuning_config(options.init_from, options.class_names())
    settings = TrainSettings(
        steps=options.steps,
        batch_size=options.batch_size_for(trained.spatial_dims),
        learning_rate=options.learning_rate,
        lr_scheduler=options.lr_scheduler,
        reconstruction_weight=options.reconstruction_weight,
        augment=options.augment,
        flip_left_right=trained.axis != "sagittal",
        checkpoint_dir=options.checkpoint_dir or f"{Path(output).absolute()}.checkpoints",
        checkpoint_every=options.checkpoint_every,
        seed=options.seed,
        device=options.device,
        mixed_precision=options.mixed_precision,
    )
    return config, settings


def train_segmentation_model(
    data: str | Path,
    output: str | Path,
    config: LDSegConfig | None,
    settings: TrainSettings,
    validation_fraction: float = 0.2,
    progress: ProgressCallback | None = None,
    card_notes: str = "",
    start_from: str | Path | None = None,
    on_event: TrainingCallback | None = None,
) -> dict:
    """``latentdrift train-ldseg``: image/label volume pairs → an LDSeg model folder.

    Pairs are split by subject; validation Dice is measured each epoch; checkpoints go to
    ``settings.checkpoint_dir`` (resumable). The model folder (``config.json``, ``model.safetensors``,
    ``MODEL_CARD.md``, ``training.json``) appears only when training finishes. ``start_from`` (a model
    name or folder) fine-tunes that model: training starts from its weights, and ``config`` None takes
    its config (classes, architecture, sampler). ``progress`` gets ``(step, steps, "training")``;
    ``on_event`` every :data:`~latentdrift.core.progress.TrainingEvent` of the run (steps with their loss,
    epochs, checkpoints), e.g. a job's status lines.
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

        def report(event: TrainingEvent) -> None:
            if on_event is not None:
                on_event(event)
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
