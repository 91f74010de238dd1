"""The job folder: the one place a fine-tuning job's files are named, written and read.

::

    JOB_DIR/
      config.json          the job's settings (FinetuneConfig), written once at the start
      state.json           {"state": running|finished|failed|cancelled, "pid", "step", "message", "updated"}
      status.jsonl         one JSON line per logged step: step, epoch, loss, lr, eta_s, sample_image
      log.txt              the job's log
      cohort_report.json   rows used and skipped (and why); cohort_report.md the same as a table
      checkpoints/         step-NNNNNNNN folders (the newest two), written atomically
      samples/             step-NNNNNNNN.png sample images (paths in status.jsonl are relative to JOB_DIR)
      model/               the result: a diffusers folder (or an LDSeg model folder) with MODEL_CARD.md
      cancel-requested     present when a cancel was asked for (the job checkpoints and stops)
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.atomic_files import write_json_atomic, write_text_atomic

if TYPE_CHECKING:  # the panel reads job folders without tqdm (progress.py's bar)
    from ..core.progress import ProgressCallback, TrainingEvent

LOG = logging.getLogger(__name__)

STATES = ("running", "finished", "failed", "cancelled")


def parse_status(text: str) -> list[dict[str, Any]]:
    """The records of status lines (a line that is not a whole JSON object, e.g. one being written, is skipped)."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class StatusFollower:
    """Follows a job's ``status.jsonl`` as it grows: each :meth:`read_new` reads only the bytes added.

    A line still being written waits for the next call. When the file is replaced (a resumed job drops
    the lines after its checkpoint), reading starts again from its beginning.
    """

    def __init__(self, status_file: Path) -> None:
        self.status_file = status_file
        self._inode: int | None = None
        self._offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        """The records of the whole lines written since the last call."""
        try:
            stat = self.status_file.stat()
        except FileNotFoundError:
            return []
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self._inode, self._offset = stat.st_ino, 0
        with self.status_file.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        return parse_status(complete.decode("utf-8", errors="replace"))


class JobFolder:
    """Paths and small file operations of one job folder (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()
        self._signalled = False

    @property
    def config(self) -> Path:
        """``config.json``: the job's settings."""
        return self.path / "config.json"

    @property
    def state_file(self) -> Path:
        """``state.json``: the job's state."""
        return self.path / "state.json"

    @property
    def status_file(self) -> Path:
        """``status.jsonl``: the status lines."""
        return self.path / "status.jsonl"

    @property
    def log_file(self) -> Path:
        """``log.txt``: the job's log."""
        return self.path / "log.txt"

    @property
    def checkpoints(self) -> Path:
        """``checkpoints``: the checkpoint folders."""
        return self.path / "checkpoints"

    @property
    def samples(self) -> Path:
        """``samples``: the sample images."""
        return self.path / "samples"

    @property
    def model(self) -> Path:
        """``model``: the resulting model folder."""
        return self.path / "model"

    @property
    def cancel_file(self) -> Path:
        """``cancel-requested``: the cancel request marker."""
        return self.path / "cancel-requested"

    # ----------------------------------------------------------------- state

    def read_state(self) -> dict[str, Any]:
        """The content of ``state.json`` (empty when there is none)."""
        try:
            return dict(json.loads(self.state_file.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}

    def write_state(self, state: str, **fields: Any) -> None:
        """Replace ``state.json`` atomically; fields of the previous state are kept unless overridden."""
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        record = {**self.read_state(), **fields, "state": state, "updated": now}
        write_json_atomic(self.state_file, record)

    # ----------------------------------------------------------------- status lines

    def append_status(self, record: dict[str, Any]) -> None:
        """Append one status line (flushed, so readers see whole lines)."""
        with self.status_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def status_records(self) -> list[dict[str, Any]]:
        """Every complete status line (a line being written is skipped)."""
        if not self.status_file.is_file():
            return []
        return parse_status(self.status_file.read_text(encoding="utf-8"))

    def truncate_status(self, last_step: int) -> None:
        """Drop status lines after ``last_step`` (steps lost since the checkpoint a job resumes from)."""
        kept = [r for r in self.status_records() if int(r.get("step", 0)) <= last_step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        write_text_atomic(self.status_file, text)

    # ----------------------------------------------------------------- cancel

    def request_cancel(self) -> None:
        """Ask the job to checkpoint and stop (it checks after every step)."""
        self.cancel_file.touch()

    def cancel_requested(self) -> bool:
        """True after :meth:`request_cancel` or a SIGTERM/SIGINT caught by :meth:`catch_signals`."""
        return self._signalled or self.cancel_file.exists()

    def catch_signals(self) -> None:
        """Turn SIGTERM and SIGINT into a cancel request (checkpoint, then stop) for this process."""

        def handler(signum: int, frame: Any) -> None:
            self._signalled = True

        for kind in (signal.SIGTERM, signal.SIGINT):
            signal.signal(kind, handler)

    def clear_cancel(self) -> None:
        """Forget an earlier cancel request (before resuming)."""
        self.cancel_file.unlink(missing_ok=True)
        self._signalled = False


class StatusLines:
    """A run's :class:`~latentdrift.core.progress.TrainingEvent` dicts → progress updates and status lines.

    Every step event updates ``progress`` (``(step, steps, message)``); every ``log_every`` steps, at the
    last step and at every step that saved a sample image, one status line is appended: ``step``,
    ``epoch``, ``loss`` (the mean over the steps since the previous line), ``lr``, ``eta_s`` and
    ``sample_image``. Fine-tuning and LDSeg jobs alike, so the panel's loss chart has points for both.
    """

    def __init__(
        self,
        job: JobFolder,
        log_every: int,
        progress: ProgressCallback | None = None,
        message: str = "training",
    ) -> None:
        self.job, self.log_every, self.progress, self.message = job, log_every, progress, message
        self.started = time.monotonic()
        self.first_step: int | None = None
        self.pending: list[float] = []

    def __call__(self, event: TrainingEvent) -> None:
        if event["kind"] != "step":
            return
        step = int(event["step"])
        steps = int(event.get("steps") or step)
        if self.first_step is None:
            self.first_step = step
        if self.progress is not None:
            self.progress(step, steps, self.message)
        if event.get("loss") is not None:
            self.pending.append(float(event["loss"]))
        sample = event.get("sample_image")
        if step % self.log_every == 0 or step == steps or sample:
            record = self._record(event, step, steps, sample)
            self.job.append_status(record)
            LOG.info("step %d/%d loss %s", step, steps, record["loss"])

    def _record(self, event: TrainingEvent, step: int, steps: int, sample: str | None) -> dict[str, Any]:
        """The status line of ``step``; the pending losses are used up."""
        done = step - (self.first_step or step) + 1
        eta = (time.monotonic() - self.started) / done * (steps - step)
        loss = round(sum(self.pending) / len(self.pending), 6) if self.pending else None
        self.pending = []
        return {
            "step": step,
            "epoch": event.get("epoch"),
            "loss": loss,
            "lr": event.get("lr"),
            "eta_s": round(eta, 1),
            "sample_image": sample,
        }
