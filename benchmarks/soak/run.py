"""Random interruptions of ``latentdrift segment`` and ``counterfactual``: nothing lost, nothing left, nothing mixed.

    .venv/bin/python benchmarks/soak/run.py                       # until 220 interruptions, 1–2 hours on 2 CPU cores
    .venv/bin/python benchmarks/soak/run.py --interruptions 4 --quick   # a smoke test: prints, writes nothing

Each trial starts a real ``latentdrift`` process (tiny random models built here, an 8×24×24 volume,
``--no-preprocess``; one torch thread, or two and the slices shared by two threads) into one of a few
shared output folders and sends it SIGINT,
SIGTERM or SIGKILL at a random time between its start and a little after its usual end. In a quarter
of the trials a rival run (the other command, not interrupted) is started into the same folder soon after
the first one (before its signal when the signal comes late enough). After a SIGKILL the next run into that folder (run to its end) must clear what the
killed run left. Checked after every trial:

* **leftovers**: anything beside the output folder named ``.NAME.*`` (partial folders, lock files) and
  anything in the runs' own temporary directory (``TMPDIR``, one per run), once every run of the trial
  has ended; after a SIGKILL, once the next run into that folder has ended.
* **corrupt or mixed output folders**: an output folder that exists but whose ``summary.json`` is missing
  or unreadable, whose files are not exactly those it lists, whose files were not written during the run
  it describes (an older run's files next to a newer summary), whose volumes SimpleITK cannot read, or a
  complete result that disappeared.
* **rivals**: a run into a folder another run holds must fail at once with the lock's message
  (exit status 2), or succeed when the first run had already ended.

Writes ``benchmarks/soak/results.json`` and ``results.md`` (the command, the machine, the seed and every
count). Seeded: ``--seed`` fixes the sequence of commands, folders, signals and delays (the moments the
signals land still vary with the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
COMMON = ["--device", "cpu", "--no-preprocess", "--quiet"]
RIVAL_SHARE = 0.25
RIVAL_LAG = 0.15
"""A rival starts up to this fraction of a run's duration after the first run (or right after its signal)."""
SCENE_SHARE = 0.25
LATE_FACTOR = 1.15
"""Signals land between a run's start and this factor × its usual duration (some after it has ended)."""
RUN_TIMEOUT_S = 300
LOCKED = "being written by another run"
VOLUME_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha")


@dataclass
class Totals:
    """Every count the soak reports."""

    trials: int = 0
    runs: int = 0
    interruptions: dict[str, int] = field(default_factory=Counter)
    finished_before_signal: int = 0
    leftovers_found: int = 0
    corrupt_or_mixed_found: int = 0
    temp_leftovers_found: int = 0
    rivals: dict[str, int] = field(default_factory=Counter)
    recovery_runs: int = 0
    unexpected: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Workspace:
    """The models, the input volume and the shared output folders of one soak."""

    root: Path
    models: dict[str, Path]
    volume: Path
    folders: list[Path]
    run_count: int = 0

    def temp_dir(self) -> Path:
        """A fresh ``TMPDIR`` for one run."""
        self.run_count += 1
        folder = self.root / "tmp" / f"run-{self.run_count:04d}"
        folder.mkdir(parents=True)
        return folder


def build_workspace(root: Path, folder_count: int) -> Workspace:
    """Tiny random models (what the tests build) and a small intensity volume."""
    from latentdrift.fixtures.tiny_models import build_tiny_sd
    from latentdrift.segmentation.ldseg import LDSegNetwork, save_ldseg_model, tiny_config

    models = {
        "segment": save_ldseg_model(LDSegNetwork(tiny_config(("background", "tissue"))), root / "ldseg"),
        "counterfactual": build_tiny_sd(root / "instruct", instruct=True),
    }
    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(np.arange(8), np.arange(24), np.arange(24), indexing="ij")
    blob = np.exp(-((k - 4) ** 2 / 8 + (j - 12) ** 2 / 40 + (i - 12) ** 2 / 40))
    image = sitk.GetImageFromArray((1000 * blob + rng.normal(0, 20, blob.shape)).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 2.0))
    volume = root / "head.nii.gz"
    sitk.WriteImage(image, str(volume))
    folders = [root / "outputs" / f"out{n}" for n in range(folder_count)]
    folders[0].parent.mkdir()
    return Workspace(root, {k: Path(v) for k, v in models.items()}, volume, folders)


def command_line(space: Workspace, command: str, output: Path, seed: int, scene: bool) -> list[str]:
    """The ``latentdrift`` command of one run (a fresh Python process)."""
    model = ["--model", str(space.models[command])]
    if command == "segment":
        task = ["--samples", "2", "--steps", "2"]
    else:
        task = ["--edit", "instruct", "--from", "age=70", "--to", "age=75", "--steps", "2"]
    scene_option = ["--scene", "yes" if scene else "no"]
    return [
        sys.executable, "-m", "latentdrift.cli", command, str(space.volume), *model, *task,
        *COMMON, *scene_option, "--seed", str(seed), "--output", str(output),
    ]  # fmt: skip


def start(space: Workspace, argv: list[str], threads: int = 1) -> tuple[subprocess.Popen[str], Path]:
    """Start one run with its own ``TMPDIR`` and ``threads`` torch threads (2: two threads share the slices)."""
    temp = space.temp_dir()
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, temp


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for a run; ``(exit status, stderr)`` (a hung run is killed and reported as status 999)."""
    try:
        _out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        _out, err = process.communicate()
        return 999, err
    return process.returncode, err


# --------------------------------------------------------------------------- checks


def leftovers(output: Path) -> list[str]:
    """What runs left beside ``output``: hidden ``.NAME.*`` entries (partial folders, lock files)."""
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


def temp_leftovers(temp: Path) -> list[str]:
    """What a run left in its own temporary directory."""
    return sorted(p.name for p in temp.iterdir()) if temp.is_dir() else []


def listed_names(summary: dict[str, Any]) -> set[str]:
    """The top-level entries a ``summary.json`` lists, itself included."""
    names = {"summary.json"}
    for value in summary.get("outputs", {}).values():
        for name in [value] if isinstance(value, str) else value:
            names.add(Path(name).parts[0])
    return names


def folder_problem(output: Path) -> str | None:
    """Why ``output`` is not one run's whole result (None when it is, or when it does not exist)."""
    if not output.exists():
        return None
    try:
        summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"no readable summary.json ({error})"
    present = {p.name for p in output.iterdir()}
    if present != listed_names(summary):
        return f"files {sorted(present)} are not those listed {sorted(listed_names(summary))}"
    finished = datetime.fromisoformat(summary["finished"]).timestamp()
    started = finished - summary["elapsed_seconds"]
    for path in output.rglob("*"):
        if path.is_file() and not started - 2 <= path.stat().st_mtime <= finished + 2:
            return f"{path.name} was not written by the run its summary.json describes"
        if path.is_file() and path.name.endswith(VOLUME_SUFFIXES):
            try:
                sitk.ReadImage(str(path))
            except RuntimeError as error:
                return f"{path.name} is unreadable ({str(error).splitlines()[0]})"
        if path.is_file() and path.suffix == ".mrb" and zipfile.ZipFile(path).testzip() is not None:
            return f"{path.name} is a corrupt zip"
    return None


# --------------------------------------------------------------------------- trials


def trial(space: Workspace, totals: Totals, rng: random.Random, durations: dict[str, float]) -> None:
    """One interrupted run (and maybe a rival), then the checks; after a SIGKILL, the next run too."""
    output = rng.choice(space.folders)
    command = rng.choice(sorted(durations))
    kind = rng.choice(sorted(SIGNALS))
    delay = rng.uniform(0, LATE_FACTOR * durations[command])
    rival_delay = rng.uniform(0, RIVAL_LAG) * durations[command] if rng.random() < RIVAL_SHARE else None
    argv = command_line(space, command, output, rng.randrange(1000), rng.random() < SCENE_SHARE)
    complete_before = folder_problem(output) is None and output.exists()
    what = f"{command} into {output.name}, {kind} after {delay:.2f} s"

    process, temp = start(space, argv, rng.choice([1, 2]))
    temps = [temp]
    started = time.monotonic()
    rival = None
    if rival_delay is not None and rival_delay < delay:
        time.sleep(rival_delay)
        rival = start_rival(space, rng, command, output, temps)
    time.sleep(max(0.0, delay - (time.monotonic() - started)))
    if process.poll() is None:
        process.send_signal(SIGNALS[kind])
        totals.interruptions[kind] += 1
    else:
        totals.finished_before_signal += 1
    if rival_delay is not None and rival is None:
        rival = start_rival(space, rng, command, output, temps)
    code, err = finish(process)
    totals.runs += 1
    if not interrupted_as_expected(code, err, SIGNALS[kind], rival is not None):
        totals.unexpected.append(f"{what}: status {code}: {messages(err)}")
    if rival is not None:
        judge_rival(totals, rival)
    if code == -signal.SIGKILL:  # only the next run into the folder can clear what a killed run left
        recover(space, totals, rng, output, temps)
    check(totals, output, temps, complete_before, what)


def interrupted_as_expected(code: int, err: str, signum: int, rival: bool) -> bool:
    """Ended before its signal (0), stopped by the engine's handler (128 + signal, one line), killed by the
    signal before the handler was in place, or (with a rival that got the lock first) refused by the lock."""
    if code == -signal.SIGINT:  # Ctrl-C while Python starts: Python's own traceback
        return signum == signal.SIGINT
    if rival and code == 2:
        return LOCKED in one_error_line(err)
    return code in (0, 128 + signum, -signum) and "Traceback" not in err


def messages(err: str) -> str:
    """The end of a run's stderr without the libraries' import-time notices."""
    lines = [line for line in err.splitlines() if not line.startswith(("[transformers]", "Writing model"))]
    return "\n".join(lines)[-600:]


def start_rival(
    space: Workspace, rng: random.Random, command: str, output: Path, temps: list[Path]
) -> subprocess.Popen[str]:
    """A second run (the other command) into the same folder, not interrupted."""
    other = "segment" if command == "counterfactual" else "counterfactual"
    process, temp = start(space, command_line(space, other, output, rng.randrange(1000), False))
    temps.append(temp)
    return process


def judge_rival(totals: Totals, process: subprocess.Popen[str]) -> None:
    """A rival either ran after the first run ended (status 0) or was refused at once by the lock."""
    code, err = finish(process)
    totals.runs += 1
    if code == 0:
        totals.rivals["ran"] += 1
    elif code == 2 and LOCKED in one_error_line(err):
        totals.rivals["refused by the lock"] += 1
    else:
        totals.rivals["unexpected"] += 1
        totals.unexpected.append(f"rival: status {code}: {messages(err)}")


def one_error_line(err: str) -> str:
    """The one ``latentdrift: error:`` line of ``err`` ('' when there is none, several, or a traceback)."""
    lines = [line for line in err.splitlines() if line.startswith("latentdrift: error: ")]
    return lines[0] if len(lines) == 1 and "Traceback" not in err else ""


def recover(space: Workspace, totals: Totals, rng: random.Random, output: Path, temps: list[Path]) -> None:
    """The next run into a killed run's folder, run to its end."""
    command = rng.choice(["segment", "counterfactual"])
    process, temp = start(space, command_line(space, command, output, rng.randrange(1000), False))
    temps.append(temp)
    code, err = finish(process)
    totals.runs += 1
    totals.recovery_runs += 1
    if code != 0:
        totals.unexpected.append(f"run after a SIGKILL: status {code}: {messages(err)}")


def check(totals: Totals, output: Path, temps: list[Path], complete_before: bool, what: str) -> None:
    """Count leftovers beside ``output`` and in the runs' temporary directories, and a bad folder."""
    left = leftovers(output)
    if left:
        totals.leftovers_found += 1
        totals.problems.append(f"{what}: left {left}")
        for name in left:  # start the next trial clean, so one problem is counted once
            path = output.parent / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    in_temp = [name for temp in temps for name in temp_leftovers(temp)]
    if in_temp:
        totals.temp_leftovers_found += 1
        totals.problems.append(f"{what}: left in TMPDIR {in_temp}")
    problem = folder_problem(output)
    if problem is None and complete_before and not output.exists():
        problem = "a complete result disappeared"
    if problem is not None:
        totals.corrupt_or_mixed_found += 1
        totals.problems.append(f"{what}: {output.name}: {problem}")
        shutil.rmtree(output, ignore_errors=True)


def calibrate(space: Workspace) -> dict[str, float]:
    """Seconds of one plain run of each command (the window the signals are sent in)."""
    durations = {}
    for command in ("segment", "counterfactual"):
        output = space.root / "outputs" / f"calibration-{command}"
        started = time.monotonic()
        process, _temp = start(space, command_line(space, command, output, 0, False))
        code, err = finish(process)
        if code != 0:
            raise SystemExit(f"calibration run of {command} failed ({code}): {err}")
        durations[command] = round(time.monotonic() - started, 2)
        shutil.rmtree(output)
    return durations


def commit() -> str:
    """The commit of the code soaked (the repository holding this script)."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }


def write_results(report: dict[str, Any]) -> None:
    (HERE / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    t = report["totals"]
    lines = [
        "# Soak: random interruptions of segment and counterfactual",
        "",
        f"Command: `{report['command']}` (code at commit {report['commit'][:10]})  ",
        f"Machine: {report['machine']['platform']}, {report['machine']['cpus']} CPUs, Python "
        f"{report['machine']['python']}, torch {report['machine']['torch']}  ",
        f"Seed {report['seed']}, {report['folders']} shared output folders, {report['minutes']} minutes; "
        f"a plain run takes {report['durations']['segment']} s (segment) and "
        f"{report['durations']['counterfactual']} s (counterfactual), Python start-up included.",
        "",
        "| | |",
        "|---|---|",
        f"| trials | {t['trials']} |",
        f"| runs (with rivals and the runs after each SIGKILL) | {t['runs']} |",
        f"| interruptions | {sum(t['interruptions'].values())} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(t["interruptions"].items()))
        + ") |",
        f"| runs that had ended before their signal | {t['finished_before_signal']} |",
        "| rival runs into a folder in use | "
        + ", ".join(f"{k} {v}" for k, v in sorted(t["rivals"].items()))
        + " |",
        f"| runs after a SIGKILL (which clear what it left) | {t['recovery_runs']} |",
        f"| **leftovers found** (beside the folder; after a SIGKILL, after the next run) | **{t['leftovers_found']}** |",
        f"| **left in the runs' temporary directories** | **{t['temp_leftovers_found']}** |",
        f"| **corrupt or mixed output folders found** | **{t['corrupt_or_mixed_found']}** |",
        f"| unexpected exit statuses or messages | {len(t['unexpected'])} |",
        "",
    ]
    if t["problems"] or t["unexpected"]:
        lines += ["Problems:", ""] + [f"- {p}" for p in t["problems"] + t["unexpected"]] + [""]
    (HERE / "results.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--interruptions",
        type=int,
        default=220,
        help="trials go on until this many runs were signalled while running (default: 220); a signal that "
        "lands after its run ended counts as a trial, not as an interruption",
    )
    parser.add_argument("--seed", type=int, default=21, help="seed of the random choices (default: 21)")
    parser.add_argument("--folders", type=int, default=3, help="shared output folders (default: 3)")
    parser.add_argument("--quick", action="store_true", help="print the results, write nothing")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="latentdrift-soak-"))
    try:
        space = build_workspace(root, args.folders)
        durations = calibrate(space)
        print(f"a plain run takes {durations} s", flush=True)
        totals = Totals()
        while sum(totals.interruptions.values()) < args.interruptions:
            trial(space, totals, rng, durations)
            totals.trials += 1
            if totals.trials % 10 == 0:
                print(f"{sum(totals.interruptions.values())}/{args.interruptions} interruptions, "
                      f"{totals.trials} trials, {totals.runs} runs, "
                      f"leftovers {totals.leftovers_found}, corrupt or mixed {totals.corrupt_or_mixed_found}, "
                      f"unexpected {len(totals.unexpected)}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "command": " ".join([".venv/bin/python", "benchmarks/soak/run.py", *sys.argv[1:]]),
        "commit": commit(),
        "machine": machine(),
        "seed": args.seed,
        "folders": args.folders,
        "durations": durations,
        "minutes": round((time.monotonic() - began) / 60, 1),
        "totals": {
            key: dict(value) if isinstance(value, Counter) else value for key, value in vars(totals).items()
        },
    }
    print(json.dumps(report["totals"], indent=2))
    if not args.quick:
        write_results(report)
    clean = not (totals.leftovers_found or totals.corrupt_or_mixed_found or totals.temp_leftovers_found)
    return 0 if clean and not totals.unexpected else 1


if __name__ == "__main__":
    sys.exit(main())
