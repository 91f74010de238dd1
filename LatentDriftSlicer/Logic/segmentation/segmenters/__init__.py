"""The segmentation model kinds, one file each, registered here once: ``ldseg``.

A kind (:class:`~.spec.SegmenterKind`) recognises its model folders and loads them as a
:class:`~.spec.Segmenter`, which states its input conventions in an :class:`~.spec.InputSpec`.
Everything else asks here: :func:`latentdrift.core.models.model_kind` (which folders are segmentation
models), the default ``segment`` model's kinds, the console's and the panel's model lists, and the
``segment`` workflow, which loads any of them with :func:`load_segmenter`.

A new kind is one file with its kind and segmenter, and one entry in :data:`REGISTRY`
(``docs/extending.md``). Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from ...core.errors import ModelError
from .ldseg import LDSEG
from .spec import InputSpec, LabelClass, Segmenter, SegmenterKind, SlicePrediction

REGISTRY: dict[str, SegmenterKind] = {kind.name: kind for kind in (LDSEG,)}
"""Every segmentation model kind by name."""


def segmenter_kinds() -> tuple[str, ...]:
    """The names of the segmentation model kinds (the ``segment`` task accepts these models)."""
    return tuple(REGISTRY)


def segmenter_kind(folder: Path) -> str | None:
    """The name of the first kind that recognises ``folder``, or None when it is no segmentation model."""
    return next((name for name, kind in REGISTRY.items() if kind.recognises(folder)), None)


def load_segmenter(folder: str | Path, device: str = "cpu") -> Segmenter:
    """The segmentation model in ``folder``, loaded by its kind onto ``device`` (``auto|cpu|cuda[:N]|mps``).

    Raises :class:`ModelError` when no kind recognises the folder (naming the kinds) or it does not load.
    """
    folder = Path(folder)
    name = segmenter_kind(folder)
    if name is None:
        raise ModelError(
            f"'{folder}' is not a segmentation model folder of a known kind ({', '.join(REGISTRY)})."
        )
    return REGISTRY[name].load(folder, device)


__all__ = [
    "REGISTRY",
    "InputSpec",
    "LabelClass",
    "Segmenter",
    "SegmenterKind",
    "SlicePrediction",
    "load_segmenter",
    "segmenter_kind",
    "segmenter_kinds",
]
