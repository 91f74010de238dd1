"""Every scheme trains 2 steps and its output loads with stock diffusers; the drift enters in one place."""

from __future__ import annotations

import ast
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline
from train_support import quick_config, tiny_base, write_cohort

from latentdrift.core.errors import ParameterError
from latentdrift.counterfactual.drift import DriftCallback
from latentdrift.counterfactual.edit import EditSettings, generate_slices
from latentdrift.finetune.cohorts import prepare_cohort
from latentdrift.finetune.drift_search import l1_distances, search_drift, store_search
from latentdrift.finetune.jobs import create_job, run_job
from latentdrift.finetune.loop import noisy_latents, step_generator, training_loss
from latentdrift.finetune.sampling import bundle_of
from latentdrift.finetune.schemes import Scheme, as_pixels, load_parts, make_scheme

ENGINE = Path(__file__).resolve().parents[1] / "LatentDriftSlicer" / "Logic"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("schemes")
    return {
        "root": root,
        "cohort": write_cohort(root / "cohort"),
        "base": tiny_base(root / "base"),
        "cache": root / "cache",
    }


def _train(setup: dict[str, Path], scheme: str, name: str, **changes) -> Path:
    job = setup["root"] / name
    create_job(job, quick_config(setup["cohort"], setup["base"], scheme, setup["cache"], **changes))
    run_job(job)
    return job / "model"


def _image(pipeline, prompt: str, **kwargs) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    output = pipeline(prompt, num_inference_steps=2, generator=generator, output_type="np", **kwargs)
    return output.images[0]


@pytest.mark.parametrize("scheme", ["basic", "dreambooth", "custom-diffusion"])
def test_full_pipeline_schemes_load_with_stock_diffusers(setup, scheme: str) -> None:
    model = _train(setup, scheme, scheme, drift=0.05)
    pipeline = StableDiffusionPipeline.from_pretrained(model, local_files_only=True)
    image = _image(pipeline, "a brain MRI", height=16, width=16, callback_on_step_end=DriftCallback(0.05))
    assert image.shape == (16, 16, 3) and np.isfinite(image).all()
    metadata = json.loads((model / "latentdrift.json").read_text(encoding="utf-8"))
    assert metadata["scheme"] == scheme and metadata["drift"] == 0.05 and metadata["steps"] == 2
    card = (model / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert scheme in card and "0.05" in card and metadata["cohort_key"] in card
    assert (model / "loss_curve.png").is_file()
    assert _trained_resolution(model) == 16  # the base works at 32 pixels: the model says what it learned
    job = model.parent
    records = [json.loads(line) for line in (job / "status.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert set(records[-1]) == {"step", "epoch", "loss", "lr", "eta_s", "sample_image"}
    assert (job / records[-1]["sample_image"]).is_file()


def test_lora_saves_diffusers_lora_weights_and_a_merged_pipeline(setup) -> None:
    model = _train(setup, "lora", "lora")
    assert (model / "pytorch_lora_weights.safetensors").is_file()
    base = StableDiffusionPipeline.from_pretrained(setup["base"], local_files_only=True)
    plain = _image(base, "a brain MRI", height=16, width=16)
    base.load_lora_weights(model)
    adapted = _image(base, "a brain MRI", height=16, width=16)
    merged = _image(
        StableDiffusionPipeline.from_pretrained(model, local_files_only=True),
        "a brain MRI",
        height=16,
        width=16,
    )
    assert not np.array_equal(plain, adapted)
    assert np.allclose(adapted, merged, atol=2e-3)
    assert _trained_resolution(model) == 16


def _trained_resolution(model: Path) -> int:
    """The pixel size a saved model declares: its UNet's sample_size times the VAE's scale factor."""
    unet = json.loads((model / "unet" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((model / "vae" / "config.json").read_text(encoding="utf-8"))
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def test_textual_inversion_saves_an_embedding_stock_pipelines_load(setup) -> None:
    model = _train(setup, "textual-inversion", "ti")
    token = "<cohort-mri>"
    base = StableDiffusionPipeline.from_pretrained(setup["base"], local_files_only=True)
    base.load_textual_inversion(model / "learned_embeds.safetensors", token=token)
    image = _image(base, f"a {token} brain MRI", height=16, width=16)
    assert np.isfinite(image).all()
    full = StableDiffusionPipeline.from_pretrained(model, local_files_only=True)
    assert token in full.tokenizer.get_vocab()
    trained = full.text_encoder.get_input_embeddings().weight
    loaded = base.text_encoder.get_input_embeddings().weight
    token_id = full.tokenizer.convert_tokens_to_ids(token)
    assert torch.allclose(trained[token_id], loaded[base.tokenizer.convert_tokens_to_ids(token)])
    original = StableDiffusionPipeline.from_pretrained(setup["base"], local_files_only=True)
    assert torch.equal(trained[:token_id], original.text_encoder.get_input_embeddings().weight[:token_id])


def test_instruct_pix2pix_from_a_4_channel_base_trains_on_longitudinal_pairs(setup) -> None:
    model = _train(setup, "instruct-pix2pix", "ip2p")
    pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(model, local_files_only=True)
    assert pipeline.unet.config.in_channels == 8
    image = _image(
        pipeline,
        "Age this CN 70 years old female brain MRI by 5 years into a 75 brain MRI with MCI",
        image=torch.zeros(1, 3, 16, 16),
    )
    assert image.shape == (16, 16, 3)


def test_instruct_pix2pix_identity_pairs_and_a_trained_text_encoder(setup) -> None:
    config = quick_config(setup["cohort"], setup["base"], "instruct-pix2pix", setup["cache"])
    data = prepare_cohort(setup["cohort"], config.slice_settings(), setup["cache"])
    everything = list(range(len(data.slices)))
    plain = make_scheme(config).examples(data, everything, config.prompt_options())
    with_identity = make_scheme(replace(config, identity_pairs=True)).examples(
        data, everything, config.prompt_options()
    )
    paired = len(plain.prompts)
    assert len(with_identity.prompts) == 3 * paired  # both slices of each 2-session pair, with themselves
    assert torch.equal(with_identity.images[paired:], with_identity.sources[paired:])
    assert all(p.startswith("Age this CN 70") and " by 5 years into a 75" in p for p in plain.prompts)
    assert all(p.startswith("Turn this") and " by " not in p for p in with_identity.prompts[paired:])

    model = _train(setup, "instruct-pix2pix", "ip2p-text", identity_pairs=True, train_text_encoder=True)
    trained = StableDiffusionInstructPix2PixPipeline.from_pretrained(model, local_files_only=True)
    base = StableDiffusionPipeline.from_pretrained(setup["base"], local_files_only=True)
    changed = [
        name
        for name, weight in trained.text_encoder.state_dict().items()
        if not torch.equal(weight, base.text_encoder.state_dict()[name])
    ]
    assert changed  # the saved text encoder is the trained one


def test_scanner_variation_augments_a_pair_alike_and_reproducibly(setup) -> None:
    config = quick_config(
        setup["cohort"], setup["base"], "instruct-pix2pix", setup["cache"], identity_pairs=True
    )
    data = prepare_cohort(setup["cohort"], config.slice_settings(), setup["cache"])
    examples = make_scheme(config).examples(data, list(range(len(data.slices))), config.prompt_options())
    identity = torch.arange(len(examples) - 4, len(examples))  # identity pairs: source == target
    varied = make_scheme(replace(config, scanner_variation=True))

    def draw(seed: int):
        return varied.draw(examples, identity, torch.Generator().manual_seed(seed))

    batch, plain = draw(0), make_scheme(config).draw(examples, identity, torch.Generator().manual_seed(0))
    assert batch.sources is not None and plain.sources is not None
    assert torch.equal(batch.pixels, batch.sources)  # the same transforms on both images of a pair
    assert not torch.equal(batch.pixels, plain.pixels)  # and they are augmented
    assert batch.pixels.min() >= -1 and batch.pixels.max() <= 1
    assert torch.equal(draw(0).pixels, batch.pixels) and not torch.equal(draw(1).pixels, batch.pixels)


@pytest.mark.parametrize("option", ["identity_pairs", "train_text_encoder", "scanner_variation"])
def test_instruct_pix2pix_options_are_refused_for_other_schemes(setup, option: str) -> None:
    with pytest.raises(ParameterError, match=f"{option} applies to the instruct-pix2pix scheme only"):
        quick_config(setup["cohort"], setup["base"], "basic", setup["cache"], **{option: True})


def test_drift_changes_only_the_training_noise(setup) -> None:
    parts = load_parts(setup["base"])
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    plain = noisy_latents(latents, parts.noise_scheduler, torch.Generator().manual_seed(7), 0.0)
    drifted = noisy_latents(latents, parts.noise_scheduler, torch.Generator().manual_seed(7), 0.1)
    assert torch.equal(plain[2], drifted[2])  # same timesteps
    assert torch.allclose(drifted[1] - plain[1], torch.full_like(latents, 0.1), atol=1e-6)  # target ε + δ
    alpha_bar = parts.noise_scheduler.alphas_cumprod[plain[2]].view(-1, 1, 1, 1)
    assert torch.allclose(drifted[0] - plain[0], (1 - alpha_bar).sqrt() * 0.1, atol=1e-6)
    none = noisy_latents(latents, parts.noise_scheduler, torch.Generator().manual_seed(7), 0.0)
    assert torch.equal(none[0], plain[0])

    scheme = Scheme(quick_config(setup["cohort"], setup["base"], "basic", setup["cache"]))
    scheme.setup(parts)
    batch = scheme.draw(
        type("E", (), {"images": torch.zeros(2, 16, 16), "prompts": ["a brain MRI"] * 2, "sources": None})(),
        torch.tensor([0, 1]),
        torch.Generator(),
    )
    grads = []
    for delta in (0.0, 0.1):
        parts.unet.zero_grad()
        loss = training_loss(parts, scheme, batch, delta, step_generator(0, 1, 0, 0), torch.float32)
        loss.backward()
        grads.append((loss.item(), parts.unet.conv_out.weight.grad.clone()))
    assert grads[0][0] != grads[1][0] and not torch.equal(grads[0][1], grads[1][1])
    calls = [
        node
        for path in (ENGINE / "finetune").glob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "drift_training_noise"
    ]
    assert len(calls) == 1  # the one training-side place
    assert as_pixels(torch.zeros(1, 4, 4)).shape == (1, 3, 4, 4)


def test_l1_distances_are_the_documented_ones() -> None:
    reference = np.stack([np.full((4, 4), -1.0), np.full((4, 4), 1.0)]).astype(np.float32)
    generated = np.full((3, 4, 4), 0.5, np.float32)
    mean_image, nearest = l1_distances(generated, reference)
    assert math.isclose(mean_image, 0.5) and math.isclose(nearest, 0.5)


def test_drift_search_picks_the_grid_minimum_and_records_it(setup, tmp_path: Path) -> None:
    parts = load_parts(setup["base"])
    bundle = bundle_of(parts)
    settings = EditSettings(mode="generate", prompt="a brain MRI", steps=2, seed=0)
    reference = generate_slices(bundle, 2, 16, 16, settings) + 0.1  # the δ that fits is above 0
    curve = search_drift(bundle, reference, ["a brain MRI"], (-0.1, 0.0, 0.1), samples=2, steps=2)
    assert [p.delta for p in curve.points] == [-0.1, 0.0, 0.1]
    assert curve.best == min(curve.points, key=lambda p: p.mean_image_l1).delta
    model = tmp_path / "model"
    model.mkdir()
    paths = store_search(curve, tmp_path / "curve", model)
    assert (
        paths["png"].is_file() and json.loads(paths["json"].read_text(encoding="utf-8"))["best"] == curve.best
    )
    assert json.loads((model / "latentdrift.json").read_text(encoding="utf-8"))["drift"] == curve.best


def test_a_search_drift_job_trains_with_the_searched_delta(setup) -> None:
    model = _train(setup, "basic", "search", search_drift=True, search_grid=(-0.05, 0.05), steps=1)
    metadata = json.loads((model / "latentdrift.json").read_text(encoding="utf-8"))
    curve = metadata["drift_curve"]
    assert metadata["drift"] == curve["best"] == metadata["trained_drift"]
    assert [p["delta"] for p in curve["points"]] == [-0.05, 0.05] and (model / "drift_curve.png").is_file()
    trainer = json.loads(
        next((model.parent / "checkpoints").glob("step-*/trainer.json")).read_text(encoding="utf-8")
    )
    assert trainer["delta"] == curve["best"]
