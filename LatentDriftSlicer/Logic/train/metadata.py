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


def update_metadata(folder: Path, **fields: Any) -> Path:
    """Merge ``fields`` into ``latentdrift.json`` (created when absent)."""
    path = folder / METADATA
    path.write_text(
        json.dumps({"format": FORMAT, **read_metadata(folder), **fields}, indent=2, default=str) + "\n",
        encoding="utf-8",
    )
    return path


def model_card(metadata: dict[str, Any], report: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` of a fine-tuned model from its metadata and cohort report."""
    losses = metadata.get("losses") or {}
    curve = metadata.get("drift_curve")
    lines = [
        f"# Fine-tuned model ({metadata['scheme']})",
        "",
        "Made by `latentdrift finetune` (LatentDriftSlicer). Trained on a local cohort: check the cohort "
        "report below before using it, and do not use it for diagnosis.",
        "",
        "| | |",
        "|---|---|",
        f"| scheme | {metadata['scheme']} |",
        f"| base model | `{metadata.get('base_model')}` |",
        f"| cohort | `{metadata.get('cohort')}` (key `{metadata.get('cohort_key')}`) |",
        f"| rows used / total | {report.get('rows_used')} / {report.get('rows_total')} |",
        f"| subjects / slices | {report.get('subjects')} / {report.get('slices')} |",
        f"| steps | {metadata.get('steps')} |",
        f"| Latent Drift δ | {metadata.get('drift')} (trained with δ: {metadata.get('trained_drift')}) |",
        f"| loss first / last / final mean | {_fmt(losses.get('first'))} / {_fmt(losses.get('last'))} / "
        f"{_fmt(losses.get('final_mean'))} |",
    ]
    for name, value in (metadata.get("tokens") or {}).items():
        lines.append(f"| {name} | `{value}` |")
    if curve:
        lines += [
            "",
            f"δ search ({curve['criterion']}, {curve['samples']} samples, {curve['steps']} steps):",
            "",
        ]
        lines += ["| δ | L1 mean image | L1 nearest |", "|---|---|---|"]
        lines += [
            f"| {p['delta']:g} | {p['mean_image_l1']:.4f} | {p['nearest_l1']:.4f} |" for p in curve["points"]
        ]
    problems = report.get("problems") or []
    if problems:
        lines += ["", f"{len(problems)} cohort row(s) were skipped; see `cohort_report.md`."]
    lines += ["", "Loss curve: `loss_curve.png`. Sampling: use δ above with a DDIM or DDPM scheduler."]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{float(value):.4f}"
