"""Pre-train a miniature Stable Diffusion from scratch on natural images that ship offline.

It plays the part of Stable Diffusion v1.4 in the Latent Drift paper (general images first, then a
domain shift to medical ones by fine-tuning) at a size a CPU trains in minutes. No pre-trained weights
exist offline, so every part starts from random weights:

1. **Images** (:class:`NaturalImages`): scikit-image's sample images (astronaut, camera, coffee, moon,
   rocket, …), random square crops of several scales (from the output size up to the whole image),
   grey or colour, flipped at random, resized to ``resolution`` with antialiasing; pixels
   ``[B, 3, S, S]`` in [-1, 1]. Each crop gets a caption from a template that says what it shows,
   its tone and its scale: ``"a grayscale close-up photo of the surface of the moon"``.
2. **VAE** (``AutoencoderKL``, three blocks → latents ``[B, 4, S/4, S/4]``): L1 reconstruction +
   ``kl_weight`` × KL, trained on ``vae_resolution`` crops (it is fully convolutional); then the
   latent scaling factor is set to 1 / std of the latents, as Stable Diffusion's 0.18215 was.
3. **UNet + text encoder** (``UNet2DConditionModel`` with cross-attention on its two coarse levels;
   a two-layer CLIP text model over :func:`latentdrift.fixtures.tiny_models.tiny_tokenizer`, which spells the
   captions' words and every word of the prompt builder): the standard ε-prediction loss on the
   frozen VAE's latents, with Stable Diffusion v1's noise schedule; 10 % of captions are dropped to
   the empty prompt so classifier-free guidance works.

Both stages run on 🤗 Accelerate (CPU, one GPU or ``accelerate launch`` across several) with the
fine-tuning jobs' atomic checkpoints (:mod:`.checkpoints`) in ``work_dir``; a rerun resumes from
the last good one. Crops and noise of step *n* come from generators seeded by ``(seed, n)``, so a
resumed run draws what an uninterrupted one would. The output is a standard diffusers
``StableDiffusionPipeline`` folder (safetensors), loadable with ``from_pretrained``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..core.atomic_files import write_folder_atomic
from ..core.errors import ParameterError
from ..core.progress import ProgressCallback
from ..evaluation.model_cards import pretraining_card
from ..fixtures.tiny_models import MAX_TOKENS, tiny_scheduler, tiny_tokenizer
from .checkpoints import resume_from, save_checkpoint

LOG = logging.getLogger(__name__)

SUBJECTS: dict[str, str] = {
    "astronaut": "an astronaut",
    "camera": "a man with a camera",
    "cat": "a cat",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "coins": "old coins",
    "horse": "a horse silhouette",
    "hubble_deep_field": "galaxies in deep space",
    "immunohistochemistry": "stained tissue under a microscope",
    "moon": "the surface of the moon",
    "page": "a page of text",
    "retina": "a retina",
    "rocket": "a rocket on a launch pad",
    "text": "text on a wall",
    "grass": "grass",
    "gravel": "gravel",
    "brick": "a brick wall",
    "colorwheel": "a colour wheel",
    "logo": "a logo",
    "microaneurysms": "a retinal scan",
    "clock": "a clock",
    "checkerboard": "a checkerboard",
    "shepp_logan_phantom": "a tomography phantom",
}
"""scikit-image sample (``skimage.data`` function name) → what its captions call it."""
VIEWS = ("close-up", "detail", "wide")
"""Caption word for the crop's scale: under a third, a third to two thirds, or more of the image."""
TONES = ("grayscale", "color")


@dataclass(frozen=True)
class PretrainSettings:
    """Sizes and schedule of a pre-training run (defaults: the bundled ``mini-sd-natural``)."""

    resolution: int = 64
    vae_resolution: int = 32
    vae_steps: int = 1000
    unet_steps: int = 2500
    batch_size: int = 16
    vae_learning_rate: float = 5e-4
    unet_learning_rate: float = 3e-4
    kl_weight: float = 1e-6
    grey_fraction: float = 0.4
    caption_dropout: float = 0.1
    vae_channels: tuple[int, ...] = (32, 64, 64)
    unet_channels: tuple[int, ...] = (32, 64, 128)
    text_width: int = 64
    text_layers: int = 2
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        vae_scale = 2 ** (len(self.vae_channels) - 1)
        whole_scale = vae_scale * 2 ** (len(self.unet_channels) - 1)
        # The VAE alone sees vae_resolution; VAE and UNet together see resolution.
        for name, multiple in (("resolution", whole_scale), ("vae_resolution", vae_scale)):
            size = getattr(self, name)
            if size % multiple or size < multiple:
                raise ParameterError(
                    f"{name}={size}: use a multiple of {multiple} (the models' downsampling)."
                )
        if min(self.vae_steps, self.unet_steps, self.batch_size, self.checkpoint_every) < 1:
            raise ParameterError("vae_steps, unet_steps, batch_size and checkpoint_every must be ≥ 1.")
        if not 0 <= self.grey_fraction <= 1 or not 0 <= self.caption_dropout < 1:
            raise ParameterError("grey_fraction must be in [0, 1] and caption_dropout in [0, 1).")


# --------------------------------------------------------------------------- data


def caption(subject: str, grey: bool, crop_fraction: float) -> str:
    """``"a grayscale close-up photo of the moon"``: tone, scale (crop side / image side) and subject."""
    view = VIEWS[0] if crop_fraction < 1 / 3 else VIEWS[1] if crop_fraction < 2 / 3 else VIEWS[2]
    return f"a {TONES[0] if grey else TONES[1]} {view} photo of {subject}"


def caption_words() -> set[str]:
    """Every word a caption can hold (for the tokenizer's merges)."""
    texts = [*SUBJECTS.values(), *VIEWS, *TONES, "a photo of"]
    return {word for text in texts for word in re.findall(r"[a-z]+", text.lower())}


class NaturalImages:
    """Random captioned crops of scikit-image's sample images (see the module docstring)."""

    def __init__(self, names: tuple[str, ...] = tuple(SUBJECTS)) -> None:
        import skimage.data

        self.names = names
        self.images = [_as_rgb(getattr(skimage.data, name)()) for name in names]

    def batch(
        self, size: int, resolution: int, rng: np.random.Generator, grey_fraction: float
    ) -> tuple[torch.Tensor, list[str]]:
        """``size`` crops: pixels ``[size, 3, resolution, resolution]`` in [-1, 1] and their captions."""
        crops, captions = [], []
        for _ in range(size):
            index = int(rng.integers(len(self.images)))
            image = self.images[index]
            side = min(image.shape[:2])
            crop = round(math.exp(rng.uniform(math.log(min(resolution, side)), math.log(side))))
            top = int(rng.integers(image.shape[0] - crop + 1))
            left = int(rng.integers(image.shape[1] - crop + 1))
            pixels = torch.from_numpy(image[top : top + crop, left : left + crop]).permute(2, 0, 1)[None]
            pixels = F.interpolate(pixels, size=(resolution, resolution), mode="bilinear", antialias=True)[0]
            if rng.random() < 0.5:
                pixels = pixels.flip(-1)
            grey = bool(np.ptp(image, axis=2).max() == 0 or rng.random() < grey_fraction)
            if grey:
                pixels = pixels.mean(dim=0, keepdim=True).expand(3, -1, -1)
            crops.append(pixels)
            captions.append(caption(SUBJECTS[self.names[index]], grey, crop / side))
        return torch.stack(crops).clamp(-1.0, 1.0).contiguous(), captions


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Any scikit-image sample → float32 ``[H, W, 3]`` in [-1, 1]."""
    values = image.astype(np.float32)
    if image.dtype == np.uint8:
        values /= 255.0
    elif image.dtype != bool:
        values = (values - np.min(values)) / max(float(np.ptp(values)), 1e-6)
    if values.ndim == 2:
        values = np.repeat(values[..., None], 3, axis=2)
    return np.ascontiguousarray(values[..., :3] * 2.0 - 1.0)


STAGE_STREAMS = {"vae": 3, "unet": 4, "scale": 5}
"""One random stream per stage (the numbers the bundled model was trained with)."""


def step_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    """The crop generator of ``step`` of ``stage`` (``STAGE_STREAMS`` key; the same on a resumed run)."""
    return np.random.default_rng([seed, STAGE_STREAMS[stage], step])


# --------------------------------------------------------------------------- models


def build_vae(settings: PretrainSettings) -> AutoencoderKL:
    """A randomly initialised ``AutoencoderKL`` with ``len(vae_channels) − 1`` downsamplings."""
    blocks = len(settings.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=settings.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        sample_size=settings.resolution,
    )


def build_unet(settings: PretrainSettings) -> UNet2DConditionModel:
    """A randomly initialised text-conditioned UNet; cross-attention on all but the finest level."""
    levels = len(settings.unet_channels)
    attention = [level > 0 for level in range(levels)]
    return UNet2DConditionModel(
        sample_size=settings.resolution // 2 ** (len(settings.vae_channels) - 1),
        in_channels=4,
        out_channels=4,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        block_out_channels=settings.unet_channels,
        layers_per_block=1,
        cross_attention_dim=settings.text_width,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_text_encoder(settings: PretrainSettings, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A randomly initialised CLIP text transformer over ``tokenizer``'s vocabulary."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=settings.text_width,
        intermediate_size=2 * settings.text_width,
        num_hidden_layers=settings.text_layers,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=settings.text_width,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


# --------------------------------------------------------------------------- training


def pretrain(
    output: str | Path,
    work_dir: str | Path,
    settings: PretrainSettings | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Pre-train the VAE, then the UNet and text encoder, and write a diffusers folder to ``output``.

    ``work_dir`` holds the checkpoints (``vae/``, ``unet/``) and the finished VAE; rerunning resumes.
    ``output`` is written whole or not at all. Returns ``output``.
    """
    settings = settings or PretrainSettings()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(asdict(settings), indent=2) + "\n", encoding="utf-8")
    images = NaturalImages()
    vae, vae_losses = _trained_vae(images, settings, work, progress)
    tokenizer = tiny_tokenizer(caption_words())
    unet, text_encoder, unet_losses = _trained_unet(images, vae, tokenizer, settings, work, progress)
    pipeline: Any = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    record = {
        "format": "latentdrift-pretrain",
        "settings": asdict(settings),
        "images": sorted(SUBJECTS),
        "vae_losses": vae_losses,
        "unet_losses": unet_losses,
        "parameters": {
            name: sum(p.numel() for p in module.parameters())
            for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))
        },
    }
    return _write_pipeline(pipeline, Path(output), record)


def _accelerator(settings: PretrainSettings) -> Any:
    from accelerate import Accelerator

    return Accelerator(cpu=settings.device == "cpu")


def _trained_vae(
    images: NaturalImages, settings: PretrainSettings, work: Path, progress: ProgressCallback | None
) -> tuple[Any, list[dict[str, float]]]:
    """Stage 1 (resumable); the finished VAE is kept in ``work/vae-final`` with its losses."""
    final = work / "vae-final"
    if (final / "losses.json").is_file():
        losses = json.loads((final / "losses.json").read_text(encoding="utf-8"))
        return AutoencoderKL.from_pretrained(final, local_files_only=True), losses
    torch.manual_seed(settings.seed)
    vae: Any = build_vae(settings)
    accelerator = _accelerator(settings)
    optimizer = torch.optim.Adam(vae.parameters(), lr=settings.vae_learning_rate)
    vae, optimizer = accelerator.prepare(vae, optimizer)

    def vae_loss(step: int) -> dict[str, torch.Tensor]:
        pixels, _ = images.batch(
            settings.batch_size,
            settings.vae_resolution,
            step_rng(settings.seed, "vae", step),
            settings.grey_fraction,
        )
        posterior = vae.encode(pixels.to(accelerator.device)).latent_dist
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        noise = torch.randn(posterior.mean.shape, generator=generator).to(accelerator.device)
        reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
        l1 = (reconstruction - pixels.to(accelerator.device)).abs().mean()
        kl = posterior.kl().mean() / pixels[0].numel()
        return {"loss": l1 + settings.kl_weight * kl, "l1": l1, "kl": kl}

    losses = _run_stage("vae", vae_loss, accelerator, optimizer, settings.vae_steps, settings, work, progress)
    vae = accelerator.unwrap_model(vae).cpu().eval()
    vae.register_to_config(scaling_factor=_latent_scale(vae, images, settings))
    write_folder_atomic(final, lambda folder: vae.save_pretrained(folder, safe_serialization=True))
    (final / "losses.json").write_text(json.dumps(losses) + "\n", encoding="utf-8")
    return vae, losses


@torch.no_grad()
def _latent_scale(vae: Any, images: NaturalImages, settings: PretrainSettings) -> float:
    """1 / std of the VAE's latent means over 256 crops at full resolution (Stable Diffusion's recipe)."""
    pixels, _ = images.batch(
        256, settings.resolution, step_rng(settings.seed, "scale", 0), settings.grey_fraction
    )
    latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(32)])
    return float(1.0 / latents.std())


def _trained_unet(
    images: NaturalImages,
    vae: Any,
    tokenizer: CLIPTokenizer,
    settings: PretrainSettings,
    work: Path,
    progress: ProgressCallback | None,
) -> tuple[Any, Any, list[dict[str, float]]]:
    """Stage 2 (resumable): ε-prediction on the frozen VAE's scaled latents."""
    torch.manual_seed(settings.seed + 1)
    unet: Any = build_unet(settings)
    text_encoder: Any = build_text_encoder(settings, tokenizer)
    scheduler: Any = DDPMScheduler.from_config(cast(Any, tiny_scheduler()).config)
    accelerator = _accelerator(settings)
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.unet_learning_rate, weight_decay=1e-2)
    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    vae = vae.to(accelerator.device).requires_grad_(False)
    scale = float(vae.config.scaling_factor)

    def unet_loss(step: int) -> dict[str, torch.Tensor]:
        rng = step_rng(settings.seed, "unet", step)
        pixels, captions = images.batch(settings.batch_size, settings.resolution, rng, settings.grey_fraction)
        captions = ["" if rng.random() < settings.caption_dropout else text for text in captions]
        generator = torch.Generator().manual_seed(settings.seed * 1_000_033 + step)
        with torch.no_grad():
            posterior = vae.encode(pixels.to(accelerator.device)).latent_dist
            sample = torch.randn(posterior.mean.shape, generator=generator).to(accelerator.device)
            latents = (posterior.mean + posterior.std * sample) * scale
        noise = torch.randn(latents.shape, generator=generator).to(accelerator.device)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator
        )
        noisy = scheduler.add_noise(latents, noise, timesteps.to(accelerator.device))
        ids = tokenizer(
            captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
        )
        hidden = text_encoder(ids.input_ids.to(accelerator.device))[0]
        prediction = unet(noisy, timesteps.to(accelerator.device), hidden).sample
        return {"loss": F.mse_loss(prediction, noise)}

    losses = _run_stage(
        "unet", unet_loss, accelerator, optimizer, settings.unet_steps, settings, work, progress
    )
    return (
        accelerator.unwrap_model(unet).cpu().eval(),
        accelerator.unwrap_model(text_encoder).cpu().eval(),
        losses,
    )


def _run_stage(
    stage: str,
    step_loss: Any,
    accelerator: Any,
    optimizer: torch.optim.Optimizer,
    steps: int,
    settings: PretrainSettings,
    work: Path,
    progress: ProgressCallback | None,
) -> list[dict[str, float]]:
    """Optimise ``step_loss(step)["loss"]`` for ``steps`` steps with checkpoints in ``work/stage``.

    Returns the loss history: the mean of each term over every ``checkpoint_every`` steps.
    """
    folder = work / stage
    trainer = resume_from(folder, accelerator.load_state) or {"step": 0, "losses": []}
    start, history = int(trainer["step"]), list(trainer["losses"])
    window: list[dict[str, float]] = []
    for step in range(start, steps):
        terms = step_loss(step)
        accelerator.backward(terms["loss"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window.append({name: float(value.detach()) for name, value in terms.items()})
        if progress is not None:
            progress(step + 1, steps, f"pre-training the {stage}")
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == steps:
            history.append(
                {"step": step + 1, **{k: float(np.mean([w[k] for w in window])) for k in window[0]}}
            )
            window = []
            LOG.info("%s step %d: %s", stage, step + 1, history[-1])
            save_checkpoint(accelerator, folder, step + 1, {"step": step + 1, "losses": history})
    return history


def _write_pipeline(pipeline: Any, output: Path, record: dict[str, Any]) -> Path:
    def write(folder: Path) -> None:
        pipeline.save_pretrained(folder, safe_serialization=True)
        (folder / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (folder / "MODEL_CARD.md").write_text(pretraining_card(record), encoding="utf-8")

    output.parent.mkdir(parents=True, exist_ok=True)
    write_folder_atomic(output, write)
    return output
