"""The direction edit, in the manner of Pix2Pix-Zero, on current diffusers APIs.

1. The slice is encoded by the VAE and inverted deterministically to x_T by DDIM inversion
   (``DDIMInverseScheduler`` in a stock ``StableDiffusionPipeline``, no classifier-free guidance),
   conditioned on the source prompt, with the drift-consistent inversion of
   :mod:`latentdrift.counterfactual.drift` (δ subtracted before every inverse step).
2. Edit direction = mean text embedding of the target attributes' paraphrases − mean embedding of
   the source attributes' paraphrases (the prompt builder's diverse paraphrases, 21 each); shape
   (1, 77, D), the whole token sequence, as in Pix2Pix-Zero.
3. DDIM sampling (eta 0) from x_T with the source prompt embedding + direction, classifier-free
   guidance ``guidance``, and the drift of Eq. 4.

Left out: Pix2Pix-Zero's cross-attention guidance (which pulls the edited attention maps towards
the reconstruction's) and the noise regularisation of its inversion. With no direction and
``guidance`` ≤ 1, steps 1 and 3 reconstruct the slice up to the DDIM inversion error.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionPipeline

from ..drift import DriftCallback, inversion_start
from ..prompts import Attributes, PromptOptions, paraphrases
from .loading import PipelineBundle

if TYPE_CHECKING:
    from ...core.settings import EditSettings


def encode_prompts(pipeline: Any, prompts: list[str]) -> torch.Tensor:
    """Text embeddings (N, 77, D) of ``prompts``, exactly as the pipeline encodes them."""
    with torch.no_grad():
        embeds, _ = pipeline.encode_prompt(prompts, pipeline.device, 1, False)
    return embeds


def edit_direction(
    pipeline: Any, source: Attributes, target: Attributes, options: PromptOptions
) -> torch.Tensor:
    """mean(embed(paraphrases(target))) − mean(embed(paraphrases(source))), shape (1, 77, D).

    Always uses the diverse paraphrases (the style option only sets patient information and age format).
    """
    options = replace(options, style="diverse")
    target_mean = encode_prompts(pipeline, paraphrases(target, options)).mean(dim=0, keepdim=True)
    source_mean = encode_prompts(pipeline, paraphrases(source, options)).mean(dim=0, keepdim=True)
    return target_mean - source_mean


def invert(
    bundle: PipelineBundle, latents: torch.Tensor, prompt_embeds: torch.Tensor, settings: EditSettings
) -> torch.Tensor:
    """DDIM-invert scaled latents x_0 (B, C, h, w) to x_T, conditioned on ``prompt_embeds`` (1, 77, D)."""
    inverse = bundle.pipeline(StableDiffusionPipeline, bundle.scheduler(DDIMInverseScheduler))
    height, width = (size * inverse.vae_scale_factor for size in latents.shape[-2:])
    return inverse(
        prompt_embeds=prompt_embeds.expand(len(latents), -1, -1),
        guidance_scale=1.0,
        num_inference_steps=settings.steps,
        latents=inversion_start(latents, settings.drift),
        height=height,
        width=width,
        output_type="latent",
        callback_on_step_end=DriftCallback(settings.drift, inverse=True),
    ).images


def plan_direction(bundle: PipelineBundle, settings: EditSettings, pixels: torch.Tensor) -> tuple[Any, Any]:
    """The sampling pipeline and the per-batch arguments (inverted latents, edited embedding)."""
    assert settings.source is not None and settings.target is not None
    pipeline = bundle.pipeline(StableDiffusionPipeline, bundle.scheduler(DDIMScheduler))
    source_embeds = encode_prompts(pipeline, [settings.text()])
    edited = source_embeds + edit_direction(
        pipeline, settings.source, settings.target, settings.prompt_options
    )

    def batch_kwargs(_pipeline: Any, items: list[int]) -> dict[str, Any]:
        latents = invert(bundle, bundle.encode(pixels[items]), source_embeds, settings)
        return {
            "prompt_embeds": edited.expand(len(items), -1, -1),
            "negative_prompt": [settings.negative_text()] * len(items),
            "latents": latents,
        }

    return pipeline, batch_kwargs
