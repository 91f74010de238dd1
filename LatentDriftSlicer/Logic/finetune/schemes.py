"""The fine-tuning schemes: what one shared training loop (:mod:`.loop`) trains, feeds and saves.

Each scheme follows the corresponding diffusers example script, reduced to its hooks:

================== =============================== ===================================================
scheme             trains                          saves
================== =============================== ===================================================
basic              the UNet (VAE, text frozen)     a full pipeline (``train_text_to_image``)
lora               LoRA on the UNet's attention    ``pytorch_lora_weights.safetensors`` (diffusers LoRA
                   projections (peft)              format, ``pipe.load_lora_weights``) and, with
                                                   ``merge_lora``, the fused full pipeline
textual-inversion  one new token's embedding       ``learned_embeds.safetensors``
                                                   (``pipe.load_textual_inversion``) and a full pipeline
dreambooth         the UNet, with prior            a full pipeline (``train_dreambooth``)
                   preservation on class images
custom-diffusion   cross-attention K/V (+ the      a full pipeline (``train_custom_diffusion``)
                   modifier token's embedding)
instruct-pix2pix   the UNet with 8 input channels  a full InstructPix2Pix pipeline
                   (source latents concatenated)
================== =============================== ===================================================

Prompts come from :mod:`latentdrift.counterfactual.prompts` in the job's style; schemes that learn a token put it in
front of the modality (``"a <cohort-mri> brain MRI of a 70 year old female with CN"``), DreamBooth
uses its identifier the same way and ``"a brain MRI"`` as the class prompt. InstructPix2Pix pairs
are longitudinal (same subject, earlier → later) with ``prompts.instruct`` instructions.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from ..core.atomic_files import write_bytes_atomic
from ..core.errors import InputError, ModelError
from ..counterfactual.edit.loading import stock_pipeline
from ..counterfactual.prompts import DEFAULT_MODALITY, Attributes, PromptOptions, describe, instruct
from ..segmentation.ldseg.augment import augment_pairs
from .cohorts import CohortData, longitudinal_pairs
from .config import FinetuneConfig
from .parts import Batch, Examples, Parts, UNetInput, as_pixels
from .sampling import class_images

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
DEFAULT_LEARNING_RATES = {
    "basic": 1e-5,
    "lora": 1e-4,
    "textual-inversion": 5e-4,
    "dreambooth": 5e-6,
    "custom-diffusion": 1e-5,
    "instruct-pix2pix": 1e-4,
}


def record_resolution(unet: Any, vae: Any, resolution: int) -> None:
    """Set ``unet``'s ``sample_size`` to the latent size of ``resolution``-pixel images."""
    unet.register_to_config(sample_size=resolution // 2 ** (len(vae.config.block_out_channels) - 1))


def load_parts(folder: str | Path) -> Parts:
    """Load a diffusers-format Stable Diffusion folder (safetensors, local files only) for training."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ModelError(f"'{folder}' is not a diffusers model folder (no model_index.json).")
    return Parts(
        base=folder,
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True),
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True),
        noise_scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True),
    )


class Scheme:
    """Basic fine-tuning (``train_text_to_image``): the UNet trains, everything else is frozen."""

    name = "basic"
    pipeline_class: Any = StableDiffusionPipeline

    def __init__(self, config: FinetuneConfig) -> None:
        self.config = config

    @property
    def learning_rate(self) -> float:
        """The job's learning rate, or this scheme's default."""
        return self.config.learning_rate or DEFAULT_LEARNING_RATES[self.name]

    @property
    def modality(self) -> str:
        """The modality text of prompts (schemes that learn a token put it in front)."""
        return DEFAULT_MODALITY

    def setup(self, parts: Parts) -> None:
        """Freeze what does not train and change the modules as the scheme needs (called once).

        The UNet's ``sample_size`` becomes the training resolution's latent size, so the saved model says
        the resolution it was trained at (the engine edits at ``sample_size`` × the VAE's scale factor).
        """
        for module in (parts.vae, parts.text_encoder, parts.unet):
            module.requires_grad_(False)
        parts.unet.requires_grad_(True)
        record_resolution(parts.unet, parts.vae, self.config.resolution)

    def trained(self, parts: Parts) -> dict[str, nn.Module]:
        """The modules that hold trainable parameters, by name (they go through ``accelerator.prepare``)."""
        return {"unet": parts.unet}

    def examples(self, data: CohortData, slice_numbers: list[int], options: PromptOptions) -> Examples:
        """Training examples from the cohort's slices ``slice_numbers``."""
        return Examples(
            torch.from_numpy(data.images[slice_numbers]),
            [data.prompt(n, options, self.modality) for n in slice_numbers],
        )

    def prepare_data(self, parts: Parts, job_dir: Path, device: torch.device) -> None:
        """Make extra data the scheme needs before training (DreamBooth's class images)."""

    def draw(self, examples: Examples, indices: torch.Tensor, generator: torch.Generator) -> Batch:
        """The batch of ``examples[indices]``."""
        sources = None if examples.sources is None else as_pixels(examples.sources[indices])
        return Batch(as_pixels(examples.images[indices]), [examples.prompts[i] for i in indices], sources)

    def model_input(
        self, given: UNetInput, batch: Batch, parts: Parts, generator: torch.Generator
    ) -> UNetInput:
        """The UNet's input and text conditioning for this batch (by default what the loop made)."""
        return given

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The training loss (mean squared error on the ε- or v-target)."""
        return nn.functional.mse_loss(prediction.float(), target.float())

    def after_step(self, parts: Parts) -> None:
        """Called after every optimizer step (textual inversion restores the other embeddings)."""

    def save(self, parts: Parts, folder: Path) -> list[str]:
        """Write the trained model into ``folder``; returns the names written at its top level."""
        pipeline = self.pipeline(parts, DDIMScheduler.from_config(parts.noise_scheduler.config))
        pipeline.save_pretrained(folder, safe_serialization=True)
        return sorted(p.name for p in folder.iterdir())

    def pipeline(self, parts: Parts, scheduler: Any) -> Any:
        """A stock pipeline over the current modules (for samples and saving)."""
        return stock_pipeline(
            self.pipeline_class, parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, scheduler
        )


class LoraScheme(Scheme):
    """LoRA (``train_text_to_image_lora``): low-rank adapters on the UNet attention projections."""

    name = "lora"

    def setup(self, parts: Parts) -> None:
        from peft import LoraConfig

        super().setup(parts)
        parts.unet.requires_grad_(False)
        rank = self.config.lora_rank
        parts.unet.add_adapter(
            LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
        )

    def save(self, parts: Parts, folder: Path) -> list[str]:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(parts.unet))
        if self.config.merge_lora:
            pipeline = StableDiffusionPipeline.from_pretrained(parts.base, local_files_only=True)
            pipeline.scheduler = DDIMScheduler.from_config(parts.noise_scheduler.config)
            lora_folder = folder / ".lora"
            StableDiffusionPipeline.save_lora_weights(
                lora_folder, unet_lora_layers=layers, safe_serialization=True
            )
            pipeline.load_lora_weights(lora_folder)
            record_resolution(pipeline.unet, pipeline.vae, self.config.resolution)
            pipeline.fuse_lora()
            pipeline.unload_lora_weights()
            pipeline.save_pretrained(folder, safe_serialization=True)
            shutil.rmtree(lora_folder)
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
        return sorted(p.name for p in folder.iterdir())


class TokenScheme(Scheme):
    """Shared by schemes that add a token to the tokenizer and learn its embedding only."""

    token = ""

    @property
    def modality(self) -> str:
        return f"{self.token} {DEFAULT_MODALITY}" if self.token else DEFAULT_MODALITY

    def add_token(self, parts: Parts) -> None:
        """Add :attr:`token`, initialised from the initializer token's embedding; only that row learns."""
        if parts.tokenizer.add_tokens([self.token]) != 1:
            raise InputError(f"The token '{self.token}' is already in the tokenizer: choose another one.")
        initial = parts.tokenizer.encode(self.config.initializer_token, add_special_tokens=False)
        if not initial:
            raise InputError(f"The initializer token '{self.config.initializer_token}' gives no token.")
        parts.text_encoder.resize_token_embeddings(len(parts.tokenizer), mean_resizing=False)
        weight = parts.text_encoder.get_input_embeddings().weight
        self.token_id = parts.tokenizer.convert_tokens_to_ids(self.token)
        with torch.no_grad():
            weight[self.token_id] = weight[initial].mean(dim=0)
        self.frozen_rows = weight.detach().clone()
        weight.requires_grad_(True)

    def after_step(self, parts: Parts) -> None:
        """Put back every embedding row but the new token's (as diffusers' textual_inversion does)."""
        if not self.token:
            return
        weight = _unwrapped(parts.text_encoder).get_input_embeddings().weight
        keep = torch.ones(len(weight), dtype=torch.bool, device=weight.device)
        keep[self.token_id] = False
        with torch.no_grad():
            weight[keep] = self.frozen_rows.to(weight)[keep]

    def learned_embedding(self, parts: Parts) -> torch.Tensor:
        """The learned embedding of :attr:`token` (1-D, float32, CPU)."""
        weight = _unwrapped(parts.text_encoder).get_input_embeddings().weight
        return weight[self.token_id].detach().float().cpu().clone()


class TextualInversionScheme(TokenScheme):
    """Textual inversion (``textual_inversion``): one new token's embedding, everything else frozen."""

    name = "textual-inversion"

    def setup(self, parts: Parts) -> None:
        super().setup(parts)
        parts.unet.requires_grad_(False)
        self.token = self.config.placeholder_token
        self.add_token(parts)

    def trained(self, parts: Parts) -> dict[str, nn.Module]:
        return {"text_encoder": parts.text_encoder}

    def save(self, parts: Parts, folder: Path) -> list[str]:
        names = super().save(parts, folder)
        save_file({self.token: self.learned_embedding(parts)}, str(folder / "learned_embeds.safetensors"))
        return sorted({*names, "learned_embeds.safetensors"})


class CustomDiffusionScheme(TokenScheme):
    """Custom Diffusion (``train_custom_diffusion``): cross-attention K/V and the modifier token."""

    name = "custom-diffusion"

    def setup(self, parts: Parts) -> None:
        super().setup(parts)
        parts.unet.requires_grad_(False)
        for name, module in parts.unet.named_modules():
            if name.endswith("attn2.to_k") or name.endswith("attn2.to_v"):
                module.requires_grad_(True)
        self.token = self.config.modifier_token
        if self.token:
            self.add_token(parts)

    def trained(self, parts: Parts) -> dict[str, nn.Module]:
        modules = {"unet": parts.unet}
        return {**modules, "text_encoder": parts.text_encoder} if self.token else modules


class DreamBoothScheme(Scheme):
    """DreamBooth (``train_dreambooth``): the UNet, with prior preservation on class images.

    Class images are generated once by the base model from the class prompt ``"a brain MRI"``
    (``num_class_images`` of them, cached as ``class_images.npz`` in the job folder); each batch holds
    as many class items as instance items and the loss is ``mse(instance) + prior_loss_weight ·
    mse(class)``.
    """

    name = "dreambooth"
    class_prompt = describe(Attributes(), PromptOptions("simple", False))

    @property
    def modality(self) -> str:
        return f"{self.config.instance_token} {DEFAULT_MODALITY}"

    def prepare_data(self, parts: Parts, job_dir: Path, device: torch.device) -> None:
        path = job_dir / "class_images.npz"
        if not path.is_file():
            images = class_images(parts, self.class_prompt, self.config, device)
            stored = io.BytesIO()
            np.savez(stored, images=images)
            write_bytes_atomic(path, stored.getvalue())
        with np.load(path, allow_pickle=False) as arrays:
            self.class_images = torch.from_numpy(arrays["images"])

    def draw(self, examples: Examples, indices: torch.Tensor, generator: torch.Generator) -> Batch:
        instance = super().draw(examples, indices, generator)
        chosen = torch.randint(0, len(self.class_images), (len(indices),), generator=generator)
        pixels = torch.cat([instance.pixels, as_pixels(self.class_images[chosen])])
        return Batch(pixels, instance.prompts + [self.class_prompt] * len(indices), None, len(indices))

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, batch: Batch) -> torch.Tensor:
        split = len(prediction) - batch.prior_count
        instance = nn.functional.mse_loss(prediction[:split].float(), target[:split].float())
        prior = nn.functional.mse_loss(prediction[split:].float(), target[split:].float())
        return instance + self.config.prior_loss_weight * prior


class InstructPix2PixScheme(Scheme):
    """InstructPix2Pix (``train_instruct_pix2pix``) on longitudinal pairs, with conditioning dropout.

    A 4-channel base UNet gets 8 input channels (the new ones start at zero). The source image's
    latents (VAE mode, unscaled, as the pipeline makes them) are concatenated to the noisy target
    latents; with probability ``conditioning_dropout`` each the text, the image or both are dropped.
    With ``identity_pairs`` every slice of a longitudinal pair is also a pair with itself; with
    ``train_text_encoder`` the text encoder trains too.
    """

    name = "instruct-pix2pix"
    pipeline_class = StableDiffusionInstructPix2PixPipeline

    def setup(self, parts: Parts) -> None:
        super().setup(parts)
        if parts.unet.config.in_channels == 4:
            _widen_conv_in(parts.unet, 8)
        if self.config.train_text_encoder:
            parts.text_encoder.requires_grad_(True)

    def trained(self, parts: Parts) -> dict[str, nn.Module]:
        modules = super().trained(parts)
        return {**modules, "text_encoder": parts.text_encoder} if self.config.train_text_encoder else modules

    def examples(self, data: CohortData, slice_numbers: list[int], options: PromptOptions) -> Examples:
        allowed = set(slice_numbers)
        pairs, _ = longitudinal_pairs(data)
        pairs = [(a, b) for a, b in pairs if a in allowed and b in allowed]
        if not pairs:
            raise InputError(
                "InstructPix2Pix needs longitudinal pairs (one subject at two sessions on the same grid); "
                "the cohort has none: add a session column and two timepoints per subject."
            )
        if self.config.identity_pairs:
            pairs += [(n, n) for n in sorted({n for pair in pairs for n in pair})]
        return Examples(
            torch.from_numpy(data.images[[b for _, b in pairs]]),
            [instruct(data.attributes(a), data.attributes(b), options.age_format) for a, b in pairs],
            torch.from_numpy(data.images[[a for a, _ in pairs]]),
        )

    def draw(self, examples: Examples, indices: torch.Tensor, generator: torch.Generator) -> Batch:
        """The pairs ``examples[indices]``, each augmented as one (``scanner_variation``)."""
        assert examples.sources is not None
        sources, targets = examples.sources[indices], examples.images[indices]
        if self.config.scanner_variation:
            flip = self.config.axis != "sagittal"
            augmented = augment_pairs(sources[:, None], targets[:, None], generator, flip_left_right=flip)
            sources, targets = (images[:, 0] for images in augmented)
        return Batch(as_pixels(targets), [examples.prompts[i] for i in indices], as_pixels(sources))

    def model_input(
        self, given: UNetInput, batch: Batch, parts: Parts, generator: torch.Generator
    ) -> UNetInput:
        """The source's latents (B, 4, h, w) concatenated to the noisy ones; both conditionings dropped out."""
        assert batch.sources is not None
        noisy, hidden = given.latents, given.text
        vae = _unwrapped(parts.vae)
        sources = vae.encode(batch.sources.to(noisy.device, vae.dtype)).latent_dist.mode()
        p = self.config.conditioning_dropout
        if p > 0:
            chance = torch.rand(len(noisy), generator=generator).to(noisy.device)
            null = _encode(parts, [""]).to(hidden.dtype).expand_as(hidden)
            hidden = torch.where((chance < 2 * p)[:, None, None], null, hidden)
            keep_image = 1 - ((chance >= p) & (chance < 3 * p)).to(sources.dtype)
            sources = sources * keep_image[:, None, None, None]
        return UNetInput(torch.cat([noisy, sources.to(noisy.dtype)], dim=1), hidden)


def _encode(parts: Parts, prompts: list[str]) -> torch.Tensor:
    """Text encoder hidden states of ``prompts`` (padded to the tokenizer's length)."""
    encoder = _unwrapped(parts.text_encoder)
    ids = parts.tokenizer(
        prompts,
        padding="max_length",
        max_length=parts.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return parts.text_encoder(ids.to(encoder.device))[0]


def _unwrapped(module: Any) -> Any:
    return getattr(module, "module", module)


def _widen_conv_in(unet: Any, channels: int) -> None:
    """Give the UNet ``channels`` input channels; the added ones start at zero (diffusers' recipe)."""
    old = unet.conv_in
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)  # type: ignore[union-attr]
    unet.conv_in = new
    unet.register_to_config(in_channels=channels)


SCHEME_CLASSES: dict[str, type[Scheme]] = {
    "basic": Scheme,
    "lora": LoraScheme,
    "textual-inversion": TextualInversionScheme,
    "dreambooth": DreamBoothScheme,
    "custom-diffusion": CustomDiffusionScheme,
    "instruct-pix2pix": InstructPix2PixScheme,
}


def make_scheme(config: FinetuneConfig) -> Scheme:
    """The scheme object of ``config.scheme`` (not for ``ldseg``, which has its own training)."""
    return SCHEME_CLASSES[config.scheme](config)
