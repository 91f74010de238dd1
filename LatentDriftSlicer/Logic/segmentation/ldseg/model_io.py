"""LDSeg model folders: ``config.json`` + ``model.safetensors`` + ``MODEL_CARD.md``.

``config.json`` holds ``format``, ``format_version`` and every :class:`LDSegConfig` key (classes with
names, colours and terminology codes; architecture; schedule; axis; intensity normalisation; training
resolution; ``spatial_dims``, 2 when absent). ``model.safetensors`` holds the state dict of :class:`LDSegNetwork`, the denoiser with its
EMA weights. Weights are only ever read from safetensors: pickled checkpoints are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ...core.atomic_files import write_bytes_atomic, write_json_atomic, write_text_atomic
from ...core.devices import check_memory, resolve_device
from ...core.errors import ModelError, ParameterError
from ...core.model_formats import LDSEG_FORMAT
from ...evaluation.model_cards import ldseg_card
from .network import LDSegConfig, LDSegNetwork

FORMAT = LDSEG_FORMAT
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "MODEL_CARD.md"
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def save_ldseg_model(
    model: LDSegNetwork, folder: str | os.PathLike[str], card_text: str | None = None
) -> Path:
    """Write ``model`` (its current weights: give it the EMA denoiser) to ``folder`` and return the path.

    ``card_text`` is the Markdown model card; when ``None`` a short card is generated from the config.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    write_bytes_atomic(folder / WEIGHTS_FILE, save(tensors, metadata=metadata))
    write_json_atomic(folder / CONFIG_FILE, config_document(model.config))
    card = ldseg_card(model) if card_text is None else card_text
    write_text_atomic(folder / CARD_FILE, card)
    return folder


def config_document(config: LDSegConfig) -> dict[str, Any]:
    """The content of ``config.json`` for ``config``."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **config.to_dict()}


def read_config(folder: str | os.PathLike[str]) -> LDSegConfig:
    """Read and validate ``folder/config.json``; :class:`ModelError` explains what is wrong."""
    return _read_config_document(folder)[0]


def _read_config_document(folder: str | os.PathLike[str]) -> tuple[LDSegConfig, int]:
    """The validated config of ``folder`` and its ``format_version``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"LDSeg model folder '{folder}' does not exist (or is not a folder).")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"'{folder}' is not an LDSeg model folder: it has no {CONFIG_FILE}.")
    document = read_json_object(path, ModelError)
    _check_format(path, document)
    settings = {k: v for k, v in document.items() if k not in ("format", "format_version")}
    try:
        return LDSegConfig.from_dict(settings), document["format_version"]
    except ParameterError as error:
        raise ModelError(f"{path}: {error}") from error


def _check_format(path: Path, document: dict[str, Any]) -> None:
    """Refuse a config of another format or a newer format version."""
    if document.get("format") != FORMAT:
        raise ModelError(f"{path}: key 'format' must be '{FORMAT}', got {document.get('format')!r}.")
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise ModelError(
            f"{path}: key 'format_version' is {version!r}; this version of LatentDriftSlicer reads "
            f"versions 1 to {FORMAT_VERSION} (update LatentDriftSlicer for newer models)."
        )


def load_ldseg_model(folder: str | os.PathLike[str], device: torch.device | str = "cpu") -> LDSegNetwork:
    """Load the model in ``folder`` onto ``device`` (``auto|cpu|cuda[:N]|mps`` or a device), in eval mode.

    Raises :class:`ModelError` for a missing folder, missing or pickled-only weights, an invalid
    ``config.json`` (naming the key), a resolution whose activations do not fit in the device's memory
    (:func:`latentdrift.core.devices.check_memory`) or weights that do not match the config.
    """
    config = read_config(folder)
    target = device if isinstance(device, torch.device) else resolve_device(device)
    size = "×".join([str(config.image_size)] * config.spatial_dims)
    check_memory(target, config.activation_bytes, f"The LDSeg model '{folder}' at {size}")
    weights = _read_weights(Path(folder))
    model = LDSegNetwork(config)
    _check_weights_fit(Path(folder), model, weights)
    model.load_state_dict(weights, strict=True)
    return model.to(target).eval()


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Tensors of ``folder/model.safetensors`` on the CPU; never unpickles anything."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLED_SUFFIXES)
        hint = (
            f" It holds {', '.join(pickled)}: pickled weights are refused because loading them can run "
            "arbitrary code; convert them to safetensors with the tool that made them."
            if pickled
            else ""
        )
        raise ModelError(f"LDSeg model folder '{folder}' has no {WEIGHTS_FILE}.{hint}")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise ModelError(f"{path} is not a readable safetensors file: {error}.") from error


def _check_weights_fit(folder: Path, model: LDSegNetwork, weights: dict[str, torch.Tensor]) -> None:
    """Raise :class:`ModelError` listing the first mismatches between ``weights`` and ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = [
        f"{name} {tuple(weights[name].shape)} instead of {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in weights and weights[name].shape != tensor.shape
    ]
    problems = [
        f"{label}: {', '.join(items[:3])}{' …' if len(items) > 3 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
        if items
    ]
    if problems:
        raise ModelError(
            f"The weights in '{folder / WEIGHTS_FILE}' do not match its {CONFIG_FILE} "
            f"({'; '.join(problems)}): the two files come from different models."
        )


def model_info(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Cheap facts about a model folder (reads ``config.json`` only; the weights are not opened)."""
    folder = Path(folder)
    config, version = _read_config_document(folder)
    weights = folder / WEIGHTS_FILE
    return {
        "folder": str(folder),
        "format_version": version,
        "classes": [{"value": i, **c} for i, c in enumerate(config.to_dict()["classes"])],
        "num_classes": config.num_classes,
        "image_size": config.image_size,
        "spatial_dims": config.spatial_dims,
        "axis": config.axis,
        "intensity_percentiles": list(config.intensity_percentiles),
        "intensity_range": list(config.intensity_range),
        "sampling_steps": config.sampling_steps,
        "first_timestep": config.first_timestep,
        "has_weights": weights.is_file(),
        "weights_bytes": weights.stat().st_size if weights.is_file() else 0,
        "has_card": (folder / CARD_FILE).is_file(),
    }


def read_json_object(path: Path, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in ``path`` (a model's or a checkpoint's); ``error`` saying what is wrong otherwise."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise error(f"{path} is not valid JSON: {problem}.") from problem
    if not isinstance(document, dict):
        raise error(f"{path} must hold a JSON object.")
    return document
