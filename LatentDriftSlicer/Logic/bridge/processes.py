"""Run ``latentdrift`` commands in a separate process and follow their structured progress.

The Slicer module never runs models in its own process: a child process does the work and prints
``--progress-json`` lines (see :mod:`.progress`), so the GUI stays responsive and a cancel really
frees the GPU. The pieces, none of which needs Qt:

* :func:`engine_command` builds the child's command line (:func:`engine_python` for other code, such
  as the self-test's model building). The child loads the engine from the same folder as this file
  (registered as ``latentdrift``, exactly as the Slicer module does), so it works in a pip install
  and inside Slicer, where ``PythonSlicer`` runs it.
* :func:`parse_line` turns one output line into an event; :class:`RunState` collects the outcome
  (the ``result`` event's summary, an ``error`` event, the last lines of the log) and turns it into
  a summary or a :class:`~.errors.LatentDriftError` once the exit status is known.
* :class:`EngineProcess` starts the child with reader threads feeding a queue: :meth:`~EngineProcess.poll`
  returns new events without blocking (a GUI drains it from a timer), :meth:`~EngineProcess.wait`
  blocks and returns the summary or raises, :meth:`~EngineProcess.cancel` asks the whole process
  tree to stop and returns at once (what still runs after a grace period is killed).

The child leads a process group of its own, so a cancel reaches every process it started (accelerate
workers, data loaders) without listing them; on Windows it opens no console window (the flags
``slicer.util.launchConsoleProcess`` uses). Its output is UTF-8 whatever the locale. Settings go to
the child as JSON on its standard input (``--settings -``), not as command-line arguments. This module
imports nothing beyond the standard library: the Slicer panel uses it in Slicer's own process.

Events are dicts with an ``"event"`` key: the engine's ``progress``, ``result`` and ``error``, plus
``log`` (``{"event": "log", "stream": "stdout"|"stderr", "message": line}``) for any other line and
``exit`` (``{"event": "exit", "returncode": n}``) as the very last event of a run.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ..core import errors

ENGINE_FOLDER = Path(__file__).resolve().parents[1]

# Run by the child as ``python -c BOOTSTRAP ENGINE_FOLDER CODE ARGS…``: registers ENGINE_FOLDER as the
# package ``latentdrift`` (never putting the folder itself on sys.path), then runs CODE with
# ``sys.argv == [CODE, ARGS…]``.
BOOTSTRAP = """\
import importlib.util, os, sys
folder, code = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location(
    "latentdrift", os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
)
module = importlib.util.module_from_spec(spec)
sys.modules["latentdrift"] = module
spec.loader.exec_module(module)
sys.argv = sys.argv[2:]
exec(code)
"""
CLI = "from latentdrift.cli import main\nsys.exit(main(sys.argv[1:]))"

LOG_TAIL_LINES = 40
CANCEL_GRACE_S = 5.0
"""Seconds a cancelled process tree has to stop on its own before it is killed."""


def python_executable() -> str:
    """The Python that runs engine commands: ``PythonSlicer`` inside Slicer, this interpreter elsewhere.

    Inside the application ``sys.executable`` is the Slicer binary, which cannot run ``-c`` code; its
    ``PythonSlicer`` launcher sets up the same Python environment.
    """
    slicer = sys.modules.get("slicer")
    if getattr(slicer, "app", None) is not None:
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def engine_python(code: str, arguments: Sequence[str] = (), python: str | None = None) -> list[str]:
    """The argument list running Python ``code`` in a child Python with this engine registered as
    ``latentdrift`` (``sys.argv[1:]`` is ``arguments``)."""
    return [python or python_executable(), "-c", BOOTSTRAP, str(ENGINE_FOLDER), code, *arguments]


def engine_command(command: str, arguments: Sequence[str] = (), python: str | None = None) -> list[str]:
    """The argument list running ``latentdrift COMMAND ARGUMENTS --progress-json`` in a child Python."""
    return engine_python(CLI, [command, *arguments, "--progress-json"], python)


def child_environment() -> dict[str, str]:
    """This process's environment with unbuffered child output (lines arrive as they are printed)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}


def parse_line(line: str, stream: str = "stdout") -> dict[str, Any]:
    """One output line as an event: a JSON object with an ``"event"`` key as is, anything else as ``log``."""
    text = line.rstrip("\r\n")
    if text.startswith("{"):
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            event = None
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            return event
    return {"event": "log", "stream": stream, "message": text}


class RunState:
    """The outcome of one run, built from its events: summary, error, log tail and exit status."""

    def __init__(self) -> None:
        self.summary: dict[str, Any] | None = None
        self.output: Path | None = None
        self.error_event: dict[str, Any] | None = None
        self.returncode: int | None = None
        self.cancelled = False
        self.log_tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.last_progress: dict[str, Any] | None = None

    def record(self, event: dict[str, Any]) -> None:
        """Take note of one event (call for every event, in order)."""
        kind = event.get("event")
        if kind == "result":
            self.summary = event.get("summary") or {}
            self.output = Path(event["output"]) if event.get("output") else None
        elif kind == "error":
            self.error_event = event
        elif kind == "progress":
            self.last_progress = event
        elif kind == "log" and event.get("message"):
            self.log_tail.append(str(event["message"]))
        elif kind == "exit":
            self.returncode = int(event["returncode"])

    @property
    def finished(self) -> bool:
        """True once the process has exited."""
        return self.returncode is not None

    def error(self) -> errors.LatentDriftError | None:
        """The error this run ended with (None while running or after success)."""
        if self.cancelled:
            return errors.CancelledError(
                "Cancelled: the run was stopped before it finished, nothing was written."
            )
        if self.error_event is not None:
            return error_from_event(self.error_event)
        if self.returncode is None or (self.returncode == 0 and self.summary is not None):
            return None
        return self._error_from_log()

    def _error_from_log(self) -> errors.LatentDriftError:
        lines = [line for line in self.log_tail if line.strip()]
        text = "\n".join(lines[-5:])
        if any("out of memory" in line.lower() for line in lines):
            return errors.OutOfMemoryError(
                "The device ran out of memory: process fewer slices per batch (a smaller slice range), "
                "or run on the CPU.\n" + text
            )
        for line in reversed(lines):  # the CLI's own one-line error, or argparse's usage error
            if "error:" in line:
                return errors.LatentDriftError(line.split("error:", 1)[1].strip())
        if self.returncode == 0:
            return errors.LatentDriftError("The command finished without reporting a result.\n" + text)
        return errors.LatentDriftError(f"The command failed with exit status {self.returncode}.\n{text}")

    def outcome(self) -> dict[str, Any]:
        """The result summary once finished successfully; raises the run's error otherwise."""
        if not self.finished:
            raise errors.JobError("The command is still running.")
        error = self.error()
        if error is not None:
            raise error
        assert self.summary is not None
        return self.summary


def error_from_event(event: dict[str, Any]) -> errors.LatentDriftError:
    """The engine error an ``error`` event names (its class by name, else the base class)."""
    kind = getattr(errors, str(event.get("kind", "")), None)
    error_class = (
        kind
        if isinstance(kind, type) and issubclass(kind, errors.LatentDriftError)
        else errors.LatentDriftError
    )
    return error_class(str(event.get("message", "The command failed.")))


def child_options() -> dict[str, Any]:
    """``Popen`` options of every engine process: its own process group, and no console window on Windows.

    On Windows the flags are those of ``slicer.util.launchConsoleProcess`` (a hidden window through
    ``STARTUPINFO``) plus ``CREATE_NO_WINDOW``, so no console opens and none can be closed by mistake.
    """
    if sys.platform == "win32":
        info = subprocess.STARTUPINFO()
        info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
        info.wShowWindow = subprocess.SW_HIDE
        flags = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
        return {"startupinfo": info, "creationflags": flags}
    return {"start_new_session": True}


def signal_process_tree(pid: int, force: bool) -> None:
    """Ask the process group led by ``pid`` to stop (``force``: kill it); returns at once.

    POSIX: SIGTERM, or SIGKILL, to the whole group (which outlives its leader while members remain).
    Windows: ``taskkill /T /F``, started without waiting for it.
    """
    if sys.platform == "win32":
        subprocess.Popen(
            ["taskkill", "/PID", str(pid), "/T", "/F"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            creationflags=subprocess.CREATE_NO_WINDOW,
        )
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)


class EngineProcess:
    """One running child process with reader threads; see the module docstring.

    Use :meth:`start_command` for ``latentdrift`` commands; the constructor runs any argument list
    (the child should print ``--progress-json`` style lines to be followed).
    """

    def __init__(
        self, argv: Sequence[str], cwd: str | Path | None = None, stdin_text: str | None = None
    ) -> None:
        self.argv = list(argv)
        self.state = RunState()
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL if stdin_text is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=child_environment(),
            text=True,
            encoding="utf-8",
            errors="replace",
            **child_options(),
        )
        if stdin_text is not None:
            assert self._process.stdin is not None
            with (
                contextlib.suppress(BrokenPipeError),
                self._process.stdin,
            ):  # a child that died says why itself
                self._process.stdin.write(stdin_text)
        assert self._process.stdout is not None and self._process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self._process.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self._process.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        threading.Thread(target=self._watch, daemon=True).start()

    @classmethod
    def start_command(
        cls, command: str, arguments: Sequence[str] = (), settings: Any | None = None
    ) -> EngineProcess:
        """Start ``latentdrift COMMAND ARGUMENTS --progress-json`` in a child Python.

        ``settings`` (a settings object of :mod:`.settings`, or a fine-tuning config) goes to the child
        as JSON on its standard input, read by ``--settings -``.
        """
        if settings is None:
            return cls(engine_command(command, arguments))
        from ..core.settings import settings_json

        return cls(
            engine_command(command, [*arguments, "--settings", "-"]), stdin_text=settings_json(settings)
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return int(self._process.pid)

    @property
    def running(self) -> bool:
        """True until the process has exited and all its output has been read."""
        return not self._done.is_set()

    def _push(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.state.record(event)
        self._events.put(event)

    def _read(self, pipe: IO[str], stream: str) -> None:
        for line in pipe:
            self._push(parse_line(line, stream))
        pipe.close()

    def _watch(self) -> None:
        returncode = self._process.wait()
        for reader in self._readers:
            reader.join()
        self._push({"event": "exit", "returncode": returncode})
        self._done.set()

    def poll(self) -> list[dict[str, Any]]:
        """Every event that arrived since the last call, without blocking (``exit`` comes last)."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def join(self, timeout: float | None = None) -> bool:
        """Block until the process has exited and its output is read; False if ``timeout`` passed first."""
        return self._done.wait(timeout)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the process ends; return the result summary or raise the run's error.

        Raises :class:`~.errors.JobError` when ``timeout`` seconds pass first (the process keeps running).
        """
        if not self.join(timeout):
            raise errors.JobError(f"The command is still running after {timeout:g} s.")
        with self._lock:
            return self.state.outcome()

    def cancel(self, grace: float = CANCEL_GRACE_S) -> None:
        """Ask the child and every process it started to stop; returns at once, never blocks.

        A tree still running ``grace`` seconds later is killed (from a timer thread). The ``exit``
        event follows as usual; the run then fails with :class:`~.errors.CancelledError`.
        """
        if self._done.is_set():
            return
        with self._lock:
            self.state.cancelled = True
        signal_process_tree(self.pid, force=False)
        killer = threading.Timer(grace, self._kill_if_running)
        killer.daemon = True
        killer.start()

    def _kill_if_running(self) -> None:
        if not self._done.is_set():
            signal_process_tree(self.pid, force=True)
