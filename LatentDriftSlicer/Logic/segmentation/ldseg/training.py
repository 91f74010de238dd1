"""End-to-end LDSeg training with one loss, EMA of the denoiser, validation Dice and resumable checkpoints.

One step, for a batch of images ``x`` ``(b, 1, S, S)`` and labels ``y`` ``(b, S, S)``::

    z0 = label_encoder(onehot(y));  e = image_encoder(x)
    t ~ U{0..T-1}, ε ~ N(0, I) independently per sample;  z_t = scheduler.add_noise(z0, ε, t)
    ε̂ = denoiser([z_t, e], t);  x̂0 = (z_t − √(1−ᾱ_t) ε̂) / √ᾱ_t  (clipped to ±latent_bound, as in DDIM)
    loss = CE(ŷ, y) + 2·(1 − Dice(ŷ, y)) + λ·MSE(ε̂, ε) + ρ·[CE(ỹ, y) + 2·(1 − Dice(ỹ, y))],
    ŷ = softmax(label_decoder(x̂0)),  ỹ = softmax(label_decoder(z0))

The ρ term (``reconstruction_weight``) is not in the LDSeg reference, which trains the label
autoencoder only through ŷ: most of its batches sit at large t, where x̂0 is mostly the image
encoder's guess, so the decoder never learns to read a precise latent, and the autoencoder's own
reconstruction of the true labels, what even a perfect denoiser would score, stays low
(``benchmarks/ldseg`` measures that ceiling). ρ = 1 trains the autoencoder directly as well; ρ = 0 gives the reference's loss.

All four networks get gradients from that single loss, and the exponential moving average (EMA)
covers all four: they are trained as one, and an averaged denoiser next to the encoders' current
weights would pair weights of different steps. The learning rate follows a diffusers scheduler
(``lr_scheduler``: constant, cosine, linear, … over ``steps``). Randomness is drawn from CPU
generators seeded by ``(seed, step)`` and ``(seed, epoch)``, so a resumed run repeats the
uninterrupted one.

Training runs on the stack of every training run: a 🤗 Accelerate ``Accelerator``
(:func:`latentdrift.core.devices.training_accelerator`: device and mixed precision chosen as for the
fine-tuning schemes) prepares the model, AdamW, the learning-rate scheduler and the data loader of
the steps' batches; one process (the batches are not sharded). Checkpoints (``checkpoint_dir``) are
:mod:`latentdrift.finetune.checkpoints`' ``step-NNNNNNNN`` folders, written atomically with a
manifest, the newest ``keep_checkpoints`` kept, an incomplete or unreadable one skipped on resume:
accelerate's state (the model in safetensors; AdamW, scheduler and RNG states, which accelerate
reads back with ``torch.load(weights_only=True)``), the EMA weights (``ema.safetensors``) and
``trainer.json`` (step, history, the config and settings). Nothing is unpickled beyond what
``weights_only`` allows.

3D models (``config.spatial_dims == 3``) train the same way on whole volumes: images ``(b, 1, S, S, S)``,
labels ``(b, S, S, S)``, latents and noise ``(b, 1, s, s, s)``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Sampler, TensorDataset

from ...core.devices import training_accelerator
from ...core.errors import InputError, JobError, ParameterError
from ...core.progress import TrainingCallback
from ...core.values import check_batching, check_mixed_precision, check_seed
from ...finetune.checkpoints import TRAINER_STATE, resume_from, save_checkpoint
from .augment import augment_batch
from .model_io import read_json_object
from .network import LDSegConfig, LDSegNetwork
from .sampler import make_scheduler, predict_original
from .uncertainty import segment_slices

LOG = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "latentdrift-ldseg-checkpoint"
CHECKPOINT_VERSION = 4
"""4: accelerate states in :mod:`latentdrift.finetune.checkpoints` folders (3: one safetensors file and
``checkpoint.json``; epoch losses include the reconstruction loss; 2: four-figure losses missing; the EMA
covers the whole model and the learning-rate scheduler is saved; 1: EMA of the denoiser only)."""
EMA_WEIGHTS = "ema.safetensors"
"""The EMA model's weights in a checkpoint folder."""
LEGACY_CHECKPOINT = "checkpoint.json"
"""Where checkpoints before version 4 kept their state: directly in the checkpoint folder."""
DICE_WEIGHT = 2.0
LR_SCHEDULERS = ("constant", "linear", "cosine", "cosine_with_restarts", "polynomial")
"""``diffusers.optimization.get_scheduler`` names that need nothing beyond the number of steps."""


@dataclass(frozen=True)
class TrainSettings:
    """How to train. ``steps`` optimizer steps in all; an epoch is ``ceil(N / batch_size)`` steps.

    ``noise_weight`` is λ of the ε-MSE term, ``reconstruction_weight`` ρ of the label autoencoder's
    own segmentation loss (0 = the LDSeg reference; see the module docstring). ``validation_steps``
    DDIM steps (one sample) are used for the per-epoch validation Dice. ``checkpoint_every`` steps
    (and at the end) a checkpoint is written to ``checkpoint_dir`` when given (the newest
    ``keep_checkpoints`` are kept); with ``resume`` a run continues from the newest good one found there.
    ``mixed_precision``: ``auto`` (fp16 on CUDA, float32 elsewhere), ``no`` (float32), ``fp16`` or ``bf16``,
    as for fine-tuning.
    ``flip_left_right`` only applies to axial and coronal models (see :func:`augment_batch`);
    ``scanner_variation`` adds its real-scan transforms (2D models).
    ``lr_scheduler`` is a ``diffusers.optimization.get_scheduler`` name (no warm-up), over ``steps``.
    """

    steps: int = 2000
    batch_size: int = 8
    learning_rate: float = 1e-3
    lr_scheduler: str = "constant"
    weight_decay: float = 1e-4
    gradient_clip: float = 1.0
    ema_decay: float = 0.999
    noise_weight: float = 1.0
    reconstruction_weight: float = 1.0
    seed: int = 0
    augment: bool = True
    flip_left_right: bool = False
    scanner_variation: bool = False
    validation_steps: int = 5
    checkpoint_dir: str | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = True
    device: str = "auto"
    mixed_precision: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ParameterError(f"steps={self.steps}: train for 1 or more steps.")
        check_batching(self.batch_size, None)
        check_seed(self.seed)
        check_mixed_precision(self.mixed_precision)


@dataclass
class TrainResult:
    """A trained model (EMA weights, eval mode) and one history entry per epoch.

    Each entry: ``epoch``, ``step``, ``loss``, ``loss_segmentation``, ``loss_noise``,
    ``loss_reconstruction`` (means over the epoch) and, with validation data, ``dice`` (foreground
    class name → Dice in [0, 1], ``None`` when the class is absent from the validation labels) and
    ``mean_dice``.
    """

    model: LDSegNetwork
    history: list[dict[str, Any]] = field(default_factory=list)
    start_step: int = 0


@dataclass
class _State:
    """Everything a training run mutates; what a checkpoint stores. ``model``, ``optimizer``,
    ``lr_scheduler`` and ``batches`` (every step's batch) as the run's ``accelerator`` prepared them."""

    accelerator: Any
    model: Any
    ema: AveragedModel
    optimizer: Any
    lr_scheduler: Any
    batches: DataLoader
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_losses: list[list[float]] = field(default_factory=list)


def train_ldseg(
    images: np.ndarray,
    labels: np.ndarray,
    val_images: np.ndarray | None,
    val_labels: np.ndarray | None,
    config: LDSegConfig,
    settings: TrainSettings | None = None,
    progress: TrainingCallback | None = None,
    start_from: LDSegNetwork | None = None,
) -> TrainResult:
    """Train an LDSeg model on slices ``images`` ``(N, S, S)`` float32 in the model range and ``labels``.

    ``labels`` ``(N, S, S)`` integers in ``[0, C)``; ``S = config.image_size``. A 3D config takes
    volumes ``(N, S, S, S)`` instead. Validation arrays are
    optional (same conventions). ``progress`` receives :class:`~latentdrift.core.progress.TrainingEvent` dicts:
    ``{"kind": "step", "step", "steps", "epoch", "loss", "lr", "loss_segmentation", ...}`` every step,
    ``{"kind": "epoch", **history entry}`` and ``{"kind": "checkpoint", "path", "step"}``. Raise from
    ``progress`` to stop (the last checkpoint stays valid).
    ``start_from``: a trained model whose weights replace the seeded initialisation (fine-tuning; its
    networks must have the shapes ``config`` gives); a checkpoint being resumed still takes precedence.
    """
    settings = settings or TrainSettings()
    _check_settings(settings)
    train_x, train_y = _as_tensors(images, labels, config, "training")
    val = (
        None
        if val_images is None or val_labels is None
        else _as_tensors(val_images, val_labels, config, "validation")
    )
    steps_per_epoch = math.ceil(len(train_x) / settings.batch_size)
    state = _new_state(config, settings, (train_x, train_y), steps_per_epoch, start_from)
    start_step = _maybe_resume(state, config, settings)
    scheduler = make_scheduler(config)
    loss_function = DiceCELoss(
        to_onehot_y=True, softmax=True, batch=True, lambda_dice=DICE_WEIGHT, lambda_ce=1.0
    )
    emit = progress or (lambda _event: None)
    state.model.train()
    batches = state.accelerator.skip_first_batches(state.batches, start_step) if start_step else state.batches
    for images_batch, labels_batch in batches:
        losses = _train_step(state, images_batch, labels_batch, settings, scheduler, loss_function)
        state.step += 1
        state.epoch_losses.append(losses)
        emit(
            {
                "kind": "step",
                "step": state.step,
                "steps": settings.steps,
                "epoch": _epoch(state.step, steps_per_epoch),
                "lr": state.lr_scheduler.get_last_lr()[0],
                **_loss_dict(losses),
            }
        )
        if state.step % steps_per_epoch == 0 or state.step == settings.steps:
            entry = _end_epoch(state, val, settings, steps_per_epoch)
            emit({"kind": "epoch", **entry})
        if settings.checkpoint_dir and (
            state.step % settings.checkpoint_every == 0 or state.step == settings.steps
        ):
            path = save_checkpoint(
                state.accelerator,
                Path(settings.checkpoint_dir),
                state.step,
                _trainer_state(state, settings),
                settings.keep_checkpoints,
            )
            emit({"kind": "checkpoint", "path": str(path), "step": state.step})
    return TrainResult(inference_model(state.ema), state.history, start_step)


def _check_settings(settings: TrainSettings) -> None:
    """Refuse out-of-range settings with a :class:`ParameterError`."""
    positive = ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "validation_steps")
    for name in positive:
        if getattr(settings, name) < 1:
            raise ParameterError(
                f"Training setting '{name}' must be at least 1, got {getattr(settings, name)}."
            )
    for name in ("noise_weight", "reconstruction_weight"):
        if getattr(settings, name) < 0:
            raise ParameterError(f"{name} must be zero or positive, got {getattr(settings, name)}.")
    if not 0.0 <= settings.ema_decay < 1.0:
        raise ParameterError(f"ema_decay must be in [0, 1), got {settings.ema_decay}.")
    if settings.learning_rate <= 0:
        raise ParameterError(f"learning_rate must be positive, got {settings.learning_rate}.")
    if settings.lr_scheduler not in LR_SCHEDULERS:
        raise ParameterError(
            f"Unknown lr_scheduler '{settings.lr_scheduler}': use one of {', '.join(LR_SCHEDULERS)}."
        )


def _as_tensors(
    images: np.ndarray, labels: np.ndarray, config: LDSegConfig, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``(N, S, S)`` images and labels; return ``(N, 1, S, S)`` float32 and ``(N, S, S)`` int64.

    3D configs: ``(N, S, S, S)`` → ``(N, 1, S, S, S)`` and ``(N, S, S, S)``.
    """
    shape = config.image_shape
    if (
        images.ndim != 1 + len(shape)
        or images.shape[1:] != shape
        or labels.shape != images.shape
        or len(images) == 0
    ):
        kind = "slices" if len(shape) == 2 else "volumes"
        raise InputError(
            f"The {name} {kind} must be arrays (N, {', '.join(map(str, shape))}) for images and labels "
            f"alike (the model's resolution), got {images.shape} and {labels.shape}."
        )
    if not np.isfinite(images).all():
        raise InputError(f"The {name} images hold NaN or infinite values.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= config.num_classes:
        raise InputError(
            f"The {name} labels must be integers from 0 to {config.num_classes - 1} "
            f"({', '.join(config.class_names)}), got {labels.dtype} values {labels.min()}..{labels.max()}."
        )
    return torch.from_numpy(images.astype(np.float32))[:, None], torch.from_numpy(labels.astype(np.int64))


def _seeded(*parts: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (well mixed by NumPy's SeedSequence)."""
    seed = int(np.random.SeedSequence([abs(p) for p in parts]).generate_state(1, np.uint64)[0])
    return torch.Generator(device="cpu").manual_seed(seed)


def _epoch(step: int, steps_per_epoch: int) -> int:
    """1-based epoch that optimizer step ``step`` (1-based) belongs to."""
    return (step - 1) // steps_per_epoch + 1


def ema_average(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | int], torch.Tensor]:
    """EMA update with warm-up: effective decay ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates."""

    def average(averaged: torch.Tensor, current: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
        rate = min(decay, (1 + float(count)) / (10 + float(count)))
        return averaged * rate + current * (1 - rate)

    return average


def _new_state(
    config: LDSegConfig,
    settings: TrainSettings,
    data: tuple[torch.Tensor, torch.Tensor],
    steps_per_epoch: int,
    start_from: LDSegNetwork | None = None,
) -> _State:
    """Fresh model (weights from ``settings.seed``, global RNG untouched, or ``start_from``'s), its EMA,
    AdamW, LR scheduler and the loader of every step's batch of ``data``, prepared by the run's accelerator."""
    accelerator = training_accelerator(settings.device, settings.mixed_precision)
    if accelerator.num_processes > 1:
        raise ParameterError("LDSeg trains in one process: start it without `accelerate launch`.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = LDSegNetwork(config)
    if start_from is not None:
        try:
            model.load_state_dict(start_from.state_dict())
        except RuntimeError as error:
            raise ParameterError(
                "The model to start from does not fit the training config (its networks have other shapes): "
                "start from a model with the same classes and architecture, or train from scratch."
            ) from error
    model.to(accelerator.device)
    ema = AveragedModel(model, avg_fn=ema_average(settings.ema_decay), use_buffers=True)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    lr_scheduler = get_scheduler(
        settings.lr_scheduler, optimizer, num_warmup_steps=0, num_training_steps=settings.steps
    )
    loader = DataLoader(
        TensorDataset(*data), batch_sampler=_StepBatches(len(data[0]), settings, steps_per_epoch)
    )
    prepared, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    batches = accelerator.prepare_data_loader(loader, device_placement=False)  # augmented on the CPU first
    _checkpoint_ema(accelerator, ema)
    return _State(accelerator, prepared, ema, optimizer, lr_scheduler, batches)


def _batch_indices(step: int, count: int, settings: TrainSettings, steps_per_epoch: int) -> torch.Tensor:
    """Indices of the training slices for 0-based ``step``: a fresh permutation each epoch."""
    epoch, position = divmod(step, steps_per_epoch)
    order = torch.randperm(count, generator=_seeded(settings.seed, 1, epoch))
    return order[position * settings.batch_size : (position + 1) * settings.batch_size]


class _StepBatches(Sampler[list[int]]):
    """The training slices of each of the ``settings.steps`` optimizer steps (:func:`_batch_indices`)."""

    def __init__(self, count: int, settings: TrainSettings, steps_per_epoch: int) -> None:
        self.count, self.settings, self.steps_per_epoch = count, settings, steps_per_epoch

    def __len__(self) -> int:
        return self.settings.steps

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.settings.steps):
            yield _batch_indices(step, self.count, self.settings, self.steps_per_epoch).tolist()


def _train_step(
    state: _State,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    scheduler: Any,
    loss_function: DiceCELoss,
) -> list[float]:
    """One optimizer step on the batch ``x``, ``y`` of ``state.step``; the four figures of :func:`_loss_dict`."""
    accelerator = state.accelerator
    model = cast(LDSegNetwork, accelerator.unwrap_model(state.model))
    generator = _seeded(settings.seed, 2, state.step)
    if settings.augment:
        flip = settings.flip_left_right and model.config.axis in ("axial", "coronal")
        variation = settings.scanner_variation and model.config.spatial_dims == 2
        x, y = augment_batch(x, y, generator, model.config.intensity_range, flip, variation)
    timesteps = torch.randint(0, model.config.train_timesteps, (len(x),), generator=generator)
    noise = torch.randn((len(x), *model.config.latent_shape), generator=generator)
    device = accelerator.device
    x, y, timesteps, noise = x.to(device), y.to(device), timesteps.to(device), noise.to(device)
    with accelerator.autocast():
        segmentation_loss, noise_loss, reconstruction_loss = _losses(
            model, x, y, timesteps, noise, scheduler, loss_function, settings.reconstruction_weight > 0
        )
        loss = (
            segmentation_loss
            + settings.noise_weight * noise_loss
            + settings.reconstruction_weight * reconstruction_loss
        )
    state.optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(state.model.parameters(), settings.gradient_clip)
    state.optimizer.step()
    state.lr_scheduler.step()
    state.ema.update_parameters(model)
    return [loss.item(), segmentation_loss.item(), noise_loss.item(), reconstruction_loss.item()]


def _losses(
    model: LDSegNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    scheduler: Any,
    loss_function: DiceCELoss,
    reconstruct: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Segmentation loss (CE + 2·(1 − Dice) on the decoded x̂₀), MSE(ε̂, ε) and the autoencoder's loss.

    The last is the same segmentation loss on the decoded clean latent z0 (zero, not computed,
    unless ``reconstruct``).

    ``images`` ``(b, 1, S, S)``, ``labels`` ``(b, S, S)`` int64, ``timesteps`` ``(b,)``,
    ``noise`` ``(b, c, h, w)`` (3D: one more spatial axis each).
    """
    clean = model.encode_labels(labels)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    predicted = model.predict_noise(noisy, model.image_encoder(images), timesteps)
    bound = model.config.latent_bound
    original = predict_original(noisy, predicted, timesteps, scheduler.alphas_cumprod).clamp(-bound, bound)
    segmentation = loss_function(model.label_decoder(original), labels[:, None])
    reconstruction = (
        loss_function(model.label_decoder(clean), labels[:, None]) if reconstruct else clean.new_zeros(())
    )
    return segmentation, F.mse_loss(predicted, noise), reconstruction


def _loss_dict(losses: list[float]) -> dict[str, float]:
    """Total loss, segmentation loss on x̂0, ε-MSE and the autoencoder's reconstruction loss, by name."""
    names = ("loss", "loss_segmentation", "loss_noise", "loss_reconstruction")
    return dict(zip(names, losses, strict=True))


def inference_model(ema: AveragedModel) -> LDSegNetwork:
    """A copy of the EMA model (all four networks) in eval mode."""
    return cast(LDSegNetwork, copy.deepcopy(ema.module)).eval()


def _end_epoch(
    state: _State,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    settings: TrainSettings,
    steps_per_epoch: int,
) -> dict[str, Any]:
    """Close an epoch: mean losses, validation Dice with the EMA model; appended to the history."""
    losses = np.mean(np.asarray(state.epoch_losses), axis=0).tolist()
    entry: dict[str, Any] = {
        "epoch": _epoch(state.step, steps_per_epoch),
        "step": state.step,
        **_loss_dict(losses),
    }
    if val is not None:
        dice = evaluate_dice(
            inference_model(state.ema), val[0], val[1], settings.validation_steps, settings.seed
        )
        present = [value for value in dice.values() if value is not None]
        entry.update(dice=dice, mean_dice=float(np.mean(present)) if present else None)
    state.history.append(entry)
    state.epoch_losses = []
    state.model.train()
    LOG.info("LDSeg epoch %s (step %d): %s", entry["epoch"], state.step, entry)
    return entry


def evaluate_dice(
    model: LDSegNetwork,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    steps: int = 5,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, float | None]:
    """Dice per foreground class of one sampled segmentation of ``images`` against ``labels``.

    ``images`` ``(N, 1, S, S)`` (or ``(N, S, S)``) in the model range, ``labels`` ``(N, S, S)`` integers.
    Returns class name → Dice in [0, 1] over all slices together (MONAI ``DiceMetric``), ``None`` for a
    class absent from both labels and prediction. 3D models: volumes ``(N, 1, S, S, S)`` (or
    ``(N, S, S, S)``) and labels ``(N, S, S, S)``.
    """
    images_t = torch.as_tensor(images).float()
    images_t = images_t[:, None] if images_t.ndim == 1 + model.config.spatial_dims else images_t
    labels_t = torch.as_tensor(labels).long()
    predicted = segment_slices(model, images_t, samples=1, steps=steps, seed=seed, batch_size=batch_size)
    classes = model.config.num_classes
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False, num_classes=classes)
    scores = cast(
        torch.Tensor,
        metric(
            _onehot(torch.from_numpy(predicted.labels.astype(np.int64)), classes)[None].flatten(2, -2),
            _onehot(labels_t, classes)[None].flatten(2, -2),
        ),
    )  # (1, C - 1) with reduction="none"
    present = [
        bool((labels_t == c).any() or (torch.from_numpy(predicted.labels) == c).any())
        for c in range(1, classes)
    ]
    names = model.config.class_names[1:]
    return {
        name: float(score) if keep else None
        for name, score, keep in zip(names, scores[0].tolist(), present, strict=True)
    }


def _onehot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``(N, H, W)`` (or ``(N, D, H, W)``) integers → ``(C, N, H, W)`` (``(C, N, D, H, W)``) float one-hot."""
    return F.one_hot(labels, classes).movedim(-1, 0).float()


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_ema(accelerator: Any, ema: AveragedModel) -> None:
    """Keep ``ema`` in every checkpoint of ``accelerator`` as :data:`EMA_WEIGHTS` (safetensors, written
    before the manifest, so it covers them) and load it back with the rest of the state."""

    def save(_models: list[Any], _weights: list[Any], folder: str) -> None:
        if accelerator.is_main_process:
            tensors = {k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
            save_file(tensors, str(Path(folder) / EMA_WEIGHTS))

    def load(_models: list[Any], folder: str) -> None:
        ema.load_state_dict(load_file(Path(folder) / EMA_WEIGHTS, device=str(accelerator.device)))

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def _trainer_state(state: _State, settings: TrainSettings) -> dict[str, Any]:
    """What a checkpoint's ``trainer.json`` holds besides accelerate's state: step, history, config, settings."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": state.step,
        "history": state.history,
        "epoch_losses": state.epoch_losses,
        "config": cast(LDSegNetwork, state.accelerator.unwrap_model(state.model)).config.to_dict(),
        "settings": asdict(settings),
    }


def _maybe_resume(state: _State, config: LDSegConfig, settings: TrainSettings) -> int:
    """Load the newest good checkpoint in ``settings.checkpoint_dir`` when resuming; the step to start from."""
    if not settings.checkpoint_dir or not settings.resume:
        return 0
    folder = Path(settings.checkpoint_dir)
    legacy = folder / LEGACY_CHECKPOINT
    if legacy.is_file():
        _check_format(read_json_object(legacy, JobError), legacy)

    def load(path: Path) -> None:
        where = path / TRAINER_STATE
        document = read_json_object(where, ValueError)  # unreadable: a damaged checkpoint, skipped
        _check_format(document, where)
        _check_same_run(document, folder, config, settings)
        state.accelerator.load_state(str(path))

    trainer = resume_from(folder, load)
    if trainer is None:
        return 0
    state.step = int(trainer["step"])
    state.history = list(trainer["history"])
    state.epoch_losses = [list(losses) for losses in trainer["epoch_losses"]]
    LOG.info("Resuming LDSeg training from step %d (%s)", state.step, folder)
    return state.step


def _check_format(document: dict[str, Any], where: Path) -> None:
    """:class:`JobError` unless ``document`` is an LDSeg training checkpoint of this version."""
    if document.get("format") != CHECKPOINT_FORMAT:
        raise JobError(f"'{where}' is not an LDSeg training checkpoint.")
    if document.get("version", 1) != CHECKPOINT_VERSION:
        raise JobError(
            f"'{where}' was written by another version of LatentDriftSlicer (checkpoint "
            f"version {document.get('version', 1)}, this one reads {CHECKPOINT_VERSION}): start over with "
            "another checkpoint folder or resume=False."
        )


def _check_same_run(
    document: dict[str, Any], folder: Path, config: LDSegConfig, settings: TrainSettings
) -> None:
    """:class:`JobError` when the checkpoint was made with another model config or training settings."""
    if not _same_config(document.get("config"), config):
        raise JobError(
            f"The checkpoint in '{folder}' was made with a different model config: use another checkpoint "
            "folder, or resume=False to start over."
        )
    changed = _changed_settings(document.get("settings"), settings)
    if changed:
        raise JobError(
            f"The checkpoint in '{folder}' was made with other training settings ({', '.join(changed)}): "
            "resume with the same settings, use another checkpoint folder, or resume=False to start over."
        )


_RESUMABLE_CHANGES = {
    "validation_steps",
    "checkpoint_dir",
    "checkpoint_every",
    "keep_checkpoints",
    "resume",
    "device",
}
"""Settings a resumed run may change: they do not alter what is trained."""


def _changed_settings(saved: Any, settings: TrainSettings) -> list[str]:
    """``"name saved → now"`` for each setting that differs from the checkpoint's and shapes the training.

    ``steps`` may grow or shrink with a constant learning rate, not under a schedule that spans them.
    Checkpoints that recorded no settings are not checked.
    """
    if not isinstance(saved, dict):
        return []
    allowed = _RESUMABLE_CHANGES | ({"steps"} if settings.lr_scheduler == "constant" else set())
    return [
        f"{name} {saved[name]!r} → {value!r}"
        for name, value in asdict(settings).items()
        if name not in allowed and name in saved and saved[name] != value
    ]


def _same_config(saved: Any, config: LDSegConfig) -> bool:
    """Whether a checkpoint's config dict describes ``config`` (keys added later take their defaults)."""
    if saved == config.to_dict():
        return True
    try:
        return LDSegConfig.from_dict(saved) == config
    except ParameterError:
        return False
