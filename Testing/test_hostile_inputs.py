"""A hostile but realistic user: broken files, shared or unwritable output folders, interrupted runs,
absurd settings. Each case ends in one line (``latentdrift: error: …``), a non-zero exit and nothing
written, or, for an interrupted run, in nothing left behind (issue 21). Tiny models, tiny volumes."""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image

from latentdrift.bridge.processes import EngineProcess
from latentdrift.cli import main
from latentdrift.core.results import ResultFolder
from latentdrift.core.settings import SegmentSettings

QUICK = ["--device", "cpu", "--scene", "no", "--quiet"]
SEGMENT = ["segment", "--samples", "2", "--steps", "1", *QUICK]
EDIT = ["counterfactual", "--edit", "instruct", "--from", "age=70", "--to", "age=75", "--steps", "2", *QUICK]


@pytest.fixture
def volume_file(tmp_path: Path, rng: np.random.Generator) -> Path:
    """An 8-slice intensity volume (smooth blob and noise) as a compressed NIfTI file."""
    k, j, i = np.meshgrid(np.arange(8), np.arange(24), np.arange(24), indexing="ij")
    blob = np.exp(-((k - 4) ** 2 / 8 + (j - 12) ** 2 / 40 + (i - 12) ** 2 / 40))
    voxels = (1000 * blob + rng.normal(0, 20, blob.shape)).astype(np.float32)
    return write_image(tmp_path / "head.nii.gz", voxels, spacing=(1.0, 1.0, 2.0))


def leftovers(output: Path) -> list[str]:
    """What a run left beside ``output``: its hidden partial folders and lock file."""
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


def refused(capsys: pytest.CaptureFixture[str], command: list[str], output: Path, *words: str) -> str:
    """Run ``command --output output``: one error line holding ``words``, non-zero exit, nothing written."""
    code = main([*command, "--output", str(output)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("latentdrift: error: ")]
    assert code != 0 and len(lines) == 1 and "Traceback" not in err, err
    assert all(word in lines[0] for word in words), lines[0]
    assert not output.exists() and not leftovers(output)
    return lines[0]


def segment_args(source: Path, *extra: str) -> list[str]:
    return [SEGMENT[0], str(source), *SEGMENT[1:], *extra]


def edit_args(source: Path, *extra: str) -> list[str]:
    return [EDIT[0], str(source), *EDIT[1:], *extra]


# --------------------------------------------------------------------------- broken input files


def test_a_truncated_nifti_is_refused_instead_of_segmented_with_zeros(
    tiny_defaults: Path, volume_file: Path, tmp_path: Path, capsys
) -> None:
    data = volume_file.read_bytes()
    truncated = tmp_path / "copy.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])  # an interrupted copy
    refused(
        capsys, segment_args(truncated), tmp_path / "out", "'copy.nii.gz' is truncated", "copy the file again"
    )


def test_a_nrrd_declaring_fewer_slices_than_its_data_is_refused(
    tiny_defaults: Path, volume_file: Path, tmp_path: Path, capsys
) -> None:
    from latentdrift.core.volumes import read_volume, write_volume

    whole = write_volume(read_volume(volume_file), tmp_path / "whole.nrrd")
    header_end = whole.read_bytes().index(b"\n\n")
    header = whole.read_bytes()[:header_end].replace(b"sizes: 24 24 8", b"sizes: 24 24 5")
    short = tmp_path / "short.nrrd"
    short.write_bytes(header + whole.read_bytes()[header_end:])
    refused(capsys, segment_args(short), tmp_path / "out", "'short.nrrd'", "more voxel data than its header")


def test_a_nifti_spacing_of_zero_is_refused_not_taken_as_one(
    tiny_defaults: Path, volume_file: Path, tmp_path: Path, capsys
) -> None:
    stream = bytearray(gzip.decompress(volume_file.read_bytes()))
    struct.pack_into("<f", stream, 76 + 4 * 2, 0.0)  # pixdim[2]: the spacing along j
    zero = tmp_path / "zero.nii.gz"
    zero.write_bytes(gzip.compress(bytes(stream)))
    refused(capsys, segment_args(zero), tmp_path / "out", "voxel spacing of 0 mm along j", "true spacing")


def test_a_nrrd_spacing_of_zero_is_refused_with_how_to_fix_it(
    tiny_defaults: Path, tmp_path: Path, capsys
) -> None:
    zero = tmp_path / "zero.nrrd"
    zero.write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 24 24 8\n"
        b"space directions: (0,0,0) (0,1,0) (0,0,1)\nencoding: raw\nendian: little\n\n"
        + bytes(4 * 24 * 24 * 8)
    )
    refused(capsys, segment_args(zero), tmp_path / "out", "voxel spacing of 0 mm along i", "true spacing")


def test_a_header_declaring_more_voxels_than_memory_is_refused_before_reading(
    tiny_defaults: Path, tmp_path: Path, capsys
) -> None:
    huge = tmp_path / "huge.nrrd"
    huge.write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 100000 100000 1000\n"
        b"space directions: (1,0,0) (0,1,0) (0,0,1)\nencoding: raw\nendian: little\n\n" + bytes(4096)
    )
    refused(
        capsys,
        segment_args(huge),
        tmp_path / "out",
        "declares 100000 × 100000 × 1000 voxels of float32, 4e+04 GB, more than the memory available",
    )


# --------------------------------------------------------------------------- absurd settings and configs


@pytest.mark.parametrize(
    ("command", "option", "value", "words"),
    [
        ("segment", "--slices", "5:2", ["'5:2' is empty, reversed", "0 ≤ a < b"]),  # not "outside the volume"
        ("segment", "--batch-size", "0", ["batch_size=0", "1 or more"]),  # was a ValueError traceback
        ("counterfactual", "--batch-size", "0", ["batch_size=0", "1 or more"]),
        ("counterfactual", "--drift", "1e9", ["Drift 1000000000.0 is outside -1 to 1"]),  # was rc 0, no edit
        ("segment", "--seed", "-1", ["seed=-1 is outside 0 to 2^63-1"]),  # was accepted
        ("counterfactual", "--seed", "-1", ["seed=-1 is outside 0 to 2^63-1"]),  # the same rule and words
    ],
)
def test_settings_out_of_bounds_are_refused_with_the_bound(
    tiny_defaults: Path, volume_file: Path, tmp_path: Path, capsys, command, option, value, words
) -> None:
    arguments = segment_args if command == "segment" else edit_args
    refused(capsys, arguments(volume_file, option, value), tmp_path / "out", *words)


def test_every_command_takes_the_same_seeds_batch_sizes_and_resolutions() -> None:
    """One rule, one message, wherever a seed or a batch size is set (training included)."""
    from latentdrift.core.errors import ParameterError
    from latentdrift.core.settings import EditSettings
    from latentdrift.core.values import MAX_RESOLUTION
    from latentdrift.finetune.config import FinetuneConfig
    from latentdrift.segmentation.ldseg import TrainSettings

    for make in (SegmentSettings, EditSettings, TrainSettings, partial(FinetuneConfig, "c.csv", "basic")):
        with pytest.raises(ParameterError, match=r"^seed=-1 is outside 0 to 2\^63-1"):
            make(seed=-1)
    for make in (SegmentSettings, EditSettings, TrainSettings):
        with pytest.raises(ParameterError, match=r"^batch_size=0: use 1 or more"):
            make(batch_size=0)
    with pytest.raises(ParameterError, match=f"up to {MAX_RESOLUTION}"):
        FinetuneConfig("c.csv", "basic", resolution=100000)


def edited_config(folder: Path, name: str, **changes: int) -> Path:
    """``folder``'s ``name`` (a JSON config) with ``changes``; returns ``folder``."""
    config = folder / name
    config.write_text(json.dumps({**json.loads(config.read_text()), **changes}))
    return folder


@pytest.mark.parametrize(("sample_size", "pixels"), [(3000, "6000×6000"), (100000, "200000×200000")])
def test_an_editor_config_declaring_an_absurd_resolution_is_refused_before_any_work(
    tiny_defaults: Path, volume_file: Path, tmp_path: Path, capsys, sample_size: int, pixels: str
) -> None:
    """3000 computed for minutes; 100000 tried to allocate 596 GiB and died with a traceback."""
    editor = shutil.copytree(tiny_defaults / "brain-mri-instruct", tmp_path / "editor")
    edited_config(editor, "unet/config.json", sample_size=sample_size)
    refused(capsys, edit_args(volume_file, "--model", str(editor)), tmp_path / "out", pixels, "beyond 2048")


def test_a_segmenter_config_declaring_an_absurd_image_size_is_refused_before_any_work(
    tiny_defaults: Path, volume_file: Path, tmp_path: Path, capsys
) -> None:
    segmenter = shutil.copytree(tiny_defaults / "brain-tissue-ldseg", tmp_path / "segmenter")
    edited_config(segmenter, "config.json", image_size=100000)
    refused(
        capsys, segment_args(volume_file, "--model", str(segmenter)), tmp_path / "out", "image_size 100000"
    )


def test_a_model_whose_activations_exceed_the_memory_available_is_refused_before_loading(
    tiny_defaults: Path, volume_file: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A declared size within the bounds is still checked against this machine's memory (here: 4 kB)."""
    from latentdrift.core import devices

    monkeypatch.setattr(devices, "available_ram", lambda: 4096)
    words = ["needs at least", "more than the 4.1e-06 GB available on cpu"]
    refused(capsys, segment_args(volume_file), tmp_path / "out", "The LDSeg model", *words)
    refused(capsys, edit_args(volume_file), tmp_path / "out", "brain-mri-instruct at 32×32 pixels", *words)


# --------------------------------------------------------------------------- output folders


def test_an_output_path_that_is_a_file_is_refused_in_one_line(
    tiny_defaults: Path, volume_file: Path, tmp_path: Path, capsys
) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    code = main([*segment_args(volume_file), "--output", str(taken)])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err and "Traceback" not in err
    assert taken.read_text() == "mine" and not leftovers(taken)


def test_a_failed_run_leaves_no_folder_it_made_for_its_result(tmp_path: Path) -> None:
    out = tmp_path / "new" / "nested" / "out"
    with pytest.raises(RuntimeError), ResultFolder(out, "failing", {}) as result:
        result.path("volume", "a.nrrd").write_text("unfinished")
        raise RuntimeError("the model failed")
    assert list(tmp_path.iterdir()) == []


HOLDER = """
import sys, time
from latentdrift.core.results import ResultFolder
with ResultFolder(sys.argv[1], "segment", {}) as result:
    result.path("volume", "holder.nrrd").write_text("the holder's")
    print("holding", flush=True)
    time.sleep(120)
"""


def hold(output: Path) -> subprocess.Popen[str]:
    """Another run writing ``output``: a process inside a ResultFolder on it, until killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def test_a_second_run_into_a_folder_another_run_writes_fails_at_once_naming_it(
    tiny_defaults: Path, volume_file: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    holder = hold(out)
    try:
        code = main([*segment_args(volume_file), "--output", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "being written by another run" in err, err
        assert f"latentdrift segment, process {holder.pid}" in err
        assert not out.exists()  # nothing written, and the holder's files untouched
        (partial,) = out.parent.glob(".out.partial-*")
        assert (partial / "holder.nrrd").read_text() == "the holder's"
    finally:
        holder.kill()
        holder.wait()


def test_what_a_killed_run_leaves_is_cleared_by_the_next_run_into_its_folder(
    tiny_defaults: Path, volume_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    holder = hold(out)
    holder.send_signal(signal.SIGKILL)  # nothing can clean up after this
    holder.wait()
    assert leftovers(out) == sorted([".out.lock", *(p.name for p in out.parent.glob(".out.partial-*"))])
    assert main([*segment_args(volume_file), "--output", str(out)]) == 0
    assert not leftovers(out)
    summary = json.loads((out / "summary.json").read_text())
    listed = {n for v in summary["outputs"].values() for n in ([v] if isinstance(v, str) else v)}
    assert {p.name for p in out.iterdir()} == listed


KILLED_WHILE_PUBLISHING = """
import os, signal, sys
from latentdrift.core import results
real, moves = os.replace, []
def replace(source, target):
    real(source, target)
    moves.append(target)
    if len(moves) == 3:  # in the middle of moving the finished result into place
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
with results.ResultFolder(sys.argv[1], "second", {}) as result:
    for name in ("a.nrrd", "b.nrrd", "c.nrrd"):
        result.path("volume", name).write_text("second")
"""


def test_a_run_killed_while_publishing_leaves_no_mixed_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ResultFolder(out, "first", {}) as first:
        for name in ("a.nrrd", "b.nrrd", "d.nrrd"):
            first.path("volume", name).write_text("first")
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_PUBLISHING, str(out)], check=False)
    assert killed.returncode == -signal.SIGKILL
    with pytest.raises(RuntimeError), ResultFolder(out, "third", {}):  # the next run, failing at once
        raise RuntimeError("the third run fails")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "second"  # the killed run had finished: its publication is completed
    assert sorted(p.name for p in out.iterdir()) == ["a.nrrd", "b.nrrd", "c.nrrd", "summary.json"]
    assert {(out / name).read_text() for name in ("a.nrrd", "b.nrrd", "c.nrrd")} == {"second"}
    assert not leftovers(out)


@pytest.fixture
def private_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of this test's own (``TMPDIR``, for this process and those it starts)."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_cancel_from_slicer_sigterm_leaves_nothing_behind(
    tiny_defaults: Path, volume_file: Path, tmp_path: Path, private_temp: Path
) -> None:
    out = tmp_path / "out"
    settings = SegmentSettings(samples=64, steps=20, batch_size=1, device="cpu")
    run = EngineProcess.start_command("segment", [str(volume_file), "--output", str(out)], settings)
    while not run.state.last_progress and run.join(0.05) is False:
        run.poll()
    assert run.state.last_progress, run.state.log_tail  # it was working when the cancel came
    run.cancel()  # what the panel's Cancel does: SIGTERM to the process tree
    assert run.join(60)
    assert run.state.returncode == 128 + signal.SIGTERM, run.state.log_tail  # stopped by its handler
    assert not out.exists() and not leftovers(out)
    assert not any(private_temp.iterdir())


def test_a_slicer_scene_leaves_no_cache_folder_in_the_temp_directory(private_temp: Path) -> None:
    from latentdrift.bridge.scene import SceneSession

    SceneSession.headless()
    assert not any(private_temp.iterdir())


SIGNAL_IN_AN_IMPORT = """
import os, signal, sys, time
from latentdrift.core.interrupts import RunInterrupted, stop_on_signals
sys.path.insert(0, sys.argv[1])
try:
    with stop_on_signals():
        import slow_module  # sends itself SIGTERM half-way through its top-level code
        print("imported whole:", slow_module.WHOLE, flush=True)
        time.sleep(30)
except RunInterrupted as stop:
    print("interrupted by", stop.signum, flush=True)
"""
SLOW_MODULE = """
import os, signal, time
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.3)
WHOLE = True
"""


def test_a_signal_inside_an_import_stops_the_run_once_the_import_is_whole(tmp_path: Path) -> None:
    """An import cut half-way leaves a broken module (numpy then fails with a RecursionError)."""
    (tmp_path / "slow_module.py").write_text(SLOW_MODULE)
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_AN_IMPORT, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.splitlines() == ["imported whole: True", f"interrupted by {signal.SIGTERM}"], done


A_SIGNAL_PYTHON_DROPS = """
import os, signal, sys
from pathlib import Path
from latentdrift.core.interrupts import RunInterrupted, stop_on_signals
from latentdrift.core.results import ResultFolder

class Finalised:
    def __del__(self):  # Python drops an exception raised here, after printing it
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100000):
            pass  # the handler runs here

try:
    with stop_on_signals(), ResultFolder(sys.argv[1], "dropped", {}) as result:
        result.path("volume", "a.nrrd").write_text("unfinished")
        Finalised()
        print("went on", flush=True)
except RunInterrupted as stop:
    print("interrupted by", stop.signum, flush=True)
"""


def test_a_signal_whose_exception_python_drops_still_stops_the_run(tmp_path: Path) -> None:
    """Raised in a ``__del__``, the interruption is lost: the run must not publish its result anyway."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", A_SIGNAL_PYTHON_DROPS, str(out)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.splitlines() == ["went on", f"interrupted by {signal.SIGTERM}"], done
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not out.exists() and not leftovers(out)


SHARES_INTERRUPTED = """
import os, signal, threading, time
from latentdrift.core.devices import run_in_workers
from latentdrift.core.interrupts import RunInterrupted, stop_on_signals
started, ended = [], []

def slow(batch):  # the first share's batches are slow, the second's quick
    started.append(batch)
    time.sleep(0.4 if batch[0] < 4 else 0.05)
    ended.append(batch)
    return list(batch)

threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
try:
    with stop_on_signals():
        run_in_workers(lambda: slow, list(range(8)), batch_size=2, workers=2)
except RunInterrupted:
    print("batches in flight:", len(started) - len(ended), "of", len(started))
"""


def test_an_interrupted_run_waits_for_its_threads_before_it_ends(tmp_path: Path) -> None:
    """A process that ends while threads are inside torch aborts ("terminate called without an active
    exception", status -6, its partial folder left): Thread.join cut by a signal marks a thread ended."""
    done = subprocess.run(
        [sys.executable, "-c", SHARES_INTERRUPTED], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "batches in flight: 0 of 6", done


NAMESPACE = 'mkdir -p "$1/ro" "$1/full" && mount -t tmpfs -o ro tmpfs "$1/ro" && mount -t tmpfs -o size=12k tmpfs "$1/full" && shift && exec "$@"'
IN_NAMESPACE = """
import json, os, sys
from latentdrift.cli import main
folder, command = sys.argv[1], json.loads(sys.argv[2])
codes = {place: main([*command, "--output", f"{folder}/{place}/out"]) for place in ("ro", "full")}
print(json.dumps({"codes": codes, "full": os.listdir(f"{folder}/full"), "ro": os.listdir(f"{folder}/ro")}))
"""


def test_read_only_and_full_file_systems_are_one_line_errors(
    tiny_defaults: Path, volume_file: Path, tmp_path: Path
) -> None:
    """In a mount namespace of its own (``unshare``, no privileges needed): a read-only tmpfs and a 12 kB one."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("unshare cannot make a mount namespace here (no user namespaces)")
    command = [*segment_args(volume_file), "--scene", "no"]
    in_namespace = [sys.executable, "-c", IN_NAMESPACE, str(tmp_path), json.dumps(command)]
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", NAMESPACE, "sh", str(tmp_path), *in_namespace],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    errors = [line for line in done.stderr.splitlines() if line.startswith("latentdrift: error: ")]
    assert "Traceback" not in done.stderr and len(errors) == 2, done.stderr[-3000:]
    assert report["codes"] == {"ro": 2, "full": 2}
    assert "read-only" in errors[0] and "no space left" in errors[1]
    assert report["full"] == [] and report["ro"] == []  # nothing written, nothing left
