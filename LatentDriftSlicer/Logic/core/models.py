"""The model registry: bundled default models plus the user's own model folders.

A model is a folder. Its kind is recognised without loading any weights:

* a segmentation model of a kind in :mod:`latentdrift.segmentation.segmenters` (``ldseg``: ``config.json`` with
  ``"format": "latentdrift-ldseg"``), which the ``segment`` task accepts;
* ``stable-diffusion`` / ``instruct-pix2pix``: a diffusers-format pipeline folder (``model_index.json``).

Folders are searched in: the bundled ``bundled_models/`` inside the engine, every folder listed in the
``LATENTDRIFT_MODELS`` environment variable (``os.pathsep``-separated), and ``~/.latentdrift/models``.
Each search folder may be a model itself or hold model folders one level down.

Each task has a default model (:data:`DEFAULT_MODELS`), used when no model is given:
:func:`choose_model` resolves a given model or the task's default. A folder named in
``LATENTDRIFT_DEFAULT_MODELS`` is searched for the default models before the registry, so a site (or a
test) can put its own copies of ``brain-mri-instruct`` and the others in front of the bundled ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..counterfactual.modes import REGISTRY
from ..segmentation.segmenters import segmenter_kind, segmenter_kinds
from .errors import ModelError, ParameterError

BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "bundled_models"
USER_MODELS = Path.home() / ".latentdrift" / "models"
DEFAULT_MODELS_ENV = "LATENTDRIFT_DEFAULT_MODELS"
"""Environment variable naming a folder searched first for the default models (by their names)."""


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
    """``stable-diffusion``, ``instruct-pix2pix``, a segmentation kind (``ldseg``…) or None when ``folder`` is not a model."""
    index = folder / "model_index.json"
    if index.is_file():
        try:
            pipeline = json.loads(index.read_text()).get("_class_name", "")
        except (OSError, json.JSONDecodeError):
            return None
        return "instruct-pix2pix" if "InstructPix2Pix" in pipeline else "stable-diffusion"
    return segmenter_kind(folder)


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
    return _checked(entry, kinds)


def _checked(entry: ModelEntry, kinds: tuple[str, ...]) -> ModelEntry:
    """``entry`` when it is one of ``kinds``; else :class:`ModelError`."""
    if entry.kind not in kinds:
        raise ModelError(
            f"Model '{entry.name}' is a {entry.kind} model; this task needs: {', '.join(kinds)}."
        )
    return entry


# --------------------------------------------------------------------------- default models


@dataclass(frozen=True)
class DefaultModel:
    """The model a task uses when none is given: its name, the kinds that fit, how to get it."""

    name: str
    kinds: tuple[str, ...]
    remedy: str


_GENERATIVE_REMEDY = "train it with `python scripts/train_default_generative.py`"
DEFAULT_MODELS: dict[str, DefaultModel] = {
    **{
        mode.name: DefaultModel(
            mode.default_model,
            ("instruct-pix2pix",) if mode.instruct_model else ("stable-diffusion",),
            _GENERATIVE_REMEDY,
        )
        for mode in REGISTRY.values()
    },
    "segment": DefaultModel(
        "brain-tissue-ldseg", segmenter_kinds(), "train it with `python scripts/train_default_ldseg.py`"
    ),
    "finetune": DefaultModel("mini-sd-natural", ("stable-diffusion", "instruct-pix2pix"), _GENERATIVE_REMEDY),
}
"""The default model per task: each edit mode's (its ``default_model``, :mod:`latentdrift.counterfactual.modes`),
``segment`` and ``finetune`` (the base model fine-tuning starts from)."""


def _default_for(task: str) -> DefaultModel:
    if task not in DEFAULT_MODELS:
        raise ParameterError(
            f"Unknown task '{task}': the tasks with a default model are {', '.join(DEFAULT_MODELS)}."
        )
    return DEFAULT_MODELS[task]


def find_default(task: str) -> ModelEntry | None:
    """The default model of ``task`` if it is installed, else None (see :func:`default_model`).

    Looked for in the ``LATENTDRIFT_DEFAULT_MODELS`` folder first, then in the registry; a model of
    that name that does not fit the task raises :class:`ModelError`.
    """
    default = _default_for(task)
    for folder in _override_folders():
        if model_kind(folder / default.name) is not None:
            return resolve_model(folder / default.name, default.kinds)
    found = next((m for m in list_models() if m.name == default.name), None)
    return None if found is None else _checked(found, default.kinds)


def default_model(task: str) -> ModelEntry:
    """The default model of ``task``; raises :class:`ModelError` saying how to get it when it is missing."""
    entry = find_default(task)
    if entry is None:
        default = _default_for(task)
        raise ModelError(
            f"The default {task} model '{default.name}' is not installed (searched "
            f"{', '.join(str(p) for p in [*_override_folders(), *search_folders()])}): {default.remedy}, "
            "or pass --model NAME|DIR."
        )
    return entry


def _override_folders() -> list[Path]:
    """The ``LATENTDRIFT_DEFAULT_MODELS`` folder, when set."""
    override = os.environ.get(DEFAULT_MODELS_ENV)
    return [Path(override).expanduser()] if override else []


def choose_model(model: str | Path | None, task: str) -> ModelEntry:
    """``model`` (registry name or folder) checked to fit ``task``, or the task's default when None."""
    return default_model(task) if model is None else resolve_model(model, _default_for(task).kinds)
