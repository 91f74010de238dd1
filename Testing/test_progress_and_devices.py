"""Progress lines for GUIs (parseable, throttled, resumed-run ETA) and first batch sizes per device."""

from __future__ import annotations

import json

from latentdrift.progress import Progress


def test_json_lines_count_from_where_the_run_started(capsys, monkeypatch) -> None:
    clock = iter([0.0, 0.0, 0.0, 10.0, 20.0, 30.0])  # created, restarted, then one reading per update
    monkeypatch.setattr("latentdrift.progress.time.monotonic", lambda: next(clock))
    progress = Progress(json_lines=True, max_rate=1000)
    for done in (600, 601, 602, 1000):
        progress(done, 1000, "training")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["done"] for e in events] == [600, 601, 602, 1000]
    assert events[0]["eta_s"] is None
    assert events[1]["eta_s"] == 10.0 * 399  # 10 s for the one step this run made
    assert events[-1]["fraction"] == 1.0 and events[-1]["eta_s"] == 0.0


def test_updates_are_throttled_but_the_last_one_is_kept(capsys, monkeypatch) -> None:
    monkeypatch.setattr("latentdrift.progress.time.monotonic", lambda: 5.0)
    progress = Progress(json_lines=True, max_rate=1.0)
    for done in range(1, 11):
        progress(done, 10, "segmenting")
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["done"] for line in lines] == [1, 10]


def test_cpu_batch_size_follows_available_memory(monkeypatch) -> None:
    import torch

    from latentdrift import devices

    class Memory:
        available = 8 * 2**30

    monkeypatch.setattr(devices.psutil, "virtual_memory", lambda: Memory)
    cpu = torch.device("cpu")
    assert devices.suggest_batch_size(cpu, bytes_per_item=2**30, ceiling=64) == 4  # half of 8 GiB
    assert devices.suggest_batch_size(cpu, bytes_per_item=2**20, ceiling=64) == 64
    assert devices.suggest_batch_size(cpu, bytes_per_item=2**40, ceiling=64) == 1


def test_batches_report_zero_first_and_a_bar_times_only_what_it_saw(capsys) -> None:
    from latentdrift.devices import run_in_batches

    reports: list[tuple[int, int]] = []
    doubled = run_in_batches(
        lambda batch: [2 * item for item in batch], [1, 2, 3], 2, lambda *r: reports.append(r)
    )
    assert doubled == [2, 4, 6] and reports == [(0, 3), (2, 3), (3, 3)]
    progress = Progress()
    progress(600, 1000, "training")  # a resumed run: the bar starts part-way
    assert progress._bar is not None and progress._bar.initial == 600 and progress._bar.n == 600
    progress.close()
