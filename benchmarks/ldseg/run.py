"""LDSeg benchmark: accuracy, calibration, robustness to noise and speed of the bundled brain-tissue model.

    .venv/bin/python benchmarks/ldseg/run.py [--subjects 6] [--quick]

Writes ``benchmarks/ldseg/results.json`` and ``results.md``. Everything is measured in this one run:

* accuracy — Dice and HD95 (mm) per class (MONAI metrics) on held-out synthetic subjects (seeds from
  1000 on; the model was trained on seeds below 30), whole volumes through ``segment_volume``; and the
  autoencoder ceiling: the Dice of the label autoencoder's own reconstruction of the true labels through
  the same volume pipeline, i.e. what a perfect denoiser (one that returned the encoded truth) would score;
* uncertainty — expected calibration error (15 bins) of the mean probabilities and the AUROC with which
  the entropy flags wrong voxels, both over the voxels where the truth or the prediction is not background;
* robustness — mean Dice with Gaussian noise of σ = 0, 0.05, 0.1, 0.2 (in units of the volume's robust
  intensity range) for LDSeg and a deterministic MONAI U-Net of similar size trained on the same data
  (``baseline_unet.py``);
* sampling steps — mean Dice of one sample per slice against the number of DDIM steps (1 … 50), on
  every third foreground slice of the held-out subjects at the model's resolution (``--steps-curve``
  measures it alone and updates the existing results);
* speed and memory — LDSeg sampling against a pixel-space diffusion segmenter (MONAI DiffusionModelUNet
  with the image concatenated, as in MONAI's DDPM segmentation tutorial) at the same number of samples,
  each in a fresh process; 50 DDIM steps are run, 1000 DDPM steps are extrapolated from the measured
  time per step (said so in the table).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from safetensors.torch import load_file
from torchmetrics.functional.classification import binary_auroc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from baseline_unet import OUTPUT as UNET_FOLDER  # noqa: E402
from baseline_unet import build_unet  # noqa: E402
from baseline_unet import train as train_unet  # noqa: E402

from latentdrift.core.models import resolve_model  # noqa: E402
from latentdrift.core.volumes import Volume  # noqa: E402
from latentdrift.fixtures.synthetic import TISSUE_NAMES, synthetic_subject  # noqa: E402
from latentdrift.segmentation.data import pair_slices  # noqa: E402
from latentdrift.segmentation.ldseg import LDSegNetwork, load_ldseg_model  # noqa: E402
from latentdrift.segmentation.ldseg.sampler import describe_sampling  # noqa: E402
from latentdrift.segmentation.ldseg.uncertainty import segment_slices  # noqa: E402
from latentdrift.segmentation.segmenters.ldseg import LDSegSegmenter, ldseg_input_spec  # noqa: E402
from latentdrift.segmentation.volume_segmentation import (  # noqa: E402
    SegmentSettings,
    VolumeSegmentation,
    segment_volume,
    segment_volume_with,
)

HELD_OUT_SEED = 1000
CURVE_STEPS = (1, 2, 5, 10, 15, 25, 50)
CURVE_SLICE_STRIDE = 3
NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2)
SPEED_SLICES = 2


def onehot(labels: np.ndarray, classes: int) -> torch.Tensor:
    """``[k, j, i]`` labels → ``(1, C, k, j, i)`` float one-hot."""
    return (
        torch.nn.functional.one_hot(torch.from_numpy(labels.astype(np.int64)), classes)
        .permute(3, 0, 1, 2)[None]
        .float()
    )


def dice_per_class(predicted: np.ndarray, expected: np.ndarray, classes: int) -> list[float]:
    """MONAI Dice of each foreground class between two ``[k, j, i]`` label arrays (NaN where absent)."""
    return compute_dice(onehot(predicted, classes), onehot(expected, classes), include_background=False)[
        0
    ].tolist()


def accuracy(result: VolumeSegmentation, truth: Volume, classes: int) -> dict:
    """Dice and HD95 per foreground class, ECE and entropy AUROC over the brain region."""
    predicted, expected = onehot(result.labels.voxels, classes), onehot(truth.voxels, classes)
    dice = dice_per_class(result.labels.voxels, truth.voxels, classes)
    hd95 = compute_hausdorff_distance(
        predicted,
        expected,
        include_background=False,
        percentile=95,
        spacing=list(truth.geometry.spacing[::-1]),
    )[0].tolist()
    region = (truth.voxels > 0) | (result.labels.voxels > 0)
    probabilities = result.probabilities[:, region]  # (C, n)
    confidence, prediction = probabilities.max(axis=0), probabilities.argmax(axis=0)
    correct = prediction == truth.voxels[region]
    wrong = torch.from_numpy(~correct)
    auroc = (
        float(binary_auroc(torch.from_numpy(result.entropy.voxels[region]), wrong.long()))
        if wrong.any()
        else float("nan")
    )
    return {
        "dice": dict(zip(TISSUE_NAMES[1:], dice, strict=True)),
        "hd95_mm": dict(zip(TISSUE_NAMES[1:], hd95, strict=True)),
        "ece": expected_calibration_error(confidence, correct),
        "entropy_auroc": auroc,
        "error_rate": float(1 - correct.mean()),
    }


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Σ_b |accuracy_b − confidence_b| · n_b / n over equal-width confidence bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += abs(correct[members].mean() - confidence[members].mean()) * members.mean()
    return float(total)


def with_noise(volume: Volume, sigma: float, seed: int) -> Volume:
    """Gaussian noise of ``sigma`` × the robust intensity range (0.5–99.5 percentiles)."""
    low, high = np.percentile(volume.voxels, (0.5, 99.5))
    noise = np.random.default_rng(seed).normal(0.0, sigma * (high - low), volume.voxels.shape)
    return volume.with_voxels((volume.voxels + noise).astype(np.float32))


def autoencoder_ceiling(model: LDSegNetwork, data: list[tuple[Volume, Volume]]) -> dict:
    """Dice per class of decode(encode(true labels)) through ``segment_volume_with``, averaged over subjects."""
    classes = model.config.num_classes
    per_subject = []
    for image, truth in data:
        _, labels = pair_slices(image, truth, model.config, min_foreground=-1.0)  # every slice, in order

        @torch.no_grad()
        def reconstruct(images: np.ndarray, labels: np.ndarray = labels) -> tuple[np.ndarray, np.ndarray]:
            latents = [
                model.encode_labels(torch.from_numpy(labels[i : i + 32])) for i in range(0, len(labels), 32)
            ]
            probabilities = torch.cat([torch.softmax(model.label_decoder(z), dim=1) for z in latents]).numpy()
            return probabilities, np.zeros((len(images), *images.shape[2:]), np.float32)

        result = segment_volume_with(image, ldseg_input_spec(model.config), None, reconstruct)
        per_subject.append(dice_per_class(result.labels.voxels, truth.voxels, classes))
    per_class = np.nanmean(np.asarray(per_subject), axis=0)
    return {
        "dice": dict(zip(TISSUE_NAMES[1:], per_class.tolist(), strict=True)),
        "mean_dice": float(per_class.mean()),
    }


def unet_predictor(unet: torch.nn.Module):  # type: ignore[no-untyped-def]
    """A deterministic slice predictor: softmax probabilities and their normalised entropy."""

    @torch.no_grad()
    def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = [
            torch.softmax(unet(torch.from_numpy(images[i : i + 16])), dim=1)
            for i in range(0, len(images), 16)
        ]
        probabilities = torch.cat(outputs)
        entropy = torch.special.entr(probabilities).sum(1) / np.log(probabilities.shape[1])
        return probabilities.numpy(), entropy.numpy()

    return predict


def load_unet(classes: int, steps: int) -> torch.nn.Module:
    weights = UNET_FOLDER / "model.safetensors"
    if not weights.exists():
        train_unet(steps, 8, 30)
    unet = build_unet(classes)
    unet.load_state_dict(load_file(str(weights)))
    return unet.eval()


def mean_dice(result: VolumeSegmentation, truth: Volume, classes: int) -> float:
    return float(np.nanmean(dice_per_class(result.labels.voxels, truth.voxels, classes)))


# --------------------------------------------------------------------------- speed (fresh processes)


def speed_ldseg(samples: int, steps: int) -> dict:
    model = load_ldseg_model(resolve_model("brain-tissue-ldseg", ("ldseg",)).path)
    size = model.config.image_size
    images = np.random.default_rng(0).uniform(-1, 1, (SPEED_SLICES, 1, size, size)).astype(np.float32)
    from latentdrift.segmentation.ldseg import segment_slices

    segment_slices(model, images[:1], samples=1, steps=1)  # warm-up
    started = time.perf_counter()
    segment_slices(model, images, samples=samples, steps=steps, batch_size=SPEED_SLICES)
    return {"seconds": time.perf_counter() - started}


def speed_pixel(samples: int, steps: int, classes: int, size: int) -> dict:
    """MONAI's tutorial-style pixel-space segmenter: image ⊕ noisy one-hot mask → noise, DDIM ``steps``."""
    from diffusers import DDIMScheduler
    from monai.networks.nets import DiffusionModelUNet

    net = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1 + classes,
        out_channels=classes,
        channels=(64, 64, 64),
        attention_levels=(False, False, True),
        num_res_blocks=1,
        num_head_channels=64,
    ).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    batch = SPEED_SLICES * samples
    image = torch.rand(batch, 1, size, size) * 2 - 1
    mask = torch.randn(batch, classes, size, size)
    with torch.no_grad():
        net(torch.cat([image, mask], 1), timesteps=torch.zeros(batch, dtype=torch.long))  # warm-up
        started = time.perf_counter()
        for t in scheduler.timesteps:
            noise = net(torch.cat([image, mask], 1), timesteps=torch.full((batch,), int(t)))
            mask = scheduler.step(noise, t, mask).prev_sample
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "seconds_per_step": seconds / steps,
        "parameters": sum(p.numel() for p in net.parameters()),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(function: str, *args: object) -> dict:
    """Run ``function(*args)`` of this file in a new Python process; adds its peak RSS in MB.

    The peak is the child's ``VmHWM`` (reset by exec), not ``ru_maxrss``, which on Linux carries the
    parent's resident size over from the fork.
    """
    code = (
        f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import run; "
        f"out = run.{function}(*{args!r}); "
        "out['peak_rss_mb'] = run.peak_rss_mb(); print(json.dumps(out))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4, help="held-out synthetic subjects")
    parser.add_argument("--noise-subjects", type=int, default=2, help="subjects for the robustness test")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    parser.add_argument("--quick", action="store_true", help="2 subjects, fewer noise subjects: a smoke run")
    parser.add_argument(
        "--steps-curve",
        action="store_true",
        help="measure Dice against the number of DDIM steps and update it in the existing results",
    )
    parser.add_argument(
        "--speed-only",
        action="store_true",
        help="measure speed and memory again and update them in the existing results (accuracy kept)",
    )
    args = parser.parse_args()
    if args.speed_only:
        return rerun_speed(args)
    if args.steps_curve:
        return rerun_steps_curve(args)
    command = " ".join(["python", "benchmarks/ldseg/run.py", *sys.argv[1:]])
    subjects = 2 if args.quick else args.subjects
    entry = resolve_model("brain-tissue-ldseg", ("ldseg",))
    model: LDSegNetwork = load_ldseg_model(entry.path)
    classes = model.config.num_classes
    model.config = replace(model.config, sampling_steps=args.steps or model.config.sampling_steps)
    settings = SegmentSettings(samples=args.samples, seed=0, device="cpu")
    data = [synthetic_subject(HELD_OUT_SEED + i) for i in range(subjects)]

    per_subject, seconds = [], []
    for image, truth in data:
        started = time.perf_counter()
        result = segment_volume(image, LDSegSegmenter(model), settings)
        seconds.append(time.perf_counter() - started)
        per_subject.append(accuracy(result, truth, classes))
        print(json.dumps(per_subject[-1]), flush=True)

    unet = load_unet(classes, 1000)
    robustness: dict[str, dict[str, float]] = {"ldseg": {}, "unet": {}}
    noise_subjects = data[: 1 if args.quick else args.noise_subjects]
    for sigma in NOISE_LEVELS:
        scores = {"ldseg": [], "unet": []}
        for index, (image, truth) in enumerate(noise_subjects):
            noisy = with_noise(image, sigma, seed=index)
            scores["ldseg"].append(
                mean_dice(segment_volume(noisy, LDSegSegmenter(model), settings), truth, classes)
            )
            baseline = segment_volume_with(noisy, ldseg_input_spec(model.config), None, unet_predictor(unet))
            scores["unet"].append(mean_dice(baseline, truth, classes))
        for name, values in scores.items():
            robustness[name][str(sigma)] = float(np.mean(values))
        print(sigma, robustness, flush=True)

    results = {
        "command": command,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
        "model": str(entry.path.relative_to(ROOT)),
        "settings": {
            "samples": args.samples,
            "steps": model.config.sampling_steps,
            "sampler": describe_sampling(model.config),
            "held_out_subjects": subjects,
            "noise_subjects": len(noise_subjects),
            "first_seed": HELD_OUT_SEED,
        },
        "accuracy": summarise(per_subject),
        "autoencoder_ceiling": autoencoder_ceiling(model, data),
        "per_subject": per_subject,
        "seconds_per_volume": float(np.mean(seconds)),
        "robustness_mean_dice": robustness,
        "speed": measure_speed(args.samples, model.config.sampling_steps, classes, model.config.image_size),
        "steps_curve": steps_curve(model, data),
        "peak_rss_mb_this_process": peak_rss_mb(),
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "results.md").write_text(markdown(results))
    print((HERE / "results.md").read_text())
    return 0


def measure_speed(samples: int, steps: int, classes: int, size: int) -> dict:
    """LDSeg against the pixel-space segmenter, each in a fresh process (see the module docstring)."""
    ldseg_speed = in_fresh_process("speed_ldseg", samples, steps)
    pixel_speed = in_fresh_process("speed_pixel", samples, 50, classes, size)
    pixel_1000 = pixel_speed["seconds_per_step"] * 1000
    return {
        "slices": SPEED_SLICES,
        "samples": samples,
        "ldseg": ldseg_speed,
        "pixel_ddim50": pixel_speed,
        "pixel_ddpm1000_extrapolated_seconds": pixel_1000,
        "speedup_vs_pixel_ddpm1000": pixel_1000 / ldseg_speed["seconds"],
        "speedup_vs_pixel_ddim50": pixel_speed["seconds"] / ldseg_speed["seconds"],
    }


def rerun_speed(args: argparse.Namespace) -> int:
    """``--speed-only``: new speed and memory figures in the existing results, with their own command."""
    results = json.loads((HERE / "results.json").read_text())
    config = load_ldseg_model(resolve_model("brain-tissue-ldseg", ("ldseg",)).path).config
    steps = args.steps or config.sampling_steps
    results["speed"] = measure_speed(args.samples, steps, config.num_classes, config.image_size)
    results["speed_command"] = " ".join(["python", "benchmarks/ldseg/run.py", *sys.argv[1:]])
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "results.md").write_text(markdown(results))
    print((HERE / "results.md").read_text())
    return 0


def steps_curve(model: LDSegNetwork, data: list[tuple[Volume, Volume]]) -> dict:
    """Mean foreground Dice (MONAI, all slices together) of one sample per slice for each of ``CURVE_STEPS``."""
    pairs = [pair_slices(image, truth, model.config) for image, truth in data]
    images = np.concatenate([images[::CURVE_SLICE_STRIDE] for images, _ in pairs])
    labels = np.concatenate([labels[::CURVE_SLICE_STRIDE] for _, labels in pairs]).astype(np.int64)
    classes = model.config.num_classes
    dice = {}
    for steps in CURVE_STEPS:
        predicted = segment_slices(model, torch.from_numpy(images)[:, None], samples=1, steps=steps, seed=0)
        dice[str(steps)] = float(np.mean(dice_per_class(predicted.labels, labels, classes)))
        print("steps", steps, dice[str(steps)], flush=True)
    return {"slices": len(images), "subjects": len(data), "samples": 1, "mean_dice": dice}


def rerun_steps_curve(args: argparse.Namespace) -> int:
    """``--steps-curve``: the Dice-against-steps figures in the existing results, with their own command."""
    results = json.loads((HERE / "results.json").read_text())
    model = load_ldseg_model(resolve_model("brain-tissue-ldseg", ("ldseg",)).path)
    subjects = results["settings"]["held_out_subjects"]
    results["steps_curve"] = steps_curve(
        model, [synthetic_subject(HELD_OUT_SEED + i) for i in range(subjects)]
    )
    results["steps_curve_command"] = " ".join(["python", "benchmarks/ldseg/run.py", *sys.argv[1:]])
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "results.md").write_text(markdown(results))
    print((HERE / "results.md").read_text())
    return 0


def summarise(per_subject: list[dict]) -> dict:
    """Means over subjects (per class for Dice and HD95)."""
    summary: dict = {}
    for key in ("dice", "hd95_mm"):
        summary[key] = {
            name: float(np.nanmean([s[key][name] for s in per_subject])) for name in TISSUE_NAMES[1:]
        }
    summary["mean_dice"] = float(np.mean(list(summary["dice"].values())))
    for key in ("ece", "entropy_auroc", "error_rate"):
        summary[key] = float(np.nanmean([s[key] for s in per_subject]))
    return summary


def markdown(results: dict) -> str:
    ceiling = results["autoencoder_ceiling"]
    accuracy_rows = "\n".join(
        f"| {name} | {results['accuracy']['dice'][name]:.3f} | {results['accuracy']['hd95_mm'][name]:.2f} "
        f"| {ceiling['dice'][name]:.3f} |"
        for name in TISSUE_NAMES[1:]
    )
    noise_rows = "\n".join(
        f"| {sigma} | {results['robustness_mean_dice']['ldseg'][sigma]:.3f} | {results['robustness_mean_dice']['unet'][sigma]:.3f} |"
        for sigma in results["robustness_mean_dice"]["ldseg"]
    )
    speed = results["speed"]
    settings = results["settings"]
    curve = results.get("steps_curve")
    curve_section = (
        ""
        if curve is None
        else f"""
## Sampling steps: mean Dice of one sample against the number of DDIM steps

Command: `{results.get("steps_curve_command", results["command"])}`. One foreground slice in {CURVE_SLICE_STRIDE} of the
{curve["subjects"]} held-out subjects ({curve["slices"]} slices) at the model's resolution, one sample each (the table
above averages {settings["samples"]}). Each schedule starts at the model's first timestep or where its
steps of T // N fit below t = 1000. Default: {settings["sampler"]}.

| steps | {" | ".join(curve["mean_dice"])} |
| --- | {" | ".join("---" for _ in curve["mean_dice"])} |
| mean Dice | {" | ".join(f"{value:.3f}" for value in curve["mean_dice"].values())} |
"""
    )
    return f"""# LDSeg benchmark (bundled brain-tissue model)

Command: `{results["command"]}` — machine: {results["machine"]}.
Held-out data: {settings["held_out_subjects"]} **synthetic** subjects (seeds {settings["first_seed"]}…), made from the
MNI152 template like the training subjects but with deformations and intensities the model never saw;
{settings["samples"]} samples per slice, {settings["sampler"]}. These are not real patient scans.

## Accuracy

| class | Dice | HD95 (mm) | autoencoder ceiling (Dice) |
| --- | --- | --- | --- |
{accuracy_rows}
| **mean** | **{results["accuracy"]["mean_dice"]:.3f}** | | {ceiling["mean_dice"]:.3f} |

The autoencoder ceiling is the Dice of the label autoencoder's own reconstruction of the true labels
(through the same resampling to the model's grid and back): what a perfect denoiser, one that returned
the encoded true labels, would score.

## Uncertainty (voxels where truth or prediction is not background)

| expected calibration error | entropy AUROC for wrong voxels | voxel error rate |
| --- | --- | --- |
| {results["accuracy"]["ece"]:.4f} | {results["accuracy"]["entropy_auroc"]:.3f} | {results["accuracy"]["error_rate"]:.4f} |

## Robustness: mean Dice under Gaussian noise (σ × robust intensity range), first {settings.get("noise_subjects", "2 (default)")} subjects

| σ | LDSeg | MONAI U-Net (deterministic, same data) |
| --- | --- | --- |
{noise_rows}

## Speed and memory ({speed["slices"]} slices × {speed["samples"]} samples, fresh process each, CPU)

Command: `{results.get("speed_command", results["command"])}`.

| method | seconds | peak RSS (MB) |
| --- | --- | --- |
| LDSeg in latent space ({settings["sampler"]}) | {speed["ldseg"]["seconds"]:.2f} | {speed["ldseg"]["peak_rss_mb"]:.0f} |
| pixel-space diffusion (MONAI DiffusionModelUNet), 50 DDIM steps | {speed["pixel_ddim50"]["seconds"]:.2f} | {speed["pixel_ddim50"]["peak_rss_mb"]:.0f} |
| pixel-space diffusion, 1000 DDPM steps (extrapolated: 1000 × measured time per step) | {speed["pixel_ddpm1000_extrapolated_seconds"]:.1f} | — |

LDSeg is **{speed["speedup_vs_pixel_ddpm1000"]:.0f}×** faster than the 1000-step pixel-space baseline and
**{speed["speedup_vs_pixel_ddim50"]:.1f}×** faster than its 50-step DDIM variant at the same number of samples.
Whole volume (all axial slices, {settings["samples"]} samples): {results["seconds_per_volume"]:.1f} s on average.
{curve_section}"""


if __name__ == "__main__":
    raise SystemExit(main())
