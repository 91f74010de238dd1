"""Progress lines for GUIs (parseable, throttled, resumed-run ETA), first batch sizes per device, batches shared by threads."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from latentdrift.core.progress import Progress


def test_json_lines_count_from_where_the_run_started(capsys, monkeypatch) -> None:
    clock = iter([0.0, 0.0, 0.0, 10.0, 20.0, 30.0])  # created, restarted, then one reading per update
    monkeypatch.setattr("latentdrift.core.progress.time.monotonic", lambda: next(clock))
    progress = Progress(json_lines=True, max_rate=1000)
    for done in (600, 601, 602, 1000):
        progress(done, 1000, "training")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["done"] for e in events] == [600, 601, 602, 1000]
    assert events[0]["eta_s"] is None
    assert events[1]["eta_s"] == 10.0 * 399  # 10 s for the one step this run made
    assert events[-1]["fraction"] == 1.0 and events[-1]["eta_s"] == 0.0


def test_updates_are_throttled_but_the_last_one_is_kept(capsys, monkeypatch) -> None:
    monkeypatch.setattr("latentdrift.core.progress.time.monotonic", lambda: 5.0)
    progress = Progress(json_lines=True, max_rate=1.0)
    for done in range(1, 11):
        progress(done, 10, "segmenting")
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["done"] for line in lines] == [1, 10]


def test_a_new_task_is_announced_at_once_even_within_the_throttle(capsys, monkeypatch) -> None:
    monkeypatch.setattr("latentdrift.core.progress.time.monotonic", lambda: 5.0)
    progress = Progress(json_lines=True, max_rate=1.0)
    progress(1, 10, "segmenting")
    progress(0, 1, "tissue prior")  # the same instant: still printed, a GUI must learn the new message
    assert [json.loads(line)["message"] for line in capsys.readouterr().out.splitlines()] == [
        "segmenting",
        "tissue prior",
    ]


def test_cpu_batch_size_follows_available_memory(monkeypatch) -> None:
    import torch

    from latentdrift.core import devices

    monkeypatch.setattr(devices, "available_ram", lambda: 8 * 2**30)
    cpu = torch.device("cpu")
    assert devices.suggest_batch_size(cpu, bytes_per_item=2**30, ceiling=64) == 4  # half of 8 GiB
    assert devices.suggest_batch_size(cpu, bytes_per_item=2**20, ceiling=64) == 64
    assert devices.suggest_batch_size(cpu, bytes_per_item=2**40, ceiling=64) == 1


def test_batches_report_zero_first_and_a_bar_times_only_what_it_saw(capsys) -> None:
    from latentdrift.core.devices import run_in_batches

    reports: list[tuple[int, int]] = []
    doubled = run_in_batches(
        lambda batch: [2 * item for item in batch], [1, 2, 3], 2, lambda *r: reports.append(r)
    )
    assert doubled == [2, 4, 6] and reports == [(0, 3), (2, 3), (3, 3)]
    progress = Progress()
    progress(600, 1000, "training")  # a resumed run: the bar starts part-way
    assert progress._bar is not None and progress._bar.initial == 600 and progress._bar.n == 600
    progress.close()


def test_workers_share_items_in_order_and_sum_their_progress() -> None:
    from latentdrift.core.devices import run_in_workers

    threads = torch.get_num_threads()
    batches: list[tuple[str, list[int], int]] = []
    reports: list[tuple[int, int]] = []
    lock = threading.Lock()

    def make_function():
        name = threading.current_thread().name

        def double(batch):
            with lock:
                batches.append((name, list(batch), torch.get_num_threads()))
            return [2 * item for item in batch]

        return double

    doubled = run_in_workers(make_function, list(range(7)), 4, 2, lambda *r: reports.append(r))
    assert doubled == [2 * item for item in range(7)]
    by_thread: dict[str, list[int]] = {}
    for name, batch, _threads in batches:
        assert len(batch) <= 2  # batch_size 4 is shared: 2 in flight per worker
        by_thread.setdefault(name, []).extend(batch)
    assert sorted(by_thread.values()) == [[0, 1, 2], [3, 4, 5, 6]]
    assert threading.current_thread().name not in by_thread
    assert {used for *_rest, used in batches} == {max(1, threads // 2)}
    assert torch.get_num_threads() == threads  # restored
    assert reports[0] == (0, 7) and reports[-1] == (7, 7)
    assert [done for done, _ in reports] == sorted({done for done, _ in reports})


def test_one_worker_runs_in_the_calling_thread_and_errors_reach_the_caller() -> None:
    from latentdrift.core.devices import run_in_workers

    names: list[str] = []

    def make_function():
        names.append(threading.current_thread().name)
        return lambda batch: list(batch)

    assert run_in_workers(make_function, [1, 2, 3], 2, 1) == [1, 2, 3]
    assert names == [threading.current_thread().name]

    def make_failing():
        def fail(batch):
            if 5 in batch:
                raise ValueError("bad item 5")
            return list(batch)

        return fail

    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match="bad item 5"):
        run_in_workers(make_failing, list(range(8)), 2, 2)
    assert torch.get_num_threads() == threads


def test_out_of_memory_in_one_share_halves_only_that_share() -> None:
    from latentdrift.core.devices import run_in_workers

    sizes: dict[int, list[int]] = {0: [], 1: []}

    def make_function():
        def run(batch):
            share = 0 if batch[0] < 4 else 1
            sizes[share].append(len(batch))
            if share == 1 and len(batch) > 1:
                raise torch.OutOfMemoryError("out of memory (simulated)")
            return list(batch)

        return run

    assert run_in_workers(make_function, list(range(8)), 4, 2) == list(range(8))
    assert sizes == {0: [2, 2], 1: [2, 1, 1, 1, 1]}


def test_cpu_work_is_shared_by_two_workers_and_a_gpu_by_one(monkeypatch) -> None:
    from latentdrift.core.devices import parallel_workers

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(torch.backends.openmp, "is_available", lambda: True)
    assert parallel_workers(torch.device("cpu")) == 2
    assert parallel_workers(torch.device("cuda", 0)) == 1
    assert parallel_workers(torch.device("mps")) == 1
    monkeypatch.setattr(torch.backends.openmp, "is_available", lambda: False)
    assert parallel_workers(torch.device("cpu")) == 1  # torch's native pool: one thread count for all
    monkeypatch.setattr(torch.backends.openmp, "is_available", lambda: True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert parallel_workers(torch.device("cpu")) == 1
