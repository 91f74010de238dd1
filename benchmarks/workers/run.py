"""Slices shared by two CPU threads against one, on the README's main job with the bundled models.

    .venv/bin/python benchmarks/workers/run.py [--repeats 3]

Writes ``benchmarks/workers/results.json`` and ``results.md``. The main job (``latentdrift demo
sample:mni152-t1``) segments the bundled MNI152 T1 with ``brain-tissue-ldseg`` and edits it with
``brain-mri-instruct`` (instruct, CN 70 → AD 75, the editor's δ, factual reference). This runs the
same two steps in this process, ``segment_volume`` and ``counterfactual_volume`` with the demo's
settings, once with one worker and once with the engine's default (:func:`latentdrift.core.devices
.parallel_workers`: two threads on a CPU with two or more torch threads), in interleaved rounds, and
reports the median time of each and how far the outputs differ. Torch uses its default thread count
(``--threads N`` to set it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentdrift.core.devices import parallel_workers
from latentdrift.core.models import default_model
from latentdrift.core.settings import DemoSettings
from latentdrift.core.volumes import Volume, read_volume
from latentdrift.counterfactual.edit import load_bundle
from latentdrift.counterfactual.volume_editing import counterfactual_volume
from latentdrift.fixtures.sample_data import resolve_input
from latentdrift.segmentation.segmenters import load_segmenter
from latentdrift.segmentation.volume_segmentation import SegmentSettings, segment_volume
from latentdrift.workflows.demo import editor_settings

HERE = Path(__file__).resolve().parent
SAMPLE = "sample:mni152-t1"


def time_rounds(variants: dict[str, Any], repeats: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds of each variant per round (variants in turn, no warm-up: each run is tens of seconds), last outputs."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - started)
    return times, outputs


def segmentation(volume: Volume, repeats: int) -> dict[str, Any]:
    segmenter = load_segmenter(default_model("segment").path, "cpu")
    settings = SegmentSettings(device="cpu")
    times, outputs = time_rounds(
        {
            "one worker": lambda: segment_volume(volume, segmenter, replace(settings, workers=1)),
            "default": lambda: segment_volume(volume, segmenter, settings),
        },
        repeats,
    )
    one, default = outputs["one worker"], outputs["default"]
    return {
        "seconds": times,
        "label_agreement": float((one.labels.voxels == default.labels.voxels).mean()),
        "max_entropy_difference": float(np.abs(one.entropy.voxels - default.entropy.voxels).max()),
    }


def counterfactual(volume: Volume, repeats: int) -> dict[str, Any]:
    editor = default_model("instruct").path
    settings = editor_settings(DemoSettings(), editor)  # the demo's own settings
    bundle = load_bundle(editor, "cpu")
    times, outputs = time_rounds(
        {
            "one worker": lambda: counterfactual_volume(volume, bundle, replace(settings, workers=1)),
            "default": lambda: counterfactual_volume(volume, bundle, settings),
        },
        repeats,
    )
    one, default = outputs["one worker"].counterfactual.voxels, outputs["default"].counterfactual.voxels
    window = outputs["default"].figures["intensity_window"]
    return {
        "seconds": times,
        "batch_size": outputs["default"].figures["batch_size"],
        "max_difference_in_window_units": float(np.abs(one - default).max() / (window[1] - window[0])),
    }


def summarise(measured: dict[str, Any]) -> dict[str, Any]:
    medians = {name: statistics.median(values) for name, values in measured["seconds"].items()}
    return {**measured, "median_seconds": medians, "speedup": medians["one worker"] / medians["default"]}


def markdown(results: dict[str, Any]) -> str:
    seg, edit = results["segmentation"], results["counterfactual"]
    machine = results["machine"]

    def row(name: str, measured: dict[str, Any], agreement: str) -> str:
        one, default = measured["median_seconds"]["one worker"], measured["median_seconds"]["default"]
        return f"| {name} | {one:.1f} s | {default:.1f} s | {measured['speedup']:.2f}× | {agreement} |"

    return "\n".join(
        [
            "# Slices shared by CPU threads",
            "",
            f"Command: `{results['command']}` — {results['finished']}, {results['total_seconds']:.0f} s in all.",
            "",
            f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, load "
            f"average at start {machine['load_average_at_start'][0]:.1f}; torch {machine['torch']}; CPU, float32. "
            f"Default workers here: {results['default_workers']}.",
            "",
            f"The README main job's two steps on `{SAMPLE}`, in this process; medians of {results['repeats']} "
            "interleaved rounds.",
            "",
            "| step | one worker | default | speed-up | outputs |",
            "|---|---|---|---|---|",
            row(
                "segmentation (`brain-tissue-ldseg`, 8 samples)",
                seg,
                f"labels agree on {100 * seg['label_agreement']:.3f} % of voxels; entropy differs by at most "
                f"{seg['max_entropy_difference']:.1e}",
            ),
            row(
                f"counterfactual (`brain-mri-instruct`, factual reference, batch {edit['batch_size']})",
                edit,
                f"differ by at most {edit['max_difference_in_window_units']:.1e} of the intensity window",
            ),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    volume = read_volume(resolve_input(SAMPLE))
    results: dict[str, Any] = {
        "machine": {
            "cpu": next(
                (
                    line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if "model name" in line
                ),
                platform.processor(),
            ),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": list(os.getloadavg()),
            "torch": torch.__version__,
        },
        "default_workers": parallel_workers(torch.device("cpu")),
        "repeats": args.repeats,
        "segmentation": summarise(segmentation(volume, args.repeats)),
        "counterfactual": summarise(counterfactual(volume, args.repeats)),
    }
    results.update(
        command=" ".join(["python", "benchmarks/workers/run.py", *sys.argv[1:]]),
        finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        total_seconds=time.perf_counter() - started,
    )
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (HERE / "results.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
