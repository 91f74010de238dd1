"""What every edit mode is: :class:`EditMode`, the base of the one class per mode in this package.

A mode says which model it needs (an InstructPix2Pix model or a text-to-image one, and its default
model), how many copies of each latent classifier-free guidance runs, what its settings must hold,
what text the run conditions on, and how the stock pipeline is called (:meth:`EditMode.plan`).

Nothing here imports torch: the planners import the pipelines when they run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ...core.errors import ModelError, ParameterError
from ..prompts import Attributes, describe

if TYPE_CHECKING:
    from ...core.settings import EditSettings
    from ..edit.loading import PipelineBundle
    from ..edit.plans import Inputs, Plan


class EditMode:
    """One edit mode. Subclasses set the class constants and :meth:`plan`; the rest has defaults.

    * ``name``: what the mode is called (``EditSettings.mode``, ``--edit``, the panel's choice).
    * ``summary``: one line for help texts and choices.
    * ``default_model``: the model name used when no model is given.
    * ``instruct_model``: True when the mode needs an InstructPix2Pix model (8 UNet input channels);
      the other modes need a text-to-image Stable Diffusion model.
    * ``edits``: True when the mode edits given slices (a volume's); False when it makes new ones.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    default_model: ClassVar[str]
    instruct_model: ClassVar[bool] = False
    edits: ClassVar[bool] = True

    def check(self, settings: EditSettings) -> None:
        """Raise :class:`ParameterError` when ``settings`` lack what this mode needs (none by default)."""

    def text(self, settings: EditSettings) -> str:
        """The prompt the run conditions on: ``settings.prompt``, else a description of :meth:`described`."""
        if settings.prompt is not None:
            return settings.prompt
        attributes = self.described(settings)
        assert attributes is not None
        return describe(attributes, settings.prompt_options)

    def negative_text(self, settings: EditSettings) -> str:
        """The text classifier-free guidance steers away from: ``settings.negative_prompt``."""
        return settings.negative_prompt

    def described(self, settings: EditSettings) -> Attributes | None:
        """The attributes the default prompt describes: the target's."""
        return settings.target

    def guidance_copies(self, settings: EditSettings) -> int:
        """Copies of each latent the UNet sees per step: 2 with classifier-free guidance (> 1), else 1."""
        return 2 if settings.guidance > 1 else 1

    def factual(self, settings: EditSettings) -> EditSettings | None:
        """The factual edit the change is measured against (see :meth:`EditSettings.factual`): none."""
        return None

    def check_model(self, bundle: PipelineBundle) -> None:
        """Raise :class:`ModelError` when the loaded model is not of the kind this mode needs."""
        if bundle.instruct and not self.instruct_model:
            raise ModelError(
                f"{bundle.folder} is an InstructPix2Pix model (8 UNet input channels): it only fits mode instruct."
            )

    def plan(self, bundle: PipelineBundle, settings: EditSettings, inputs: Inputs) -> Plan:
        """The pipeline and its arguments for this run (imports the pipelines: torch and diffusers)."""
        raise NotImplementedError


def needs_prompt_or_target(mode: EditMode, settings: EditSettings) -> None:
    """Raise :class:`ParameterError` unless ``settings`` give a prompt or the target attributes to describe."""
    if settings.prompt is None and settings.target is None:
        raise ParameterError(f"Mode {mode.name} needs a prompt or target attributes (e.g. age=77,dx=MCI).")
