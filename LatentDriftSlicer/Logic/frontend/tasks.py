"""The brain models' tasks on a head: prepare it, run the model in its domain, bring the results back.

:func:`segment_head` and :func:`counterfactual_head` are what ``latentdrift segment`` and
``counterfactual`` run: a volume in, results on the volume's own grid out. A model that declares no
brain contract sees the volume as before (the front end steps aside). How results come back:

* **Segmentation**: a model that asks for it gets the template's tissue prior weighted into its class
  probabilities on the model grid (:mod:`.tissue_prior`). Class probabilities and entropy are resampled
  linearly from the model grid; inside the brain mask a voxel takes its most probable *tissue* class (the
  front end decided it is brain; one outside the model grid's field of view takes its nearest seen
  neighbour's), outside it is background with entropy 0.
* **Counterfactual**: only the *change* goes back. It is resampled from the model grid, multiplied by the
  bias field (the model changed corrected intensities; the input carries the field) and added to the
  input inside the brain, fading to nothing over :data:`FEATHER_MM` outside the mask. Every voxel
  farther than that from the brain is the input's own, bit for bit.

With ``slices`` only the input's slices in that range get results (as without the front end); the
model works on the few model-grid slices that cover them (:meth:`~.head.PreparedHead.model_slices`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial

import numpy as np
from scipy import ndimage

from ..core.devices import resolve_device
from ..core.progress import ProgressCallback
from ..core.settings import CounterfactualSettings, SegmentSettings
from ..core.volumes import Axis, Volume, extract_slices, reassemble
from ..counterfactual.edit import PipelineBundle
from ..counterfactual.volume_editing import VolumeCounterfactual, consistency_figures, counterfactual_volume
from ..segmentation.segmenters import Segmenter
from ..segmentation.volume_segmentation import VolumeSegmentation, assemble_segmentation, segment_volume
from .contract import read_contract
from .head import PreparedHead, StepRecord, prepare_head
from .tissue_prior import ATLAS, REGISTRATION, subject_prior, with_tissue_prior

TISSUE_PRIOR_PROGRESS = "tissue prior: registering the template"
"""What progress says while the template's prior is carried onto the brain (several seconds)."""
MODEL_AXIS: Axis = "axial"
"""The slices an image model edits on the template grid: the orientation the bundled editors were trained on."""
FEATHER_MM = 3.0
"""The counterfactual's change fades from full strength at the brain mask's edge to none this far outside."""


def segment_head(
    volume: Volume,
    segmenter: Segmenter,
    settings: SegmentSettings,
    progress: ProgressCallback | None = None,
    head: PreparedHead | None = None,
) -> tuple[VolumeSegmentation, PreparedHead]:
    """A segmentation of ``volume`` through the front end its model's contract asks for; results on ``volume``'s grid.

    ``settings.axis`` and ``settings.slices`` name the *input's* slices; on a prepared head the model
    segments its own axis on its grid. ``head`` reuses a preparation of the same volume (the demo's).
    """
    spec = segmenter.spec
    contract = spec.input
    head = head or prepare_head(
        volume, contract, settings.front_end, resolve_device(settings.device), progress
    )
    if not head.active:
        return segment_volume(volume, segmenter, settings, progress), head
    axis = settings.axis or spec.axis
    model_slices = head.model_slices(contract, axis, settings.slices, spec.axis)
    on_grid = replace(settings, axis=None, slices=model_slices)
    brain = head.model_input(contract)
    result = segment_volume(brain, segmenter, on_grid, progress)
    if spec.tissue_prior_weight and head.alignment is not None and settings.front_end.allows("tissue_prior"):
        started = time.perf_counter()
        if progress is not None:
            progress(0, 1, TISSUE_PRIOR_PROGRESS)
        prior = subject_prior(brain)
        result = with_tissue_prior(result, spec.class_names, spec.tissue_prior_weight, prior)
        if progress is not None:
            progress(1, 1, TISSUE_PRIOR_PROGRESS)
        details = {"atlas": ATLAS, "registration": REGISTRATION, "weight": spec.tissue_prior_weight}
        step = StepRecord("tissue_prior", time.perf_counter() - started, details)
        head = replace(head, steps=(*head.steps, step))
    return segmentation_on_input(head, result, spec.class_names, axis, settings.slices), head


def counterfactual_head(
    volume: Volume,
    bundle: PipelineBundle,
    settings: CounterfactualSettings,
    progress: ProgressCallback | None = None,
    head: PreparedHead | None = None,
) -> tuple[VolumeCounterfactual, PreparedHead]:
    """A Latent Drift counterfactual of ``volume`` through the front end its model's contract asks for.

    ``settings.axis`` and ``settings.slices`` name the input's slices; on a prepared head the model edits
    axial slices of its grid (the orientation the bundled editors were trained on). ``head`` reuses a
    preparation of the same volume.
    """
    contract = read_contract(bundle.folder)
    head = head or prepare_head(volume, contract, settings.front_end, bundle.device, progress)
    edit = partial(
        counterfactual_volume, bundle=bundle, settings=settings.edit, blend=settings.blend, progress=progress
    )
    if not head.active:
        result = edit(volume, axis=settings.axis, slices=settings.slices, batch_size=settings.batch_size)
        return result, head
    model_slices = head.model_slices(contract, settings.axis, settings.slices, MODEL_AXIS)
    result = edit(
        head.model_input(contract), axis=MODEL_AXIS, slices=model_slices, batch_size=settings.batch_size
    )
    return counterfactual_on_input(head, result, settings.axis, settings.slices), head


def segmentation_on_input(
    head: PreparedHead, result: VolumeSegmentation, class_names: list[str], axis: Axis, slices: str | None
) -> VolumeSegmentation:
    """A segmentation the model made of ``head.model_input`` (on its grid) as a segmentation of ``head.source``."""
    source = head.source
    probabilities = np.stack(
        [
            head.to_input_grid(
                result.labels.with_voxels(result.probabilities[c]), fill=1.0 if c == 0 else 0.0
            )
            for c in range(len(class_names))
        ]
    )
    entropy = np.clip(head.to_input_grid(result.entropy), 0.0, 1.0)
    inside = head.brain_mask if head.brain_mask is not None else probabilities.argmax(axis=0) > 0
    inside = inside & _slab(source, axis, slices)
    tissue = 1 + probabilities[1:].argmax(axis=0)
    labels = np.where(inside, _nearest_seen(tissue, probabilities[1:].sum(axis=0) > 1e-6, inside), 0)
    labels = labels.astype(np.uint8)
    probabilities[:, ~inside] = 0.0
    probabilities[0, ~inside] = 1.0
    entropy[~inside] = 0.0
    stack = extract_slices(source, axis, slices)
    return assemble_segmentation(
        source, labels, entropy, probabilities, class_names, stack, list(result.warnings)
    )


def counterfactual_on_input(
    head: PreparedHead, result: VolumeCounterfactual, axis: Axis, slices: str | None
) -> VolumeCounterfactual:
    """A counterfactual the model made of ``head.model_input`` as a counterfactual of ``head.source``."""
    source = head.source
    change = head.to_input_grid(result.difference)
    if head.bias_field is not None:
        change *= head.bias_field
    weight = _feather(head.brain_mask, source) * _slab(source, axis, slices)
    dtype = np.promote_types(source.voxels.dtype, np.float32)
    before = source.voxels.astype(dtype)
    after = before.copy()
    near = weight > 0
    after[near] = np.clip(before[near] + weight[near] * change[near], before.min(), before.max())
    stack = extract_slices(source, axis, slices)
    brain = head.brain_mask if head.brain_mask is not None else np.ones(source.voxels.shape, bool)
    figures = {
        **result.figures,
        **consistency_figures(
            stack.slices,
            extract_slices(source.with_voxels(after), axis, slices).slices,
            extract_slices(source.with_voxels(brain), axis, slices).slices,
        ),
        "feather_mm": FEATHER_MM,
    }
    return VolumeCounterfactual(
        counterfactual=source.with_voxels(after, name=f"{source.name} counterfactual"),
        difference=source.with_voxels(after - before, name=f"{source.name} difference"),
        axis=axis,
        indices=stack.indices,
        figures=figures,
        warnings=list(result.warnings),
    )


def _nearest_seen(tissue: np.ndarray, seen: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``tissue`` where the model gave tissue probabilities (``seen``); a voxel ``inside`` the brain that the
    model's field of view missed takes the class of the nearest seen voxel of the brain's bounding box.
    Nothing is computed when every brain voxel was seen (the usual case)."""
    missed = inside & ~seen
    if not missed.any() or not (inside & seen).any():
        return tissue
    box = ndimage.find_objects(inside.astype(np.uint8))[0]
    _, nearest = ndimage.distance_transform_edt(~seen[box], return_indices=True)
    filled = tissue.copy()
    filled[box] = tissue[box][tuple(nearest)]
    return np.where(missed, filled, tissue)


def _feather(mask: np.ndarray | None, volume: Volume) -> np.ndarray:
    """Float32 ``[k, j, i]``: 1 inside ``mask``, falling linearly to 0 at :data:`FEATHER_MM` outside (1 everywhere without a mask)."""
    if mask is None:
        return np.ones(volume.voxels.shape, np.float32)
    distance = ndimage.distance_transform_edt(~mask, sampling=volume.geometry.spacing[::-1])
    return np.clip(1.0 - distance / FEATHER_MM, 0.0, 1.0).astype(np.float32)


def _slab(volume: Volume, axis: Axis, slices: str | None) -> np.ndarray:
    """Bool ``[k, j, i]``: the voxels of ``volume``'s slices ``slices`` along ``axis`` (all for None)."""
    if slices is None:
        return np.ones(volume.voxels.shape, bool)
    stack = extract_slices(volume.with_voxels(np.zeros(volume.voxels.shape, bool)), axis, slices)
    return reassemble(np.ones_like(stack.slices), stack, volume)
