"""Result folders that appear whole or not at all, each with a ``summary.json``, one run at a time.

Every command that writes results does it through :class:`ResultFolder`:

* **One run per folder**: entering it takes the folder's lock (:class:`FolderLock`, ``.NAME.lock``
  beside the folder), so a second run into a folder another live run is writing fails at once with
  an :class:`~.errors.OutputError` naming that run, and writes nothing.
* **What a killed run left** is cleared by the next run into the folder, once it holds the lock (no
  live run can be writing there then): a ``.NAME.partial-*`` folder is removed, or, when the killed run
  had already finished its results (its ``summary.json`` is written), their publication is completed.
* **Staging**: files go to a hidden temporary folder next to the destination, ``summary.json`` lists
  each one by role, and only when the work succeeds are they moved into place, ``summary.json`` last;
  the outputs a previous run's ``summary.json`` listed and this run does not write are removed (other
  files in the folder are left alone). On any error, SIGINT or SIGTERM (:mod:`latentdrift.core.interrupts`) the
  temporary folder is removed, so the destination never holds half a result or two runs' files.
* **One-line errors** for a destination that cannot be written: a regular file, a read-only file
  system, a full disk ("no space left"), another run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import __version__
from .atomic_files import write_json_atomic
from .errors import OutputError
from .interrupts import raise_if_stopped, uncut

LOG = logging.getLogger(__name__)

SUMMARY = "summary.json"
REPLACED_SUMMARY = ".replaced-summary.json"
"""The previous run's ``summary.json``, moved into the staging folder while a result is published."""
UNLOCKABLE = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
"""What a file system without locks (some network mounts) answers: the run goes on, unguarded, with a warning."""
FULL_DISK_BYTES = 16 << 20
"""A write that fails with less than this free on the result's file system failed for lack of space."""


# --------------------------------------------------------------------------- one run per folder


class FolderLock:
    """An exclusive lock on a result folder: ``.NAME.lock`` beside it, held by one live run.

    The operating system's own file lock (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows) does
    the locking, so a killed run's lock is released with its process and nothing has to guess whether a
    run is still alive; the file holds the run's process id, command, start and host, to name it. Written
    here rather than taken from a lock library because of those two needs: a lock that never waits and
    names its holder, and a killed holder recognised by the next run. The file is removed on release.
    """

    WINDOWS_OFFSET = 1 << 20
    """Windows locks a byte range that readers cannot read: the lock is taken far past the holder's text."""

    def __init__(self, destination: Path) -> None:
        self.destination = destination
        self.path = destination.parent / f".{destination.name}.lock"
        self._descriptor: int | None = None

    def acquire(self, command: str) -> None:
        """Take the lock for a run of ``command``, or raise :class:`OutputError` naming the run that holds it."""
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(descriptor, self.path):
                holder = _holder_text(descriptor)
                os.close(descriptor)
                raise OutputError(
                    f"'{self.destination}' is being written by another run ({holder}): wait for it to "
                    "finish, or give another output folder."
                )
            if _same_file(descriptor, self.path):
                break
            os.close(descriptor)  # released and removed by its holder since we opened it: open it anew
        self._descriptor = descriptor
        record = {
            "pid": os.getpid(),
            "command": f"latentdrift {command}",
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "host": platform.node(),
        }
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps(record).encode("utf-8"))

    def release(self) -> None:
        """Remove the lock file and let go of the lock (POSIX: in that order, so no one locks a removed file)."""
        if self._descriptor is None:
            return
        descriptor, self._descriptor = self._descriptor, None
        if sys.platform == "win32":
            import msvcrt

            os.lseek(descriptor, self.WINDOWS_OFFSET, os.SEEK_SET)
            msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)
            os.close(descriptor)
            with contextlib.suppress(OSError):  # another run opened it meanwhile: it will find it free
                self.path.unlink()
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(descriptor)


def _try_lock(descriptor: int, path: Path) -> bool:
    """Lock ``descriptor``'s file (``path``) without waiting; False when another open file holds the lock."""
    try:
        if sys.platform == "win32":
            import msvcrt

            os.lseek(descriptor, FolderLock.WINDOWS_OFFSET, os.SEEK_SET)
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EDEADLK):
            return False
        if error.errno not in UNLOCKABLE:
            raise
        LOG.warning("The file system of %s cannot lock files: runs into it are not kept apart.", path)
    return True


def _same_file(descriptor: int, path: Path) -> bool:
    """True while ``path`` still names the file open as ``descriptor``."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def _holder_text(descriptor: int) -> str:
    """The run a lock file names: ``"latentdrift segment, process 1234 on host, started …"``."""
    os.lseek(descriptor, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(descriptor, 4096).decode("utf-8"))
        return (
            f"{holder['command']}, process {holder['pid']} on {holder['host']}, started {holder['started']}"
        )
    except (ValueError, KeyError, TypeError):
        return "a run that is starting"


# --------------------------------------------------------------------------- result folders


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
        self._lock = FolderLock(self.destination)
        self._made: list[Path] = []
        self._started = time.perf_counter()

    @property
    def staging(self) -> Path:
        """The temporary folder being filled (valid inside the ``with`` block)."""
        if self._staging is None:
            raise RuntimeError("ResultFolder is used outside its 'with' block")
        return self._staging

    def __enter__(self) -> ResultFolder:
        if self.destination.exists() and not self.destination.is_dir():
            raise OutputError(
                f"'{self.destination}' is a file, not a folder: give a folder for the results (it is created)."
            )
        try:
            with uncut(), _writing(self.destination):
                parent = self.destination.parent
                self._made = [folder for folder in (parent, *parent.parents) if not folder.exists()]
                parent.mkdir(parents=True, exist_ok=True)
                self._lock.acquire(self.command)
                clear_leftovers(self.destination)
                prefix = f".{self.destination.name}.partial-"
                self._staging = Path(tempfile.mkdtemp(prefix=prefix, dir=self.destination.parent))
        except BaseException:
            with uncut():
                self._discard()
            raise
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
        with uncut():
            try:
                if kind is None:
                    self._finish()
                elif isinstance(error, Exception):
                    _raise_if_disk_full(self.staging, self.destination, error)
            finally:
                self._discard()

    def _finish(self) -> None:
        """Write ``summary.json`` and publish; a publication cut short by an error keeps its staging
        folder for the next run into the destination to complete (:func:`clear_leftovers`)."""
        raise_if_stopped()  # a stop signal whose exception a library dropped: stop here, not publish
        with _writing(self.destination):
            self._write_summary()
            try:
                publish(self.staging, self.destination)
            except BaseException:
                self._staging = None
                raise

    def _discard(self) -> None:
        """Remove the staging folder (if any), release the lock and remove the folders made to hold the
        result when they stayed empty (it was not published)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = None
        self._lock.release()
        for folder in self._made:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty: it holds the result, or another run's
                break
        self._made = []

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
        """Write ``summary.json`` whole (a temporary file renamed): from then on the staging folder is a
        finished result, which :func:`clear_leftovers` publishes should this run be killed."""
        self.outputs.setdefault("summary", []).append(SUMMARY)
        write_json_atomic(self.staging / SUMMARY, self.summary())


def publish(staging: Path, destination: Path) -> None:
    """Move a finished result (``staging`` with its ``summary.json``) into ``destination``.

    The previous ``summary.json`` goes first (into ``staging``, as :data:`REPLACED_SUMMARY`), so the folder
    has none while files are replaced; then the outputs it listed that this result lacks are removed, every
    staged entry replaces its namesake, and the new ``summary.json`` comes last. Each step can be repeated,
    so a publication a kill cut short is completed by running this again on the same staging folder.
    """
    destination.mkdir(parents=True, exist_ok=True)
    replaced = staging / REPLACED_SUMMARY
    if (destination / SUMMARY).is_file():
        os.replace(destination / SUMMARY, replaced)
    new = set(listed_outputs(staging / SUMMARY))
    for name in listed_outputs(replaced):
        if name not in new:
            _remove(destination / name)
    for entry in sorted(staging.iterdir()):
        if entry.name not in (SUMMARY, REPLACED_SUMMARY):
            target = destination / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    os.replace(staging / SUMMARY, destination / SUMMARY)
    shutil.rmtree(staging, ignore_errors=True)


def clear_leftovers(destination: Path) -> list[Path]:
    """Remove what killed runs left beside ``destination`` (call holding its lock); returns what was found.

    A ``.NAME.partial-*`` folder holding a ``summary.json`` is a result whose publication a kill cut short:
    it is completed (:func:`publish`); any other is an unfinished run's, removed.
    """
    found = sorted(destination.parent.glob(f".{destination.name}.partial-*"))
    for partial in found:
        if (partial / SUMMARY).is_file():
            publish(partial, destination)
        else:
            shutil.rmtree(partial, ignore_errors=True)
    return found


def listed_outputs(summary: Path) -> list[str]:
    """The output names a ``summary.json`` lists (relative, inside its folder); empty when unreadable."""
    try:
        outputs = json.loads(summary.read_text(encoding="utf-8")).get("outputs", {})
        names = [n for value in outputs.values() for n in ([value] if isinstance(value, str) else value)]
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    return [
        name
        for name in names
        if isinstance(name, str) and not Path(name).is_absolute() and ".." not in Path(name).parts
    ]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# --------------------------------------------------------------------------- one-line errors


_REASONS = {
    errno.EROFS: "its file system is read-only",
    errno.ENOSPC: "no space left on its device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of its path is a file, not a folder",
    errno.EEXIST: "a part of its path is a file, not a folder",
}


@contextlib.contextmanager
def _writing(destination: Path) -> Iterator[None]:
    """Turn the operating system's refusals to write next to ``destination`` into one-line :class:`OutputError`s."""
    try:
        yield
    except OSError as error:
        reason = _REASONS.get(error.errno or 0)
        if reason is None:
            raise
        raise OutputError(
            f"Cannot write the results to '{destination}': {reason} ({error.strerror}). Give another "
            "output folder"
            + (", or free some space." if error.errno in (errno.ENOSPC, errno.EDQUOT) else ".")
        ) from error


def _raise_if_disk_full(staging: Path, destination: Path, error: BaseException) -> None:
    """After a failed write, say "no space left" when that is why (writers like ITK's do not say it)."""
    try:
        free = shutil.disk_usage(staging).free
    except OSError:
        return
    if free < FULL_DISK_BYTES:
        raise OutputError(
            f"Cannot write the results to '{destination}': no space left on its device ({free // 1024} kB "
            "free). Free some space, or give an output folder on another disk."
        ) from error
