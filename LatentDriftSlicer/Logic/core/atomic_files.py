"""Files and folders written all or nothing: a reader sees the old version or the new one, never half.

A file is written to a hidden temporary file beside it, synced, and renamed over the old one
(``os.replace`` is atomic on one file system); a folder is filled under a hidden staging name and
renamed into place the same way. The folder holding the result is synced too, so the rename itself
survives a power cut.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and one rename."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON (other objects as their ``str``) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, default=str) + "\n")


def write_folder_atomic(folder: Path, write: Callable[[Path], None]) -> None:
    """Make ``folder`` with ``write(staging)`` in a hidden staging folder beside it, then one rename.

    An existing ``folder`` is replaced (it is removed just before the rename, so a kill in between
    leaves no folder rather than a mixed one).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        write(staging)
        fsync_folder(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_folder(folder.parent)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk, where the system allows it (not Windows)."""
    if hasattr(os, "O_DIRECTORY"):
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
