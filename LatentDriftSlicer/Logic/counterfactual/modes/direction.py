"""Mode ``direction``: DDIM inversion with the source prompt, then sampling with the prompt embedding
moved by the edit direction mean(target paraphrases) − mean(source paraphrases)
(:mod:`latentdrift.counterfactual.edit.direction`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.errors import ParameterError
from .base import EditMode

if TYPE_CHECKING:
    from ...core.settings import EditSettings
    from ..edit.loading import PipelineBundle
    from ..edit.plans import Inputs, Plan
    from ..prompts import Attributes


class Direction(EditMode):
    """The Pix2Pix-Zero-style direction edit from the source to the target attributes; the prompt it
    inverts with defaults to a description of the source."""

    name = "direction"
    summary = "DDIM inversion + edit direction from --from to --to"
    default_model = "brain-mri-sd"

    def check(self, settings: EditSettings) -> None:
        if settings.source is None or settings.target is None:
            raise ParameterError(
                "Mode direction needs both source and target attributes (e.g. dx=AD → dx=CN)."
            )
        if settings.scheduler != "ddim":
            raise ParameterError("Mode direction inverts the slice with DDIM: use scheduler ddim.")
        if settings.drift_start:
            raise ParameterError(
                "drift_start does not apply to mode direction (it starts from the inverted slice): turn it off."
            )

    def described(self, settings: EditSettings) -> Attributes | None:
        """The source's attributes: the slice is inverted with a description of what it shows."""
        return settings.source

    def plan(self, bundle: PipelineBundle, settings: EditSettings, inputs: Inputs) -> Plan:
        from ..edit.direction import plan_direction
        from ..edit.plans import Plan, shared_arguments

        pipeline, batch_kwargs = plan_direction(bundle, settings, inputs.edited_pixels())
        return Plan(
            pipeline, shared_arguments(settings, height=inputs.height, width=inputs.width), batch_kwargs
        )


DIRECTION = Direction()
