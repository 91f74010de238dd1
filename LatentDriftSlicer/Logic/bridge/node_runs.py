"""Runs of the engine on scene nodes, and fine-tuning job folders: the layer under :mod:`.console`.

A run (:func:`prepare_run` → :class:`PreparedRun`) exports the input node to a temporary NRRD (the node
itself is never modified), runs ``latentdrift COMMAND`` in a child process (:mod:`.processes`) that writes
its results as files by role and no scene (``--scene no``), and loads the files of the roles asked for as
NEW nodes on the input's exact geometry (:func:`latentdrift.bridge.scene.load_outputs`). :func:`launch` waits
for it or returns a :class:`NodeJob` to poll from the main thread. :func:`result_of` turns a run's nodes
into a result class whose fields are :func:`role_field` s.

A fine-tuning job is a folder (:class:`TrainingJob`): its ``status.jsonl`` gives the progress, loss curve
and latest sample image, also for jobs started elsewhere.

Nothing here imports torch or another model library (Slicer's own process imports this module).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..core import errors
from ..core.volumes import Volume, write_volume
from ..finetune.job_folder import JobFolder, StatusFollower
from .processes import EngineProcess, RunState
from .scene import ROLE_LOADERS, OutputFiles, SceneSession, load_outputs, node_to_volume

T = TypeVar("T")

# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """What a run produced: its summary, result folder (None when temporary) and new nodes by role."""

    summary: dict[str, Any]
    output: Path | None
    nodes: dict[str, list[Any]] = field(default_factory=dict)

    def node(self, role: str) -> Any | None:
        """The first node loaded for ``role`` (None when the run wrote none)."""
        found = self.nodes.get(role)
        return found[0] if found else None


def role_field(role: str, *, missing: str | None = None, every: bool = False, default: Any = MISSING) -> Any:
    """A result field holding the node of output ``role`` (None when there is none), or with ``every`` the
    list of its nodes; ``missing`` is the error when a run wrote none (:func:`result_of`)."""
    return field(default=default, metadata={"role": role, "missing": missing, "every": every})


def result_of(kind: type[T], result: RunResult) -> T:
    """A run's nodes as the result class ``kind``: each :func:`role_field` gets its role's node(s);
    raises :class:`~.errors.LatentDriftError` when a role the result cannot do without has none."""
    values: dict[str, Any] = {"summary": result.summary, "output": result.output}
    for setting in fields(kind):  # type: ignore[arg-type]
        if "role" not in setting.metadata:
            continue
        nodes = result.nodes.get(setting.metadata["role"], [])
        if not nodes and setting.metadata["missing"]:
            raise errors.LatentDriftError(setting.metadata["missing"])
        values[setting.name] = nodes if setting.metadata["every"] else (nodes[0] if nodes else None)
    return kind(**values)


# --------------------------------------------------------------------------- runs


@dataclass
class PreparedRun:
    """A command ready to run on an exported input node, and how to load its outputs afterwards.

    ``settings`` (an engine settings object, or None) goes to the child as JSON on its standard input.
    """

    session: SceneSession
    input_node: Any
    template: Volume
    command: str
    arguments: list[str]
    settings: Any | None
    roles: tuple[str, ...]
    output: Path
    keep_output: bool
    work_folder: Path
    foreground_opacity: float

    def start(self) -> EngineProcess:
        """Start the engine process of this run."""
        return EngineProcess.start_command(self.command, self.arguments, self.settings)

    def load(self, summary: dict[str, Any]) -> RunResult:
        """Load the outputs of ``roles`` from the result folder as new nodes and set up the views."""
        outputs = {role: _listed(summary, role) for role in self.roles}
        files = OutputFiles(self.output, outputs, self.input_node, self.template)
        nodes = load_outputs(self.session, files, self.roles, self.foreground_opacity)
        return RunResult(summary, self.output if self.keep_output else None, nodes)

    def cleanup(self) -> None:
        """Remove the exported input (and the result folder when it was temporary)."""
        shutil.rmtree(self.work_folder, ignore_errors=True)


def _listed(summary: dict[str, Any], role: str) -> list[str]:
    value = summary.get("outputs", {}).get(role)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def prepare_run(
    volume_node: Any,
    command: str,
    arguments: Sequence[str],
    roles_to_load: Sequence[str],
    *,
    session: SceneSession | None = None,
    output: str | Path | None = None,
    foreground_opacity: float = 0.5,
    settings: Any | None = None,
) -> PreparedRun:
    """Export ``volume_node`` and build the command line; nothing runs yet (see :func:`run_on_node`).

    The command is ``latentdrift COMMAND INPUT ARGUMENTS --output DIR --scene no`` (plus ``--settings
    -`` when ``settings`` is given).
    """
    unknown = [role for role in roles_to_load if role not in ROLE_LOADERS]
    if unknown:
        raise errors.ParameterError(
            f"Cannot load output role(s) {', '.join(unknown)}: known roles are {', '.join(ROLE_LOADERS)}."
        )
    session = _session_for(volume_node, session)
    template = node_to_volume(volume_node)
    work_folder = Path(tempfile.mkdtemp(prefix="latentdrift-"))
    input_path = write_volume(template, work_folder / f"{_file_stem(volume_node.GetName())}.nrrd")
    result_folder = Path(output).expanduser().absolute() if output is not None else work_folder / "result"
    return PreparedRun(
        session=session,
        input_node=volume_node,
        template=template,
        command=command,
        arguments=[str(input_path), *arguments, "--output", str(result_folder), "--scene", "no"],
        settings=settings,
        roles=tuple(roles_to_load),
        output=result_folder,
        keep_output=output is not None,
        work_folder=work_folder,
        foreground_opacity=foreground_opacity,
    )


class NodeJob(Generic[T]):
    """A command running on a node; its outputs become nodes when it ends.

    Drive it from the main thread (MRML is not thread-safe): :meth:`poll` in a timer, or :meth:`wait`.
    """

    def __init__(self, run: PreparedRun, convert: Callable[[RunResult], T], process: EngineProcess) -> None:
        self.run = run
        self.process = process
        self._convert = convert
        self._result: T | None = None
        self._error: errors.LatentDriftError | None = None
        self._completed = False

    @property
    def state(self) -> RunState:
        """The run's outcome so far (progress, log tail, summary or error)."""
        return self.process.state

    @property
    def done(self) -> bool:
        """True once the run has ended and its outputs are loaded (or it failed)."""
        return self._completed

    @property
    def error(self) -> errors.LatentDriftError | None:
        """Why the run failed (None while running or after success)."""
        return self._error

    def poll(self) -> list[dict[str, Any]]:
        """New events since the last call; loads the outputs when the ``exit`` event arrives."""
        events = self.process.poll()
        if any(event["event"] == "exit" for event in events):
            self._complete()
        return events

    def _complete(self) -> None:
        if self._completed:
            return
        self._completed = True
        try:
            self._result = self._convert(self.run.load(self.state.outcome()))
        except errors.LatentDriftError as error:
            self._error = error
        finally:
            self.run.cleanup()

    def result(self) -> T:
        """The loaded result; raises the run's error, or :class:`~.errors.JobError` while running."""
        if not self._completed:
            raise errors.JobError("The run has not finished yet: poll() or wait() first.")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def wait(self, timeout: float | None = None) -> T:
        """Block until the run ends, then return :meth:`result` (raises its error)."""
        if not self.process.join(timeout):
            raise errors.JobError(f"The run is still going after {timeout:g} s.")
        self.poll()
        return self.result()

    def cancel(self) -> None:
        """Ask the run's whole process tree to stop; returns at once. The job then fails with a
        cancellation error (:meth:`poll` sees it end)."""
        self.process.cancel()


def run_on_node(
    volume_node: Any,
    command: str,
    arguments: Sequence[str],
    roles_to_load: Sequence[str],
    *,
    session: SceneSession | None = None,
    output: str | Path | None = None,
    blocking: bool = True,
    foreground_opacity: float = 0.5,
) -> RunResult | NodeJob[RunResult]:
    """Run ``latentdrift COMMAND INPUT ARGUMENTS`` on a volume node and load the outputs of ``roles_to_load``.

    ``output`` keeps the result folder there (default: a temporary folder, removed after loading).
    Blocking runs return a :class:`RunResult` or raise the command's error; ``blocking=False``
    returns a :class:`NodeJob` at once.
    """
    run = prepare_run(
        volume_node,
        command,
        arguments,
        roles_to_load,
        session=session,
        output=output,
        foreground_opacity=foreground_opacity,
    )
    return launch(run, lambda result: result, blocking)


def start_run(run: PreparedRun, convert: Callable[[RunResult], T]) -> NodeJob[T]:
    """Start ``run`` in an engine process; its :class:`NodeJob` at once (the panel polls it from a timer)."""
    try:
        return NodeJob(run, convert, run.start())
    except OSError as error:
        run.cleanup()
        raise errors.LatentDriftError(f"Could not start the engine process: {error}") from error


def launch(run: PreparedRun, convert: Callable[[RunResult], T], blocking: bool) -> T | NodeJob[T]:
    """Start ``run``; wait for it when ``blocking``."""
    job = start_run(run, convert)
    return job.wait() if blocking else job


def _session_for(volume_node: Any, session: SceneSession | None) -> SceneSession:
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise errors.InputError("Pick an input image volume (a scalar volume node).")
    if session is None:
        session = SceneSession.from_application() if _in_application() else None
    if session is None or session.scene is not volume_node.GetScene():
        raise errors.InputError(
            "The volume node is not in the session's scene: pass session= (the SceneSession that holds it)."
        )
    return session


def _in_application() -> bool:
    import slicer

    return getattr(slicer, "app", None) is not None


def _file_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "input"


# --------------------------------------------------------------------------- fine-tuning jobs


@dataclass
class TrainingStatus:
    """A fine-tuning job's progress, from its ``status.jsonl`` (one record per logged step)."""

    records: list[dict[str, Any]]

    @property
    def latest(self) -> dict[str, Any]:
        """The last record (empty before the first step is logged)."""
        return self.records[-1] if self.records else {}

    @property
    def losses(self) -> list[tuple[int, float]]:
        """``(step, loss)`` for every record that has both."""
        return [
            (int(r["step"]), float(r["loss"]))
            for r in self.records
            if r.get("step") is not None and r.get("loss") is not None
        ]

    def sample_image(self, job_dir: Path) -> Path | None:
        """The most recent sample image that exists (paths are relative to the job folder)."""
        for record in reversed(self.records):
            if record.get("sample_image"):
                image = job_dir / str(record["sample_image"])
                if image.is_file():
                    return image
        return None


class TrainingJob:
    """A fine-tuning job folder, and the process working on it when started from here."""

    def __init__(self, job_dir: str | Path, process: EngineProcess | None = None) -> None:
        self.folder = JobFolder(job_dir)
        self.job_dir = self.folder.path
        self.process = process
        self._follower = StatusFollower(self.folder.status_file)

    def status(self) -> TrainingStatus:
        """Every record of ``status.jsonl`` so far (a line being written is skipped)."""
        return TrainingStatus(self.folder.status_records())

    def new_records(self) -> list[dict[str, Any]]:
        """The records written since the last call: only the new part of ``status.jsonl`` is read
        (what a monitor polling every fraction of a second wants)."""
        return self._follower.read_new()

    @property
    def running(self) -> bool:
        """True while the process started from here is running."""
        return self.process is not None and self.process.running

    def poll(self) -> list[dict[str, Any]]:
        """New events of the process started from here (none for a job opened from its folder)."""
        return self.process.poll() if self.process is not None else []

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the process ends; its result summary, or raises its error."""
        if self.process is None:
            raise errors.JobError(f"No process of job '{self.job_dir}' was started from here.")
        return self.process.wait(timeout)

    def cancel(self) -> None:
        """Stop the job: the process tree started from here (returns at once), else ``latentdrift jobs cancel``."""
        if self.running:
            assert self.process is not None
            self.process.cancel()
        else:
            EngineProcess.start_command("jobs", ["cancel", str(self.job_dir)]).wait()

    def resume(self) -> TrainingJob:
        """Continue the job from its last checkpoint in a new process (``latentdrift jobs resume``)."""
        if self.running:
            raise errors.JobError(f"Job '{self.job_dir}' is still running.")
        self.process = EngineProcess.start_command("jobs", ["resume", str(self.job_dir)])
        return self
