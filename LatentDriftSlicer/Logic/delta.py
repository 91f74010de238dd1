"""The Latent Drift δ as a value: its type, its bounds and its parsing from text.

Light on purpose (no torch): the settings, the command line and the panel check δ here; :mod:`.drift`
applies it to latents. Kept apart from :mod:`.settings` so that :mod:`.drift` and the edit planners
need nothing of the settings schema at run time.
"""

from __future__ import annotations

import math

from .errors import ParameterError

Drift = float | tuple[float, ...]
"""Latent Drift δ: one number, or one per latent channel (see :mod:`latentdrift.drift`)."""

DRIFT_LIMIT = 1.0
"""The largest |δ| accepted, five times the paper's range (−0.2 … 0.2): far beyond it every latent is pushed
out of the VAE's range at each step, and a counterfactual comes out identical to its factual edit."""


def validate_drift(delta: Drift, channels: int | None = None) -> None:
    """Raise :class:`ParameterError` unless δ is finite, within ±:data:`DRIFT_LIMIT` and (per-channel) has
    ``channels`` values."""
    values = (delta,) if isinstance(delta, int | float) else tuple(delta)
    if not values or not all(math.isfinite(value) for value in values):
        raise ParameterError(
            f"Drift {delta} is not a finite number: use e.g. 0.05 (the paper uses -0.2 to 0.2)."
        )
    if any(abs(value) > DRIFT_LIMIT for value in values):
        raise ParameterError(
            f"Drift {delta} is outside -{DRIFT_LIMIT:g} to {DRIFT_LIMIT:g}: use e.g. 0.05 "
            "(the paper uses -0.2 to 0.2; far larger drifts leave the image unchanged)."
        )
    if len(values) > 1 and channels is not None and len(values) != channels:
        raise ParameterError(
            f"Per-channel drift has {len(values)} values but the model's latents have {channels} channels: "
            f"give {channels} values or a single number."
        )


def parse_drift(text: str) -> Drift:
    """``"0.05"`` → 0.05; ``"0.05,0,0,-0.02"`` → a per-channel drift (one value per latent channel)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ParameterError(
            f"Cannot read drift '{text}': give one number (e.g. 0.05) or one per latent channel "
            "separated by commas (e.g. 0.05,0,0,-0.02)."
        ) from None
    return values[0] if len(values) == 1 else values
