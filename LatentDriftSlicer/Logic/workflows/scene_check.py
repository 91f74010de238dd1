"""``latentdrift scene``: the path every model run takes, without a model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..results import ResultFolder
from ..scene import SceneSession, load_volume_node, node_to_volume, show_in_slice_views, volume_to_node
from ..volumes import Axis, check_image_volume, extract_slices, reassemble
from .common import write_scene


def scene_roundtrip(
    inputs: Sequence[str | Path], output: str | Path, axis: Axis = "axial", slice_range: str | None = None
) -> dict:
    """Load volumes into a scene, cut each into slices along ``axis`` and put them back together.

    The proof of the path every model run takes (file → node → slices → node → saved scene): each
    reassembled volume must equal its input voxel for voxel on the same geometry. Writes
    ``scene.mrml`` with its data, ``scene.mrb``, each reassembled volume as NRRD, and
    ``summary.json``; returns the summary.
    """
    session = SceneSession.headless()
    with ResultFolder(
        output, "scene", {"volumes": [str(p) for p in inputs]}, axis=axis, slices=slice_range
    ) as result:
        first_node = None
        roles: dict[str, str] = {}
        for path in inputs:
            node = load_volume_node(session, path)
            volume = node_to_volume(node)
            check_image_volume(volume)
            stack = extract_slices(volume, axis, slice_range)
            voxels = reassemble(stack.slices, stack, volume, fill=volume.voxels)
            rebuilt = volume.with_voxels(voxels, name=f"{volume.name} reassembled")
            rebuilt_node = volume_to_node(session, rebuilt, rebuilt.name)
            roles.update({node.GetID(): "input", rebuilt_node.GetID(): "volume"})
            result.figures[volume.name] = {
                "slices": stack.count,
                "max_abs_difference": float(np.max(np.abs(voxels.astype(np.float64) - volume.voxels))),
            }
            if first_node is None:
                first_node = node
                show_in_slice_views(session, node, rebuilt_node, foreground_opacity=0.5)
        write_scene(session, result, roles)
    return result.summary()
