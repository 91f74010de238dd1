"""Model folders: what is refused (and why), caching, and the tiny test models themselves."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from latentdrift.core.errors import ModelError
from latentdrift.counterfactual.edit import check_model_folder, clear_bundle_cache, load_bundle
from latentdrift.counterfactual.prompts import (
    DIVERSE_IMAGE_PHRASES,
    Attributes,
    PromptOptions,
    instruct,
    paraphrases,
)
from latentdrift.fixtures.tiny_models import build_tiny_sd, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "sd")


@pytest.fixture
def copy(tiny: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny, tmp_path / "copy"))


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "tokenizer", "scheduler"])
def test_a_missing_component_is_named(copy: Path, component: str) -> None:
    shutil.rmtree(copy / component)
    with pytest.raises(ModelError, match=f"no '{component}' subfolder"):
        load_bundle(copy, "cpu")


def test_pickled_weights_are_refused(copy: Path) -> None:
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(
        ModelError, match=r"only pickled weights \(diffusion_pytorch_model.bin\).*safetensors"
    ):
        load_bundle(copy, "cpu")


def test_missing_weights_are_refused(copy: Path) -> None:
    (copy / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError, match="vae has no weights"):
        check_model_folder(copy)


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("tokenizer/tokenizer.json", "tokenizer is incomplete"),
        ("scheduler/scheduler_config.json", "no scheduler_config.json"),
    ],
)
def test_incomplete_component_files_are_refused(copy: Path, relative: str, message: str) -> None:
    (copy / relative).unlink()
    with pytest.raises(ModelError, match=message):
        check_model_folder(copy)


def test_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_bundle(tmp_path / "nowhere", "cpu")
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not really")
    with pytest.raises(ModelError, match="is a file, not a model folder"):
        load_bundle(checkpoint, "cpu")


def test_a_broken_config_becomes_a_model_error(copy: Path) -> None:
    (copy / "unet" / "config.json").write_text("{ not json")
    with pytest.raises(ModelError, match="Cannot load the Stable Diffusion model"):
        load_bundle(copy, "cpu")


def test_bundles_are_cached_per_folder_device_and_dtype(tiny: Path) -> None:
    clear_bundle_cache()
    first = load_bundle(tiny, "cpu")
    assert load_bundle(str(tiny), torch.device("cpu")) is first
    assert first.dtype == torch.float32 and not first.instruct and first.latent_channels == 4
    clear_bundle_cache()
    assert load_bundle(tiny, "cpu") is not first


def test_tiny_models_are_deterministic_and_instruct_has_8_channels(tmp_path: Path) -> None:
    one = load_bundle(build_tiny_sd(tmp_path / "a", seed=1), "cpu")
    two = load_bundle(build_tiny_sd(tmp_path / "b", seed=1), "cpu")
    assert torch.equal(one.unet.conv_in.weight, two.unet.conv_in.weight)
    assert load_bundle(build_tiny_sd(tmp_path / "c", instruct=True), "cpu").unet.config.in_channels == 8


def test_tiny_tokenizer_spells_every_prompt_in_few_tokens_without_unknowns() -> None:
    tokenizer = tiny_tokenizer()
    source, target = Attributes(age=70, sex="female", diagnosis="CN"), Attributes(age=77, diagnosis="MCI")
    texts = [
        *paraphrases(source, PromptOptions(age_format="words")),
        instruct(source, target, "words"),
        "ÿ ∂ 文字",
    ]
    assert len(texts) == len(DIVERSE_IMAGE_PHRASES) + 2
    for text in texts:
        ids = tokenizer(text).input_ids
        assert len(ids) <= 40 and tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.tokenize("a brain MRI") == ["a</w>", "brain</w>", "mri</w>"]
