"""Compute devices: what exists, which one to use, which precision, and batches that survive OOM.

``--device auto|cpu|cuda[:N]|mps`` everywhere resolves through :func:`resolve_device`; every training run
(the fine-tuning schemes and LDSeg) gets its 🤗 Accelerate ``Accelerator`` from
:func:`training_accelerator`. Batched work
(slices of a volume, samples of LDSeg) goes through :func:`run_in_batches`, which halves the batch
and carries on when the device runs out of memory; on a multi-core CPU, :func:`run_in_workers` runs
it as two shares at once (:func:`parallel_workers` says why).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .errors import DeviceError, ModelError, OutOfMemoryError
from .file_checks import available_ram
from .interrupts import raise_if_stopped, uncut
from .progress import CountCallback

LOG = logging.getLogger(__name__)

T = TypeVar("T")

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class DeviceInfo:
    """One device this machine offers. ``memory_gb`` is total memory (None where unknown)."""

    name: str
    description: str
    memory_gb: float | None = None


def available_devices() -> list[DeviceInfo]:
    """Every device torch can use here: each CUDA GPU, Apple MPS, and always the CPU."""
    devices: list[DeviceInfo] = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append(DeviceInfo(f"cuda:{index}", props.name, round(props.total_memory / 2**30, 1)))
    if _mps_available():
        devices.append(DeviceInfo("mps", "Apple Metal (MPS)"))
    devices.append(DeviceInfo("cpu", f"CPU ({torch.get_num_threads()} threads)"))
    return devices


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def training_accelerator(device: str, mixed_precision: str, gradient_accumulation: int = 1) -> Any:
    """The ``Accelerator`` of a training run: ``device`` (:func:`resolve_device`'s names; ``cpu`` forces
    the CPU) and ``mixed_precision`` (``auto``: fp16 on CUDA, else off; see
    :data:`~latentdrift.core.values.MIXED_PRECISION`).

    Accelerate keeps one device and precision per process; a run in a process that ran another (the
    console, a test session) and that is not one of several launched processes starts them afresh.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    resolved = resolve_device(device)
    if device.startswith("cuda:"):
        torch.cuda.set_device(resolved)
    precision = mixed_precision
    if precision == "auto":
        precision = "fp16" if resolved.type == "cuda" else "no"
    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        gradient_accumulation_steps=gradient_accumulation, mixed_precision=precision, cpu=device == "cpu"
    )


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda[:N]|mps`` into a device that exists, or raise :class:`DeviceError`.

    ``auto`` picks the first CUDA GPU, then MPS, then the CPU.
    """
    spec = (spec or "auto").strip().lower()
    if not _DEVICE_PATTERN.match(spec):
        raise DeviceError(f"Unknown device '{spec}': use auto, cpu, cuda, cuda:N or mps.")
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"Device '{spec}' was asked for but torch sees no CUDA GPU here "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
                "Use --device cpu, or install a CUDA build of torch that supports your GPU."
            )
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"Device '{spec}' does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}."
            )
        return torch.device(f"cuda:{index}")
    if spec == "mps" and not _mps_available():
        raise DeviceError("Device 'mps' was asked for but Apple Metal is not available: use --device cpu.")
    return torch.device(spec)


def inference_dtype(device: torch.device, full_precision: bool = False) -> torch.dtype:
    """float16 on CUDA (unless ``full_precision``), float32 elsewhere (fp16 on CPU is not practical)."""
    if device.type == "cuda" and not full_precision:
        return torch.float16
    return torch.float32


def is_out_of_memory(error: BaseException) -> bool:
    """True for the errors torch raises when a device runs out of memory (CUDA, MPS or CPU)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


def run_in_batches(
    function: Callable[[Sequence[T]], list],
    items: Sequence[T],
    batch_size: int,
    on_batch_done: CountCallback | None = None,
    stop: threading.Event | None = None,
) -> list:
    """Apply ``function`` to consecutive batches of ``items`` and concatenate the returned lists.

    On out-of-memory the failing batch is retried at half the size, and the smaller size is kept for
    the rest of the run. A batch of one that still fails raises :class:`OutOfMemoryError` with
    advice. ``on_batch_done(done, total)`` reports progress in items: ``(0, total)`` before the first
    batch (so a progress bar times the first batch too), then after each batch. Once ``stop`` is set
    no further batch starts (what is done so far is returned; the caller is being interrupted); after a
    stop signal whose exception was lost (:func:`latentdrift.core.interrupts.raise_if_stopped`) none starts
    either.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    results: list = []
    start = 0
    if on_batch_done is not None and items:
        on_batch_done(0, len(items))
    while start < len(items) and not (stop is not None and stop.is_set()):
        raise_if_stopped()
        batch = items[start : start + batch_size]
        try:
            results.extend(function(batch))
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            _release_cached_memory()
            if batch_size == 1:
                raise OutOfMemoryError(
                    "Out of memory even with one slice per batch: use a smaller model resolution, "
                    "fewer samples, or --device cpu."
                ) from error
            batch_size = max(1, batch_size // 2)
            LOG.warning("Out of memory: retrying with %d per batch", batch_size)
            continue
        start += len(batch)
        if on_batch_done is not None:
            on_batch_done(start, len(items))
    return results


def parallel_workers(device: torch.device) -> int:
    """How many threads should share a batched job on ``device``: 2 on a CPU with 2 or more torch threads, else 1.

    Torch splits each operation of a small network across its threads at a loss, so two shares of
    the batch, each on half the threads at the same time, get more done. On 2 cores: from 1.04×
    (the ≈5 M-parameter UNet, ``benchmarks/drift`` (c)) to 1.73× (LDSeg on the README sample,
    ``benchmarks/workers``). A GPU runs one kernel stream; its batch is not split. Only torch builds
    with OpenMP share (``torch.backends.openmp.is_available()``, true of the Linux wheels): there each
    thread keeps its own thread count, which torch's native thread pool, with one count for all, cannot.
    """
    shares = device.type == "cpu" and torch.get_num_threads() >= 2 and torch.backends.openmp.is_available()
    return 2 if shares else 1


def run_in_workers(
    make_function: Callable[[], Callable[[Sequence[T]], list]],
    items: Sequence[T],
    batch_size: int,
    workers: int,
    on_batch_done: CountCallback | None = None,
) -> list:
    """:func:`run_in_batches` on ``workers`` contiguous shares of ``items`` at once, one thread each.

    ``make_function()`` is called once per share, in its thread, and gives the function its batches
    go through, so each thread can own what keeps per-call state (a diffusers pipeline's scheduler
    and tokenizer); modules and weights are shared. ``batch_size`` counts the items in flight across
    all shares (each share batches ``batch_size // workers``, at least 1), so memory is what one
    batch of ``batch_size`` would take. Torch's threads are divided among the shares while they run.
    Results come back in the order of ``items``, whatever the number of workers; progress is the
    sum over the shares. With one worker, or one item, this is :func:`run_in_batches` in the
    calling thread. Interrupted (SIGINT or SIGTERM raised in the calling thread), the shares finish
    their batch in flight and the interruption goes on once they have stopped: a process must not end
    while threads are inside torch (it aborts instead of exiting).
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    workers = min(workers, len(items))
    if workers <= 1:
        return run_in_batches(make_function(), items, batch_size, on_batch_done)
    shares = [items[k * len(items) // workers : (k + 1) * len(items) // workers] for k in range(workers)]
    progress = _SummedProgress(len(items), on_batch_done)
    share_batch = max(1, batch_size // workers)
    threads = torch.get_num_threads()

    results: list[list] = [[] for _ in shares]
    errors: list[BaseException] = []
    stop = threading.Event()
    finished = [threading.Event() for _ in shares]

    def run_share(index: int) -> None:
        try:
            torch.set_num_threads(max(1, threads // workers))
            results[index] = run_in_batches(
                make_function(), shares[index], share_batch, progress.of_share(index), stop
            )
        except BaseException as error:  # handed to the calling thread below
            errors.append(error)
        finally:
            finished[index].set()

    started: list[threading.Event] = []
    try:
        with uncut():  # a start cut by a signal could leave a thread running that no one waits for
            for index in range(workers):
                name = f"latentdrift-share-{index}"
                threading.Thread(target=run_share, args=(index,), name=name, daemon=True).start()
                started.append(finished[index])
        for done in started:
            done.wait()
    except BaseException:  # SIGINT/SIGTERM in this thread: the shares finish their batch and stop
        stop.set()
        with uncut():  # Event.wait, not Thread.join: a join cut by a signal marks a running thread ended
            for done in started:
                done.wait()
        raise
    finally:
        torch.set_num_threads(threads)
    if errors:
        raise errors[0]
    return [result for share in results for result in share]


class _SummedProgress:
    """``report(done, total)`` with ``done`` summed over the shares of :func:`run_in_workers`."""

    def __init__(self, total: int, report: CountCallback | None) -> None:
        self._total, self._report = total, report
        self._done: dict[int, int] = {}
        self._reported = -1
        self._lock = threading.Lock()

    def of_share(self, index: int) -> CountCallback | None:
        """The ``on_batch_done`` of share ``index`` (None when nobody listens)."""
        if self._report is None:
            return None
        return lambda done, _share_total: self._update(index, done)

    def _update(self, index: int, done: int) -> None:
        with self._lock:
            self._done[index] = done
            summed = sum(self._done.values())
            if summed != self._reported:
                self._reported = summed
                assert self._report is not None
                self._report(summed, self._total)


def _release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device``: free CUDA memory, or available RAM on the CPU
    (:func:`latentdrift.core.file_checks.available_ram`); None on MPS, whose free memory torch does not report."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return available_ram() if device.type == "cpu" else None


def check_memory(device: torch.device, needed: int, what: str) -> None:
    """Raise :class:`ModelError` when ``what`` needs more than the memory available on ``device`` (the
    bound in the message); a device that does not report its memory passes."""
    available = available_memory(device)
    if available is not None and needed > available:
        raise ModelError(
            f"{what} needs at least {needed / 1e9:.3g} GB, more than the {available / 1e9:.3g} GB available on "
            f"{device}: check the model's config, or use a model made for a smaller resolution."
        )


def suggest_batch_size(device: torch.device, bytes_per_item: int, ceiling: int = 64) -> int:
    """A first batch size: what fits in 70 % of free CUDA memory or 50 % of available RAM (CPU), at most ``ceiling``.

    ``bytes_per_item`` is the caller's estimate of peak memory for one item of the batch. MPS, whose
    free memory torch does not report, starts at ``min(ceiling, 8)``. Out-of-memory errors still halve
    the batch (:func:`run_in_batches`).
    """
    available = available_memory(device)
    if available is None:
        return max(1, min(ceiling, 8))
    budget = (0.7 if device.type == "cuda" else 0.5) * available
    return int(max(1, min(ceiling, budget // max(1, bytes_per_item))))
