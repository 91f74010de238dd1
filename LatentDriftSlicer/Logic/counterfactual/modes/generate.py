"""Mode ``generate``: new slices from text (``StableDiffusionPipeline`` with explicit start latents)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import EditMode, needs_prompt_or_target

if TYPE_CHECKING:
    from ...core.settings import EditSettings
    from ..edit.loading import PipelineBundle
    from ..edit.plans import Inputs, Plan


class Generate(EditMode):
    """Text-to-image: the prompt (default: a description of the target attributes) and δ make new slices."""

    name = "generate"
    summary = "new slices from a text prompt"
    default_model = "brain-mri-sd"
    edits = False

    def check(self, settings: EditSettings) -> None:
        needs_prompt_or_target(self, settings)

    def plan(self, bundle: PipelineBundle, settings: EditSettings, inputs: Inputs) -> Plan:
        from diffusers import StableDiffusionPipeline

        from ..edit.plans import Plan, sampler, shared_arguments, start_latents, text_arguments

        pipeline = bundle.pipeline(StableDiffusionPipeline, sampler(bundle, settings))

        def batch_kwargs(runner: Any, items: list[int]) -> dict[str, Any]:
            return {**text_arguments(settings, len(items)), **start_latents(runner, settings, inputs, items)}

        shared = shared_arguments(settings, height=inputs.height, width=inputs.width)
        return Plan(pipeline, shared, batch_kwargs)


GENERATE = Generate()
