"""Rules for single values that every layer checks: the slice axes and slice ranges, seeds, batch sizes,
steps, the neighbour blend, class names, the Latent Drift δ (its type, bound and parsing from text) and the largest
slice side a model may work at.

Light on purpose (no torch). Kept apart from :mod:`.settings` (the schema of whole runs, which knows
the edit modes and the default models) so that :mod:`.drift`, the edit planners and the networks need
nothing of the schema at run time: the schema depends on them, never the other way round.
"""

from __future__ import annotations

import math
from typing import Literal

from .errors import ParameterError, SliceRangeError

MAX_RESOLUTION = 2048
"""The largest slice side (pixels) a model may work or be trained at: beyond it a model config or an option
is taken for a mistake (a UNet ``sample_size`` of 3000 computed for minutes, 100000 asked for 596 GiB)."""
Drift = float | tuple[float, ...]
"""Latent Drift δ: one number, or one per latent channel (see :mod:`latentdrift.counterfactual.drift`)."""

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


Axis = Literal["axial", "coronal", "sagittal"]
AXES: tuple[Axis, ...] = ("axial", "coronal", "sagittal")
"""The anatomical slice axes (how volumes are cut along them: :mod:`latentdrift.core.volumes`)."""


def parse_class_names(text: str | None) -> list[str]:
    """Segmentation class names from ``"background,CSF,GM,WM"`` (blanks dropped; none or empty: ``[]``)."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


STEPS_RANGE = (1, 1000)
"""Sampling steps a run may take."""


MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
"""Training precisions: ``auto`` is fp16 on CUDA and off elsewhere (:func:`latentdrift.core.devices.training_accelerator`)."""


def check_mixed_precision(precision: str) -> None:
    """Raise :class:`ParameterError` unless ``precision`` is one of :data:`MIXED_PRECISION`."""
    if precision not in MIXED_PRECISION:
        raise ParameterError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}.")


def check_seed(seed: int) -> None:
    """Raise :class:`ParameterError` unless ``seed`` is a seed every command takes: 0 to 2^63 − 1."""
    if not 0 <= seed < 2**63:
        raise ParameterError(f"seed={seed} is outside 0 to 2^63-1: use a non-negative integer.")


def check_batching(batch_size: int | None, workers: int | None) -> None:
    """Raise :class:`ParameterError` for a batch size or a worker count below 1 (None: chosen by device)."""
    if batch_size is not None and batch_size < 1:
        raise ParameterError(f"batch_size={batch_size}: use 1 or more slices per batch.")
    if workers is not None and workers < 1:
        raise ParameterError(f"workers={workers}: use 1 or more, or leave it out to choose by device.")


def check_steps(steps: int | None) -> None:
    """Raise :class:`ParameterError` unless ``steps`` (None: the model's) is 1 to 1000 sampling steps."""
    if steps is not None and not STEPS_RANGE[0] <= steps <= STEPS_RANGE[1]:
        raise ParameterError(f"steps={steps} is outside 1–1000: use e.g. 50.")


def check_blend(blend: float) -> None:
    """Raise :class:`ParameterError` unless the neighbour blend weight is in [0, 1)."""
    if not 0.0 <= blend < 1.0:
        raise ParameterError(f"blend={blend} is outside [0, 1): use 0 (off) to e.g. 0.5.")


def check_axis(axis: str | None) -> None:
    """Raise :class:`ParameterError` unless ``axis`` is one of :data:`AXES` (None: the model's)."""
    if axis is not None and axis not in AXES:
        raise ParameterError(f"Unknown slice axis '{axis}': use axial, coronal or sagittal.")


def slice_bounds(text: str | None) -> tuple[int, int | None]:
    """``"a:b"`` (Python-style, end excluded, either side optional; ``"a"`` alone: slice a) → ``(a, b)``,
    ``b`` None for "to the end"; ``None`` or ``""`` → ``(0, None)``, every slice.

    Raises :class:`SliceRangeError` for text that is not a range and for a range that is empty, reversed
    or negative whatever the volume (``"5:2"``); :func:`latentdrift.core.volumes.parse_slice_range` checks
    the end against the volume.
    """
    if not text:
        return 0, None
    start_text, colon, stop_text = text.partition(":")
    try:
        start = int(start_text) if start_text.strip() else 0
        stop = (int(stop_text) if stop_text.strip() else None) if colon else start + 1
    except ValueError:
        raise SliceRangeError(f"Slice range '{text}' is not 'a:b' with whole numbers.") from None
    if start < 0 or (stop is not None and stop <= start):
        first = max(start, 0)
        raise SliceRangeError(
            f"Slice range '{text}' is empty, reversed or negative: give 'a:b' with 0 ≤ a < b (b excluded), "
            f"e.g. '{first}:{first + 1}' for one slice."
        )
    return start, stop
