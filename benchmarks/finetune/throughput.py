"""Training throughput: our shared loop vs a minimal loop written like diffusers' ``train_text_to_image``.

Both train the same tiny SD (``latentdrift.fixtures.tiny_models``) with the same batch size, resolution,
optimizer and Accelerator on the same cohort slices; the reference loop is the example script's
step with nothing around it (no status lines, no per-step generators, no cancel checks). Each loop
runs ``ROUNDS`` times, alternating, and the median samples/s is compared (warm-up steps excluded;
our loop's checkpoint at its final step is outside the timed span).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/finetune/throughput.py   → results_throughput.json/.md
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import HERE, machine, tiny_cohort

from latentdrift.core.devices import training_accelerator
from latentdrift.finetune.cohorts import prepare_cohort
from latentdrift.finetune.config import FinetuneConfig
from latentdrift.finetune.job_folder import JobFolder
from latentdrift.finetune.loop import train
from latentdrift.finetune.schemes import as_pixels, load_parts, make_scheme
from latentdrift.fixtures.tiny_models import build_tiny_sd

STEPS, WARMUP, BATCH, SIZE, ROUNDS = 40, 5, 4, 32, 3


def ours(config: FinetuneConfig, folder: Path) -> float:
    """Samples/s of :func:`latentdrift.finetune.loop.train` (basic scheme, no drift)."""
    accelerator = training_accelerator(config.device, config.mixed_precision, config.gradient_accumulation)
    data = prepare_cohort(config.cohort, config.slice_settings(), config.cache_dir)
    scheme = make_scheme(config)
    parts = load_parts(config.model)
    scheme.setup(parts)
    examples = scheme.examples(data, list(range(len(data.slices))), config.prompt_options())
    stamps: dict[int, float] = {}
    job = JobFolder(folder)
    job.path.mkdir(parents=True)
    train(
        accelerator,
        config,
        scheme,
        parts,
        examples,
        0.0,
        job,
        lambda event: stamps.setdefault(event["step"], time.perf_counter()),
    )
    return (STEPS - WARMUP) * BATCH / (stamps[STEPS] - stamps[WARMUP])


def reference(config: FinetuneConfig) -> float:
    """Samples/s of the diffusers example's training step, written out plainly."""
    import torch.nn.functional as F
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    data = prepare_cohort(config.cohort, config.slice_settings(), config.cache_dir)
    scheme = make_scheme(config)
    prompts = scheme.examples(data, list(range(len(data.slices))), config.prompt_options()).prompts
    parts = load_parts(config.model)
    parts.vae.requires_grad_(False)
    parts.text_encoder.requires_grad_(False)
    unet, vae, text_encoder, tokenizer, noise_scheduler = (
        parts.unet,
        parts.vae,
        parts.text_encoder,
        parts.tokenizer,
        parts.noise_scheduler,
    )
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=1e-2)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    unet.train()
    images = torch.from_numpy(data.images)
    stamps = {}
    for step in range(1, STEPS + 1):
        indices = torch.randint(0, len(images), (BATCH,))
        pixel_values = as_pixels(images[indices])
        with accelerator.accumulate(unet):
            latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (BATCH,)).long()
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            ids = tokenizer(
                [prompts[i] for i in indices],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            encoder_hidden_states = text_encoder(ids, return_dict=False)[0]
            model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
            loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        stamps[step] = time.perf_counter()
    return (STEPS - WARMUP) * BATCH / (stamps[STEPS] - stamps[WARMUP])


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="throughput-"))
    try:
        config = FinetuneConfig(
            cohort=str(tiny_cohort(root / "cohort")),
            scheme="basic",
            model=str(build_tiny_sd(root / "base")),
            steps=STEPS,
            resolution=SIZE,
            batch_size=BATCH,
            checkpoint_every=10_000,
            sample_every=0,
            log_every=1,
            device="cpu",
            cache_dir=str(root / "cache"),
        )
        runs: dict[str, list[float]] = {"ours": [], "reference": []}
        for number in range(ROUNDS):
            runs["reference"].append(reference(config))
            runs["ours"].append(ours(config, root / f"job{number}"))
        medians = {name: statistics.median(values) for name, values in runs.items()}
        results = {
            "samples_per_second": runs,
            "median": medians,
            "ratio_ours_to_reference": medians["ours"] / medians["reference"],
            "settings": {
                "steps": STEPS,
                "warmup": WARMUP,
                "batch": BATCH,
                "resolution": SIZE,
                "rounds": ROUNDS,
            },
            "machine": machine(),
        }
        (HERE / "results_throughput.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        m = results["machine"]
        (HERE / "results_throughput.md").write_text(
            "# Training throughput: our loop vs a diffusers-style minimal loop\n\n"
            f"Command: `OMP_NUM_THREADS=1 {m['command']}`\n"
            f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} on {m['torch_threads']} thread(s), "
            f"load average at the end {m['load_average'][0]:.1f} (shared machine: absolute numbers are noisy).\n\n"
            f"Tiny SD, {SIZE}×{SIZE} slices, batch {BATCH}, {STEPS} steps ({WARMUP} warm-up excluded), {ROUNDS} alternating rounds.\n\n"
            "| loop | samples/s per round | median |\n|---|---|---|\n"
            + "".join(
                f"| {n} | {', '.join(f'{v:.1f}' for v in runs[n])} | {medians[n]:.1f} |\n" for n in runs
            )
            + f"\nRatio ours / reference: **{results['ratio_ours_to_reference']:.3f}** (target ≥ 0.9).\n",
            encoding="utf-8",
        )
        print(json.dumps({k: results[k] for k in ("median", "ratio_ours_to_reference")}, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
