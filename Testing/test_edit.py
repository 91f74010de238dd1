"""Slice editing and generation: δ = 0 equals stock diffusers bit for bit, drift, seeds, batching, refusals."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
)

import latentdrift.counterfactual.edit.loading as loading_module
import latentdrift.counterfactual.edit.run as run_module
from latentdrift.core.devices import parallel_workers
from latentdrift.core.errors import InputError, ModelError, OutOfMemoryError, ParameterError
from latentdrift.counterfactual.drift import DriftCallback
from latentdrift.counterfactual.edit import (
    EditSettings,
    PipelineBundle,
    edit_slices,
    generate_slices,
    load_bundle,
)
from latentdrift.counterfactual.prompts import Attributes

SIZE = 32
STEPS = 4
SOURCE = Attributes.parse("age=70,sex=F,dx=CN")
TARGET = Attributes.parse("age=77,dx=MCI", base=SOURCE)


@pytest.fixture(scope="module")
def ip2p(folders: dict[str, Path]) -> PipelineBundle:
    return load_bundle(folders["instruct"], "cpu")


@pytest.fixture(scope="module")
def slices() -> np.ndarray:
    grid = np.linspace(-1, 1, SIZE, dtype=np.float32)
    base = np.outer(grid, grid)
    return np.stack([base, -base, np.roll(base, 5, axis=0)]).astype(np.float32)


def settings(mode: str, **changes: Any) -> EditSettings:
    """Small runs; batch_size 3 and one worker put the 3 test slices in one pipeline call, like the stock calls."""
    defaults: dict[str, Any] = {
        "source": SOURCE,
        "target": TARGET,
        "steps": STEPS,
        "batch_size": 3,
        "workers": 1,
    }
    return EditSettings(mode=mode, **{**defaults, **changes})


def stock(kind: Any, folder: Path, scheduler: str = "ddim") -> Any:
    pipeline = kind.from_pretrained(folder, local_files_only=True, safety_checker=None)
    if scheduler == "ddpm":
        pipeline.scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def fresh(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def to_slices(images: torch.Tensor) -> np.ndarray:
    return (images.mean(dim=1) * 2 - 1).numpy().astype(np.float32)


def start_noise(gens: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    return torch.cat([torch.randn((1, *shape), generator=gen) for gen in gens])


def stock_text_to_image(
    folders: dict[str, Path], run: EditSettings, count: int, delta: float = 0.0
) -> np.ndarray:
    pipeline = stock(StableDiffusionPipeline, folders["sd"], run.scheduler)
    gens = fresh([run.seed + i for i in range(count)])
    noise = start_noise(gens, (4, SIZE // 2, SIZE // 2))
    images = pipeline(
        prompt=[run.text()] * count,
        negative_prompt=[""] * count,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=run.guidance,
        latents=noise + delta if run.drift_start else noise,
        generator=gens,
        output_type="pt",
        callback_on_step_end=DriftCallback(delta) if delta else None,
    ).images
    return to_slices(images)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_generate_with_zero_drift_equals_stock_text_to_image(
    sd: PipelineBundle, folders: dict[str, Path], scheduler: str
) -> None:
    run = settings("generate", seed=3, scheduler=scheduler)
    ours = generate_slices(sd, 3, SIZE, SIZE, run)
    assert ours.shape == (3, SIZE, SIZE) and ours.dtype == np.float32
    assert np.array_equal(ours, stock_text_to_image(folders, run, 3))
    assert not np.array_equal(generate_slices(sd, 3, SIZE, SIZE, dataclasses.replace(run, drift=0.1)), ours)


def test_drifted_start_equals_stock_started_from_noise_plus_delta(
    sd: PipelineBundle, folders: dict[str, Path]
) -> None:
    run = settings("generate", seed=1, drift=0.1, drift_start=True)
    assert np.array_equal(
        generate_slices(sd, 2, SIZE, SIZE, run), stock_text_to_image(folders, run, 2, delta=0.1)
    )
    no_start = generate_slices(sd, 2, SIZE, SIZE, dataclasses.replace(run, drift_start=False))
    assert not np.allclose(no_start, generate_slices(sd, 2, SIZE, SIZE, run))
    zero = dataclasses.replace(run, drift=0.0)
    assert np.array_equal(
        generate_slices(sd, 2, SIZE, SIZE, zero),
        generate_slices(sd, 2, SIZE, SIZE, dataclasses.replace(zero, drift_start=False)),
    )


def test_img2img_with_zero_drift_equals_stock_img2img(
    sd: PipelineBundle, folders: dict[str, Path], slices: np.ndarray
) -> None:
    run = settings("img2img", seed=4, strength=0.75, scheduler="ddpm")
    pipeline = stock(StableDiffusionImg2ImgPipeline, folders["sd"], "ddpm")
    pixels = torch.from_numpy(slices)[:, None].expand(-1, 3, -1, -1)
    with torch.no_grad():
        latents = pipeline.vae.encode(pixels).latent_dist.mode() * pipeline.vae.config.scaling_factor
    images = pipeline(
        prompt=[run.text()] * 3,
        negative_prompt=[""] * 3,
        image=latents,
        strength=0.75,
        num_inference_steps=STEPS,
        generator=fresh([4] * 3),
        output_type="pt",
    ).images
    ours = edit_slices(sd, slices, run)
    assert np.array_equal(ours, to_slices(images))
    assert not np.array_equal(edit_slices(sd, slices, dataclasses.replace(run, drift=0.1)), ours)


def test_instruct_with_zero_drift_equals_stock_instruct_pix2pix(
    ip2p: PipelineBundle, folders: dict[str, Path], slices: np.ndarray
) -> None:
    run = settings("instruct", seed=2, guidance=3.0, image_guidance=1.5)
    pipeline = stock(StableDiffusionInstructPix2PixPipeline, folders["instruct"])
    gens = fresh([2] * 3)
    images = pipeline(
        prompt=[run.text()] * 3,
        negative_prompt=[run.negative_text()] * 3,  # the factual instruction (Instruct.negative_text)
        image=(torch.from_numpy(slices)[:, None].expand(-1, 3, -1, -1) + 1) / 2,
        latents=start_noise(gens, (4, SIZE // 2, SIZE // 2)),
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        image_guidance_scale=1.5,
        generator=gens,
        output_type="pt",
    ).images
    ours = edit_slices(ip2p, slices, run)
    assert np.array_equal(ours, to_slices(images))
    assert not np.array_equal(edit_slices(ip2p, slices, dataclasses.replace(run, drift=0.1)), ours)


@pytest.mark.parametrize("mode", ["img2img", "instruct", "direction"])
def test_same_seed_same_output_and_other_seed_differs(
    sd: PipelineBundle, ip2p: PipelineBundle, slices: np.ndarray, mode: str
) -> None:
    bundle = ip2p if mode == "instruct" else sd
    scheduler = "ddim" if mode == "direction" else "ddpm"
    run = settings(mode, seed=7, drift=0.05, scheduler=scheduler)
    first = edit_slices(bundle, slices, run)
    assert np.array_equal(first, edit_slices(bundle, slices, run))
    if mode != "direction":  # the direction edit is deterministic (DDIM inversion, eta 0)
        assert not np.array_equal(first, edit_slices(bundle, slices, dataclasses.replace(run, seed=8)))


@pytest.mark.parametrize("mode", ["generate", "img2img", "instruct", "direction"])
def test_two_workers_make_the_same_calls_and_results_as_one(
    sd: PipelineBundle, ip2p: PipelineBundle, slices: np.ndarray, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 slices, 1 per call: one worker calls [1, 1, 1]; two threads call [1] and [1, 1] at once.

    The slices agree up to float rounding (each thread runs torch on one thread, which sums in another order;
    DDIM inversion, in direction, grows it).
    """
    bundle = ip2p if mode == "instruct" else sd
    scheduler = "ddim" if mode == "direction" else "ddpm"
    drift_start = mode in ("generate", "img2img")
    one = settings(mode, batch_size=1, drift=0.05, scheduler=scheduler, drift_start=drift_start)
    two = dataclasses.replace(one, batch_size=2, workers=2)
    calls: list[tuple[str, int]] = []
    original = run_module.call_pipeline

    def recorded(bundle: PipelineBundle, pipeline: Any, kwargs: dict[str, Any]) -> np.ndarray:
        calls.append((threading.current_thread().name, len(kwargs["negative_prompt"])))
        return original(bundle, pipeline, kwargs)

    monkeypatch.setattr(run_module, "call_pipeline", recorded)

    def run(chosen: EditSettings) -> np.ndarray:
        if mode == "generate":
            return generate_slices(bundle, 3, SIZE, SIZE, chosen)
        return edit_slices(bundle, slices, chosen)

    alone = run(one)
    assert [size for _name, size in calls] == [1, 1, 1]
    calls.clear()
    shared = run(two)
    threads = {name for name, _size in calls}
    assert sorted(size for _name, size in calls) == [1, 1, 1] and len(threads) == 2
    assert threading.current_thread().name not in threads
    np.testing.assert_allclose(shared, alone, atol=1e-4 if mode == "direction" else 1e-5)


def test_workers_left_out_are_chosen_by_the_device(sd: PipelineBundle, slices: np.ndarray) -> None:
    """``workers=None`` runs as :func:`parallel_workers` says (2 on this CPU, whose results differ from 1's in the last bits)."""
    chosen = settings("img2img", scheduler="ddpm", batch_size=2, workers=None)
    expected = edit_slices(sd, slices, dataclasses.replace(chosen, workers=parallel_workers(sd.device)))
    assert np.array_equal(edit_slices(sd, slices, chosen), expected)


def test_every_slice_gets_the_same_noise(sd: PipelineBundle, slices: np.ndarray) -> None:
    """Equal slices come out equal (up to batch-position rounding), also across batches."""
    same = np.stack([slices[0]] * 3)
    out = edit_slices(sd, same, settings("img2img", scheduler="ddpm", batch_size=2))
    np.testing.assert_allclose(out[1], out[0], atol=1e-5)
    np.testing.assert_allclose(out[2], out[0], atol=1e-5)


def test_per_channel_drift(sd: PipelineBundle, slices: np.ndarray) -> None:
    scalar = edit_slices(sd, slices, settings("img2img", drift=0.1))
    per_channel = edit_slices(sd, slices, settings("img2img", drift=(0.1, 0.1, 0.1, 0.1)))
    assert np.array_equal(scalar, per_channel)
    assert not np.allclose(scalar, edit_slices(sd, slices, settings("img2img", drift=(0.1, 0.0, 0.0, -0.1))))
    with pytest.raises(ParameterError, match=r"3 values.*4 channels"):
        edit_slices(sd, slices, settings("img2img", drift=(0.1, 0.0, 0.0)))


def test_img2img_drifted_start_changes_the_result(sd: PipelineBundle, slices: np.ndarray) -> None:
    run = settings("img2img", drift=0.1)
    assert not np.allclose(
        edit_slices(sd, slices, run), edit_slices(sd, slices, dataclasses.replace(run, drift_start=True))
    )


@pytest.mark.parametrize("mode", ["img2img", "instruct"])
def test_vae_runs_in_chunks_with_the_same_result(
    sd: PipelineBundle, ip2p: PipelineBundle, slices: np.ndarray, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 3 slices with chunks of 2: every VAE call sees at most 2, and the edit is unchanged."""
    bundle = ip2p if mode == "instruct" else sd
    run = settings(mode, batch_size=3)
    whole = edit_slices(bundle, slices, run)
    seen: dict[str, list[int]] = {"encoder": [], "decoder": []}
    hooks = [
        getattr(bundle.vae, name).register_forward_hook(
            lambda _m, args, _o, batches=batches: batches.append(args[0].shape[0])
        )
        for name, batches in seen.items()
    ]
    monkeypatch.setattr(loading_module, "VAE_CHUNK", 2)
    try:
        chunked = edit_slices(bundle, slices, run)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"encoder": [2, 1], "decoder": [2, 1]}
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_out_of_memory_halves_the_batch_and_gives_the_same_result(
    sd: PipelineBundle, slices: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = settings("img2img", scheduler="ddpm", batch_size=3, drift=0.1)
    expected = edit_slices(sd, slices, run)
    calls: list[int] = []
    original = run_module.call_pipeline

    def flaky(bundle: PipelineBundle, pipeline: Any, kwargs: dict[str, Any]) -> np.ndarray:
        calls.append(len(kwargs["prompt"]))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(bundle, pipeline, kwargs)

    monkeypatch.setattr(run_module, "call_pipeline", flaky)
    result = edit_slices(sd, slices, run)
    assert calls == [3, 1, 1, 1]
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_out_of_memory_with_one_slice_is_reported(
    sd: PipelineBundle, slices: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def always(bundle: PipelineBundle, pipeline: Any, kwargs: dict[str, Any]) -> np.ndarray:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(run_module, "call_pipeline", always)
    with pytest.raises(OutOfMemoryError, match="one slice per batch"):
        edit_slices(sd, slices, settings("img2img", batch_size=1))


def test_model_must_fit_the_mode(sd: PipelineBundle, ip2p: PipelineBundle, slices: np.ndarray) -> None:
    with pytest.raises(ModelError, match=r"not an InstructPix2Pix model.*use mode img2img or direction"):
        edit_slices(sd, slices, settings("instruct"))
    with pytest.raises(ModelError, match="is an InstructPix2Pix model"):
        edit_slices(ip2p, slices, settings("img2img"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "img2img", "steps": 3, "strength": 0.3}, "no denoising step"),
        ({"mode": "img2img", "strength": 0.0}, "strength"),
        ({"mode": "generate", "steps": 0}, "steps"),
        ({"mode": "sketch"}, "Unknown edit mode"),
        ({"mode": "img2img", "scheduler": "euler"}, "use ddim or ddpm"),
        ({"mode": "direction", "scheduler": "ddpm"}, "use scheduler ddim"),
        ({"mode": "direction", "drift_start": True}, "drift_start does not apply"),
        ({"mode": "img2img", "drift": float("inf")}, "finite"),
        ({"mode": "img2img", "batch_size": 0}, "batch_size"),
        ({"mode": "img2img", "seed": -1}, "seed"),
        ({"mode": "img2img", "guidance": -1.0}, "Guidance"),
    ],
)
def test_bad_settings_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        EditSettings(**{"source": SOURCE, "target": TARGET, **changes})


def test_missing_texts_are_refused() -> None:
    with pytest.raises(ParameterError, match="needs a prompt or target"):
        EditSettings(mode="generate")
    with pytest.raises(ParameterError, match="needs an instruction"):
        EditSettings(mode="instruct", target=TARGET)
    with pytest.raises(ParameterError, match="needs both source and target"):
        EditSettings(mode="direction", target=TARGET)
    assert EditSettings(mode="instruct", instruction="make it older").text() == "make it older"
    assert EditSettings(mode="img2img", prompt="a knee MRI").text() == "a knee MRI"


def test_bad_slices_are_refused(sd: PipelineBundle, slices: np.ndarray) -> None:
    run = settings("img2img")
    with pytest.raises(InputError, match="multiple of 8"):
        edit_slices(sd, slices[:, :30, :30], run)
    with pytest.raises(InputError, match=r"\(B, H, W\)"):
        edit_slices(sd, slices[0], run)
    with pytest.raises(InputError, match="normalise"):
        edit_slices(sd, slices * 3, run)
    with pytest.raises(InputError, match="NaN"):
        edit_slices(sd, np.full_like(slices, np.nan), run)
    with pytest.raises(ParameterError, match="generate_slices"):
        edit_slices(sd, slices, settings("generate"))
    with pytest.raises(ParameterError, match="edit_slices"):
        generate_slices(sd, 1, SIZE, SIZE, run)
