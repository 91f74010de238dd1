"""The model registry: bundled default models plus the user's own model folders.

A model is a folder. Two kinds are recognised without loading any weights:

* ``ldseg``: an LDSeg segmentation model (``config.json`` with ``"format": "latentdrift-ldseg"``);
* ``stable-diffusion`` / ``instruct-pix2pix``: a diffusers-format pipeline folder (``model_index.json``).

Folders are searched in: the bundled ``bundled_models/`` inside the engine, every folder listed in the
``LATENTDRIFT_MODELS`` environment variable (``os.pathsep``-separated), and ``~/.latentdrift/models``.
Each search folder may be a model itself or hold model folders one level down.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

LDSEG_FORMAT = "latentdrift-ldseg"
"""The ``format`` value of an LDSeg model's config.json (written by :mod:`latentdrift.ldseg.model_io`)."""
BUNDLED_MODELS = Path(__file__).resolve().parent / "bundled_models"
USER_MODELS = Path.home() / ".latentdrift" / "models"


@dataclass(frozen=True)
class ModelEntry:
    """A model folder found by the registry."""

    name: str
    kind: str
    path: Path
    bundled: bool


def search_folders() -> list[Path]:
    """Where models are looked for, in order."""
    extra = [Path(p).expanduser() for p in os.environ.get("LATENTDRIFT_MODELS", "").split(os.pathsep) if p]
    return [BUNDLED_MODELS, *extra, USER_MODELS]


def model_kind(folder: Path) -> str | None:
    """``ldseg``, ``stable-diffusion``, ``instruct-pix2pix`` or None when ``folder`` is not a model."""
    index = folder / "model_index.json"
    if index.is_file():
        try:
            pipeline = json.loads(index.read_text()).get("_class_name", "")
        except (OSError, json.JSONDecodeError):
            return None
        return "instruct-pix2pix" if "InstructPix2Pix" in pipeline else "stable-diffusion"
    config = folder / "config.json"
    if config.is_file():
        try:
            return "ldseg" if json.loads(config.read_text()).get("format") == LDSEG_FORMAT else None
        except (OSError, json.JSONDecodeError):
            return None
    return None


def list_models() -> list[ModelEntry]:
    """Every model in the search folders (a name seen twice keeps its first, bundled-first, entry)."""
    found: dict[str, ModelEntry] = {}
    for root in search_folders():
        if not root.is_dir():
            continue
        candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
        for folder in candidates:
            kind = model_kind(folder)
            if kind is not None and folder.name not in found:
                found[folder.name] = ModelEntry(folder.name, kind, folder, root == BUNDLED_MODELS)
    return list(found.values())


def resolve_model(name_or_path: str | Path, kinds: tuple[str, ...]) -> ModelEntry:
    """A model by folder path or registry name, checked to be one of ``kinds``.

    Raises :class:`ModelError` naming the models that are available when nothing matches.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        kind = model_kind(path)
        if kind is None:
            raise ModelError(
                f"'{path}' is not a model folder: expected config.json (LDSeg) or model_index.json (diffusers)."
            )
        entry = ModelEntry(path.name, kind, path, False)
    else:
        matches = [m for m in list_models() if m.name == str(name_or_path)]
        if not matches:
            names = ", ".join(m.name for m in list_models() if m.kind in kinds) or "none"
            raise ModelError(
                f"No model named '{name_or_path}'. Available: {names}. Or give a model folder path."
            )
        entry = matches[0]
    if entry.kind not in kinds:
        raise ModelError(
            f"Model '{entry.name}' is a {entry.kind} model; this task needs: {', '.join(kinds)}."
        )
    return entry
