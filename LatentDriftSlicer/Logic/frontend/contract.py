"""What a model expects of its input volume (its *input contract*), and which front-end steps the user allows.

A model declares its contract in its own folder: an LDSeg model in ``config.json`` under ``"input"``, a
diffusers model in ``latentdrift.json`` under ``"input"`` (:func:`read_contract` reads either). A model
that declares nothing gets :data:`NATIVE`: it sees the volume as loaded, as before the front end existed.

The brain front end (:mod:`latentdrift.frontend.head`) satisfies a contract: it corrects the bias field,
extracts the brain and aligns it to the MNI152 template when the contract asks (and the user's
:class:`~latentdrift.core.settings.FrontEndSettings` allow), and brings the results back onto the input's
grid. This module is light (no torch, no SimpleITK): the panel reads contracts too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..core.errors import ModelError, ParameterError

MODALITIES = ("T1", "any")
SPACES = ("native", "mni152")
INTENSITIES = ("relative", "hounsfield")


@dataclass(frozen=True)
class InputContract:
    """What a model expects of the volume it is given.

    ``modality``: ``"T1"`` (T1-weighted MRI: a CT, or a brain with inverted T1 contrast, is refused) or
    ``"any"``. ``skull_stripped``: the model saw only the brain, zero outside (the front end extracts
    it). ``bias_corrected``: the model saw intensities without a smooth bias field (N4 first).
    ``space``: ``"native"`` (the input's own grid) or ``"mni152"`` (affinely aligned to the MNI152 2009c
    template and resampled on the template's field of view at ``spacing_mm`` millimetres, the grid the
    model was trained on). ``intensity``: ``"relative"`` (MR arbitrary units; the model windows them
    itself, e.g. an LDSeg config's ``intensity_percentiles``) or ``"hounsfield"`` (absolute CT units).
    """

    modality: str = "any"
    skull_stripped: bool = False
    bias_corrected: bool = False
    space: str = "native"
    spacing_mm: float = 1.0
    intensity: str = "relative"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("modality", self.modality, MODALITIES),
            ("space", self.space, SPACES),
            ("intensity", self.intensity, INTENSITIES),
        ):
            if value not in allowed:
                raise ParameterError(
                    f"Input contract: '{name}' is {value!r}; use one of {', '.join(allowed)}."
                )
        if not 0.25 <= self.spacing_mm <= 8.0:
            raise ParameterError(
                f"Input contract: spacing_mm {self.spacing_mm} is outside 0.25 … 8 mm (the model grid's voxel size)."
            )

    @property
    def is_brain_model(self) -> bool:
        """True when the model needs any front-end step (it was trained on prepared brains)."""
        return self.skull_stripped or self.bias_corrected or self.space != "native"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``"input"`` block of a model's config)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> InputContract:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are refused."""
        if not isinstance(data, dict):
            raise ParameterError("Input contract: expected a JSON object.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError(
                f"Input contract: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})."
            )
        return cls(**data)


NATIVE = InputContract()
"""The contract of a model that declares none: the volume as loaded, no front-end step."""

TEMPLATE_TISSUES = ("Cerebrospinal fluid", "Grey matter", "White matter")
"""The tissue classes of the MNI152 template's prior (:mod:`latentdrift.frontend.tissue_prior`), by class name."""

BRAIN_T1 = InputContract(modality="T1", skull_stripped=True, bias_corrected=True, space="mni152")
"""A T1 brain model trained on the MNI152 template grid (the bundled brain models, with their spacing)."""


def read_contract(model_folder: str | Path) -> InputContract:
    """The input contract a model folder declares (``config.json`` or ``latentdrift.json``), else :data:`NATIVE`."""
    folder = Path(model_folder)
    for name in ("config.json", "latentdrift.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelError(f"{path} is not valid JSON: {error}.") from error
        if isinstance(document, dict) and "input" in document:
            try:
                return InputContract.from_dict(document["input"])
            except ParameterError as error:
                raise ModelError(f"{path}: {error}") from error
    return NATIVE
