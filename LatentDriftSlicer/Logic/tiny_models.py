"""Tiny random-weight Stable Diffusion folders, for tests and the Slicer self-test.

:func:`build_tiny_sd` writes a complete diffusers-format folder (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) in about a second, with weights in
safetensors only. It loads with stock ``StableDiffusionPipeline.from_pretrained(folder,
local_files_only=True)`` (or ``StableDiffusionInstructPix2PixPipeline`` when ``instruct=True``) and
with :func:`latentdrift.edit.load_bundle`. The images it makes are noise: it exists to exercise code
paths, not to look at.

Sizes: the VAE halves the resolution once (a 32×32 slice becomes a 4×16×16 latent); the UNet has
``block_out_channels=(32, 64)``, ``cross_attention_dim=32`` and 4 input channels (8 for
InstructPix2Pix: noisy latent + image latent). The text encoder is a 2-layer CLIP with width 32.

The tokenizer is built here without any download: every one of the 256 byte-level symbols (alone
and as a word end ``</w>``) is in the vocabulary, so every prompt tokenises, and merges spell out
the words the prompt builder uses, so its prompts take few tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .modes import INSTRUCT
from .prompts import prompt_words

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
TEXT_WIDTH = 32
MAX_TOKENS = 77


def build_tiny_sd(folder: str | Path, instruct: bool = False, seed: int = 0) -> Path:
    """Write a tiny random Stable Diffusion (or InstructPix2Pix) folder and return its path.

    ``seed`` fixes the random weights, so two calls with the same arguments write the same model.
    An existing folder is overwritten.
    """
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    pipeline_class = StableDiffusionInstructPix2PixPipeline if instruct else StableDiffusionPipeline
    pipeline: Any = pipeline_class(
        unet=_tiny_unet(in_channels=8 if instruct else 4),
        vae=_tiny_vae(),
        text_encoder=_tiny_text_encoder(len(tokenizer.get_vocab())),
        tokenizer=tokenizer,
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def build_self_test_models(folder: str | Path) -> Path:
    """The Slicer self-test's models in ``folder``: ``ldseg`` (classes background, object) and ``instruct``
    (an InstructPix2Pix folder), random and tiny, built in seconds; returns ``folder``."""
    from .ldseg import LDSegNetwork, save_ldseg_model, tiny_config

    folder = Path(folder)
    save_ldseg_model(LDSegNetwork(tiny_config(("background", "object"))), folder / "ldseg")
    build_tiny_sd(folder / INSTRUCT.name, instruct=True)
    return folder


def tiny_tokenizer(extra_words: Iterable[str] = ()) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over all 256 byte symbols plus merges for the prompt builder's words.

    ``extra_words`` (lower-case ASCII) get merges too, so they take one token each.
    """
    symbols = list(_byte_symbols())
    vocab: dict[str, int] = {BOS: 0, EOS: 1}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(symbol, len(vocab))
    merges: list[Any] = []
    for word in sorted(prompt_words() | set(extra_words)):
        for left, right in _word_merges(word):
            if (left, right) not in merges:
                merges.append((left, right))
                vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for the bytes 0–255."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that join ``word`` (lower case ASCII) into one end-of-word token."""
    pieces = list(word)
    pieces[-1] += "</w>"
    merges = []
    joined = pieces[0]
    for piece in pieces[1:]:
        merges.append((joined, piece))
        joined += piece
    return merges


def tiny_scheduler() -> DDIMScheduler:
    """DDIM with Stable Diffusion v1's noise schedule (what the pipelines would rewrite it to anyway)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _tiny_unet(in_channels: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        sample_size=32,
    )


def _tiny_text_encoder(vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_WIDTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)
