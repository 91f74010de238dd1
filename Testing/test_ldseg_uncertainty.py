"""Sample statistics and segment_slices: ranges, determinism, N = 1, many classes, empty slices, OOM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentdrift.core.errors import ParameterError
from latentdrift.segmentation.ldseg import LDSegNetwork, segment_slices, summarise_samples, tiny_config


@pytest.fixture(scope="module")
def model() -> LDSegNetwork:
    torch.manual_seed(0)
    return LDSegNetwork(tiny_config(["background", "a", "b", "c"])).eval()


def _images(count: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (count, 1, 32, 32)).astype(np.float32)


@pytest.mark.parametrize(("samples", "classes"), [(1, 2), (5, 2), (4, 3), (3, 7)])
def test_summary_ranges(samples: int, classes: int) -> None:
    probabilities = torch.softmax(torch.randn(samples, 2, classes, 6, 6) * 3, dim=2)
    summary = summarise_samples(probabilities)
    torch.testing.assert_close(summary.probabilities.sum(dim=1), torch.ones(2, 6, 6))
    assert summary.entropy.min() >= 0 and summary.entropy.max() <= 1
    assert summary.variance.shape == (2, classes, 6, 6) and summary.variance.min() >= 0
    assert torch.equal(summary.labels, summary.probabilities.argmax(dim=1))
    if samples == 1:
        assert torch.all(summary.variance == 0)


def test_entropy_extremes() -> None:
    uniform = torch.full((2, 1, 3, 4, 4), 1 / 3)
    certain = torch.zeros(2, 1, 3, 4, 4)
    certain[:, :, 1] = 1
    torch.testing.assert_close(summarise_samples(uniform).entropy, torch.ones(1, 4, 4))
    torch.testing.assert_close(summarise_samples(certain).entropy, torch.zeros(1, 4, 4))
    # two confident samples that disagree: the mean is uncertain and the variance large
    disagree = torch.stack([certain[0], certain[0].roll(1, dims=1)])
    assert torch.all(summarise_samples(disagree).entropy > 0.6)
    assert torch.all(summarise_samples(disagree).variance[:, 1] == 0.25)


def test_segment_slices_shapes_and_ranges(model: LDSegNetwork) -> None:
    result = segment_slices(model, _images(), samples=3, steps=4, seed=0)
    assert result.labels.shape == (3, 32, 32) and result.labels.dtype == np.uint8
    assert result.probabilities.shape == result.variance.shape == (3, 4, 32, 32)
    assert result.entropy.shape == (3, 32, 32)
    assert all(a.dtype == np.float32 for a in (result.probabilities, result.entropy, result.variance))
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert result.entropy.min() >= 0 and result.entropy.max() <= 1
    assert result.labels.max() < 4
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(axis=1))


def test_same_seed_same_result_whatever_the_batch_size(model: LDSegNetwork) -> None:
    first = segment_slices(model, _images(), samples=2, steps=3, seed=7, batch_size=3)
    second = segment_slices(model, _images(), samples=2, steps=3, seed=7, batch_size=1)
    np.testing.assert_allclose(first.probabilities, second.probabilities, atol=1e-5)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_two_workers_give_the_result_of_one(model: LDSegNetwork) -> None:
    """Slices shared by two threads (each torch on one thread) match one worker up to float rounding."""
    alone = segment_slices(model, _images(), samples=2, steps=3, seed=7, batch_size=2, workers=1)
    shared = segment_slices(model, _images(), samples=2, steps=3, seed=7, batch_size=2, workers=2)
    np.testing.assert_allclose(shared.probabilities, alone.probabilities, atol=1e-5)
    np.testing.assert_array_equal(shared.labels, alone.labels)


def test_a_model_that_mirrors_samples_mirrors_half_of_them(model: LDSegNetwork) -> None:
    from dataclasses import replace

    mirroring = LDSegNetwork(replace(model.config, mirror_samples=True)).eval()
    mirroring.load_state_dict(model.state_dict())
    for samples, same in ((1, True), (2, False)):
        plain = segment_slices(model, _images(), samples=samples, steps=3, seed=7)
        mirrored = segment_slices(mirroring, _images(), samples=samples, steps=3, seed=7)
        assert np.array_equal(plain.probabilities, mirrored.probabilities) is same


def test_different_seeds_differ(model: LDSegNetwork) -> None:
    first = segment_slices(model, _images(), samples=2, steps=3, seed=1)
    second = segment_slices(model, _images(), samples=2, steps=3, seed=2)
    assert np.abs(first.probabilities - second.probabilities).max() > 1e-3


def test_single_sample_has_zero_variance(model: LDSegNetwork) -> None:
    result = segment_slices(model, _images(2), samples=1, steps=2)
    assert np.all(result.variance == 0)
    assert result.entropy.max() > 0


def test_empty_slices_are_background_and_skip_the_model(model: LDSegNetwork) -> None:
    images = _images(3)
    images[0] = -1.0
    images[2] = 0.3
    calls: list[int] = []
    hook = model.image_encoder.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    try:
        result = segment_slices(model, images, samples=2, steps=2)
        assert calls == [1]
        calls.clear()
        segment_slices(model, images[[0, 2]], samples=2, steps=2)
        assert calls == []
    finally:
        hook.remove()
    for index in (0, 2):
        assert np.all(result.labels[index] == 0) and np.all(result.entropy[index] == 0)
        assert np.all(result.probabilities[index, 0] == 1) and np.all(result.probabilities[index, 1:] == 0)
        assert np.all(result.variance[index] == 0)


def test_out_of_memory_halves_the_batch_and_keeps_results(model: LDSegNetwork, monkeypatch) -> None:
    expected = segment_slices(model, _images(4), samples=2, steps=2, batch_size=4, workers=1)
    original = type(model.denoiser).forward
    raised: list[int] = []

    def flaky_forward(self, x, *args, **kwargs):
        if not raised:
            raised.append(x.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory")
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(type(model.denoiser), "forward", flaky_forward)
    batches: list[int] = []
    hook = model.image_encoder.register_forward_hook(lambda _m, args, _o: batches.append(args[0].shape[0]))
    try:
        result = segment_slices(model, _images(4), samples=2, steps=2, batch_size=4, workers=1)
    finally:
        hook.remove()
    assert raised == [8] and batches == [4, 2, 2]
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"samples": 0}, "samples"), ({"steps": 0}, "steps"), ({"images": np.zeros((2, 1, 16, 16))}, "shape")],
)
def test_bad_arguments(model: LDSegNetwork, kwargs: dict, words: str) -> None:
    arguments = {"images": _images(1), **kwargs}
    with pytest.raises(ParameterError, match=words):
        segment_slices(model, **arguments)
