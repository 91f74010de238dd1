"""The bundled generative models: registered, small, loadable by stock diffusers, honest cards, and they work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline
from safetensors import safe_open

from latentdrift.core.models import BUNDLED_MODELS, list_models
from latentdrift.counterfactual.edit import EditSettings, edit_slices, generate_slices, load_bundle
from latentdrift.counterfactual.prompts import Attributes
from latentdrift.finetune.cohorts import SliceSettings, volume_slices
from latentdrift.finetune.metadata import read_metadata, recorded_drift
from latentdrift.fixtures.synthetic import brain_tissue_template

KINDS = {
    "mini-sd-natural": "stable-diffusion",
    "brain-mri-sd": "stable-diffusion",
    "brain-mri-instruct": "instruct-pix2pix",
}
BUDGET_MB = 60


def _folder(name: str) -> Path:
    return BUNDLED_MODELS / name


def _brain_slices() -> np.ndarray:
    """Axial slices (N, 64, 64) in [-1, 1] of the MNI152 template, cut as the fine-tuning jobs cut them."""
    image, _ = brain_tissue_template()
    slices, _ = volume_slices(image, SliceSettings("axial", 64, min_anatomy=0.05))
    return slices


def test_registry_lists_the_generative_defaults_with_their_kinds() -> None:
    entries = {m.name: m for m in list_models()}
    for name, kind in KINDS.items():
        assert entries[name].kind == kind and entries[name].bundled


def test_default_models_fit_the_budget_in_float16_safetensors_only() -> None:
    total = sum(p.stat().st_size for p in BUNDLED_MODELS.rglob("*") if p.is_file())
    assert total < BUDGET_MB * 1e6, f"bundled models take {total / 1e6:.1f} MB"
    for name in KINDS:
        folder = _folder(name)
        assert not [p for p in folder.rglob("*") if p.suffix in (".bin", ".ckpt", ".pt", ".pth", ".pkl")]
        for path in folder.rglob("*.safetensors"):
            with safe_open(str(path), "pt") as weights:
                names = list(weights.keys())  # the handle is not iterable
                assert {str(weights.get_slice(k).get_dtype()) for k in names} <= {"F16", "I64"}, path


def test_cards_name_the_retrain_command_and_the_drift() -> None:
    for name in KINDS:
        card = (_folder(name) / "MODEL_CARD.md").read_text(encoding="utf-8")
        assert "/work/" not in card and "/home/" not in card
    for name in ("brain-mri-sd", "brain-mri-instruct"):
        card = (_folder(name) / "MODEL_CARD.md").read_text(encoding="utf-8")
        metadata = read_metadata(_folder(name))
        assert "scripts/train_default_generative.py" in card and "synthetic" in card
        assert f"Latent Drift δ | {metadata['drift']}" in card
    record = json.loads((_folder("mini-sd-natural") / "pretraining.json").read_text(encoding="utf-8"))
    assert record["unet_losses"][-1]["loss"] < record["unet_losses"][0]["loss"]


@pytest.mark.parametrize(
    ("name", "pipeline_class"),
    [
        ("brain-mri-sd", StableDiffusionPipeline),
        ("brain-mri-instruct", StableDiffusionInstructPix2PixPipeline),
    ],
)
def test_stock_diffusers_loads_them(name: str, pipeline_class: type) -> None:
    pipeline = pipeline_class.from_pretrained(_folder(name), local_files_only=True)
    assert pipeline.unet.config.sample_size * pipeline.vae_scale_factor == 64


def test_the_brain_model_generates_brains_closer_to_the_template_than_the_natural_image_model() -> None:
    """Mean-image L1 to real template slices: the fine-tuned model beats its natural-image base."""
    reference = _brain_slices()
    settings = EditSettings(mode="generate", prompt="a brain MRI of a 70 year old female with CN", steps=10)

    def distance(name: str) -> float:
        delta, _ = recorded_drift(_folder(name))
        bundle = load_bundle(_folder(name), "cpu")
        generated = generate_slices(bundle, 4, 64, 64, EditSettings(**{**vars(settings), "drift": delta}))
        return float(np.abs(generated.mean(axis=0) - reference.mean(axis=0)).mean())

    assert distance("brain-mri-sd") < distance("mini-sd-natural")


def test_the_editor_changes_a_brain_slice_and_keeps_it_a_brain() -> None:
    slices = _brain_slices()[30:32]
    bundle = load_bundle(_folder("brain-mri-instruct"), "cpu")
    settings = EditSettings(
        mode="instruct",
        source=Attributes(age=70, diagnosis="CN"),
        target=Attributes(age=78, diagnosis="AD"),
        drift=recorded_drift(_folder("brain-mri-instruct"))[0],
        steps=10,
    )
    edited = edit_slices(bundle, slices, settings)
    assert edited.shape == slices.shape and np.isfinite(edited).all()
    correlation = np.corrcoef(edited.ravel(), slices.ravel())[0, 1]
    assert correlation > 0.7, correlation
