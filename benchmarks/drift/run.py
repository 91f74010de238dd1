"""Latent Drift benchmark: drift overhead, whole-volume batching, distance to the UNet limit, peak memory.

    .venv/bin/python benchmarks/drift/run.py [--quick]

Writes ``benchmarks/drift/results.json`` and ``results.md``. Every ratio is measured in this one run,
on random-weight models built here (timing does not depend on the weights):

* (a) drift overhead: the stock ``StableDiffusionImg2ImgPipeline`` on a batch of slices, without a
  callback, against the same call with ``DriftCallback(0.05)``, and against the engine's
  ``edit_slices`` (δ = 0.05, one worker: the same pipeline call) at the same model, batch, steps and
  strength;
* (b) a whole volume edited by ``counterfactual_volume`` (engine defaults: batch size from memory,
  slices shared by two threads when torch has 2 or more) against a loop that calls the stock
  pipeline once per slice (same windowing and resizing), tiny model; and the engine with one worker
  (batching alone);
* (c) the same with a ≈5 M-parameter UNet; for both UNets the limit: the UNet's own forward time per
  slice-step (both guidance copies) at its best batch size, as one call and as two halves at once
  (``run_in_workers``, as the engine shares slices), and the ceiling, the stock loop's time per
  slice-step over the better of the two (the speed-up of an engine that spent no time outside the
  UNet);
* (d) peak resident memory of ``latentdrift counterfactual`` on a 256³ int16 volume (tiny model,
  32×32 model resolution), in a fresh process: everything from reading the file to the saved scene;
* (e) the VAE's time per slice by the number of slices per call (64 slices), for the tiny model and
  the bundled default editor (``brain-mri-instruct``, 64×64): what ``VAE_CHUNK`` in
  ``latentdrift.counterfactual.edit.loading`` is chosen from.

Timings interleave the compared variants and report medians, because the machine is shared. Torch
runs on one thread by default: on the 2-core development machine, busy with a training run (load
average 6–7), two OpenMP threads made the same UNet call 2–8× slower and unstable (oversubscription),
one thread was steady. ``--threads N`` measures with N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline, UNet2DConditionModel

from latentdrift.core.devices import parallel_workers, run_in_workers
from latentdrift.core.models import default_model
from latentdrift.core.resampling import SliceResizer
from latentdrift.core.volumes import Geometry, IntensityWindow, Volume, extract_slices, write_volume
from latentdrift.counterfactual.drift import DriftCallback
from latentdrift.counterfactual.edit import EditSettings, PipelineBundle, edit_slices, load_bundle
from latentdrift.counterfactual.edit.loading import VAE_CHUNK
from latentdrift.counterfactual.volume_editing import counterfactual_volume, model_resolution
from latentdrift.fixtures.tiny_models import TEXT_WIDTH, build_tiny_sd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROMPT = "a brain MRI of a 77 year old female with MCI"
STEPS, STRENGTH, GUIDANCE, DRIFT = 20, 0.5, 7.5, 0.05


def settings(drift: float = DRIFT, batch_size: int = 8, workers: int | None = None) -> EditSettings:
    return EditSettings(
        mode="img2img",
        prompt=PROMPT,
        steps=STEPS,
        strength=STRENGTH,
        guidance=GUIDANCE,
        drift=drift,
        batch_size=batch_size,
        workers=workers,
    )


# --------------------------------------------------------------------------- models and data


def build_medium_sd(folder: Path) -> Path:
    """The tiny SD folder with its UNet replaced by a ≈5 M-parameter one (3 levels, 64/96/128 wide)."""
    build_tiny_sd(folder)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(64, 96, 128),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    return folder


def head(slices: int, size: int, dtype: type = np.float32) -> Volume:
    """An ellipsoid 'head' with texture, ``[slices, size, size]``, 1 mm, every axial slice non-empty."""
    k, j, i = np.meshgrid(
        np.linspace(-0.8, 0.8, slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij"
    )
    inside = (j**2 + i**2 + 0.5 * k**2) < 0.8
    texture = 600 + 200 * np.sin(9 * i) * np.cos(7 * j) + 100 * np.sin(5 * k)
    return Volume(
        np.where(inside, texture, 0).astype(dtype), Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), "head"
    )


def stock_pipeline(folder: Path) -> Any:
    pipeline = StableDiffusionImg2ImgPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stock_call(pipeline: Any, images: np.ndarray, callback: Any = None) -> np.ndarray:
    """One stock img2img call on slices ``[B, S, S]`` in [-1, 1]; returns ``[B, S, S]`` in [-1, 1]."""
    pixels = torch.from_numpy((images[:, None].repeat(3, axis=1) + 1) / 2)
    out = pipeline(
        prompt=[PROMPT] * len(images),
        image=pixels,
        strength=STRENGTH,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=[torch.Generator().manual_seed(0) for _ in images],
        callback_on_step_end=callback,
        output_type="pt",
    ).images
    return (out.mean(dim=1) * 2 - 1).numpy()


# --------------------------------------------------------------------------- timing


def interleaved_times(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each variant in each of ``repeats`` rounds (variants run in turn), after one warm-up each."""
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each variant (see :func:`interleaved_times`)."""
    return {name: statistics.median(values) for name, values in interleaved_times(variants, repeats).items()}


def drift_overhead(bundle: PipelineBundle, folder: Path, batch: int, repeats: int) -> dict[str, Any]:
    """(a): stock call, stock call + DriftCallback, engine edit_slices — same batch, steps, strength."""
    pipeline = stock_pipeline(folder)
    voxels = head(batch, 32).voxels
    images = IntensityWindow.from_percentiles(voxels).forward(voxels)
    times = interleaved(
        {
            "stock": lambda: stock_call(pipeline, images),
            "stock_with_drift_callback": lambda: stock_call(pipeline, images, DriftCallback(DRIFT)),
            "engine_edit_slices": lambda: edit_slices(bundle, images, settings(batch_size=batch, workers=1)),
        },
        repeats,
    )
    return {
        "batch": batch,
        "seconds": times,
        "callback_overhead_pct": 100 * (times["stock_with_drift_callback"] / times["stock"] - 1),
        "engine_overhead_pct": 100 * (times["engine_edit_slices"] / times["stock"] - 1),
    }


def slice_loop(pipeline: Any, volume: Volume) -> np.ndarray:
    """The reference: same windowing and resizing as the engine, then one stock call per slice."""
    window = IntensityWindow.from_percentiles(volume.voxels)
    stack = extract_slices(volume, "axial")
    resizer = SliceResizer(stack.slices.shape[1:], stack.layout.pixel_spacing, 32)  # type: ignore[arg-type]
    images = resizer.to_model(window.forward(stack.slices), background=-1.0)
    edited = np.concatenate([stock_call(pipeline, images[n : n + 1]) for n in range(len(images))])
    return window.inverse(resizer.from_model(edited))


def volume_speedup(bundle: PipelineBundle, folder: Path, volume: Volume, repeats: int) -> dict[str, Any]:
    """(b)/(c): batched ``counterfactual_volume`` (defaults, and one worker) against the per-slice stock loop."""
    pipeline = stock_pipeline(folder)
    used: dict[str, Any] = {}

    def batched(workers: int | None) -> None:
        used.update(counterfactual_volume(volume, bundle, settings(workers=workers), "axial").figures)

    rounds = interleaved_times(
        {
            "batched_engine": lambda: batched(None),
            "batched_engine_one_worker": lambda: batched(1),
            "stock_slice_loop": lambda: slice_loop(pipeline, volume),
        },
        repeats,
    )
    times = {name: statistics.median(values) for name, values in rounds.items()}
    per_round = [s / b for s, b in zip(rounds["stock_slice_loop"], rounds["batched_engine"], strict=True)]
    slice_steps = volume.voxels.shape[0] * int(STEPS * STRENGTH)
    return {
        "slices": volume.voxels.shape[0],
        "slice_size": list(volume.voxels.shape[1:]),
        "denoising_steps": int(STEPS * STRENGTH),
        "engine_batch_size": used["batch_size"],
        "engine_workers": parallel_workers(bundle.device),
        "seconds": times,
        "speedup": times["stock_slice_loop"] / times["batched_engine"],
        "speedup_one_worker": times["stock_slice_loop"] / times["batched_engine_one_worker"],
        "speedup_per_round": per_round,
        "engine_ms_per_slice_step": 1000 * times["batched_engine"] / slice_steps,
        "stock_ms_per_slice_step": 1000 * times["stock_slice_loop"] / slice_steps,
    }


def unet_limit(bundle: PipelineBundle, batches: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """The UNet alone: ms per slice-step (2 guidance copies per slice) at each batch size, and the best.

    Each batch is timed as one call and as two halves at once (:func:`run_in_workers`, 2 workers).
    """
    unet, latent = bundle.unet, int(bundle.unet.config.sample_size)
    samples, texts = (
        torch.randn(2 * max(batches), 4, latent, latent),
        torch.randn(2 * max(batches), 77, TEXT_WIDTH),
    )

    def forward(items: Any) -> list[None]:
        with torch.no_grad():
            unet(samples[: 2 * len(items)], 500, texts[: 2 * len(items)])
        return [None] * len(items)

    per_batch, shared = {}, {}
    for batch in batches:
        items = list(range(batch))
        seconds = interleaved(
            {
                "one call": lambda b=items: forward(b),
                "two halves": lambda b=items: run_in_workers(lambda: forward, b, len(b), 2),
            },
            repeats,
        )
        per_batch[batch] = 1000 * seconds["one call"] / batch
        if batch > 1:
            shared[batch] = 1000 * seconds["two halves"] / batch
    best = min(per_batch, key=lambda b: per_batch[b])
    best_shared = min(shared, key=lambda b: shared[b])
    return {
        "ms_per_slice_step": per_batch,
        "best_batch": best,
        "best_ms_per_slice_step": per_batch[best],
        "ms_per_slice_step_two_halves": shared,
        "best_batch_two_halves": best_shared,
        "best_ms_per_slice_step_two_halves": shared[best_shared],
    }


def vae_chunks(bundle: PipelineBundle, chunks: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """(e): ms per slice of VAE encode and decode of 64 slices, ``chunk`` slices per call."""
    size, latent = model_resolution(bundle), int(bundle.unet.config.sample_size)
    pixels = torch.rand(64, 3, size, size) * 2 - 1
    latents = torch.randn(64, bundle.latent_channels, latent, latent)
    variants: dict[str, Callable[[], Any]] = {}
    for chunk in chunks:
        variants[f"encode {chunk}"] = lambda c=chunk: [bundle.vae.encode(x) for x in pixels.split(c)]
        variants[f"decode {chunk}"] = lambda c=chunk: [bundle.vae.decode(z) for z in latents.split(c)]
    with torch.no_grad():
        times = interleaved(variants, repeats)
    return {
        "size": size,
        "ms_per_slice": {
            step: {str(chunk): 1000 * times[f"{step} {chunk}"] / 64 for chunk in chunks}
            for step in ("encode", "decode")
        },
    }


# --------------------------------------------------------------------------- memory


def peak_memory(folder: Path, work: Path, size: int) -> dict[str, Any]:
    """(d): ``latentdrift counterfactual`` on a ``size``³ int16 volume in a child process; its peak RSS."""
    path = write_volume(head(size, size, np.int16), work / f"head{size}.nrrd")
    command = [
        sys.executable, "-m", "latentdrift.cli", "counterfactual", str(path), "--model", str(folder),
        "--edit", "img2img", "--prompt", PROMPT, "--steps", "4", "--strength", "0.5", "--drift", str(DRIFT),
        "--device", "cpu", "--quiet", "--output", str(work / "memory-result"),
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads((work / "memory-result" / "summary.json").read_text())
    return {
        "volume": f"{size}³ int16 ({path.stat().st_size / 2**20:.1f} MiB on disk, compressed)",
        "command": " ".join(["latentdrift", *command[3:]]).replace(str(work), "$WORK"),
        "peak_rss_gib": peak_kib / 2**20,
        "seconds": seconds,
        "figures": summary["figures"],
    }


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    import diffusers

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": "cpu (float32)",
    }


def _limit_row(name: str, measured: dict[str, Any], vae: dict[str, Any] | None, chunk: int | None) -> str:
    """One table row: engine vs UNet-alone ms per slice-step, and the ceilings.

    The ceiling is the stock loop's ms per slice-step over the UNet's best (one call or two halves at
    once); with the VAE, over that plus the VAE's encode and decode of a slice at the engine's chunk
    (from (e); both test models share the tiny VAE) spread over the denoising steps: what any engine
    that edits a slice must spend at least.
    """
    limit = measured["unet_limit"]
    one, two = limit["best_ms_per_slice_step"], limit["best_ms_per_slice_step_two_halves"]
    best = min(one, two)
    ceilings = f"ceiling {measured['stock_ms_per_slice_step'] / best:.2f}×"
    if vae is not None and chunk is not None:
        per_slice = sum(vae["ms_per_slice"][step][str(chunk)] for step in ("encode", "decode"))
        with_vae = best + per_slice / measured["denoising_steps"]
        ceilings += f", with the VAE {measured['stock_ms_per_slice_step'] / with_vae:.2f}×"
    return (
        f"| {name}: engine ms per slice-step vs the UNet alone at its best batch, one call ({limit['best_batch']}) "
        f"/ two halves at once ({limit['best_batch_two_halves']}); ceiling (stock loop ÷ the better; with the "
        f"VAE's encode and decode too) | {measured['engine_ms_per_slice_step']:.1f} vs {one:.1f} / {two:.1f} ms "
        f"({measured['engine_ms_per_slice_step'] / best:.2f}× the limit); {ceilings} | — |"
    )


def _one_worker(measured: dict[str, Any]) -> str:
    seconds = measured["seconds"]["batched_engine_one_worker"]
    return f"{measured['speedup_one_worker']:.2f}× ({seconds:.1f} s)"


def _round_range(measured: dict[str, Any]) -> str:
    """The spread of the batching ratio over the paired rounds (older results have none)."""
    rounds = measured.get("speedup_per_round")
    return f"rounds {min(rounds):.2f}–{max(rounds):.2f}×" if rounds else "rounds not recorded"


def markdown(results: dict[str, Any]) -> str:
    """``results.md``: the command, the machine and one table of the measures against their targets."""
    a_tiny, a_medium = results["a_drift_overhead"]["tiny"], results["a_drift_overhead"]["medium"]
    b, c, d = results["b_volume_tiny"], results["c_volume_medium"], results["d_peak_memory"]
    lines = [
        "# Latent Drift benchmark",
        "",
        f"Command: `{results['command']}` — {results['finished']}, {results['total_seconds']:.0f} s in all.",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"{results['machine']['torch_threads']} torch thread(s), load average at start "
        f"{results['machine']['load_average_at_start'][0]:.1f} (shared with other jobs); torch "
        f"{results['machine']['torch']}, diffusers {results['machine']['diffusers']}; CPU, float32.",
        "",
        f"Settings: img2img, {STEPS} steps × strength {STRENGTH} = {int(STEPS * STRENGTH)} denoising steps, "
        f"guidance {GUIDANCE} (2 UNet copies per slice), δ = {DRIFT}, 32×32 model resolution; medians of "
        f"{results['repeats']} interleaved repeats after a warm-up. UNets: tiny {results['unet_parameters']['tiny']:,} "
        f"parameters, medium {results['unet_parameters']['medium']:,}.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| (a) drift callback vs stock pipeline, tiny UNet, batch {a_tiny['batch']} | "
        f"{a_tiny['callback_overhead_pct']:+.1f} % | ≤ 3 % |",
        f"| (a) drift callback vs stock pipeline, medium UNet, batch {a_medium['batch']} | "
        f"{a_medium['callback_overhead_pct']:+.1f} % | ≤ 3 % |",
        f"| (a) engine `edit_slices` (δ = {DRIFT}) vs stock pipeline, tiny / medium | "
        f"{a_tiny['engine_overhead_pct']:+.1f} % / {a_medium['engine_overhead_pct']:+.1f} % | ≤ 3 % |",
        f"| (b) whole volume ({b['slices']} slices) batched vs per-slice stock loop, tiny UNet | "
        f"{b['speedup']:.2f}× ({b['seconds']['batched_engine']:.1f} s vs {b['seconds']['stock_slice_loop']:.1f} s; "
        f"{_round_range(b)}) | ≥ 3× |",
        f"| (b) the same with one worker (batching alone) | {_one_worker(b)} | — |",
        f"| (c) the same, medium UNet ({c['slices']} slices) | {c['speedup']:.2f}× "
        f"({c['seconds']['batched_engine']:.1f} s vs {c['seconds']['stock_slice_loop']:.1f} s; {_round_range(c)}) | — |",
        f"| (c) the same with one worker | {_one_worker(c)} | — |",
        *(
            _limit_row(
                name, measured, (results.get("e_vae_chunks") or {}).get("tiny"), results.get("vae_chunk")
            )
            for name, measured in (("tiny", b), ("medium", c))
        ),
        f"| (d) peak RSS of `latentdrift counterfactual` on {d['volume']} | {d['peak_rss_gib']:.2f} GiB "
        f"({d['seconds']:.0f} s) | < 4 GB |",
        "",
        *(
            f"UNet alone, {name}, ms per slice-step by batch size: "
            + ", ".join(
                f"{batch}: {ms:.1f}" for batch, ms in measured["unet_limit"]["ms_per_slice_step"].items()
            )
            + "."
            for name, measured in (("tiny", b), ("medium", c))
        ),
        "",
        *(
            f"UNet alone, {name}, two halves at once (1 torch thread each), ms per slice-step by batch size: "
            + ", ".join(
                f"{batch}: {ms:.1f}"
                for batch, ms in measured["unet_limit"]["ms_per_slice_step_two_halves"].items()
            )
            + "."
            for name, measured in (("tiny", b), ("medium", c))
        ),
        "",
        f"(d) command: `{d['command']}`.",
        "",
        *_chunk_lines(results.get("e_vae_chunks"), results.get("vae_chunk")),
    ]
    return "\n".join(lines)


def _chunk_lines(chunks: dict[str, Any] | None, engine_chunk: int | None) -> list[str]:
    """(e) as a table: VAE ms per slice by slices per call (older results have none)."""
    if not chunks:
        return []
    sizes = list(next(iter(chunks.values()))["ms_per_slice"]["encode"])
    rows = [
        f"| {name} ({measured['size']}×{measured['size']}), {step} | "
        + " | ".join(f"{measured['ms_per_slice'][step][size]:.1f}" for size in sizes)
        + " |"
        for name, measured in chunks.items()
        for step in ("encode", "decode")
    ]
    return [
        f"(e) VAE ms per slice (64 slices) by slices per call; the engine used chunks of {engine_chunk}:",
        "",
        "| model, VAE step | " + " | ".join(sizes) + " |",
        "|---|" + "---|" * len(sizes),
        *rows,
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: see the module docstring)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer slices and repeats; prints, writes no results (a smoke test)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved timing rounds after the warm-up (default 3)"
    )
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the child process of (d)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    try:
        results = run_all(work, repeats, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.update(
        command=" ".join(["python", "benchmarks/drift/run.py", *sys.argv[1:]]),
        finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        total_seconds=time.perf_counter() - started,
        repeats=repeats,
    )
    report = markdown(results)
    if not args.quick:  # --quick is a smoke test: it prints and keeps the committed results
        (HERE / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (HERE / "results.md").write_text(report)
    print(report)


def run_all(work: Path, repeats: int, quick: bool) -> dict[str, Any]:
    info = machine()
    tiny_folder, medium_folder = build_tiny_sd(work / "tiny"), build_medium_sd(work / "medium")
    tiny, medium = load_bundle(tiny_folder, "cpu"), load_bundle(medium_folder, "cpu")
    parameters = {
        name: sum(p.numel() for p in b.unet.parameters()) for name, b in (("tiny", tiny), ("medium", medium))
    }
    overhead = {
        "tiny": drift_overhead(tiny, tiny_folder, 8, repeats),
        "medium": drift_overhead(medium, medium_folder, 4, repeats),
    }
    volume_tiny = volume_speedup(tiny, tiny_folder, head(16 if quick else 64, 48), repeats)
    volume_medium = volume_speedup(medium, medium_folder, head(8 if quick else 16, 48), repeats)
    for measured, bundle in ((volume_tiny, tiny), (volume_medium, medium)):
        measured["unet_limit"] = unet_limit(bundle, (1, 2, 4, 8, 16, 32, 64), repeats)
    memory = peak_memory(tiny_folder, work, 64 if quick else 256)
    editor = load_bundle(default_model("instruct").path, "cpu")
    chunks = {
        name: vae_chunks(b, (1, 8, 16, 32, 64), repeats) for name, b in (("tiny", tiny), ("editor", editor))
    }
    return {
        "machine": info,
        "unet_parameters": parameters,
        "a_drift_overhead": overhead,
        "b_volume_tiny": volume_tiny,
        "c_volume_medium": volume_medium,
        "d_peak_memory": memory,
        "e_vae_chunks": chunks,
        "vae_chunk": VAE_CHUNK,
    }


if __name__ == "__main__":
    main()
