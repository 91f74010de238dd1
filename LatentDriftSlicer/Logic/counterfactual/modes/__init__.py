"""The edit modes, one file each, registered here once: ``generate``, ``img2img``, ``instruct``, ``direction``.

A mode (:class:`~.base.EditMode`) holds all that its name means: the model it needs and its default
model, its guidance copies, the checks of its settings, the text it conditions on and how it calls its
pipeline. Everything else looks modes up here (:func:`edit_mode`) or names one by its constant
(``INSTRUCT.name``): the settings, the engine, the command line, the console and the Slicer panel.

A new mode is one file with its class and constant, and one line in :data:`REGISTRY`
(``docs/extending.md``). Nothing here imports torch.
"""

from __future__ import annotations

from ...core.errors import ParameterError
from .base import EditMode
from .direction import DIRECTION
from .generate import GENERATE
from .img2img import IMG2IMG
from .instruct import INSTRUCT

REGISTRY: dict[str, EditMode] = {mode.name: mode for mode in (GENERATE, IMG2IMG, INSTRUCT, DIRECTION)}
"""Every edit mode by name."""

DEFAULT_EDIT = INSTRUCT
"""The mode of an edit when none is given (``EditSettings.mode``)."""


def edit_mode(name: str) -> EditMode:
    """The mode called ``name``; raises :class:`ParameterError` naming the modes for an unknown one."""
    if name not in REGISTRY:
        raise ParameterError(f"Unknown edit mode '{name}': use one of {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def volume_edit_names() -> tuple[str, ...]:
    """The modes that edit a volume (``counterfactual``, the panel's choice), the default first."""
    others = [mode.name for mode in REGISTRY.values() if mode.edits and mode is not DEFAULT_EDIT]
    return (DEFAULT_EDIT.name, *others)


__all__ = [
    "DEFAULT_EDIT",
    "DIRECTION",
    "GENERATE",
    "IMG2IMG",
    "INSTRUCT",
    "REGISTRY",
    "EditMode",
    "edit_mode",
    "volume_edit_names",
]
