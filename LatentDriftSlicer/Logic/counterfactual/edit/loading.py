"""Loading Stable Diffusion folders safely, once.

A model is a diffusers-format folder with the subfolders ``unet``, ``vae``, ``text_encoder``,
``tokenizer`` and ``scheduler``. Only local files are read (``local_files_only=True``, so nothing
is downloaded, as with ``HF_HUB_OFFLINE=1``), only safetensors weights are accepted (pickled
``.bin``/``.ckpt``/``.pt`` weights can run code when loaded and are refused), and no remote code is
trusted. Each component is loaded by its own class, whatever ``model_index.json`` names.

:func:`load_bundle` caches one :class:`PipelineBundle` per (folder, device, dtype).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from ...core.devices import inference_dtype, resolve_device
from ...core.errors import ModelError

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
PICKLED_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
VAE_CHUNK = 16
"""Slices per VAE call. A large VAE batch is slower per slice on the CPU (the default editor at 64 px
decodes about 3× slower per slice 64 at a time than 8 or 16 at a time: ``benchmarks/drift``, (e)),
and diffusers' own ``enable_slicing`` goes one image at a time, which is slower too. On a GPU chunks
also bound the VAE's peak memory. A batch of at most 16 is one call, exactly as in the stock pipeline."""

_CACHE: dict[tuple[str, str, torch.dtype], PipelineBundle] = {}


@dataclass(frozen=True)
class PipelineBundle:
    """The loaded modules of one model on one device, shared by every edit mode.

    ``scheduler_config`` is the folder's scheduler configuration; each run builds its DDIM/DDPM
    scheduler from it. ``instruct`` is True for InstructPix2Pix models (UNet with 8 input channels).
    """

    folder: Path
    device: torch.device
    dtype: torch.dtype
    unet: Any  # UNet2DConditionModel
    vae: Any  # AutoencoderKL
    text_encoder: Any  # CLIPTextModel
    tokenizer: Any  # CLIPTokenizer
    scheduler_config: dict[str, Any]

    @property
    def instruct(self) -> bool:
        return int(self.unet.config.in_channels) == 8

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def scheduler(self, kind: Any) -> Any:
        """A fresh scheduler of class ``kind`` built from the folder's scheduler configuration."""
        return kind.from_config(self.scheduler_config)

    def pipeline(self, kind: type, scheduler: Any) -> Any:
        """A stock Stable Diffusion pipeline of class ``kind`` over these modules, progress bar off."""
        return stock_pipeline(kind, self.unet, self.vae, self.text_encoder, self.tokenizer, scheduler)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on this bundle's device, in its dtype."""
        return tensor.to(device=self.device, dtype=self.dtype)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents (B, C, h, w), on the device, of pixels (B, 3, H, W) in [-1, 1] (any device).

        Deterministic: the mode (mean) of the latent distribution, not a sample.
        """
        return self.encode_mode(pixels) * self.vae.config.scaling_factor

    def encode_mode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unscaled mode latents (B, C, h, w), on the device, of pixels (B, 3, H, W) in [-1, 1].

        What InstructPix2Pix conditions on; in :data:`VAE_CHUNK` slices per call.
        """
        with torch.no_grad():
            return in_vae_chunks(
                lambda chunk: self.vae.encode(self.to_device(chunk)).latent_dist.mode(), pixels
            )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in about [-1, 1] of scaled latents (B, C, h, w), in :data:`VAE_CHUNK` slices per call."""
        scale = self.vae.config.scaling_factor
        with torch.no_grad():
            return in_vae_chunks(lambda chunk: self.vae.decode(chunk / scale, return_dict=False)[0], latents)


def in_vae_chunks(function: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    """``function`` applied to :data:`VAE_CHUNK` items of ``batch`` at a time, results concatenated."""
    return torch.cat([function(chunk) for chunk in batch.split(VAE_CHUNK)])


def stock_pipeline(kind: type, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any) -> Any:
    """A stock diffusers pipeline of class ``kind`` over existing modules: no safety checker, no progress bar."""
    pipeline = kind(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def load_bundle(
    folder: str | Path, device: str | torch.device = "auto", full_precision: bool = False
) -> PipelineBundle:
    """Check and load ``folder`` on ``device`` (float16 on CUDA unless ``full_precision``), cached."""
    folder = Path(folder).expanduser().resolve()
    device = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = inference_dtype(device, full_precision)
    key = (str(folder), str(device), dtype)
    if key not in _CACHE:
        check_model_folder(folder)
        transformers_logging.disable_progress_bar()  # its "Loading weights" bar is not the run's progress
        _CACHE[key] = _load(folder, device, dtype)
    return _CACHE[key]


def clear_bundle_cache() -> None:
    """Forget every loaded model (frees memory once nothing else holds it)."""
    _CACHE.clear()


def check_model_folder(folder: Path) -> None:
    """Raise :class:`ModelError` unless ``folder`` is a complete, safetensors-only diffusers SD folder."""
    if not folder.exists():
        raise ModelError(
            f"Model folder {folder} does not exist: give a diffusers-format Stable Diffusion folder."
        )
    if not folder.is_dir():
        raise ModelError(
            f"{folder} is a file, not a model folder: give a diffusers-format folder (with unet/, vae/, "
            "text_encoder/, tokenizer/, scheduler/); single-file checkpoints must be converted first."
        )
    for component in COMPONENTS:
        if not (folder / component).is_dir():
            raise ModelError(
                f"Model folder {folder} has no '{component}' subfolder: a Stable Diffusion folder needs "
                f"{', '.join(COMPONENTS)}."
            )
    for component in WEIGHT_COMPONENTS:
        _check_weights(folder / component)
    _check_tokenizer(folder / "tokenizer")
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        raise ModelError(
            f"{folder / 'scheduler'} has no scheduler_config.json: the model folder is incomplete."
        )


def _check_weights(subfolder: Path) -> None:
    if any(subfolder.glob("*.safetensors")):
        return
    pickled = sorted(path.name for path in subfolder.iterdir() if path.suffix in PICKLED_SUFFIXES)
    if pickled:
        raise ModelError(
            f"{subfolder} has only pickled weights ({', '.join(pickled)}), which are refused because loading "
            "them can run arbitrary code: convert the model to safetensors where you trust it "
            "(pipeline.save_pretrained(folder, safe_serialization=True))."
        )
    raise ModelError(f"{subfolder} has no weights (*.safetensors): the model folder is incomplete.")


def _check_tokenizer(subfolder: Path) -> None:
    has_bpe = (subfolder / "vocab.json").is_file() and (subfolder / "merges.txt").is_file()
    if not (has_bpe or (subfolder / "tokenizer.json").is_file()):
        raise ModelError(
            f"{subfolder} has neither vocab.json + merges.txt nor tokenizer.json: the tokenizer is incomplete."
        )


def _load(folder: Path, device: torch.device, dtype: torch.dtype) -> PipelineBundle:
    options: dict[str, Any] = {"local_files_only": True, "use_safetensors": True}
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, **options)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, **options)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype, **options)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
        scheduler_config = dict(
            DDIMScheduler.load_config(folder, subfolder="scheduler", local_files_only=True)
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(
            f"Cannot load the Stable Diffusion model in {folder}: {error}".splitlines()[0]
            + " Check that it is a diffusers-format Stable Diffusion (v1/v2) folder."
        ) from error
    modules: list[Any] = [unet, vae, text_encoder]
    for module in modules:
        module.to(device).eval()
    return PipelineBundle(folder, device, dtype, unet, vae, text_encoder, tokenizer, scheduler_config)


def worker_pipeline(pipeline: Any) -> Any:
    """A pipeline of the same class over the same modules, with its own scheduler and tokenizer.

    For a thread of :func:`latentdrift.core.devices.run_in_workers`: a scheduler keeps per-call state
    (timesteps, step index) and a fast tokenizer refuses concurrent calls, so threads sharing a model
    each need their own. The weights are shared, not copied.
    """
    return stock_pipeline(
        type(pipeline),
        pipeline.unet,
        pipeline.vae,
        pipeline.text_encoder,
        copy.deepcopy(pipeline.tokenizer),
        copy.deepcopy(pipeline.scheduler),
    )
