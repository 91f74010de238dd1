"""Mode ``instruct`` (InstructPix2Pix): the slice and an instruction
(``StableDiffusionInstructPix2PixPipeline``, the slices passed as the pipeline's own mode latents)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ...core.errors import ModelError, ParameterError
from ..prompts import instruct
from .base import EditMode

if TYPE_CHECKING:
    from ...core.settings import EditSettings
    from ..edit.loading import PipelineBundle
    from ..edit.plans import Inputs, Plan


class Instruct(EditMode):
    """An InstructPix2Pix model edits the slice as the instruction says (default: from the source to the
    target attributes). Its guidance runs three copies of each latent (text, image, neither)."""

    name = "instruct"
    summary = "InstructPix2Pix model + instruction"
    default_model = "brain-mri-instruct"
    instruct_model = True

    def check(self, settings: EditSettings) -> None:
        if settings.instruction is None and (settings.source is None or settings.target is None):
            raise ParameterError("Mode instruct needs an instruction, or both source and target attributes.")

    def text(self, settings: EditSettings) -> str:
        if settings.instruction is not None:
            return settings.instruction
        assert settings.source is not None and settings.target is not None
        return instruct(settings.source, settings.target, settings.prompt_options.age_format)

    def negative_text(self, settings: EditSettings) -> str:
        """With a factual reference and no negative prompt given: the factual instruction.

        Text guidance then contrasts the instruction with "change nothing" (the same image asked to keep
        the source's attributes), not with no text at all: ``s_T · (ε(image, target) − ε(image, factual))``,
        the change the instruction asks for and nothing the editor does to every image. The factual edit
        itself gets no text guidance this way (its instruction is its negative), which is what it measures.
        """
        factual = self.factual(settings)
        if settings.negative_prompt or factual is None:
            return settings.negative_prompt
        return self.text(factual)

    def guidance_copies(self, settings: EditSettings) -> int:
        return 3

    def factual(self, settings: EditSettings) -> EditSettings | None:
        """The same edit asked to keep the source's attributes (None without them or when turned off)."""
        if not settings.factual_reference or settings.source is None:
            return None
        return replace(settings, instruction=None, target=settings.source)

    def check_model(self, bundle: PipelineBundle) -> None:
        if not bundle.instruct:
            raise ModelError(
                f"{bundle.folder} is not an InstructPix2Pix model (its UNet has {bundle.unet.config.in_channels} "
                "input channels, not 8): use mode img2img or direction with it, or give an InstructPix2Pix model."
            )

    def plan(self, bundle: PipelineBundle, settings: EditSettings, inputs: Inputs) -> Plan:
        from diffusers import StableDiffusionInstructPix2PixPipeline

        from ..edit.plans import Plan, sampler, shared_arguments, start_latents, text_arguments

        pipeline = bundle.pipeline(StableDiffusionInstructPix2PixPipeline, sampler(bundle, settings))
        pixels = inputs.edited_pixels()

        def batch_kwargs(runner: Any, items: list[int]) -> dict[str, Any]:
            # The pipeline's own preprocessing and encoding (mode latents), done here in VAE chunks; a
            # 4-channel image is taken as these latents by the pipeline.
            image = bundle.encode_mode(runner.image_processor.preprocess((pixels[items] + 1) / 2))
            return {
                **text_arguments(settings, len(items)),
                "image": image,
                **start_latents(runner, settings, inputs, items),
            }

        shared = shared_arguments(settings, image_guidance_scale=settings.image_guidance)
        return Plan(pipeline, shared, batch_kwargs)


INSTRUCT = Instruct()
