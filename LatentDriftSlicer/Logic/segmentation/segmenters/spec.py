"""The seam between the volume pipeline and a segmentation model: its input spec and its protocol.

:func:`latentdrift.segmentation.volume_segmentation.segment_volume` windows, cuts, resizes and reassembles a volume for any
:class:`Segmenter`, following its :class:`InputSpec`; the model only maps model-range images to class
probabilities and a per-pixel uncertainty. A :class:`SegmenterKind` recognises a model folder of its
kind and loads it. Nothing here imports torch: the Slicer panel lists models through these kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ...frontend.contract import NATIVE, InputContract

if TYPE_CHECKING:
    from ...core.progress import CountCallback
    from ...core.settings import SegmentSettings
    from ...core.values import Axis


@dataclass(frozen=True)
class LabelClass:
    """One output class: display name, RGB colour (0–255 each) and an optional terminology code.

    ``terminology`` is free text for a standard code (e.g. ``"SCT^10200004^Liver"``); empty when unknown.
    """

    name: str
    color: tuple[int, int, int]
    terminology: str = ""


@dataclass(frozen=True)
class InputSpec:
    """What a segmentation model expects of its input and what it outputs: the volume pipeline's contract.

    * ``axis``: the slices it segments (``axial``, ``coronal`` or ``sagittal``); for a 3D model the
      orientation of the slice stack it sees as one volume;
    * ``image_size`` ``S`` and ``spatial_dims`` (2: slices ``S × S``; 3: the stack resampled to ``S³``
      over a cube field of view);
    * ``intensity_percentiles`` of the volume that are mapped linearly onto ``intensity_range``
      (``(low, high)``; ``low`` is the background); ``intensity_reference`` (foreground fraction, mean,
      standard deviation of its training images in that range) lets a run warn about unlike inputs,
      ``None`` when unknown;
    * ``classes``: its output classes, the background first;
    * ``input``: the front end's contract (:class:`~latentdrift.frontend.InputContract`: e.g. a
      skull-stripped T1 on the MNI152 grid), :data:`~latentdrift.frontend.contract.NATIVE` when none;
    * ``tissue_prior_weight``: how much the front end weights the MNI152 template's tissue prior into the
      class probabilities (:mod:`latentdrift.frontend.tissue_prior`); 0 for none.
    """

    axis: Axis
    image_size: int
    classes: tuple[LabelClass, ...]
    spatial_dims: int = 2
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)
    intensity_range: tuple[float, float] = (-1.0, 1.0)
    intensity_reference: tuple[float, float, float] | None = None
    input: InputContract = NATIVE
    tissue_prior_weight: float = 0.0

    @property
    def class_names(self) -> list[str]:
        """Class names, background first."""
        return [label.name for label in self.classes]

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Spatial shape of one model input: ``(S, S)`` or ``(S, S, S)``."""
        return (self.image_size,) * self.spatial_dims


@dataclass(frozen=True)
class SlicePrediction:
    """A model's answer for ``n`` model-range images and ``C`` classes (NumPy float32).

    * ``probabilities``: ``(n, C, S, S)`` class probabilities in [0, 1], summing to 1 over ``C``;
    * ``entropy``: ``(n, S, S)`` per-pixel uncertainty in [0, 1] (0: certain; a deterministic model
      gives the normalised entropy of its probabilities, LDSeg that of the mean over its samples).

    For a 3D model ``n`` counts volumes and ``S, S`` become ``S, S, S``.
    """

    probabilities: np.ndarray
    entropy: np.ndarray


class Segmenter(Protocol):
    """A loaded segmentation model, as :func:`~latentdrift.segmentation.volume_segmentation.segment_volume` uses it."""

    @property
    def spec(self) -> InputSpec:
        """What the model expects (axis, size, intensities, front end) and its classes."""
        ...

    def predict(
        self, images: np.ndarray, settings: SegmentSettings, on_progress: CountCallback | None = None
    ) -> SlicePrediction:
        """Segment model-range images ``(n, 1, S, S)`` (3D: ``(n, 1, S, S, S)``), values in ``spec.intensity_range``.

        ``settings`` carries the run's sampling choices (``samples``, ``steps``, ``seed``,
        ``batch_size``, ``device``, ``workers``; a deterministic model ignores the first three);
        ``on_progress(done, total)`` counts images. An empty image (constant) is background, certain.
        """
        ...


class SegmenterKind(Protocol):
    """A kind of segmentation model folder: how to recognise one without loading it, and how to load it."""

    name: str
    """The kind's name, as :func:`latentdrift.core.models.model_kind` reports it (e.g. ``ldseg``)."""

    def recognises(self, folder: Path) -> bool:
        """True when ``folder`` is a model of this kind; reads small files only, never the weights."""
        ...

    def load(self, folder: Path, device: str) -> Segmenter:
        """The model in ``folder`` on ``device`` (``auto|cpu|cuda[:N]|mps``), ready to predict.

        Weights are read from safetensors only (pickled weights can run code when loaded and are
        refused); :class:`~latentdrift.core.errors.ModelError` says what is wrong with a folder.
        """
        ...
