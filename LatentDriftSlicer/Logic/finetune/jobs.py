"""Fine-tuning jobs: a job folder (:mod:`.job_folder`) and the process that works on it.

Python API (what ``latentdrift.bridge.console`` and the CLI use)::

    job_dir = create_job("runs/lora", FinetuneConfig(cohort="cohort.csv", scheme="lora", model=..., steps=2000))
    process = start(job_dir)            # a separate process: python -m latentdrift.cli jobs resume JOB_DIR
    status(job_dir)                     # state, step, latest status line, checkpoints, model folder
    cancel(job_dir)                     # cancel-request file + SIGTERM: the job checkpoints and stops
    resume(job_dir)                     # a new process continuing from the last good checkpoint
    list_jobs("runs")                   # status of every job folder below

:func:`run_job` is the work itself (in the job's process, ``latentdrift finetune`` / ``jobs resume``):
cohort → report → (δ search) → training loop → model folder with ``MODEL_CARD.md``. A job that was
killed (state ``running`` but its process gone) shows as ``interrupted`` and resumes like a
cancelled one.
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from ..core.atomic_files import write_json_atomic
from ..core.errors import CancelledError, InputError, JobError, ModelError
from ..core.models import find_default, list_models, resolve_model
from ..core.progress import ProgressCallback
from ..core.results import ResultFolder
from ..core.values import parse_class_names
from ..evaluation.model_cards import finetuned_card
from .checkpoints import checkpoint_step, checkpoints, is_complete
from .cohorts import prepare_cohort, read_cohort, split_subjects, validate_rows, write_report
from .config import FinetuneConfig
from .job_folder import JobFolder, StatusLines
from .metadata import update_metadata

LOG = logging.getLogger("latentdrift")
DIFFUSION_KINDS = ("stable-diffusion", "instruct-pix2pix")


# --------------------------------------------------------------------------- the API


def create_job(job_dir: str | Path, config: FinetuneConfig) -> Path:
    """Make the job folder with its ``config.json``; refuses a folder that already holds a job."""
    job = JobFolder(job_dir)
    if job.config.exists():
        raise JobError(
            f"'{job.path}' already holds a job: resume it with `latentdrift jobs resume {job.path}` "
            "or choose another job folder."
        )
    if not Path(config.cohort).expanduser().exists():
        raise InputError(f"Cohort '{config.cohort}' does not exist: give a CSV file or a folder of volumes.")
    job.path.mkdir(parents=True, exist_ok=True)
    absolute = str(Path(config.cohort).expanduser().absolute())
    write_json_atomic(job.config, replace(config, cohort=absolute).to_json())
    job.write_state("created")
    return job.path


def start(job_dir: str | Path) -> subprocess.Popen:
    """Run the job in a new background process (output in ``JOB_DIR/output.txt``); returns it at once."""
    job = _existing(job_dir)
    if _alive(job):
        raise JobError(f"Job '{job.path}' is already running (process {job.read_state().get('pid')}).")
    job.clear_cancel()
    output = (job.path / "output.txt").open("ab")
    command = [
        sys.executable,
        "-m",
        "latentdrift.cli",
        "jobs",
        "resume",
        str(job.path),
        "--keep-cancel",
        "--quiet",
    ]
    return subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )


def resume(job_dir: str | Path) -> subprocess.Popen:
    """Continue a cancelled, interrupted or failed job in a new background process."""
    return start(job_dir)


def cancel(job_dir: str | Path) -> bool:
    """Ask the job to checkpoint and stop (cancel file + SIGTERM); True when a running process was signalled."""
    job = _existing(job_dir)
    job.request_cancel()
    pid = job.read_state().get("pid")
    if _alive(job) and pid is not None:
        os.kill(int(pid), signal.SIGTERM)
        return True
    return False


def status(job_dir: str | Path) -> dict[str, Any]:
    """Where a job stands: state, step, steps, the latest status line, checkpoints, model folder."""
    job = _existing(job_dir)
    state = job.read_state()
    name = state.get("state", "created")
    if name == "running" and not _alive(job):
        name = "interrupted"
    records = job.status_records()
    config = FinetuneConfig.read(job.config)
    good = [checkpoint_step(p) for p in checkpoints(job.checkpoints) if is_complete(p)]
    return {
        "job_dir": str(job.path),
        "state": name,
        "scheme": config.scheme,
        "step": records[-1]["step"] if records else 0,
        "steps": config.steps,
        "latest": records[-1] if records else {},
        "checkpoints": good,
        "model": str(job.model) if (job.model / "summary.json").is_file() else None,
        "pid": state.get("pid"),
        "message": state.get("message"),
    }


def list_jobs(root: str | Path = ".") -> list[dict[str, Any]]:
    """The status of ``root`` (when it is a job) and of every job folder directly below it."""
    root = Path(root).expanduser()
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    return [status(p) for p in candidates if (p / "config.json").is_file()]


def _existing(job_dir: str | Path) -> JobFolder:
    job = JobFolder(job_dir)
    if not job.config.is_file():
        raise JobError(
            f"'{job.path}' is not a job folder (no config.json): start one with `latentdrift finetune`."
        )
    return job


def _alive(job: JobFolder) -> bool:
    """True when the job's recorded process is running (and is not this process)."""
    pid = job.read_state().get("pid")
    if pid is None or int(pid) == os.getpid():
        return False
    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --------------------------------------------------------------------------- the work


def run_job(
    job_dir: str | Path, progress: ProgressCallback | None = None, clear_cancel: bool = True
) -> dict[str, Any]:
    """Do the job in this process (all processes under ``accelerate launch``); the model's summary.

    Resumes from the last good checkpoint; ``clear_cancel`` forgets an earlier cancel request first
    (:func:`start` clears it before launching instead, so a cancel sent meanwhile is not lost). SIGTERM/SIGINT or ``cancel-requested`` checkpoint and raise
    :class:`CancelledError`; other errors mark the job ``failed``. Non-main processes return ``{}``.
    """
    from accelerate import PartialState

    job = _existing(job_dir)
    config = FinetuneConfig.read(job.config)
    main = PartialState().is_main_process
    job.catch_signals()
    handler = _log_to(job) if main else None
    if main:
        if clear_cancel:
            job.clear_cancel()
        job.write_state("running", pid=os.getpid(), steps=config.steps, message=None)
    try:
        run = _run_ldseg if config.scheme == "ldseg" else _run_diffusion
        summary = run(job, config, progress)
    except CancelledError as error:
        if main:
            job.write_state("cancelled", message=str(error))
        raise
    except BaseException as error:
        if main:
            job.write_state("failed", message=str(error) or type(error).__name__)
        raise
    finally:
        if handler is not None:
            LOG.removeHandler(handler)
            handler.close()
    if main:
        job.write_state("finished", model=str(job.model), message=None)
    return summary


def _log_to(job: JobFolder) -> logging.Handler:
    handler = logging.FileHandler(job.log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(min(LOG.level or logging.INFO, logging.INFO))
    return handler


def base_model(config: FinetuneConfig) -> Path:
    """The base model folder: ``config.model`` (folder or name), else the default (``mini-sd-natural``), else any.

    Without ``config.model`` the default base model is used when installed, else the first diffusion
    model registered (an InstructPix2Pix one first for the instruct-pix2pix scheme).
    """
    wanted = (
        ("instruct-pix2pix", "stable-diffusion") if config.scheme == "instruct-pix2pix" else DIFFUSION_KINDS
    )
    if config.model is not None:
        return resolve_model(config.model, DIFFUSION_KINDS).path
    default = find_default("finetune")
    if default is not None:
        return default.path
    found = sorted((m for m in list_models() if m.kind in wanted), key=lambda m: wanted.index(m.kind))
    if not found:
        raise ModelError("No base model: give --model with a diffusers Stable Diffusion folder.")
    return found[0].path


def _run_diffusion(
    job: JobFolder, config: FinetuneConfig, progress: ProgressCallback | None
) -> dict[str, Any]:
    from accelerate.utils import set_seed

    from ..core.devices import training_accelerator
    from .cohorts import longitudinal_pairs
    from .loop import loss_summary, train
    from .sampling import bundle_of, has_drift, save_curve
    from .schemes import load_parts, make_scheme

    accelerator = training_accelerator(config.device, config.mixed_precision, config.gradient_accumulation)
    set_seed(config.seed)  # module initialisation (LoRA, new embedding rows) is reproducible
    main = accelerator.is_main_process
    with accelerator.main_process_first():
        data = prepare_cohort(config.cohort, config.slice_settings(), config.cache_dir)
    held_out = split_subjects([row["subject"] for row in data.rows], config.validation_fraction, config.seed)
    train_slices = [n for n in range(len(data.slices)) if data.subject(n) not in held_out]
    reference = [n for n in range(len(data.slices)) if data.subject(n) in held_out] or train_slices
    report = dict(data.report, validation_subjects=sorted(held_out))
    if config.scheme == "instruct-pix2pix":
        report["pair_problems"] = [vars(p) for p in longitudinal_pairs(data)[1]]
    if main:
        write_report(report, job.path)
    scheme = make_scheme(config)
    examples = scheme.examples(data, train_slices, config.prompt_options())
    base = base_model(config)
    parts = load_parts(base)
    curve = None
    if config.search_drift:
        curve = _searched_drift(job, config, bundle_of(_on(parts, accelerator.device)), data, reference, main)
        accelerator.wait_for_everyone()
    delta = curve.best if curve is not None else (config.drift or 0.0)
    scheme.setup(parts)
    with accelerator.main_process_first():
        scheme.prepare_data(parts, job.path, accelerator.device)
    status_lines = StatusLines(job, config.log_every, progress, "fine-tuning")
    outcome = train(accelerator, config, scheme, parts, examples, delta, job, status_lines)
    summary: dict[str, Any] = {}
    if main:
        metadata = {
            "scheme": config.scheme,
            "base_model": str(base),
            "cohort": config.cohort,
            "cohort_key": data.key,
            "steps": config.steps,
            "drift": delta,
            "trained_drift": delta,
            "drift_start": has_drift(delta),
            "drift_curve": curve.to_json() if curve is not None else None,
            "prompt_options": vars(config.prompt_options()),
            "tokens": _tokens(config),
            "losses": loss_summary(outcome.losses),
        }
        inputs = {"cohort": config.cohort, "model": str(base), "job_dir": str(job.path)}
        with ResultFolder(job.model, "finetune", inputs, settings=config.to_json()) as result:
            for name in scheme.save(outcome.parts, result.staging):
                result.record("model", name)
            update_metadata(result.staging, **metadata)
            result.record("metadata", "latentdrift.json")
            result.path("model_card", "MODEL_CARD.md").write_text(
                finetuned_card(metadata, report), encoding="utf-8"
            )
            steps = [entry["step"] for entry in outcome.losses]
            losses = [entry["loss"] for entry in outcome.losses]
            save_curve(
                steps, losses, result.path("loss_curve", "loss_curve.png"), "step", "loss", config.scheme
            )
            for path in write_report(report, result.staging):
                result.record("cohort_report", path.name)
            if curve is not None:
                from .drift_search import store_search

                for path in store_search(curve, result.staging).values():
                    result.record("drift_curve", path.name)
            result.figures.update({"drift": delta, **loss_summary(outcome.losses)})
        summary = result.summary()
    accelerator.wait_for_everyone()
    return summary


def _on(parts: Any, device: Any) -> Any:
    for module in (parts.unet, parts.vae, parts.text_encoder):
        module.to(device)
    return parts


def _tokens(config: FinetuneConfig) -> dict[str, str]:
    return {
        "textual-inversion": {"placeholder_token": config.placeholder_token},
        "dreambooth": {"instance_token": config.instance_token},
        "custom-diffusion": {"modifier_token": config.modifier_token} if config.modifier_token else {},
    }.get(config.scheme, {})


def _searched_drift(
    job: JobFolder, config: FinetuneConfig, bundle: Any, data: Any, reference: list[int], main: bool
) -> Any:
    """The δ search on the base model, done once per job (kept in ``JOB_DIR/drift_search``)."""
    import json

    from .drift_search import DriftCurve, DriftPoint, search_drift, store_search

    folder = job.path / "drift_search"
    stored = folder / "drift_curve.json"
    if main and not stored.is_file():
        curve = search_drift(
            bundle,
            data.images[reference],
            [data.prompt(n, config.prompt_options()) for n in reference],
            config.search_grid,
            config.search_samples,
            config.search_steps,
            config.seed,
        )
        store_search(curve, folder)
        LOG.info("δ search: best δ = %g", curve.best)
    from accelerate import PartialState

    PartialState().wait_for_everyone()
    values = json.loads(stored.read_text(encoding="utf-8"))
    points = [DriftPoint(**p) for p in values.pop("points")]
    return DriftCurve(points=points, **values)


def _run_ldseg(job: JobFolder, config: FinetuneConfig, progress: ProgressCallback | None) -> dict[str, Any]:
    """LDSeg: validate image/label rows, then the LDSeg training (checkpoints in the job's ``checkpoints``,
    as every scheme's)."""
    from ..segmentation.workflow import train_segmentation_model

    rows, problems = read_cohort(config.cohort)
    ldseg, names = _ldseg_config(config, rows)
    good, bad = validate_rows(rows, len(names))
    report = {
        "cohort": config.cohort,
        "key": None,
        "rows_total": len(rows) + len(problems),
        "rows_used": len(good),
        "subjects": len({r.subject for r in good}),
        "slices": None,
        "problems": [vars(p) for p in sorted([*problems, *bad], key=lambda p: p.line)],
    }
    write_report(report, job.path)
    if not good:
        raise InputError(
            f"No usable image/label row in cohort '{config.cohort}': see {job.path / 'cohort_report.md'}."
        )
    pairs = job.path / "ldseg_pairs.csv"
    with pairs.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "subject"])
        writer.writerows([str(r.image), str(r.label), r.subject] for r in good)
    settings = ldseg_train_settings(config, job.checkpoints)
    status_lines = StatusLines(job, config.log_every)

    def report_step(done: int, total: int, message: str) -> None:
        if progress is not None:
            progress(done, total, message)
        if job.cancel_requested():
            raise CancelledError(
                f"Cancelled at step {done}: resume with `latentdrift jobs resume {job.path}` "
                f"(LDSeg continues from its last checkpoint, every {config.checkpoint_every} steps)."
            )

    summary = train_segmentation_model(
        pairs,
        job.model,
        ldseg,
        settings,
        config.validation_fraction,
        report_step,
        start_from=config.model,
        on_event=status_lines,
    )
    update_metadata(job.model, scheme="ldseg", cohort=config.cohort, steps=config.steps, drift=None)
    return summary


def ldseg_train_settings(config: FinetuneConfig, checkpoints: Path) -> Any:
    """The LDSeg :class:`~latentdrift.segmentation.ldseg.TrainSettings` of an ``ldseg`` job's ``config``."""
    from ..segmentation.ldseg import TrainSettings

    return TrainSettings(
        steps=config.steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate or 1e-3,
        seed=config.seed,
        checkpoint_dir=str(checkpoints),
        checkpoint_every=config.checkpoint_every,
        keep_checkpoints=config.keep_checkpoints,
        device=config.device,
        mixed_precision=config.mixed_precision,
        flip_left_right=config.axis != "sagittal",
    )


def _ldseg_config(config: FinetuneConfig, rows: list[Any]) -> tuple[Any, list[str]]:
    """(LDSeg config to train from scratch, class names); with ``config.model`` (an LDSeg model to
    fine-tune) the config is None and the model's classes, axis and resolution are kept
    (:func:`~latentdrift.segmentation.workflow.fine_tuning_config` refuses contradicting ones)."""
    from ..segmentation.ldseg import default_classes, training_config
    from ..segmentation.workflow import fine_tuning_config

    if config.model is None:
        names = _class_names(config, rows)
        return training_config(default_classes(names), axis=config.axis, image_size=config.resolution), names
    return None, fine_tuning_config(config.model, parse_class_names(config.classes), config.axis).class_names


def _class_names(config: FinetuneConfig, rows: list[Any]) -> list[str]:
    """``--classes``, or background + one class per label value found (the largest label decides)."""
    if config.classes:
        return parse_class_names(config.classes)
    from ..core.volumes import read_volume

    largest = 1
    for row in rows:
        if row.label is not None and row.label.exists():
            try:
                largest = max(largest, int(read_volume(row.label).voxels.max()))
            except Exception:  # unreadable labels are reported by the validation that follows
                continue
    return ["background", *[f"class {index}" for index in range(1, largest + 1)]]
