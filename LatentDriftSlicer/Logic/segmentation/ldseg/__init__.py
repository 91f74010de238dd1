"""LDSeg: latent-diffusion segmentation of 2D slices with sampling-based uncertainty.

A label autoencoder maps masks to a small standardised latent; a DDIM sampler denoises that latent
conditioned on an image embedding in a few steps; N samples per slice give mean probabilities,
entropy and variance. See ``docs`` for the method and :mod:`.training` for the single training loss.
"""

from __future__ import annotations

from .model_io import load_ldseg_model, model_info, read_config, save_ldseg_model
from .network import LabelClass, LDSegConfig, LDSegNetwork, default_classes, tiny_config, training_config
from .sampler import ddim_sample_latents, make_scheduler, sample_probabilities, sampling_scheduler
from .training import TrainResult, TrainSettings, evaluate_dice, train_ldseg
from .uncertainty import SliceSegmentation, segment_slices, summarise_samples

__all__ = [
    "LDSegConfig",
    "LDSegNetwork",
    "LabelClass",
    "SliceSegmentation",
    "TrainResult",
    "TrainSettings",
    "ddim_sample_latents",
    "default_classes",
    "evaluate_dice",
    "load_ldseg_model",
    "make_scheduler",
    "model_info",
    "read_config",
    "sample_probabilities",
    "sampling_scheduler",
    "save_ldseg_model",
    "segment_slices",
    "summarise_samples",
    "tiny_config",
    "train_ldseg",
    "training_config",
]
