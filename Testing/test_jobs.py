"""Fine-tuning jobs as real processes: kill -9 and resume, cancel, status, 2 processes, LDSeg, batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_support import ONE_THREAD, quick_config, tiny_base, write_blob, write_cohort

from latentdrift.cli import main
from latentdrift.core.errors import CancelledError, JobError
from latentdrift.finetune import jobs
from latentdrift.finetune.checkpoints import checkpoint_step, checkpoints, is_complete


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("jobs")
    return {
        "root": root,
        "cohort": write_cohort(root / "cohort"),
        "base": tiny_base(root / "base"),
        "cache": root / "cache",
    }


@pytest.fixture(autouse=True)
def one_thread(monkeypatch) -> None:
    for name, value in ONE_THREAD.items():
        monkeypatch.setenv(name, value)


def _wait(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _steps(job: Path) -> list[int]:
    path = job / "status.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]


def _at_least(job: Path, step: int) -> bool:
    return (_steps(job) or [0])[-1] >= step


def test_kill_9_then_resume_continues_from_the_last_checkpoint(setup) -> None:
    job = setup["root"] / "killed"
    config = quick_config(
        setup["cohort"], setup["base"], "basic", setup["cache"], steps=30, checkpoint_every=3, sample_every=0
    )
    jobs.create_job(job, config)
    process = jobs.start(job)
    _wait(lambda: _at_least(job, 8))
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _steps(job)[-1]
    state = jobs.status(job)
    assert state["state"] == "interrupted" and state["checkpoints"]
    assert all(is_complete(p) for p in checkpoints(job / "checkpoints"))
    assert len(checkpoints(job / "checkpoints")) <= 2
    last_good = max(state["checkpoints"])
    assert killed_at - last_good <= 3
    jobs.resume(job).wait(timeout=300)
    assert jobs.status(job)["state"] == "finished"
    assert _steps(job) == list(range(1, 31))  # lost steps were redone, not duplicated
    assert f"Resuming from step {last_good}" in (job / "log.txt").read_text(encoding="utf-8")
    assert (job / "model" / "model_index.json").is_file()


def test_cancel_checkpoints_and_stops_then_resume_finishes(setup) -> None:
    job = setup["root"] / "cancelled"
    jobs.create_job(
        job,
        quick_config(
            setup["cohort"],
            setup["base"],
            "basic",
            setup["cache"],
            steps=400,
            checkpoint_every=100,
            sample_every=0,
        ),
    )
    process = jobs.start(job)
    _wait(lambda: _at_least(job, 3))
    assert jobs.cancel(job)
    assert process.wait(timeout=120) == CancelledError.exit_code
    state = jobs.status(job)
    assert state["state"] == "cancelled" and "Cancelled at step" in state["message"]
    stopped = _steps(job)[-1]
    assert state["checkpoints"] == [stopped]  # checkpointed where it stopped, not at the last interval
    config = json.loads((job / "config.json").read_text(encoding="utf-8"))
    (job / "config.json").write_text(json.dumps({**config, "steps": stopped + 1}), encoding="utf-8")
    assert main(["jobs", "resume", str(job), "--quiet"]) == 0
    assert jobs.status(job)["state"] == "finished" and _steps(job)[-1] == stopped + 1


@pytest.mark.parametrize("scheme", ["lora", "textual-inversion", "custom-diffusion"])
def test_resumed_training_draws_exactly_what_an_uninterrupted_run_draws(setup, scheme: str) -> None:
    """Also: checkpoints of only the trained weights restore exactly (the frozen rest is the base's)."""
    straight, split = setup["root"] / f"straight-{scheme}", setup["root"] / f"split-{scheme}"
    config = quick_config(
        setup["cohort"], setup["base"], scheme, setup["cache"], steps=4, sample_every=0, drift=0.1
    )
    jobs.create_job(straight, config)
    jobs.run_job(straight)
    jobs.create_job(split, replace(config, steps=2))
    jobs.run_job(split)
    (split / "config.json").write_text(json.dumps(config.to_json()), encoding="utf-8")
    jobs.run_job(split)
    losses = [
        [json.loads(line)["loss"] for line in (j / "status.jsonl").read_text(encoding="utf-8").splitlines()]
        for j in (straight, split)
    ]
    assert losses[0] == losses[1]
    for path in sorted((straight / "model").rglob("*.safetensors")):
        resumed = load_file(split / "model" / path.relative_to(straight / "model"))
        for name, tensor in load_file(path).items():
            assert torch.equal(tensor, resumed[name]), f"{path.name}: {name}"


def test_a_checkpoint_of_whole_models_from_before_still_resumes_exactly(setup, monkeypatch) -> None:
    from latentdrift.finetune import loop

    config = quick_config(
        setup["cohort"], setup["base"], "lora", setup["cache"], steps=4, sample_every=0, drift=0.1
    )
    old, straight = setup["root"] / "whole-checkpoint", setup["root"] / "straight-lora"
    if not (straight / "model").is_dir():
        jobs.create_job(straight, config)
        jobs.run_job(straight)
    with monkeypatch.context() as patched:  # checkpoints as they were written before: whole models
        patched.setattr(loop, "save_trainable_weights_only", lambda accelerator: None)
        jobs.create_job(old, replace(config, steps=2))
        jobs.run_job(old)
    (old / "config.json").write_text(json.dumps(config.to_json()), encoding="utf-8")
    jobs.run_job(old)
    final, resumed = (
        load_file(j / "model" / "unet" / "diffusion_pytorch_model.safetensors") for j in (straight, old)
    )
    assert all(torch.equal(tensor, resumed[name]) for name, tensor in final.items())


def test_a_lora_checkpoint_holds_the_adapters_and_not_the_frozen_unet(setup) -> None:
    from safetensors import safe_open

    job = setup["root"] / "lora-checkpoint"
    jobs.create_job(job, quick_config(setup["cohort"], setup["base"], "lora", setup["cache"], sample_every=0))
    jobs.run_job(job)
    weights = sorted(checkpoints(job / "checkpoints")[0].glob("model*.safetensors"))
    assert len(weights) == 1  # the UNet, the one prepared model of a LoRA job
    with safe_open(str(weights[0]), "pt") as stored:
        keys = list(stored.keys())
    with safe_open(str(setup["base"] / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as base:
        frozen = len(list(base.keys()))
    assert keys and all("lora" in key for key in keys) and len(keys) < frozen


def test_cli_status_list_and_refusals(setup, capsys) -> None:
    job = setup["root"] / "cli"
    args = ["finetune", "--cohort", str(setup["cohort"]), "--scheme", "basic", "--model", str(setup["base"])]
    args += [
        "--steps",
        "1",
        "--resolution",
        "16",
        "--batch-size",
        "2",
        "--sample-every",
        "0",
        "--device",
        "cpu",
    ]
    args += ["--cache-dir", str(setup["cache"]), "--drift", "0.05", "--job-dir", str(job), "--quiet"]
    assert main(args) == 0
    assert main(["jobs", "status", str(job), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "finished" and status["step"] == 1 and status["model"]
    assert main(["jobs", "list", str(setup["root"])]) == 0
    assert "cli  basic  finished  step 1/1" in capsys.readouterr().out
    assert main(args) == JobError.exit_code  # the folder already holds a job
    assert "already holds a job" in capsys.readouterr().err
    assert main(["jobs", "status", str(setup["root"] / "nothing")]) == JobError.exit_code


def test_two_processes_with_accelerate_launch(setup) -> None:
    job = setup["root"] / "ddp"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
    ]
    command += [
        "--cpu",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "latentdrift.cli",
        "finetune",
    ]
    command += [
        "--cohort",
        str(setup["cohort"]),
        "--scheme",
        "basic",
        "--model",
        str(setup["base"]),
        "--steps",
        "2",
    ]
    command += ["--resolution", "16", "--batch-size", "1", "--checkpoint-every", "1", "--sample-every", "2"]
    command += [
        "--sample-steps",
        "2",
        "--device",
        "cpu",
        "--cache-dir",
        str(setup["cache"]),
        "--job-dir",
        str(job),
        "--quiet",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, **ONE_THREAD}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _steps(job) == [1, 2]
    assert json.loads((job / "state.json").read_text(encoding="utf-8"))["state"] == "finished"
    assert [checkpoint_step(p) for p in checkpoints(job / "checkpoints")] == [2, 1]
    assert (job / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def _segmentation_cohort(folder: Path) -> Path:
    """Two 8 mm synthetic brains (labels 0–3) and a row whose label file is missing; the CSV's path."""
    from latentdrift.core.volumes import write_volume
    from latentdrift.fixtures.synthetic import SubjectSettings, synthetic_subject

    lines = ["subject,path,label"]
    for seed in range(2):
        image, labels = synthetic_subject(seed, SubjectSettings(spacing_mm=8.0))
        write_volume(image, folder / f"s{seed}.nrrd")
        write_volume(labels, folder / f"s{seed}_label.nrrd")
        lines.append(f"s{seed},s{seed}.nrrd,s{seed}_label.nrrd")
    lines.append("bad,s0.nrrd,missing_label.nrrd")
    (folder / "seg.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "seg.csv"


@pytest.fixture(scope="module")
def ldseg_job(tmp_path_factory) -> tuple[Path, dict]:
    """One LDSeg fine-tuning job run to its end (shared: training it is the slow part): its folder and summary."""
    root = tmp_path_factory.mktemp("ldseg-job")
    config = quick_config(
        _segmentation_cohort(root), None, "ldseg", root / "cache", resolution=32, validation_fraction=0.5
    )
    job = jobs.create_job(root / "job", config)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ONE_THREAD.items():
            patch.setenv(name, value)
        return job, jobs.run_job(job)


def test_ldseg_scheme_trains_through_the_ldseg_training(ldseg_job: tuple[Path, dict]) -> None:
    from latentdrift.segmentation.ldseg import load_ldseg_model

    job, summary = ldseg_job
    assert summary["command"] == "train-ldseg"
    model = load_ldseg_model(job / "model", "cpu")
    assert model.config.num_classes == 4
    report = json.loads((job / "cohort_report.json").read_text(encoding="utf-8"))
    assert (
        report["rows_used"] == 2
        and "missing_label" in report["problems"][0]["reason"] + report["problems"][0]["path"]
    )
    assert _steps(job)[-1] == 2 and jobs.status(job)["state"] == "finished"
    assert (
        checkpoints(job / "checkpoints") and jobs.status(job)["checkpoints"]
    )  # the job's, as every scheme's


def test_ldseg_scheme_fine_tunes_the_model_it_is_given(tmp_path: Path) -> None:
    from latentdrift.core.errors import ModelError
    from latentdrift.segmentation.ldseg import LDSegNetwork, load_ldseg_model, save_ldseg_model, tiny_config

    names = ["background", "fluid", "grey", "white"]
    start = tmp_path / "start"
    save_ldseg_model(LDSegNetwork(tiny_config(names, image_size=32)), start)
    cohort = _segmentation_cohort(tmp_path)
    config = quick_config(cohort, start, "ldseg", tmp_path / "cache", resolution=64, validation_fraction=0.5)
    job = jobs.create_job(tmp_path / "job", config)
    jobs.run_job(job)
    model = load_ldseg_model(job / "model", "cpu")
    assert model.config.class_names == names and model.config.image_size == 32  # the model's, not 64
    assert f"Fine-tuned from `{start}`" in (job / "model" / "MODEL_CARD.md").read_text(encoding="utf-8")

    for changes, message in (
        ({"classes": "background,a,b,c"}, "fine-tuning keeps the model's classes"),
        ({"axis": "coronal"}, "segments axial slices; fine-tune it with --axis axial"),
    ):
        wrong = jobs.create_job(tmp_path / f"wrong-{len(message)}", replace(config, **changes))
        with pytest.raises(ModelError, match=message):
            jobs.run_job(wrong)
        assert jobs.status(wrong)["state"] == "failed" and not (wrong / "model").exists()


def test_batch_segment_skips_bad_rows_and_finished_subjects(tmp_path: Path, capsys) -> None:
    from latentdrift.segmentation.ldseg import LDSegNetwork, save_ldseg_model, tiny_config

    model = tmp_path / "ldseg"
    save_ldseg_model(LDSegNetwork(tiny_config(["background", "object"], image_size=32)), model)
    for name in ("a", "b"):
        write_blob(tmp_path / f"{name}.nrrd", 3, shape=(4, 20, 20))
    (tmp_path / "c.csv").write_text(
        "subject,session,path\na,1,a.nrrd\nb,1,b.nrrd\nc,1,missing.nrrd\nd,1\n", encoding="utf-8"
    )
    args = [
        "batch",
        "segment",
        str(tmp_path / "c.csv"),
        "--model",
        str(model),
        "--samples",
        "1",
        "--steps",
        "1",
    ]
    args += ["--device", "cpu", "-o", str(tmp_path / "out")]
    assert main(args) == 1  # the missing file fails its row, the others are done
    first = json.loads((tmp_path / "out" / "batch.json").read_text(encoding="utf-8"))
    assert sorted(first["done"]) == ["a_1", "b_1"] and first["failed"][0]["folder"] == "c_1"
    assert first["bad_rows"][0]["line"] == 5
    assert (tmp_path / "out" / "a_1" / "summary.json").is_file()
    main(args)
    again = json.loads((tmp_path / "out" / "batch.json").read_text(encoding="utf-8"))
    assert sorted(again["already_done"]) == ["a_1", "b_1"] and again["done"] == []


def test_an_ldseg_job_reports_its_loss_for_the_loss_chart(ldseg_job: tuple[Path, dict]) -> None:
    job, _ = ldseg_job
    records = [json.loads(line) for line in (job / "status.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records and all(isinstance(record["loss"], float) for record in records)
