"""One training-event type for every scheme: LDSeg's steps reach a job's status lines with their loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentdrift.core.progress import TrainingEvent
from latentdrift.finetune.job_folder import JobFolder, StatusLines
from latentdrift.segmentation.ldseg import TrainSettings, tiny_config, train_ldseg


def _squares(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Bright squares (label 1) on a dark background, ``(count, 32, 32)`` images and labels."""
    images = np.full((count, 32, 32), -1.0, np.float32)
    labels = np.zeros((count, 32, 32), np.int64)
    for index in range(count):
        corner = 4 + 2 * index
        labels[index, corner : corner + 12, corner : corner + 12] = 1
    images[labels == 1] = 0.5
    return images, labels


def test_ldseg_training_events_give_status_lines_with_the_loss(tmp_path: Path) -> None:
    job = JobFolder(tmp_path / "job")
    job.path.mkdir()
    seen: list[tuple[int, int, str]] = []
    status_lines = StatusLines(job, log_every=2, progress=lambda *update: seen.append(update))
    events: list[TrainingEvent] = []

    def both(event: TrainingEvent) -> None:
        events.append(event)
        status_lines(event)

    images, labels = _squares(4)
    settings = TrainSettings(steps=4, batch_size=2, device="cpu", validation_steps=1)
    train_ldseg(images, labels, None, None, tiny_config(["background", "square"]), settings, both)
    records = job.status_records()
    steps = [e for e in events if e["kind"] == "step"]
    assert [r["step"] for r in records] == [2, 4] and [u[0] for u in seen] == [1, 2, 3, 4]
    for record, pair in zip(records, (steps[0:2], steps[2:4]), strict=True):
        assert record["loss"] == round(sum(e["loss"] for e in pair) / 2, 6)
        assert record["epoch"] == pair[-1]["epoch"] and record["lr"] == pair[-1]["lr"]
