"""Progress reporting for long work: a terminal bar, and structured lines for GUIs.

Engine functions take an optional ``progress`` callable ``(done, total, message) -> None``.
:class:`Progress` is the standard one: it drives a tqdm bar in a terminal and, when asked (the
CLI's ``--progress-json``, used by the Slicer module), prints one JSON object per update on stdout::

    {"event": "progress", "done": 12, "total": 180, "fraction": 0.0667, "message": "segmenting", "eta_s": 41.2}

Lines are throttled to at most ``max_rate`` per second (a task's first and last updates are always printed).

Training runs (every fine-tuning scheme and LDSeg) report :class:`TrainingEvent` dicts instead, one
per optimizer step with its loss, to a :data:`TrainingCallback`; a job turns them into its status lines
(:class:`latentdrift.finetune.job_folder.StatusLines`), which the panel's loss chart plots.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm.auto import tqdm

ProgressCallback = Callable[[int, int, str], None]
"""``(done, total, message)``: how far a piece of work is."""

CountCallback = Callable[[int, int], None]
"""``(done, total)``: items of a batch run done so far; a :data:`ProgressCallback` less its message."""


TrainingEvent = dict[str, Any]
"""What a training run reports, for every scheme alike (a plain dict, to be stored as JSON as it is).

``"kind": "step"``: after every optimizer step, ``step`` of ``steps`` (1-based) with its ``loss`` (mean
over the step's batch and over processes), ``epoch`` and learning rate ``lr``, and ``sample_image`` (a
path relative to the job folder) when the step saved one; a loss of several terms adds them as
``loss_<term>`` (LDSeg: ``loss_segmentation``, ``loss_noise``, ``loss_reconstruction``).
``"kind": "epoch"``: the end of an epoch (LDSeg), with ``step``, mean losses and, with validation
data, ``dice`` and ``mean_dice``. ``"kind": "checkpoint"``: a checkpoint of ``step`` was written to
``path``.
"""

TrainingCallback = Callable[[TrainingEvent], None]
"""Receives a run's :class:`TrainingEvent` dicts; raising from it stops the run (the last checkpoint stays)."""

PROGRESS_EVENT = "progress"


def emit_event(event: str, stream: TextIO | None = None, **fields: Any) -> None:
    """Print one structured line ``{"event": event, **fields}`` and flush it."""
    stream = stream or sys.stdout
    stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
    stream.flush()


class Progress:
    """A progress callback with a tqdm bar (unless ``quiet``) and optional JSON lines."""

    def __init__(self, quiet: bool = False, json_lines: bool = False, max_rate: float = 4.0) -> None:
        self.quiet = quiet
        self.json_lines = json_lines
        self.min_interval = 1.0 / max_rate
        self._bar: Any = None
        self._task: tuple[str, int] | None = None
        self._first_done = 0
        self._started = time.monotonic()
        self._last_emit = -float("inf")

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if (message, total) != self._task:
            self._restart(total, message, done)
        if self._bar is not None:
            self._bar.n = done
            self._bar.refresh()
        now = time.monotonic()
        if self.json_lines and (done >= total or now - self._last_emit >= self.min_interval):
            self._last_emit = now
            progressed = done - self._first_done  # a resumed run starts part-way: time only what this run did
            eta = (now - self._started) / progressed * (total - done) if progressed > 0 else None
            fraction = round(done / total, 4) if total else 0.0
            emit_event(PROGRESS_EVENT, done=done, total=total, fraction=fraction, message=message, eta_s=eta)
        if done >= total:
            self.close()
            self._task = None

    def _restart(self, total: int, message: str, done: int) -> None:
        self.close()
        self._task = (message, total)
        self._first_done = done
        self._started = time.monotonic()
        # a new task's first update is always printed, so a GUI learns its message
        self._last_emit = -float("inf")
        if not self.quiet and not self.json_lines:
            # initial: the rate counts only what this bar saw done, not work finished before it started
            self._bar = tqdm(total=total, initial=done, desc=message or None, leave=False, dynamic_ncols=True)

    def close(self) -> None:
        """End the current bar (safe to call twice)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
