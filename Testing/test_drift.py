"""Latent Drift on the sampling side: exact mean shift per step, refusals, training noise, img2img start."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import pytest
import torch
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)

from latentdrift.core.errors import ParameterError
from latentdrift.core.values import parse_drift, validate_drift
from latentdrift.counterfactual.drift import (
    DriftCallback,
    apply_drift,
    check_scheduler,
    drift_training_noise,
    drifted_img2img_latents,
    drifted_start,
    inversion_start,
)
from latentdrift.fixtures.tiny_models import build_tiny_sd, tiny_scheduler

STEPS = 4


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = build_tiny_sd(tmp_path_factory.mktemp("tiny") / "sd")
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_scheduler(pipeline: Any, scheduler: Any) -> Any:
    """The same stock pipeline class and modules with another scheduler."""
    other: Any = StableDiffusionPipeline(**{**pipeline.components, "scheduler": scheduler})
    other.set_progress_bar_config(disable=True)
    return other


def latents(seed: int = 0) -> torch.Tensor:
    return torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_scalar_and_per_channel_drift_are_added_exactly() -> None:
    x = latents()
    assert torch.equal(apply_drift(x, 0.0), x)
    assert torch.equal(apply_drift(x, 0.05), x + 0.05)
    per_channel = (0.1, 0.0, -0.2, 0.3)
    shifted = apply_drift(x, per_channel)
    for channel, value in enumerate(per_channel):
        assert torch.equal(shifted[:, channel], x[:, channel] + value)


def test_training_noise_and_drifted_start_are_epsilon_plus_delta() -> None:
    noise = latents(1)
    assert torch.equal(drift_training_noise(noise, 0.1), noise + 0.1)
    assert torch.equal(drifted_start(noise, (0.1, 0, 0, 0))[:, 0], noise[:, 0] + 0.1)
    start = drifted_start(torch.randn((4000, 4, 4, 4), generator=torch.Generator().manual_seed(0)), 0.2)
    assert abs(start.mean().item() - 0.2) < 0.01 and abs(start.std().item() - 1) < 0.01


def test_bad_drift_values_are_refused() -> None:
    with pytest.raises(ParameterError, match=r"3 values.*4 channels"):
        apply_drift(latents(), (0.1, 0.2, 0.3))
    with pytest.raises(ParameterError, match="finite"):
        validate_drift(float("nan"))
    with pytest.raises(ParameterError, match="Cannot read drift"):
        parse_drift("0.1,abc")
    assert parse_drift("0.05") == 0.05
    assert parse_drift("0.05,0,0,-0.02") == (0.05, 0.0, 0.0, -0.02)


@pytest.mark.parametrize("kind", [DDIMScheduler, DDPMScheduler])
def test_drift_schedulers_are_allowed(kind: Any) -> None:
    check_scheduler(kind.from_config(tiny_scheduler().config))


@pytest.mark.parametrize(
    "kind", [DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler]
)
def test_other_schedulers_are_refused(kind: Any) -> None:
    with pytest.raises(ParameterError, match=f"{kind.__name__}.*Use the DDIM or DDPM scheduler"):
        check_scheduler(kind.from_config(tiny_scheduler().config))


def test_callback_refuses_a_pipeline_with_an_unsupported_scheduler(pipeline: Any) -> None:
    euler = with_scheduler(pipeline, EulerDiscreteScheduler())
    with pytest.raises(ParameterError, match="EulerDiscreteScheduler"):
        euler(
            "a brain MRI", height=32, width=32, num_inference_steps=2, callback_on_step_end=DriftCallback(0.1)
        )


@pytest.mark.parametrize("kind", [DDIMScheduler, DDPMScheduler])
@pytest.mark.parametrize("delta", [0.1, (0.1, 0.0, -0.05, 0.2)])
def test_every_reverse_step_is_shifted_by_exactly_delta(
    pipeline: Any, kind: Any, delta: float | tuple[float, ...]
) -> None:
    """The sample entering step k+1 is scheduler.step()'s output of step k plus δ, bit for bit."""
    scheduler = kind.from_config(pipeline.scheduler.config)
    steps_seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = scheduler.step

    @functools.wraps(original)
    def recording_step(
        model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        result = original(model_output, timestep, sample, *args, **kwargs)
        steps_seen.append((sample.clone(), result[0].clone()))
        return result

    scheduler.step = recording_step
    drifted = with_scheduler(pipeline, scheduler)
    final = drifted(
        "a brain MRI",
        height=32,
        width=32,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        callback_on_step_end=DriftCallback(delta),
    ).images
    assert len(steps_seen) == STEPS
    for (_, output), (next_input, _) in itertools.pairwise(steps_seen):
        assert torch.equal(next_input, apply_drift(output, delta))
    assert torch.equal(final, apply_drift(steps_seen[-1][1], delta))


def test_zero_drift_callback_reproduces_the_stock_sampler(pipeline: Any) -> None:
    ddpm = with_scheduler(pipeline, DDPMScheduler.from_config(tiny_scheduler().config))
    common = {
        "prompt": "a brain MRI",
        "height": 32,
        "width": 32,
        "num_inference_steps": STEPS,
        "output_type": "latent",
    }
    stock = ddpm(generator=torch.Generator().manual_seed(5), **common).images
    ours = ddpm(
        generator=torch.Generator().manual_seed(5), callback_on_step_end=DriftCallback(0.0), **common
    ).images
    assert torch.equal(stock, ours)


@pytest.mark.parametrize("kind", [DDIMScheduler, DDPMScheduler])
def test_img2img_drifted_start_noises_with_epsilon_plus_delta(kind: Any) -> None:
    scheduler = kind.from_config(tiny_scheduler().config)
    x0, noise, timestep = latents(2), latents(3), torch.tensor([601])
    delta = (0.1, -0.05, 0.0, 0.2)
    shifted = drifted_img2img_latents(x0, delta, scheduler, timestep)
    expected = scheduler.add_noise(x0, drift_training_noise(noise, delta), timestep)
    torch.testing.assert_close(scheduler.add_noise(shifted, noise, timestep), expected, atol=1e-6, rtol=0)


def test_inverse_callback_subtracts_delta_except_after_the_last_step() -> None:
    class FakeInversePipeline:
        scheduler = DDIMInverseScheduler()
        num_timesteps = 3

    x = latents()
    callback = DriftCallback(0.1, inverse=True)
    assert torch.equal(callback(FakeInversePipeline(), 0, 1, {"latents": x})["latents"], x - 0.1)
    assert torch.equal(callback(FakeInversePipeline(), 2, 1, {"latents": x})["latents"], x)
    assert torch.equal(inversion_start(x, 0.1), x - 0.1)
    with pytest.raises(ParameterError, match="DDIMInverseScheduler"):
        DriftCallback(0.1, inverse=True)(
            type("P", (), {"scheduler": DDIMScheduler()})(), 0, 1, {"latents": x}
        )
