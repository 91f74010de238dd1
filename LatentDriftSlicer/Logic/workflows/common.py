"""Pieces every workflow shares: the optional Slicer scene written as the last step of a command."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.errors import ParameterError
from ..core.results import ResultFolder
from ..core.settings import SCENE_CHOICES, SceneChoice
from ..core.volumes import Volume, write_volume

if TYPE_CHECKING:
    from ..frontend.head import PreparedHead


@dataclass(frozen=True)
class SceneLayer:
    """An input volume and its result files by role (names in the result folder), shown over it."""

    volume: Volume
    outputs: dict[str, list[str]]


def scene_wanted(choice: SceneChoice) -> bool:
    """Whether to write the scene: ``yes``, ``no``, or ``auto`` (when Slicer's MRML core is importable).

    ``yes`` where the scene cannot be written raises :class:`~latentdrift.core.errors.ParameterError`, so
    a command says so before any work.
    """
    if choice not in SCENE_CHOICES:
        raise ParameterError(f"Unknown scene choice '{choice}': use {', '.join(SCENE_CHOICES)}.")
    if choice == "no":
        return False
    from ..bridge.scene import headless_unavailable

    reason = headless_unavailable()
    if reason is not None and choice == "yes":
        raise ParameterError(f"Cannot write the Slicer scene: {reason}. Use --scene auto or no.")
    return reason is None


def record_front_end(result: ResultFolder, head: PreparedHead) -> list[str]:
    """The brain front end's part of a result: its steps in ``summary.json`` (``front_end``) and the brain
    mask as ``brain_mask.seg.nrrd`` (role ``brain_mask``, one segment "Brain"); returns its warnings."""
    from ..frontend.head import BRAIN_SEGMENT
    from ..segmentation.seg_files import write_segmentation_file

    mask = head.brain_mask_volume()
    if mask is not None:
        write_segmentation_file(mask, [BRAIN_SEGMENT], result.path("brain_mask", "brain_mask.seg.nrrd"))
    if head.active:
        result.metadata["front_end"] = head.record()
    return list(head.warnings)


def outputs_of(result: ResultFolder, roles: Sequence[str]) -> dict[str, list[str]]:
    """The files ``result`` recorded under ``roles`` so far (roles with no file are left out)."""
    return {role: list(result.outputs[role]) for role in roles if role in result.outputs}


def write_scene(result: ResultFolder, layers: Sequence[SceneLayer], foreground_opacity: float) -> None:
    """Save the inputs and their result files as a Slicer scene: ``scene.mrml`` beside the files, ``scene.mrb``.

    Each input is written as ``input.nrrd`` (``input_2.nrrd``, …; role ``input``); its result files are
    loaded over it the way the Slicer panel loads them (:func:`latentdrift.bridge.scene.load_outputs`), and
    the scene refers to those files rather than writing them again. The slice views show the first
    input with its foreground result at ``foreground_opacity``. Needs Slicer's MRML core
    (:func:`scene_wanted` says whether it is there).
    """
    from ..bridge.scene import (
        OutputFiles,
        SceneSession,
        link_to_files,
        load_outputs,
        load_volume_node,
        save_scene,
    )

    session = SceneSession.headless()
    names = ["input.nrrd", *(f"input_{number}.nrrd" for number in range(2, len(layers) + 1))]
    paths = [
        write_volume(layer.volume, result.path("input", name))
        for layer, name in zip(layers, names, strict=True)
    ]
    for layer, path in reversed(
        list(zip(layers, paths, strict=True))
    ):  # the first input is shown last: it stays shown
        input_node = load_volume_node(session, path, layer.volume.name)
        files = OutputFiles(result.staging, layer.outputs, input_node, layer.volume)
        link_to_files(load_outputs(session, files, list(layer.outputs), foreground_opacity), files)
    save_scene(session, result.path("scene", "scene.mrml"))
    save_scene(session, result.path("scene_bundle", "scene.mrb"))
