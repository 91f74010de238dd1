"""The one training loop every Stable Diffusion scheme shares, on 🤗 Accelerate.

The step is diffusers' ``train_text_to_image`` step: encode pixels with the frozen VAE (sampled
latents × scaling factor), draw ε, **add the drift** (:func:`noisy_latents`, the only training-side
use of δ: ``noise = drift_training_noise(ε, δ)`` feeds both ``add_noise`` and the ε-target), pick
timesteps, encode the prompts, run the UNet, take the MSE to the ε- (or v-) target. Schemes change
only what trains, how a batch is drawn and conditioned, the loss weighting and what is saved
(:mod:`.schemes`).

Accelerate places the models (CPU, one GPU, or one process per GPU/node under ``accelerate launch``),
accumulates gradients, runs mixed precision on CUDA, and saves/loads checkpoints
(:mod:`.checkpoints`). Randomness is drawn from generators seeded by (seed, step, micro-batch,
process), so a resumed run draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..core.errors import CancelledError
from ..core.progress import TrainingCallback, TrainingEvent
from ..core.values import Drift
from ..counterfactual.drift import drift_training_noise
from .checkpoints import load_trainable_weights, resume_from, save_checkpoint, save_trainable_weights_only
from .config import FinetuneConfig
from .job_folder import JobFolder
from .parts import Batch, Examples, Parts, UNetInput
from .schemes import Scheme

LOG = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0


@dataclass
class TrainOutcome:
    """The trained modules (unwrapped, on the training device) and one loss per optimizer step."""

    parts: Parts
    losses: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0


# --------------------------------------------------------------------------- the step


def noisy_latents(
    latents: torch.Tensor, noise_scheduler: Any, generator: torch.Generator, delta: Drift
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward process with Latent Drift: ``(x_t, ε + δ, t)`` for clean latents ``x_0`` (B, C, h, w).

    ``x_t = √ᾱ_t x_0 + √(1-ᾱ_t) (ε + δ)``; ``ε + δ`` is also the ε-target. δ = 0 adds an exact zero.
    """
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    noise = drift_training_noise(noise, delta)
    count = int(noise_scheduler.config.num_train_timesteps)
    timesteps = torch.randint(0, count, (len(latents),), generator=generator).to(latents.device)
    return noise_scheduler.add_noise(latents, noise, timesteps), noise, timesteps


def training_loss(
    parts: Parts, scheme: Scheme, batch: Batch, delta: Drift, generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """The loss of one batch (see the module docstring); gradients flow into what the scheme trains."""
    vae = parts.vae
    device = vae.device
    with torch.no_grad():
        posterior = vae.encode(batch.pixels.to(device, dtype)).latent_dist
        latents = (posterior.sample(generator=generator) * vae.config.scaling_factor).float()
    noisy, noise, timesteps = noisy_latents(latents, parts.noise_scheduler, generator, delta)
    ids = parts.tokenizer(
        batch.prompts,
        padding="max_length",
        max_length=parts.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    hidden = parts.text_encoder(ids)[0]
    given = scheme.model_input(UNetInput(noisy, hidden), batch, parts, generator)
    prediction = parts.unet(given.latents, timesteps, given.text, return_dict=False)[0]
    if parts.noise_scheduler.config.prediction_type == "v_prediction":
        target = parts.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return scheme.loss(prediction, target, batch)


def step_generator(seed: int, step: int, micro: int, process: int) -> torch.Generator:
    """The CPU generator of one micro-batch of one process (independent streams, reproducible)."""
    state = np.random.SeedSequence([seed, step, micro, process]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def batch_indices(position: int, count: int, size: int, seed: int) -> list[int]:
    """Items ``position … position + count`` of the stream of per-epoch shuffles of ``range(size)``."""
    indices: list[int] = []
    while len(indices) < count:
        epoch, offset = divmod(position + len(indices), size)
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices += order[offset : offset + count - len(indices)].tolist()
    return indices


# --------------------------------------------------------------------------- the loop


def weight_dtype(accelerator: Any) -> torch.dtype:
    """The dtype of the frozen modules: fp16/bf16 under mixed precision, else float32."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def train(
    accelerator: Any,
    config: FinetuneConfig,
    scheme: Scheme,
    parts: Parts,
    examples: Examples,
    delta: Drift,
    job: JobFolder,
    on_event: TrainingCallback | None = None,
) -> TrainOutcome:
    """Train ``parts`` with ``scheme`` on ``examples`` for ``config.steps`` optimizer steps.

    Resumes from the newest good checkpoint in ``job.checkpoints``; writes samples and checkpoints and
    sends ``on_event`` a step event with the loss after every step (main process). A cancel request
    checkpoints and raises :class:`CancelledError`.
    """
    from diffusers.optimization import get_scheduler

    dtype = weight_dtype(accelerator)
    trained = scheme.trained(parts)
    for module in (parts.unet, parts.vae, parts.text_encoder):
        if not any(module is m for m in trained.values()):
            module.to(accelerator.device, dtype=dtype)
    parameters = [p for m in trained.values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=scheme.learning_rate, weight_decay=1e-2)
    processes = accelerator.num_processes
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.warmup_steps * processes,
        num_training_steps=config.steps * processes,
    )
    prepared = accelerator.prepare(*trained.values(), optimizer, lr_scheduler)
    modules = dict(zip(trained, prepared[: len(trained)], strict=True))
    optimizer, lr_scheduler = prepared[len(trained) :]
    parts = replace(parts, **modules)
    save_trainable_weights_only(accelerator)
    state = resume_from(job.checkpoints, lambda path: load_trainable_weights(accelerator, path)) or {}
    start = int(state.get("step", 0))
    losses: list[dict[str, float]] = list(state.get("losses", []))
    if start:
        LOG.info("Resuming from step %d", start)
    if accelerator.is_main_process:
        job.truncate_status(start)  # steps after the checkpoint are redone
    run = _Run(accelerator, config, scheme, examples, delta, job, on_event)
    run.trained = list(modules.values())
    for module in modules.values():
        module.train()
    for step in range(start + 1, config.steps + 1):
        loss = _optimizer_step(run, parts, optimizer, lr_scheduler, parameters, step)
        losses.append({"step": step, "loss": loss})
        run.after_step(parts, step, losses, lr_scheduler.get_last_lr()[0])
    plain = replace(parts, **{name: accelerator.unwrap_model(m) for name, m in modules.items()})
    return TrainOutcome(plain, losses, start)


def _optimizer_step(
    run: _Run, parts: Parts, optimizer: Any, lr_scheduler: Any, parameters: list, step: int
) -> float:
    """One optimizer step over ``gradient_accumulation`` micro-batches; the mean loss over processes."""
    accelerator, config = run.accelerator, run.config
    dtype = weight_dtype(accelerator)
    total = torch.zeros((), device=accelerator.device)
    per_process = config.batch_size
    for micro in range(config.gradient_accumulation):
        generator = step_generator(config.seed, step, micro, accelerator.process_index)
        position = (
            ((step - 1) * config.gradient_accumulation + micro) * per_process * accelerator.num_processes
        )
        chosen = batch_indices(
            position, per_process * accelerator.num_processes, len(run.examples), config.seed
        )
        mine = chosen[accelerator.process_index * per_process : (accelerator.process_index + 1) * per_process]
        batch = run.scheme.draw(run.examples, torch.tensor(mine), generator)
        with accelerator.accumulate(*run.trained):
            loss = training_loss(parts, run.scheme, batch, run.delta, generator, dtype)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(parameters, MAX_GRAD_NORM)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        total += loss.detach() / config.gradient_accumulation
    run.scheme.after_step(parts)
    return float(accelerator.reduce(total, reduction="mean").item())


class _Run:
    """What happens between optimizer steps: the step's event, samples, checkpoints, cancel."""

    def __init__(
        self,
        accelerator: Any,
        config: FinetuneConfig,
        scheme: Scheme,
        examples: Examples,
        delta: Drift,
        job: JobFolder,
        on_event: TrainingCallback | None,
    ) -> None:
        self.accelerator, self.config, self.scheme = accelerator, config, scheme
        self.examples, self.delta, self.job, self.on_event = examples, delta, job, on_event
        self.trained: list[Any] = []

    def after_step(self, parts: Parts, step: int, losses: list[dict[str, float]], lr: float) -> None:
        config, main = self.config, self.accelerator.is_main_process
        sample = None
        if main and config.sample_every and (step % config.sample_every == 0 or step == config.steps):
            sample = self.save_sample(parts, step)
        if main and self.on_event is not None:
            self.on_event(self.step_event(step, losses[-1]["loss"], lr, sample))
        cancel = self._cancel_requested()
        if step % config.checkpoint_every == 0 or step == config.steps or cancel:
            trainer = {"step": step, "losses": losses, "delta": self.delta}
            path = save_checkpoint(
                self.accelerator, self.job.checkpoints, step, trainer, config.keep_checkpoints
            )
            if main:
                self.job.write_state("running", step=step, checkpoint=step)
                if self.on_event is not None:
                    self.on_event({"kind": "checkpoint", "step": step, "path": str(path)})
        if cancel:
            raise CancelledError(
                f"Cancelled at step {step} (checkpoint saved): resume with `latentdrift jobs resume {self.job.path}`."
            )

    def _cancel_requested(self) -> bool:
        flag = torch.tensor(float(self.job.cancel_requested()), device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="max")
        return bool(flag.item() > 0)

    def step_event(self, step: int, loss: float, lr: float, sample: str | None) -> TrainingEvent:
        """The event of optimizer step ``step``; ``epoch`` counts the passes over the examples so far."""
        examples_seen = (
            step * self.config.batch_size * self.accelerator.num_processes * self.config.gradient_accumulation
        )
        return {
            "kind": "step",
            "step": step,
            "steps": self.config.steps,
            "epoch": examples_seen // max(1, len(self.examples)),
            "loss": loss,
            "lr": lr,
            "sample_image": sample,
        }

    def save_sample(self, parts: Parts, step: int) -> str:
        """A sample image of the current model (first example's prompt; InstructPix2Pix edits its source)."""
        from .sampling import sample_slice, save_png

        plain = replace(
            parts,
            unet=self.accelerator.unwrap_model(parts.unet),
            text_encoder=self.accelerator.unwrap_model(parts.text_encoder),
        )
        with self.accelerator.autocast():
            image = sample_slice(plain, self.examples, self.config, self.delta)
        name = f"samples/step-{step:08d}.png"
        save_png(image, self.job.path / name)
        return name


def loss_summary(losses: list[dict[str, float]]) -> dict[str, float]:
    """First, last and final-10 % mean loss of a run (for model cards)."""
    values = [entry["loss"] for entry in losses]
    if not values:
        return {}
    tail = values[-max(1, math.ceil(len(values) / 10)) :]
    return {"first": values[0], "last": values[-1], "final_mean": float(np.mean(tail))}
