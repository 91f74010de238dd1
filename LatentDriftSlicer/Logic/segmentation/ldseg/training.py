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

Checkpoints (``checkpoint_dir``): ``checkpoint-<step>.safetensors`` (model, EMA model and
flattened AdamW state) and ``checkpoint.json`` (step, history, optimizer hyper-parameters and
learning-rate scheduler state, the config), each written atomically; the JSON is written last and
names the weights file, so it always points at a complete checkpoint. Nothing is unpickled on resume.

3D models (``config.spatial_dims == 3``) train the same way on whole volumes: images ``(b, 1, S, S, S)``,
labels ``(b, S, S, S)``, latents and noise ``(b, 1, s, s, s)``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch.optim.swa_utils import AveragedModel

from ...core.atomic_files import write_bytes_atomic, write_json_atomic
from ...core.devices import resolve_device
from ...core.errors import InputError, JobError, ParameterError
from ...core.progress import TrainingCallback
from ...core.values import check_batching, check_seed
from .augment import augment_batch
from .network import LDSegConfig, LDSegNetwork
from .sampler import make_scheduler, predict_original
from .uncertainty import segment_slices

LOG = logging.getLogger(__name__)

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_FORMAT = "latentdrift-ldseg-checkpoint"
CHECKPOINT_VERSION = 3
"""3: epoch losses include the reconstruction loss (2: four-figure losses missing; the EMA covers the whole
model and the learning-rate scheduler is saved; 1: EMA of the denoiser only)."""
DICE_WEIGHT = 2.0
LR_SCHEDULERS = ("constant", "linear", "cosine", "cosine_with_restarts", "polynomial")
"""``diffusers.optimization.get_scheduler`` names that need nothing beyond the number of steps."""


@dataclass(frozen=True)
class TrainSettings:
    """How to train. ``steps`` optimizer steps in all; an epoch is ``ceil(N / batch_size)`` steps.

    ``noise_weight`` is λ of the ε-MSE term, ``reconstruction_weight`` ρ of the label autoencoder's
    own segmentation loss (0 = the LDSeg reference; see the module docstring). ``validation_steps``
    DDIM steps (one sample) are used for the per-epoch validation Dice. ``checkpoint_every`` steps
    (and at the end) a checkpoint is written to ``checkpoint_dir`` when given; with ``resume`` a run
    continues from the checkpoint found there.
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
    resume: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ParameterError(f"steps={self.steps}: train for 1 or more steps.")
        check_batching(self.batch_size, None)
        check_seed(self.seed)


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
    """Everything a training run mutates; what a checkpoint stores."""

    model: LDSegNetwork
    ema: AveragedModel
    optimizer: torch.optim.AdamW
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
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
    device = resolve_device(settings.device)
    state = _new_state(config, settings, device, start_from)
    start_step = _maybe_resume(state, config, settings)
    steps_per_epoch = math.ceil(len(train_x) / settings.batch_size)
    scheduler = make_scheduler(config)
    loss_function = DiceCELoss(
        to_onehot_y=True, softmax=True, batch=True, lambda_dice=DICE_WEIGHT, lambda_ce=1.0
    )
    emit = progress or (lambda _event: None)
    state.model.train()
    while state.step < settings.steps:
        losses = _train_step(state, train_x, train_y, settings, scheduler, loss_function, steps_per_epoch)
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
            path = save_checkpoint(state, Path(settings.checkpoint_dir), settings)
            emit({"kind": "checkpoint", "path": str(path), "step": state.step})
    return TrainResult(inference_model(state.ema), state.history, start_step)


def _check_settings(settings: TrainSettings) -> None:
    """Refuse out-of-range settings with a :class:`ParameterError`."""
    positive = ("steps", "batch_size", "checkpoint_every", "validation_steps")
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
    config: LDSegConfig, settings: TrainSettings, device: torch.device, start_from: LDSegNetwork | None = None
) -> _State:
    """Fresh model (weights from ``settings.seed``, global RNG untouched, or ``start_from``'s), its EMA,
    AdamW and LR scheduler."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = LDSegNetwork(config).to(device)
    if start_from is not None:
        try:
            model.load_state_dict(start_from.state_dict())
        except RuntimeError as error:
            raise ParameterError(
                "The model to start from does not fit the training config (its networks have other shapes): "
                "start from a model with the same classes and architecture, or train from scratch."
            ) from error
    ema = AveragedModel(model, avg_fn=ema_average(settings.ema_decay), use_buffers=True)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    lr_scheduler = get_scheduler(
        settings.lr_scheduler, optimizer, num_warmup_steps=0, num_training_steps=settings.steps
    )
    return _State(model, ema, optimizer, lr_scheduler)


def _batch_indices(step: int, count: int, settings: TrainSettings, steps_per_epoch: int) -> torch.Tensor:
    """Indices of the training slices for 0-based ``step``: a fresh permutation each epoch."""
    epoch, position = divmod(step, steps_per_epoch)
    order = torch.randperm(count, generator=_seeded(settings.seed, 1, epoch))
    return order[position * settings.batch_size : (position + 1) * settings.batch_size]


def _train_step(
    state: _State,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    scheduler: Any,
    loss_function: DiceCELoss,
    steps_per_epoch: int,
) -> list[float]:
    """One optimizer step on the batch of ``state.step``; returns the four figures of :func:`_loss_dict`."""
    model, device = state.model, state.model.device
    generator = _seeded(settings.seed, 2, state.step)
    index = _batch_indices(state.step, len(images), settings, steps_per_epoch)
    x, y = images[index], labels[index]
    if settings.augment:
        flip = settings.flip_left_right and model.config.axis in ("axial", "coronal")
        variation = settings.scanner_variation and model.config.spatial_dims == 2
        x, y = augment_batch(x, y, generator, model.config.intensity_range, flip, variation)
    timesteps = torch.randint(0, model.config.train_timesteps, (len(x),), generator=generator)
    noise = torch.randn((len(x), *model.config.latent_shape), generator=generator)
    x, y, timesteps, noise = x.to(device), y.to(device), timesteps.to(device), noise.to(device)
    segmentation_loss, noise_loss, reconstruction_loss = _losses(
        model, x, y, timesteps, noise, scheduler, loss_function, settings.reconstruction_weight > 0
    )
    loss = (
        segmentation_loss
        + settings.noise_weight * noise_loss
        + settings.reconstruction_weight * reconstruction_loss
    )
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.gradient_clip)
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


def save_checkpoint(state: _State, folder: Path, settings: TrainSettings) -> Path:
    """Write the weights file, then ``checkpoint.json`` pointing at it; remove older weights files."""
    folder.mkdir(parents=True, exist_ok=True)
    weights_name = f"checkpoint-{state.step:08d}.safetensors"
    tensors, groups = _checkpoint_tensors(state)
    write_bytes_atomic(folder / weights_name, save(tensors, metadata={"step": str(state.step)}))
    document = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": state.step,
        "weights": weights_name,
        "history": state.history,
        "epoch_losses": state.epoch_losses,
        "param_groups": groups,
        "lr_scheduler": state.lr_scheduler.state_dict(),
        "config": state.model.config.to_dict(),
        "settings": asdict(settings),
    }
    write_json_atomic(folder / CHECKPOINT_JSON, document)
    for old in folder.glob("checkpoint-*.safetensors"):
        if old.name != weights_name:
            old.unlink(missing_ok=True)
    return folder / CHECKPOINT_JSON


def _checkpoint_tensors(state: _State) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Flatten model, EMA and AdamW state into named tensors; AdamW hyper-parameters as JSON."""
    tensors = {f"model.{k}": v for k, v in state.model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in state.ema.state_dict().items()})
    optimizer = state.optimizer.state_dict()
    for index, values in optimizer["state"].items():
        tensors.update({f"optim.{index}.{name}": torch.as_tensor(value) for name, value in values.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return tensors, optimizer["param_groups"]


def _maybe_resume(state: _State, config: LDSegConfig, settings: TrainSettings) -> int:
    """Load the checkpoint in ``settings.checkpoint_dir`` when resuming; return the step to start from."""
    if not settings.checkpoint_dir or not settings.resume:
        return 0
    folder = Path(settings.checkpoint_dir)
    if not (folder / CHECKPOINT_JSON).is_file():
        return 0
    document = _read_checkpoint_document(folder)
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
    try:
        tensors = load_file(folder / document["weights"], device="cpu")
    except (SafetensorError, OSError) as error:
        raise JobError(
            f"Checkpoint weights '{folder / document['weights']}' cannot be read: {error}."
        ) from error
    _restore(state, tensors, document)
    LOG.info("Resuming LDSeg training from step %d (%s)", state.step, folder)
    return state.step


_RESUMABLE_CHANGES = {"validation_steps", "checkpoint_dir", "checkpoint_every", "resume", "device"}
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


def _read_checkpoint_document(folder: Path) -> dict[str, Any]:
    """Parse ``checkpoint.json``; :class:`JobError` if it is not a checkpoint of this format."""
    try:
        document = json.loads((folder / CHECKPOINT_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise JobError(f"'{folder / CHECKPOINT_JSON}' cannot be read: {error}.") from error
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        raise JobError(f"'{folder / CHECKPOINT_JSON}' is not an LDSeg training checkpoint.")
    if document.get("version", 1) != CHECKPOINT_VERSION:
        raise JobError(
            f"'{folder / CHECKPOINT_JSON}' was written by another version of LatentDriftSlicer (checkpoint "
            f"version {document.get('version', 1)}, this one reads {CHECKPOINT_VERSION}): start over with "
            "another checkpoint folder or resume=False."
        )
    return document


def _restore(state: _State, tensors: dict[str, torch.Tensor], document: dict[str, Any]) -> None:
    """Put checkpoint tensors and JSON state back into ``state`` (model, EMA, AdamW, step, history)."""
    device = state.model.device

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}

    state.model.load_state_dict(part("model."))
    state.ema.load_state_dict(part("ema."))
    optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in part("optim.").items():
        index, name = key.split(".", 1)
        optimizer_state.setdefault(int(index), {})[name] = value.cpu() if name == "step" else value
    state.optimizer.load_state_dict({"state": optimizer_state, "param_groups": document["param_groups"]})
    state.lr_scheduler.load_state_dict(document["lr_scheduler"])
    state.step = int(document["step"])
    state.history = list(document["history"])
    state.epoch_losses = [list(losses) for losses in document["epoch_losses"]]
