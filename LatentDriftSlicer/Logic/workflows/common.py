"""Pieces every workflow shares."""

from __future__ import annotations

from ..results import ResultFolder
from ..scene import SceneSession, save_scene


def write_scene(session: SceneSession, result: ResultFolder, roles: dict[str, str]) -> None:
    """Save the scene as .mrml (+ data, recorded by role) and as a single-file .mrb."""
    for node_id, file_name in save_scene(session, result.path("scene", "scene.mrml")).items():
        result.record(roles.get(node_id, "data"), file_name)
    save_scene(session, result.path("scene_bundle", "scene.mrb"))
