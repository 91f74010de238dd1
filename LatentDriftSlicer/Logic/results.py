"""Result folders that appear whole or not at all, each with a ``summary.json``.

Every command that writes results does it through :class:`ResultFolder`: files go to a hidden
temporary folder next to the destination, ``summary.json`` lists each one by role, and only when the
work succeeds are they moved into place. On any error the temporary folder is removed, so the
destination never holds half a result.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from . import __version__


class ResultFolder:
    """Context manager collecting a command's outputs; see the module docstring.

    ``path(role, name)`` gives where to write an output and records it under ``role`` (several
    files may share a role); ``figures`` holds numbers worth reporting.
    """

    def __init__(
        self, destination: str | Path, command: str, inputs: dict[str, Any], **metadata: Any
    ) -> None:
        self.destination = Path(destination).absolute()
        self.command = command
        self.inputs = inputs
        self.metadata = metadata
        self.figures: dict[str, Any] = {}
        self.outputs: dict[str, list[str]] = {}
        self._staging: Path | None = None
        self._started = time.perf_counter()

    @property
    def staging(self) -> Path:
        """The temporary folder being filled (valid inside the ``with`` block)."""
        if self._staging is None:
            raise RuntimeError("ResultFolder is used outside its 'with' block")
        return self._staging

    def __enter__(self) -> ResultFolder:
        parent = self.destination.parent
        parent.mkdir(parents=True, exist_ok=True)
        self._staging = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.partial-", dir=parent))
        self._started = time.perf_counter()
        return self

    def path(self, role: str, name: str) -> Path:
        """Where to write output ``name`` (relative to the result folder), recorded under ``role``."""
        target = self.staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        self.outputs.setdefault(role, []).append(name)
        return target

    def record(self, role: str, name: str) -> None:
        """Record an output that something else wrote into the staging folder (e.g. a scene's data)."""
        self.outputs.setdefault(role, []).append(name)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                self._write_summary()
                self._publish()
        finally:
            if self._staging is not None and self._staging.exists():
                shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def summary(self) -> dict[str, Any]:
        """The content of ``summary.json``."""
        return {
            "command": self.command,
            "version": __version__,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "elapsed_seconds": round(time.perf_counter() - self._started, 3),
            "inputs": self.inputs,
            **self.metadata,
            "outputs": {role: names[0] if len(names) == 1 else names for role, names in self.outputs.items()},
            "figures": self.figures,
        }

    def _write_summary(self) -> None:
        self.outputs.setdefault("summary", []).append("summary.json")
        (self.staging / "summary.json").write_text(json.dumps(self.summary(), indent=2, default=str) + "\n")

    def _publish(self) -> None:
        """Move every staged entry into the destination, replacing same-named entries."""
        self.destination.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self.staging.iterdir()):
            target = self.destination / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
