"""``latentdrift scene``: the path every model run takes, without a model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.results import ResultFolder
from ..core.settings import SCENE_DEFAULT, SceneChoice
from ..core.values import Axis
from ..core.volumes import check_image_volume, extract_slices, read_volume, reassemble, write_volume
from .common import SceneLayer, scene_wanted, write_scene


def scene_roundtrip(
    inputs: Sequence[str | Path],
    output: str | Path,
    axis: Axis = "axial",
    slice_range: str | None = None,
    scene: SceneChoice = SCENE_DEFAULT,
) -> dict:
    """Read volumes, cut each into slices along ``axis`` and put them back together.

    The proof of the path every model run takes (file → volume → slices → volume → result file, and
    the optional scene): each reassembled volume must equal its input voxel for voxel on the same
    geometry. Writes each reassembled volume as NRRD (role ``volume``) and ``summary.json``, then the
    Slicer scene of every input with its volume when ``scene`` asks for it; returns the summary.
    """
    with_scene = scene_wanted(scene)
    with ResultFolder(
        output, "scene", {"volumes": [str(p) for p in inputs]}, axis=axis, slices=slice_range
    ) as result:
        layers = []
        for number, path in enumerate(inputs, start=1):
            volume = read_volume(path)
            check_image_volume(volume)
            stack = extract_slices(volume, axis, slice_range)
            voxels = reassemble(stack.slices, stack, volume, fill=volume.voxels)
            rebuilt = volume.with_voxels(voxels, name=f"{volume.name} reassembled")
            name = f"volume_{number}.nrrd"
            write_volume(rebuilt, result.path("volume", name))
            layers.append(SceneLayer(volume, {"volume": [name]}))
            result.figures[volume.name] = {
                "slices": stack.count,
                "max_abs_difference": float(np.max(np.abs(voxels.astype(np.float64) - volume.voxels))),
            }
        if with_scene:
            write_scene(result, layers, foreground_opacity=0.5)
    return result.summary()
