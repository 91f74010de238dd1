"""Kind ``ldseg``: LDSeg latent-diffusion segmentation, N sampled labelings per slice → probabilities + entropy.

A folder is an LDSeg model when its ``config.json`` says ``"format": "latentdrift-ldseg"``
(:mod:`latentdrift.segmentation.ldseg.model_io` writes and reads it, safetensors weights only). Torch is imported
when a model is loaded, not before: the panel recognises folders through this kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from ...core.model_formats import LDSEG_FORMAT
from .spec import InputSpec, SlicePrediction

if TYPE_CHECKING:
    import numpy as np

    from ...core.progress import CountCallback
    from ...core.settings import SegmentSettings
    from ..ldseg.network import LDSegConfig, LDSegNetwork


def ldseg_input_spec(config: LDSegConfig) -> InputSpec:
    """The input conventions and classes an LDSeg ``config`` declares: its fields of the spec's names."""
    return InputSpec(
        **{spec_field.name: getattr(config, spec_field.name) for spec_field in fields(InputSpec)}
    )


@dataclass(frozen=True)
class LDSegSegmenter:
    """An :class:`LDSegNetwork` as a :class:`~.spec.Segmenter`: ``settings.samples`` DDIM samples per image."""

    network: LDSegNetwork

    @property
    def spec(self) -> InputSpec:
        return ldseg_input_spec(self.network.config)

    def predict(
        self, images: np.ndarray, settings: SegmentSettings, on_progress: CountCallback | None = None
    ) -> SlicePrediction:
        """:func:`~latentdrift.segmentation.ldseg.segment_slices` with the run's samples, steps, seed, batch size, device, workers."""
        from ...core.devices import resolve_device
        from ..ldseg.uncertainty import segment_slices

        result = segment_slices(
            self.network,
            images,
            samples=settings.samples,
            steps=settings.steps,
            seed=settings.seed,
            batch_size=settings.batch_size,
            device=resolve_device(settings.device),
            on_progress=on_progress,
            workers=settings.workers,
        )
        return SlicePrediction(result.probabilities, result.entropy)


class LDSegKind:
    """Folders with an LDSeg ``config.json`` and ``model.safetensors``."""

    name = "ldseg"

    def recognises(self, folder: Path) -> bool:
        try:
            document = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(document, dict) and document.get("format") == LDSEG_FORMAT

    def load(self, folder: Path, device: str) -> LDSegSegmenter:
        from ..ldseg.model_io import load_ldseg_model

        return LDSegSegmenter(load_ldseg_model(folder, device))


LDSEG = LDSegKind()
