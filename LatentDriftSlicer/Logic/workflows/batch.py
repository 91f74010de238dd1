"""Batch inference over a cohort: one result folder per row, resumable, split across processes.

``run_batch(cohort, output, process)`` calls ``process(row, folder)`` (a per-file workflow such as
``workflows.segment.segment_file``) for every cohort row whose folder ``OUTPUT/<subject>[_<session>]``
is not done yet: a folder is done when its ``summary.json`` exists and every output it lists is there.
Under ``accelerate launch`` the remaining rows are split between the processes
(``PartialState.split_between_processes``). Each process writes ``batch-<rank>.json``; the main process
merges them into ``batch.json`` (done, skipped as already done, failed with the reason, bad rows).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import LatentDriftError
from ..core.progress import ProgressCallback
from ..finetune.cohorts import CohortRow, read_cohort

RowWorkflow = Callable[[CohortRow, Path], dict]


def row_folder(output: Path, row: CohortRow) -> Path:
    """``OUTPUT/<subject>[_<session>]`` with unsafe characters replaced."""
    name = row.subject + (f"_{row.session}" if row.session else "")
    return output / re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def is_done(folder: Path) -> bool:
    """True when ``folder/summary.json`` exists and every output it lists exists."""
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    names = [
        n
        for value in summary.get("outputs", {}).values()
        for n in ([value] if isinstance(value, str) else value)
    ]
    return all((folder / name).exists() for name in names)


def run_batch(
    cohort: str | Path, output: str | Path, process: RowWorkflow, progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """Run ``process`` on every row not done yet (see the module docstring); the merged ``batch.json``."""
    from accelerate import PartialState

    state = PartialState()
    output = Path(output).absolute()
    rows, problems = read_cohort(cohort)
    already = [row for row in rows if is_done(row_folder(output, row))]
    todo = [row for row in rows if row not in already]
    record: dict[str, Any] = {"done": [], "failed": []}
    output.mkdir(parents=True, exist_ok=True)
    with state.split_between_processes(todo) as mine:
        for number, row in enumerate(mine, start=1):
            folder = row_folder(output, row)
            try:
                process(row, folder)
                record["done"].append(folder.name)
            except LatentDriftError as error:
                record["failed"].append({"line": row.line, "folder": folder.name, "reason": str(error)})
            if progress is not None:
                progress(number, len(mine), "batch")
    (output / f"batch-{state.process_index}.json").write_text(
        json.dumps(record, indent=2) + "\n", encoding="utf-8"
    )
    state.wait_for_everyone()
    merged: dict[str, Any] = {
        "cohort": str(cohort),
        "already_done": [row_folder(output, r).name for r in already],
        "done": [],
        "failed": [],
        "bad_rows": [vars(p) for p in problems],
    }
    if state.is_main_process:
        for part in sorted(output.glob("batch-*.json")):
            values = json.loads(part.read_text(encoding="utf-8"))
            merged["done"] += values["done"]
            merged["failed"] += values["failed"]
            part.unlink()
        (output / "batch.json").write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    return merged
