"""Slice-level editing and generation with Latent Drift on diffusers-format Stable Diffusion folders.

``bundle = load_bundle(folder, device)`` once, then ``edit_slices(bundle, slices, EditSettings(...))``
(img2img, instruct, direction) or ``generate_slices(bundle, count, height, width, settings)``.
Slices are float32 numpy arrays (B, H, W) in [-1, 1]. See :mod:`latentdrift.counterfactual.edit.run` for
batching and seeding, :mod:`latentdrift.counterfactual.edit.direction` for the direction edit and
:mod:`latentdrift.counterfactual.drift` for the drift itself.
"""

from __future__ import annotations

from ...core.settings import SCHEDULERS, EditSettings
from .direction import edit_direction, encode_prompts, invert
from .loading import PipelineBundle, check_model_folder, clear_bundle_cache, load_bundle
from .run import edit_slices, generate_slices, pixels_to_slices, reconstruct_slices, slices_to_pixels

__all__ = [
    "SCHEDULERS",
    "EditSettings",
    "PipelineBundle",
    "check_model_folder",
    "clear_bundle_cache",
    "edit_direction",
    "edit_slices",
    "encode_prompts",
    "generate_slices",
    "invert",
    "load_bundle",
    "pixels_to_slices",
    "reconstruct_slices",
    "slices_to_pixels",
]
