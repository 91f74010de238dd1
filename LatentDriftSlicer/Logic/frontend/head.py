"""The brain front end: bring a head scan into a brain model's domain, and the model's results back.

``prepare_head`` runs the steps a model's :class:`~.contract.InputContract` asks for, in order, each only
where the user allows it (:class:`~.contract.FrontEndSettings`):

1. **checks**: an image (not a label map), 3D, head-sized, not a CT (:mod:`.recognise`);
2. **bias-field correction**: N4 inside the head (:mod:`.bias_field`);
3. **brain extraction**: deepbet (:mod:`.brain_extraction`), skipped when the input is already a
   skull-stripped brain (:func:`.recognise.recognise`);
4. **alignment**: affine registration of the brain to the MNI152 template (:mod:`.alignment`), and a
   check that the aligned brain has T1 contrast.

The :class:`PreparedHead` it returns holds what the way back needs: the bias field, the brain mask and
the alignment, all on or from the input's own grid, and a record of every step (time, figures) for
``summary.json``. The input volume is never modified.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..core.errors import InputError
from ..core.progress import ProgressCallback
from ..core.settings import FrontEndSettings
from ..core.volumes import (
    Axis,
    Volume,
    check_image_volume,
    extract_slices,
    reassemble,
    slice_layout,
    volume_from_sitk,
)
from ..segmentation.seg_files import SegmentClass
from .alignment import Alignment, align_to_template, model_grid
from .bias_field import correct_bias_field, head_mask
from .brain_extraction import extract_brain
from .contract import InputContract, read_contract
from .recognise import Recognition, recognise, refuse_unless_head_sized

T = TypeVar("T")

BRAIN_SEGMENT = SegmentClass(
    1,
    "Brain",
    (0.33, 0.85, 0.45),
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^12738006^Brain~^^~Anatomic codes - DICOM master list~^^~^^",
)
"""The brain mask's one segment in ``brain_mask.seg.nrrd`` (role ``brain_mask``), with its terminology."""
STEP_COUNT = 4
"""Checks, bias correction, brain extraction, alignment: what progress counts."""
MIN_T1_CORRELATION = 0.1
"""Below this correlation with the T1 template, the aligned brain does not have T1 contrast: refused."""
WEAK_T1_CORRELATION = 0.3
"""Below this the alignment or the contrast is doubtful: a warning."""


@dataclass(frozen=True)
class StepRecord:
    """One front-end step as ``summary.json`` records it: its name, seconds, and what it found."""

    name: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedHead:
    """A volume brought into a brain model's domain, and the way back to the input's grid.

    ``source``: the input as given (untouched). ``corrected``: bias-corrected float32 voxels (the source
    itself when no correction ran). ``bias_field``: the multiplicative field (``[k, j, i]``, mean 1 in the
    head) or None. ``brain_mask``: bool ``[k, j, i]`` or None. ``alignment``: to the MNI152 template, or
    None (the model works on the input's grid).
    """

    source: Volume
    corrected: Volume
    bias_field: np.ndarray | None = None
    brain_mask: np.ndarray | None = None
    alignment: Alignment | None = None
    steps: tuple[StepRecord, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        """True when any step changed what the model sees."""
        return self.bias_field is not None or self.brain_mask is not None or self.alignment is not None

    def brain(self) -> Volume:
        """The corrected input with everything outside the brain mask set to 0 (the input's grid)."""
        if self.brain_mask is None:
            return self.corrected
        voxels = np.where(self.brain_mask, self.corrected.voxels, 0).astype(self.corrected.voxels.dtype)
        return self.corrected.with_voxels(voxels)

    def model_input(self, contract: InputContract) -> Volume:
        """What a model with ``contract`` sees: the brain, on the model grid when aligned."""
        brain = self.brain()
        if self.alignment is None:
            return brain
        return self.alignment.to_model_grid(brain, model_grid(contract.spacing_mm))

    def to_input_grid(self, values: Volume, fill: float = 0.0) -> np.ndarray:
        """Model-space ``values`` (a volume the model wrote, on its grid) on the input's grid, float32."""
        if self.alignment is None:
            return values.voxels.astype(np.float32)
        return self.alignment.to_input_grid(values, self.source, fill)

    def model_slices(
        self, contract: InputContract, axis: Axis, slices: str | None, model_axis: Axis
    ) -> str | None:
        """The model-grid slices (along ``model_axis``) that cover the input's ``slices`` along ``axis``.

        None for every slice. On the input's own grid this is ``slices`` itself; on the model grid it is
        the range of model slices that the input slab's corners fall in, so a one-slice preview edits a
        few model slices, not the whole brain. A range outside the input raises
        :class:`~latentdrift.core.errors.SliceRangeError` with the input's slice count.
        """
        if slices is None:
            return None
        stack = extract_slices(self.source, axis, slices)
        if self.alignment is None:
            return slices if axis == model_axis else None
        corners = _slab_corners(self.source, axis, stack.indices[0], stack.indices[-1])
        inverse = self.alignment.transform.GetInverse()
        grid = model_grid(contract.spacing_mm)
        layout = slice_layout(volume_from_sitk(grid).geometry, model_axis)
        positions = [grid.TransformPhysicalPointToContinuousIndex(inverse.TransformPoint(p)) for p in corners]
        voxel_axis = 2 - layout.permutation[0]  # the voxel axis (i, j or k) the model slices along
        size = grid.GetSize()[voxel_axis]
        along = [p[voxel_axis] for p in positions]
        low, high = int(np.floor(min(along))) - 1, int(np.ceil(max(along))) + 1
        if layout.flips[0]:
            low, high = size - 1 - high, size - 1 - low
        low, high = max(0, low), min(size - 1, high)
        if low > high:
            raise InputError(
                f"Slices {slices} of '{self.source.name}' lie outside the brain's aligned field of view."
            )
        return f"{low}:{high + 1}"

    def brain_mask_volume(self) -> Volume | None:
        """The brain mask as a uint8 label volume (1 = brain) on the input's grid, or None."""
        if self.brain_mask is None:
            return None
        return self.source.with_voxels(
            self.brain_mask.astype(np.uint8), name=f"{self.source.name} brain mask"
        )

    def record(self) -> dict[str, Any]:
        """The ``front_end`` entry of ``summary.json``: every step, the brain volume, the warnings."""
        brain_ml = None
        if self.brain_mask is not None:
            brain_ml = round(
                float(self.brain_mask.sum()) * float(np.prod(self.source.geometry.spacing)) / 1000.0, 1
            )
        return {
            "steps": [{"name": s.name, "seconds": round(s.seconds, 2), **s.details} for s in self.steps],
            "brain_volume_ml": brain_ml,
            "warnings": list(self.warnings),
        }


def shared_preparation(
    input_path: str | Path,
    models: tuple[Path, ...],
    settings: FrontEndSettings,
    device: str,
    progress: ProgressCallback | None,
) -> PreparedHead | None:
    """One front-end preparation of the volume at ``input_path`` for every model folder in ``models``,
    when they all ask for the same steps (else None: each model's run prepares its own).

    The steps do not depend on the model grid's spacing (only the resampling does), so a segmenter and
    an editor share bias correction, brain extraction and alignment (``latentdrift demo`` runs them once).
    """
    from ..core.devices import resolve_device
    from ..core.volumes import read_volume

    contracts = {replace(read_contract(folder), spacing_mm=1.0) for folder in models}
    contract = contracts.pop()
    if contracts or not contract.is_brain_model:
        return None
    return prepare_head(read_volume(input_path), contract, settings, resolve_device(device), progress)


def prepare_head(
    volume: Volume,
    contract: InputContract,
    settings: FrontEndSettings,
    device: torch.device,
    progress: ProgressCallback | None = None,
) -> PreparedHead:
    """Run the front-end steps ``contract`` needs and ``settings`` allow; see the module docstring.

    ``progress`` hears ``(step number, 4, "front end: <step>")`` as each step starts.
    """
    if not contract.is_brain_model or not settings.enabled:
        return PreparedHead(volume, volume)
    check_image_volume(volume)
    run = _Steps(contract, settings, progress)
    found = run.timed("checks", lambda: _checked(volume))
    run.steps[-1].details["skull_stripped"] = found.skull_stripped
    corrected, bias_field = _correct_bias(run, volume, found)
    brain_mask = _extract_brain(run, corrected, found, device)
    prepared = PreparedHead(volume, corrected, bias_field, brain_mask)
    alignment = _align(run, prepared)
    return replace(prepared, alignment=alignment, steps=tuple(run.steps), warnings=tuple(run.warnings))


class _Steps:
    """The steps run so far (timed records) and the warnings they gave, for one preparation."""

    def __init__(
        self, contract: InputContract, settings: FrontEndSettings, progress: ProgressCallback | None
    ) -> None:
        self.contract = contract
        self.settings = settings
        self.progress = progress
        self.steps: list[StepRecord] = []
        self.warnings: list[str] = []

    def timed(self, name: str, work: Callable[[], T], **details: Any) -> T:
        """Run ``work`` and record it as step ``name`` with the seconds it took and ``details``."""
        if self.progress is not None:
            self.progress(len(self.steps), STEP_COUNT, f"front end: {name.replace('_', ' ')}")
        started = time.perf_counter()
        result = work()
        self.steps.append(StepRecord(name, time.perf_counter() - started, dict(details)))
        return result

    def allowed(self, step: str) -> bool:
        """Whether ``step`` may run; when the user turned off a step the model needs, say what it risks."""
        if self.settings.allows(step):
            return True
        self.warnings.append(
            f"The model expects {_NEEDS[step]}, and {step.replace('_', ' ')} was turned off: "
            "results may be unreliable unless the input already is."
        )
        return False


_NEEDS = {
    "bias_correction": "intensities without a bias field",
    "brain_extraction": "a skull-stripped brain",
    "alignment": "a brain aligned to the MNI152 template",
}


def _checked(volume: Volume) -> Recognition:
    """Refuse what no brain model can use, then recognise what the input already is."""
    refuse_unless_head_sized(volume)
    return recognise(volume)


def _correct_bias(run: _Steps, volume: Volume, found: Recognition) -> tuple[Volume, np.ndarray | None]:
    """N4 inside the head (or the skull-stripped foreground) when the contract asks for it."""
    if not (run.contract.bias_corrected and run.allowed("bias_correction")):
        return volume, None
    mask = found.foreground if found.foreground is not None else head_mask(volume)
    corrected, field = run.timed(
        "bias_correction", lambda: correct_bias_field(volume, mask), method="SimpleITK N4"
    )
    run.steps[-1].details["field_range"] = [round(float(field.min()), 3), round(float(field.max()), 3)]
    return corrected, field


def _extract_brain(
    run: _Steps, corrected: Volume, found: Recognition, device: torch.device
) -> np.ndarray | None:
    """The brain mask: the input's own foreground when it is already skull-stripped, else deepbet's."""
    if not run.contract.skull_stripped:
        return None
    if found.skull_stripped:
        run.steps.append(
            StepRecord("brain_extraction", 0.0, {"method": "none: the input is already skull-stripped"})
        )
        return found.foreground
    if not run.allowed("brain_extraction"):
        return None
    return run.timed("brain_extraction", lambda: extract_brain(corrected, device), method="deepbet 1.0.2")


def _align(run: _Steps, prepared: PreparedHead) -> Alignment | None:
    """Affine alignment of the brain to the MNI152 template, and the check of its T1 contrast."""
    if not (run.contract.space == "mni152" and run.allowed("alignment")):
        return None
    alignment = run.timed(
        "alignment", lambda: align_to_template(prepared.brain()), template="MNI152 2009c (nilearn)"
    )
    run.steps[-1].details["correlation"] = round(alignment.correlation, 3)
    run.warnings += _contrast_check(prepared.source, alignment, run.contract)
    return alignment


def _contrast_check(volume: Volume, alignment: Alignment, contract: InputContract) -> list[str]:
    """Refuse a brain whose contrast is not T1 (when the model needs T1); warn when it is doubtful."""
    r = alignment.correlation
    if contract.modality == "T1" and r < MIN_T1_CORRELATION:
        raise InputError(
            f"'{volume.name}' does not look like a T1-weighted brain (correlation with the T1 template after "
            f"alignment: {r:.2f}; T1 brains give 0.4 or more): give a T1 MRI (a T2 or FLAIR has other contrast)."
        )
    if r < WEAK_T1_CORRELATION:
        return [
            f"The aligned brain agrees only weakly with the T1 template (r = {r:.2f}): check that the input is a "
            "T1-weighted head MRI and that the brain mask (result 'brain_mask') is right."
        ]
    return []


def _slab_corners(volume: Volume, axis: Axis, first: int, last: int) -> list[tuple[float, float, float]]:
    """Physical (LPS) corners of the slab of ``volume``'s slices ``first``…``last`` along ``axis``."""
    stack = extract_slices(
        volume.with_voxels(np.zeros(volume.voxels.shape, np.uint8)), axis, f"{first}:{last + 1}"
    )
    k, j, i = np.nonzero(reassemble(np.ones_like(stack.slices), stack, volume))
    matrix = volume.geometry.ijk_to_lps()
    corners = []
    for ci in (i.min(), i.max()):
        for cj in (j.min(), j.max()):
            for ck in (k.min(), k.max()):
                point = matrix @ np.array([ci, cj, ck, 1.0])
                corners.append((float(point[0]), float(point[1]), float(point[2])))
    return corners
