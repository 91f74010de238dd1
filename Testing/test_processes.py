"""The engine runner: real child processes, their JSON events, errors, and cancel of the whole tree."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import write_image

from latentdrift.bridge.processes import (
    ENGINE_FOLDER,
    EngineProcess,
    RunState,
    child_options,
    engine_python,
    error_from_event,
    parse_line,
)
from latentdrift.core import errors
from latentdrift.core.errors import CancelledError


def _gone(pid: int) -> bool:
    """True when the process no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _ends(pid: int, timeout: float = 5.0) -> bool:
    """True when process ``pid`` is gone within ``timeout`` (a process closes its pipes a moment before it is gone)."""
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _events_until(process: EngineProcess, predicate, timeout: float = 60.0) -> list[dict]:
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += process.poll()
        if any(predicate(e) for e in events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"no matching event within {timeout} s: {events}")


def test_success_and_error_runs(tmp_path: Path, rng: np.random.Generator) -> None:
    """`latentdrift scene` succeeds with a result event; a missing file fails with the engine's error."""
    good = write_image(
        tmp_path / "small.nrrd", rng.normal(size=(5, 6, 7)).astype(np.float32), spacing=(0.8, 1.1, 2.0)
    )
    ok = EngineProcess.start_command("scene", [str(good), "--output", str(tmp_path / "out")])
    bad = EngineProcess.start_command(
        "scene", [str(tmp_path / "absent.nrrd"), "--output", str(tmp_path / "bad")]
    )

    started = time.monotonic()
    early = ok.poll()
    assert time.monotonic() - started < 0.5  # poll never blocks
    assert ok.running

    summary = ok.wait(timeout=180)
    events = early + ok.poll()
    assert summary["command"] == "scene"
    assert (tmp_path / "out" / "summary.json").is_file()
    assert events[-1] == {"event": "exit", "returncode": 0}
    results = [e for e in events if e["event"] == "result"]
    assert len(results) == 1 and results[0]["summary"] == summary
    assert Path(results[0]["output"]) == tmp_path / "out"
    assert not ok.running

    with pytest.raises(errors.MissingFileError, match="does not exist"):
        bad.wait(timeout=180)
    bad_events = bad.poll()
    assert bad_events[-1] == {"event": "exit", "returncode": 2}
    assert any(e["event"] == "error" and e["kind"] == "MissingFileError" for e in bad_events)
    assert any(
        e["event"] == "log" and e["stream"] == "stderr" and "error:" in e["message"] for e in bad_events
    )
    assert not (tmp_path / "bad").exists()


def test_failure_without_error_event_gives_the_last_error_line() -> None:
    """A usage error (argparse, exit 2, no JSON) becomes a LatentDriftError with argparse's message."""
    process = EngineProcess.start_command("no-such-command")
    with pytest.raises(errors.LatentDriftError, match="invalid choice: 'no-such-command'"):
        process.wait(timeout=120)


_SPAWNING_SLEEPER = """
import json, signal, subprocess, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(json.dumps({"event": "progress", "done": 0, "total": 1, "message": "sleeping", "child": child.pid}), flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("kind", ["polite", "stubborn"])
def test_cancel_returns_at_once_and_ends_the_whole_process_tree(kind: str) -> None:
    """Cancel never blocks: it asks the child's process group to stop; one that ignores SIGTERM is killed
    after the grace period; the exit event follows as usual."""
    process = EngineProcess([sys.executable, "-c", _SPAWNING_SLEEPER, kind])
    events = _events_until(process, lambda e: e["event"] == "progress")
    child = next(e["child"] for e in events if e["event"] == "progress")
    assert not _gone(child)

    started = time.monotonic()
    process.cancel(grace=1.0)
    assert time.monotonic() - started < 0.2  # the GUI thread goes on at once
    assert process.join(timeout=15)
    ended = time.monotonic() - started
    assert (ended >= 1.0) if kind == "stubborn" else (ended < 1.0)
    assert _ends(process.pid) and _ends(child)
    with pytest.raises(CancelledError, match="Cancelled"):
        process.wait(timeout=1)
    assert process.poll()[-1]["event"] == "exit"


def test_the_child_leads_its_own_process_group_and_writes_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancel reaches the whole group; output is UTF-8 whatever the parent's locale and encoding."""
    assert child_options() == {"start_new_session": True}  # Windows: STARTUPINFO + CREATE_NO_WINDOW
    monkeypatch.setenv("PYTHONIOENCODING", "ascii")
    monkeypatch.setenv("LC_ALL", "C")
    code = "import os, sys; print(os.getpgid(0) == os.getpid(), sys.stdin.read(), 'δ → é')"
    process = EngineProcess([sys.executable, "-c", code], stdin_text="settings ✓")
    assert process.join(timeout=60)
    lines = [e["message"] for e in process.poll() if e["event"] == "log"]
    assert lines == ["True settings ✓ δ → é"]


def test_engine_python_runs_code_with_this_engine_registered(tmp_path: Path) -> None:
    """What the self-test uses to build its tiny models in a child: this Logic folder as latentdrift."""
    code = "import latentdrift, pathlib; print(pathlib.Path(latentdrift.__file__).parent, *sys.argv[1:])"
    process = EngineProcess(engine_python(code, ["first", "second"]), cwd=tmp_path)
    assert process.join(timeout=60)
    lines = [e["message"] for e in process.poll() if e["event"] == "log"]
    assert lines == [f"{ENGINE_FOLDER} first second"]


def test_parse_line_and_run_state() -> None:
    assert parse_line('{"event": "progress", "done": 1, "total": 2}\n') == {
        "event": "progress",
        "done": 1,
        "total": 2,
    }
    assert parse_line('{"not": "an event"}', "stdout") == {
        "event": "log",
        "stream": "stdout",
        "message": '{"not": "an event"}',
    }
    assert parse_line("{broken", "stderr")["event"] == "log"

    state = RunState()
    state.record(
        {
            "event": "log",
            "stream": "stderr",
            "message": "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB",
        }
    )
    state.record({"event": "exit", "returncode": 1})
    with pytest.raises(errors.OutOfMemoryError, match="fewer slices"):
        state.outcome()

    silent = RunState()
    silent.record({"event": "exit", "returncode": 0})
    with pytest.raises(errors.LatentDriftError, match="without reporting a result"):
        silent.outcome()

    running = RunState()
    with pytest.raises(errors.JobError, match="still running"):
        running.outcome()

    assert type(error_from_event({"kind": "SliceRangeError", "message": "m"})) is errors.SliceRangeError
    assert type(error_from_event({"kind": "NotAnError", "message": "m"})) is errors.LatentDriftError
