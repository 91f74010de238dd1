"""Mode ``img2img`` (SDEdit): noise the slice to ``strength`` and denoise it with the prompt
(``StableDiffusionImg2ImgPipeline``, the slices passed as VAE latents: the mean of the latent
distribution, scaled)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...core.errors import ParameterError
from .base import EditMode, needs_prompt_or_target

if TYPE_CHECKING:
    import torch

    from ...core.settings import EditSettings
    from ..edit.loading import PipelineBundle
    from ..edit.plans import Inputs, Plan


class Img2Img(EditMode):
    """SDEdit with a text prompt (default: a description of the target attributes)."""

    name = "img2img"
    summary = "SDEdit with a prompt"
    default_model = "brain-mri-sd"

    def check(self, settings: EditSettings) -> None:
        if int(settings.steps * settings.strength) < 1:
            raise ParameterError(
                f"steps={settings.steps} × strength={settings.strength} gives no denoising step: "
                "raise steps or strength so that steps × strength ≥ 1."
            )
        needs_prompt_or_target(self, settings)

    def plan(self, bundle: PipelineBundle, settings: EditSettings, inputs: Inputs) -> Plan:
        from diffusers import StableDiffusionImg2ImgPipeline

        from ..drift import drifted_img2img_latents
        from ..edit.plans import Plan, generators, sampler, shared_arguments, text_arguments

        pipeline = bundle.pipeline(StableDiffusionImg2ImgPipeline, sampler(bundle, settings))
        pixels = inputs.edited_pixels()

        def batch_kwargs(runner: Any, items: list[int]) -> dict[str, Any]:
            latents = bundle.encode(pixels[items])
            if settings.drift_start:
                timestep = first_timestep(runner, settings)
                latents = drifted_img2img_latents(latents, settings.drift, runner.scheduler, timestep)
            gens = generators([inputs.seeds[i] for i in items])
            return {**text_arguments(settings, len(items)), "image": latents, "generator": gens}

        return Plan(pipeline, shared_arguments(settings, strength=settings.strength), batch_kwargs)


def first_timestep(pipeline: Any, settings: EditSettings) -> torch.Tensor:
    """The timestep img2img noises the image to (what the pipeline itself will compute)."""
    pipeline.scheduler.set_timesteps(settings.steps, device=pipeline.device)
    timesteps, _ = pipeline.get_timesteps(settings.steps, settings.strength, pipeline.device)
    return timesteps[:1]


IMG2IMG = Img2Img()
