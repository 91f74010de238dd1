"""What a fine-tuned model folder says about itself: ``latentdrift.json`` and ``MODEL_CARD.md``.

``latentdrift.json`` sits beside ``model_index.json`` (or an LDSeg model's ``config.json``)::

    {"format": "latentdrift-finetune", "scheme": "lora", "base_model": "...", "cohort": "...",
     "cohort_key": "...", "steps": 2000, "drift": 0.05, "drift_start": true,
     "drift_curve": {...} | null, "prompt_options": {...}, "tokens": {...}, "losses": {...}}

``drift`` is the δ to sample the model with (the trained δ, or the searched one); ``drift_start``
says whether sampling should start from ``N(δ, I)`` (models trained with drift).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METADATA = "latentdrift.json"
FORMAT = "latentdrift-finetune"


def read_metadata(folder: Path) -> dict[str, Any]:
    """The model folder's ``latentdrift.json`` (empty when absent)."""
    path = folder / METADATA
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}


def recorded_drift(folder: Path) -> tuple[float | tuple[float, ...], bool]:
    """The δ to sample a model with and whether to start from N(δ, I), from its ``latentdrift.json``.

    ``(0.0, False)`` when the folder records no δ.
    """
    metadata = read_metadata(folder)
    drift = metadata.get("drift")
    if drift is None:
        return 0.0, False
    value = tuple(float(v) for v in drift) if isinstance(drift, list) else float(drift)
    return value, bool(metadata.get("drift_start", False))


def recorded_guidance(folder: Path) -> float | None:
    """The text guidance to sample a model with, from its ``latentdrift.json`` (None when it records none)."""
    value = read_metadata(folder).get("guidance")
    return None if value is None else float(value)


def update_metadata(folder: Path, **fields: Any) -> Path:
    """Merge ``fields`` into ``latentdrift.json`` (created when absent)."""
    path = folder / METADATA
    path.write_text(
        json.dumps({"format": FORMAT, **read_metadata(folder), **fields}, indent=2, default=str) + "\n",
        encoding="utf-8",
    )
    return path
