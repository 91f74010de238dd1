"""20 random kill -9 / resume trials on one tiny fine-tuning job (a real background process each time).

Each trial starts the job (``latentdrift.finetune.jobs.start``, i.e. ``python -m latentdrift.cli jobs resume``),
waits a random time after it has made progress, kills it with SIGKILL (possibly in the middle of a
checkpoint), then checks: every checkpoint folder is complete and its safetensors files load; the
steps lost (last logged step − step resumed from) are at most one checkpoint interval; the next
process resumes from the newest checkpoint. At the end the job runs to completion and its model loads.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/finetune/kill_resume.py   → results_kill_resume.json/.md
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path

from common import HERE, machine, tiny_cohort
from safetensors.torch import load_file

from latentdrift.finetune import jobs
from latentdrift.finetune.checkpoints import checkpoint_step, checkpoints, is_complete
from latentdrift.finetune.config import FinetuneConfig
from latentdrift.fixtures.tiny_models import build_tiny_sd

TRIALS = 20
INTERVAL = 3
STEPS = 100_000  # never reached during the trials


def steps_logged(job: Path) -> list[int]:
    path = job / "status.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]


def checkpoints_ok(job: Path) -> tuple[bool, list[int]]:
    found = checkpoints(job / "checkpoints")
    for path in found:
        if not is_complete(path):
            return False, []
        for weights in path.glob("*.safetensors"):
            load_file(str(weights))
    return True, [checkpoint_step(p) for p in found]


def trial(job: Path, rng: random.Random, number: int) -> dict:
    before = (steps_logged(job) or [0])[-1]
    started = time.monotonic()
    process = jobs.start(job)
    while (steps_logged(job) or [0])[-1] <= before + 1:
        time.sleep(0.02)
    resumed_log = (job / "log.txt").read_text(encoding="utf-8").count("Resuming from step")
    time.sleep(rng.uniform(0.0, 3.0))
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = (steps_logged(job) or [0])[-1]
    ok, steps = checkpoints_ok(job)
    lost = killed_at - (max(steps) if steps else 0)
    return {
        "trial": number,
        "started_at_step": before,
        "killed_at_step": killed_at,
        "checkpoints": steps,
        "checkpoints_intact": ok,
        "steps_lost": lost,
        "resumed": resumed_log > (0 if number == 1 else number - 2),
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    try:
        config = FinetuneConfig(
            cohort=str(tiny_cohort(root / "cohort")),
            scheme="basic",
            model=str(build_tiny_sd(root / "base")),
            steps=STEPS,
            resolution=32,
            batch_size=2,
            checkpoint_every=INTERVAL,
            sample_every=0,
            device="cpu",
            cache_dir=str(root / "cache"),
        )
        job = jobs.create_job(root / "job", config)
        rng = random.Random(0)
        trials = [trial(job, rng, number) for number in range(1, TRIALS + 1)]
        final_steps = (steps_logged(job) or [0])[-1] + 3
        (job / "config.json").write_text(
            json.dumps({**config.to_json(), "steps": final_steps}), encoding="utf-8"
        )
        jobs.resume(job).wait(timeout=600)
        finished = jobs.status(job)["state"] == "finished" and (job / "model" / "model_index.json").is_file()
        logged = steps_logged(job)
        results = {
            "trials": trials,
            "all_checkpoints_intact": all(t["checkpoints_intact"] for t in trials),
            "max_steps_lost": max(t["steps_lost"] for t in trials),
            "checkpoint_interval": INTERVAL,
            "every_trial_resumed": all(t["resumed"] for t in trials[1:]),
            "final_run_finished": finished,
            "status_steps_contiguous": logged == list(range(1, final_steps + 1)),
            "machine": machine(),
        }
        (HERE / "results_kill_resume.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        write_markdown(results)
        print(json.dumps({k: v for k, v in results.items() if k != "trials"}, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def write_markdown(results: dict) -> None:
    lines = [
        "# kill -9 / resume: 20 random trials",
        "",
        f"Command: `OMP_NUM_THREADS=1 {results['machine']['command']}`",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores "
        f"(load average at the end {results['machine']['load_average'][0]:.1f}), torch {results['machine']['torch']}",
        "",
        f"- every checkpoint intact after every kill: **{results['all_checkpoints_intact']}**",
        f"- every job resumed from its newest checkpoint: **{results['every_trial_resumed']}**",
        f"- most steps lost: **{results['max_steps_lost']}** (checkpoint interval {results['checkpoint_interval']})",
        f"- final run finished and its model loads: **{results['final_run_finished']}**; status steps contiguous: "
        f"**{results['status_steps_contiguous']}**",
        "",
        "| trial | started at | killed at | checkpoints | steps lost | s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {t['trial']} | {t['started_at_step']} | {t['killed_at_step']} | {t['checkpoints']} | {t['steps_lost']} | {t['seconds']} |"
        for t in results["trials"]
    ]
    (HERE / "results_kill_resume.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
