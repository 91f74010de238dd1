"""SIGINT and SIGTERM stop a run the same way: every temporary folder removed, nothing half-written.

The Slicer panel's Cancel sends SIGTERM to the engine's process tree; Python's default would end the
process without running any ``finally``, leaving every :class:`~latentdrift.core.results.ResultFolder`'s
temporary folder behind. Inside :func:`stop_on_signals` both signals raise :class:`RunInterrupted` in
the main thread instead, so they unwind like any error. An exception raised asynchronously can land
anywhere, so the handler holds it back where it would do harm:

* **Uncut sections** (:func:`uncut`: publishing a result, removing a temporary folder): raised when the
  section ends.
* **Imports**: an import cut half-way leaves a broken module behind (numpy then fails with a
  ``RecursionError``, not an interruption), so the signal is sent again :data:`REDELIVERY_S` later,
  until it lands outside any import.
* **Lost exceptions**: raised inside a ``__del__`` or a weakref callback, Python drops the exception and
  the run would go on. The signal is remembered (:class:`StopState`): the run checks it between batches
  and before publishing a result (:func:`raise_if_stopped`), and ``latentdrift``'s ``main`` reports any
  failure after a stop signal as the interruption it is. The dropped exception is not printed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
REDELIVERY_S = 0.05
"""Seconds after which a signal that landed inside an import is sent again."""
_IMPORT_MODULES = {"_frozen_importlib", "_frozen_importlib_external", "importlib._bootstrap"}


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run (see :func:`stop_on_signals`); ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class StopState:
    """What the handler knows in one :func:`stop_on_signals` block: the signal received (None: none yet),
    uncut sections open, a signal held back until they end, a redelivery pending."""

    received: int | None = None
    uncut: int = 0
    held: int | None = None
    redelivery: threading.Timer | None = None


_state = StopState()


def _stop(signum: int, frame: FrameType | None) -> None:
    """The handler of :data:`STOP_SIGNALS` (see the module docstring)."""
    _state.received = signum
    if _state.uncut:
        _state.held = signum
    elif _importing(frame):
        _redeliver(signum)
    else:
        raise RunInterrupted(signum)


def _importing(frame: FrameType | None) -> bool:
    """True while ``frame`` runs inside an import (a module's top-level code, the import system)."""
    while frame is not None:
        if frame.f_globals.get("__name__") in _IMPORT_MODULES or frame.f_code.co_filename.startswith(
            "<frozen importlib"
        ):
            return True
        frame = frame.f_back
    return False


def _redeliver(signum: int) -> None:
    """Send ``signum`` to this process again shortly (from a timer thread; the handler runs in the main one)."""
    if _state.redelivery is not None:
        _state.redelivery.cancel()
    _state.redelivery = threading.Timer(REDELIVERY_S, os.kill, (os.getpid(), signum))
    _state.redelivery.daemon = True
    _state.redelivery.start()


def _ignore_dropped_stop(unraisable: Any, previous: Any = sys.unraisablehook) -> None:
    """``sys.unraisablehook`` that keeps quiet about a :class:`RunInterrupted` Python had to drop."""
    if not isinstance(unraisable.exc_value, RunInterrupted):
        previous(unraisable)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopState]:
    """SIGINT and SIGTERM raise :class:`RunInterrupted` in the main thread while the block runs.

    Yields the block's :class:`StopState`, whose ``received`` names the signal that came (it stays set
    after the block, for the caller's report). Call from the main thread; the previous handlers come
    back after the block.
    """
    global _state
    _state = state = StopState()
    previous = {kind: signal.getsignal(kind) for kind in STOP_SIGNALS}
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: _ignore_dropped_stop(unraisable, hook)
    for kind in STOP_SIGNALS:
        signal.signal(kind, _stop)
    try:
        yield state
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)
        sys.unraisablehook = hook
        if state.redelivery is not None:
            state.redelivery.cancel()
        _state = StopState()


@contextlib.contextmanager
def uncut() -> Iterator[None]:
    """Hold back a stop signal while the block runs; raise :class:`RunInterrupted` after it."""
    state = _state
    state.uncut += 1
    try:
        yield
    finally:
        state.uncut -= 1
        if not state.uncut and state.held is not None:
            signum, state.held = state.held, None
            raise RunInterrupted(signum)


def raise_if_stopped() -> None:
    """Raise :class:`RunInterrupted` when a stop signal came (a checkpoint: its exception may have been lost)."""
    if _state.received is not None:
        raise RunInterrupted(_state.received)
