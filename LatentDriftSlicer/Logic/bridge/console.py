"""The Python-console API: run LatentDrift on scene nodes and get nodes back.

Works in Slicer's Python console (on ``slicer.mrmlScene``) and on slicer-core (pass the headless
:class:`~.scene.SceneSession` as ``session``)::

    import latentdrift.bridge.console as ld
    result = ld.segment(volume_node, model="brain-tissue-ldseg", samples=8)
    result.segmentation_node, result.uncertainty_node

Every run goes the same way (:func:`~.node_runs.run_on_node`, :mod:`.node_runs`): the input node is
exported to a temporary NRRD (the node itself is never modified), the ``latentdrift`` command runs in a
child process that writes its results as files by role, and the files of the roles asked for are loaded
as NEW nodes on the input's exact geometry, with their display set up. :func:`segment` and :func:`counterfactual` hand the engine its
own settings object (:mod:`.settings`) as JSON. ``blocking=False`` returns a :class:`NodeJob` at
once: poll it from the main thread (Slicer's GUI does so from a timer); it loads the outputs when
the run ends.

Fine-tuning runs as a job folder (:func:`start_finetune`, :class:`TrainingJob`): its ``status.jsonl``
gives the progress, loss curve and latest sample image, also for jobs started elsewhere.

Nothing here imports torch or another model library: the Slicer panel imports this module in
Slicer's own process. What only the panel needs (slice views, device and model lists, the loss chart)
is in :mod:`.panel_support`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import errors
from ..core.settings import (
    CounterfactualSettings,
    SegmentSettings,
    build_settings,
    edit_fields,
)
from ..counterfactual.recorded_sampling import counterfactual_options
from ..finetune import SCHEMES as FINETUNE_SCHEMES
from .node_runs import (
    NodeJob,
    PreparedRun,
    RunResult,
    TrainingJob,
    launch,
    prepare_run,
    result_of,
    role_field,
    run_on_node,
    start_run,
)
from .processes import EngineProcess
from .scene import COUNTERFACTUAL_ROLES, SEGMENT_ROLES, SceneSession

__all__ = [
    "CounterfactualResult",
    "NodeJob",
    "PreparedRun",
    "RunResult",
    "SegmentResult",
    "TrainingJob",
    "as_counterfactual_result",
    "as_segment_result",
    "attributes_text",
    "counterfactual",
    "prepare",
    "run_on_node",
    "segment",
    "set_fade",
    "start_finetune",
    "start_run",
]


@dataclass
class SegmentResult:
    """LDSeg output nodes: the segmentation, the uncertainty map, (when asked) per-class probabilities, and
    the brain mask when the brain front end made one (a brain model on a head); the run's summary and
    result folder (None when temporary)."""

    summary: dict[str, Any]
    output: Path | None
    segmentation_node: Any = role_field("segmentation", missing="The segment command wrote no segmentation.")
    uncertainty_node: Any | None = role_field("uncertainty")
    probability_nodes: list[Any] = role_field("probability", every=True)
    brain_mask_node: Any | None = role_field("brain_mask", default=None)


@dataclass
class CounterfactualResult:
    """Latent Drift output nodes: the counterfactual volume, the signed difference from the input, and the
    brain mask when the brain front end made one; the run's summary and result folder (None when temporary)."""

    summary: dict[str, Any]
    output: Path | None
    counterfactual_node: Any = role_field(
        "counterfactual", missing="The counterfactual command wrote no counterfactual volume."
    )
    difference_node: Any | None = role_field("difference")
    brain_mask_node: Any | None = role_field("brain_mask", default=None)


@dataclass(frozen=True)
class NodeTask:
    """What runs a kind of settings on a node: the command, the roles of its outputs that are loaded,
    and the default opacity of its result over the input in the slice views."""

    command: str
    roles: tuple[str, ...]
    opacity: float


NODE_TASKS: dict[type, NodeTask] = {
    SegmentSettings: NodeTask("segment", SEGMENT_ROLES, 0.4),
    CounterfactualSettings: NodeTask("counterfactual", COUNTERFACTUAL_ROLES, 1.0),
}


def prepare(
    volume_node: Any,
    settings: SegmentSettings | CounterfactualSettings,
    *,
    fade: float | None = None,
    session: SceneSession | None = None,
    output: str | Path | None = None,
) -> PreparedRun:
    """The run of :func:`segment` or :func:`counterfactual` for ``settings``, not started (for a GUI that
    starts it itself); ``fade`` (None: the task's default) as in :func:`counterfactual`."""
    task = NODE_TASKS[type(settings)]
    return prepare_run(
        volume_node,
        task.command,
        [],
        task.roles,
        session=session,
        output=output,
        foreground_opacity=task.opacity if fade is None else fade,
        settings=settings,
    )


def segment(
    volume_node: Any,
    *,
    blocking: bool = True,
    session: SceneSession | None = None,
    output: str | Path | None = None,
    **options: Any,
) -> SegmentResult | NodeJob[SegmentResult]:
    """LDSeg segmentation of a volume node: a segmentation node and its uncertainty map (values 0..1).

    ``options`` are the :class:`~latentdrift.core.settings.SegmentSettings` (with their defaults there):
    ``model`` (None: the default segmentation model), ``samples`` diffusion samples of ``steps`` DDIM
    steps each (None: the model's default) combined per slice, ``slices`` a range ``"a:b"`` along
    ``axis`` (default: all), ``probabilities=True`` also loads one probability map per class,
    ``device``, ``seed``.
    """
    run = prepare(volume_node, build_settings(SegmentSettings, options), session=session, output=output)
    return launch(run, as_segment_result, blocking)


def counterfactual(
    volume_node: Any,
    *,
    fade: float = 1.0,
    blocking: bool = True,
    session: SceneSession | None = None,
    output: str | Path | None = None,
    **options: Any,
) -> CounterfactualResult | NodeJob[CounterfactualResult]:
    """A Latent Drift counterfactual of a volume node and its signed difference map.

    ``options`` are the settings of :func:`latentdrift.core.settings.counterfactual_settings` (defaults
    there; ``drift`` and ``guidance`` left out take the values recorded with the model,
    :mod:`latentdrift.counterfactual.recorded_sampling`): ``mode`` is ``instruct`` (give ``instruction``, or ``source``/``target`` attributes such
    as ``"age=70,sex=F,dx=CN"`` → ``"age=77,dx=MCI"``), ``img2img`` (give ``prompt``) or ``direction``
    (give ``source`` and ``target``); ``drift`` is the Latent Drift δ; ``model`` None uses the edit
    mode's default model (``brain-mri-instruct`` for instruct, else ``brain-mri-sd``). An instruct
    edit with ``source`` attributes is taken relative to the factual edit (keep the source's
    attributes); ``factual_reference=False`` takes it relative to the VAE reconstruction (half the
    time). ``fade`` is the opacity of the counterfactual over the input in the slice views.
    """
    run = prepare(volume_node, counterfactual_options(**options), fade=fade, session=session, output=output)
    return launch(run, as_counterfactual_result, blocking)


def as_segment_result(result: RunResult) -> SegmentResult:
    """A segment run's nodes as a :class:`SegmentResult` (raises when it wrote no segmentation)."""
    return result_of(SegmentResult, result)


def as_counterfactual_result(result: RunResult) -> CounterfactualResult:
    """A counterfactual run's nodes as a :class:`CounterfactualResult` (raises when it wrote none)."""
    return result_of(CounterfactualResult, result)


def attributes_text(age: float | None = None, sex: str | None = None, diagnosis: str | None = None) -> str:
    """Patient attributes as the CLI's ``--from``/``--to`` text, leaving unknown ones out.

    A negative age, an empty or ``"unknown"`` sex and an empty diagnosis mean unknown.
    """
    parts = []
    if age is not None and age >= 0:
        parts.append(f"age={age:g}")
    if sex and sex.strip().lower() != "unknown":
        parts.append(f"sex={sex.strip()}")
    if diagnosis and diagnosis.strip():
        parts.append(f"dx={diagnosis.strip()}")
    return ",".join(parts)


def set_fade(foreground_opacity: float, session: SceneSession | None = None) -> None:
    """Set the foreground opacity (the counterfactual over the input) in every slice view."""
    session = session or SceneSession.from_application()
    for index in range(session.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        session.scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode").SetForegroundOpacity(
            foreground_opacity
        )


def start_finetune(cohort: str | Path, scheme: str, job_dir: str | Path, **options: Any) -> TrainingJob:
    """Start fine-tuning in the background; returns its :class:`TrainingJob` at once.

    ``options`` are the other fields of :class:`~latentdrift.finetune.config.FinetuneConfig` (defaults
    there), e.g. ``steps``, ``drift`` (train with Latent Drift δ) or ``search_drift=True`` (search δ
    first), ``model`` (None: the default base model ``mini-sd-natural``; for the ``ldseg`` scheme an
    LDSeg model to fine-tune, None: train one from scratch), ``device``, ``seed``. The config goes
    to the engine process as JSON.
    """
    from ..finetune.config import FinetuneConfig

    if scheme not in FINETUNE_SCHEMES:
        raise errors.ParameterError(f"Unknown scheme '{scheme}': use {', '.join(FINETUNE_SCHEMES)}.")
    values = edit_fields({"cohort": str(cohort), "scheme": scheme, **options})
    config = build_settings(FinetuneConfig, values)
    process = EngineProcess.start_command("finetune", ["--job-dir", str(job_dir)], settings=config)
    return TrainingJob(job_dir, process)
