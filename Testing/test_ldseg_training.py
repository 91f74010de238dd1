"""LDSeg training: learns a trivial problem, checkpoints, resumes exactly, augments consistently."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from safetensors.torch import load_file
from train_support import rewrite_trainer_state

from latentdrift.core.errors import InputError, JobError, ParameterError
from latentdrift.finetune.checkpoints import checkpoints
from latentdrift.segmentation.ldseg import (
    LDSegNetwork,
    TrainSettings,
    evaluate_dice,
    tiny_config,
    train_ldseg,
)
from latentdrift.segmentation.ldseg.augment import _anisotropic_blur, _rim, _tissue_contrast, augment_batch
from latentdrift.segmentation.ldseg.sampler import make_scheduler
from latentdrift.segmentation.ldseg.training import CHECKPOINT_VERSION, _losses

CONFIG = tiny_config(["background", "disc"])


def _discs(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs (label 1) of random centre and radius on a dark, slightly noisy background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:32, :32]
    images = np.full((count, 32, 32), -1.0, np.float32)
    labels = np.zeros((count, 32, 32), np.int64)
    for index in range(count):
        row, col, radius = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(4, 8)
        disc = (rows - row) ** 2 + (cols - col) ** 2 < radius**2
        labels[index][disc] = 1
        images[index][disc] = 0.6
    return (images + rng.normal(0, 0.05, images.shape)).clip(-1, 1).astype(np.float32), labels


def _settings(**changes: object) -> TrainSettings:
    values: dict = {"batch_size": 8, "learning_rate": 3e-3, "device": "cpu", "validation_steps": 3, **changes}
    return TrainSettings(**values)


def test_training_clearly_improves_validation_dice() -> None:
    images, labels = _discs(32, 0)
    val_images, val_labels = _discs(8, 1)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same initial weights as train_ldseg with seed 0
        untrained = evaluate_dice(LDSegNetwork(CONFIG), val_images, val_labels, steps=3)
    events: list[dict] = []
    result = train_ldseg(images, labels, val_images, val_labels, CONFIG, _settings(steps=48), events.append)
    # observed (seeds 0-2): untrained about 0.2, after 48 steps 0.77-0.81
    assert untrained["disc"] is not None and untrained["disc"] < 0.35
    assert len(result.history) == 12 and [h["epoch"] for h in result.history] == list(range(1, 13))
    assert result.history[-1]["dice"]["disc"] > 0.6
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert sum(e["kind"] == "step" for e in events) == 48 and sum(e["kind"] == "epoch" for e in events) == 12
    assert not result.model.training


def test_resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch
) -> None:
    images, labels = _discs(16, 2)
    unpickle = torch.load

    def weights_only(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            pytest.fail("checkpoints must not be unpickled beyond weights_only=True")
        return unpickle(*args, **kwargs)

    monkeypatch.setattr(torch, "load", weights_only)
    straight = train_ldseg(images, labels, None, None, CONFIG, _settings(steps=6))
    folder = tmp_path / "checkpoints"
    first = train_ldseg(
        images, labels, None, None, CONFIG, _settings(steps=4, checkpoint_dir=str(folder), checkpoint_every=3)
    )
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000003", "step-00000004"]
    assert first.start_step == 0
    events: list[dict] = []
    resumed = train_ldseg(
        images, labels, None, None, CONFIG, _settings(steps=6, checkpoint_dir=str(folder)), events.append
    )
    assert resumed.start_step == 4
    assert [e["step"] for e in events if e["kind"] == "step"] == [5, 6]
    assert [h["step"] for h in resumed.history] == [2, 4, 6]
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_bad_labels_are_refused() -> None:
    images, labels = _discs(4, 3)
    with pytest.raises(InputError, match="labels must be integers from 0 to 1"):
        train_ldseg(images, labels + 1, None, None, CONFIG, _settings(steps=1))
    with pytest.raises(InputError, match=r"\(N, 32, 32\)"):
        train_ldseg(images[:, :16], labels[:, :16], None, None, CONFIG, _settings(steps=1))


def test_augmentation_keeps_image_and_label_aligned() -> None:
    images, labels = _discs(16, 4)
    x, y = torch.from_numpy(images)[:, None], torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(0)
    out_x, out_y = augment_batch(x, y, generator, flip_left_right=True)
    assert out_x.shape == x.shape and out_y.shape == y.shape and out_y.dtype == y.dtype
    assert set(out_y.unique().tolist()) <= {0, 1}
    assert out_x.min() >= -1 and out_x.max() <= 1
    assert not torch.equal(out_x, x)
    inside, outside = out_x[:, 0][out_y == 1].mean(), out_x[:, 0][out_y == 0].mean()
    assert inside - outside > 1.0
    again = augment_batch(x, y, torch.Generator().manual_seed(0), flip_left_right=True)
    assert torch.equal(again[0], out_x) and torch.equal(again[1], out_y)


def test_scanner_variation_is_reproducible_and_keeps_the_labels() -> None:
    images, labels = _discs(16, 5)
    x, y = torch.from_numpy(images)[:, None], torch.from_numpy(labels)
    out = augment_batch(x, y, torch.Generator().manual_seed(1), scanner_variation=True)
    plain = augment_batch(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(out[1], plain[1])  # the intensity transforms never move a label
    assert not torch.equal(out[0], plain[0])
    assert out[0].min() >= -1 and out[0].max() <= 1
    again = augment_batch(x, y, torch.Generator().manual_seed(1), scanner_variation=True)
    assert torch.equal(again[0], out[0])


def test_the_rim_is_painted_just_outside_the_brain_only() -> None:
    labels = torch.zeros(64, 32, 32, dtype=torch.int64)
    labels[:, 10:22, 10:22] = 1
    unit = torch.where(labels[:, None] > 0, 0.5, 0.0)
    out = _rim(unit, labels, torch.Generator().manual_seed(0))
    changed = (out != unit)[:, 0]
    assert changed.any() and not changed.all(dim=(1, 2)).any()
    assert not changed[labels > 0].any()  # the brain is untouched
    assert not changed[:, :5].any() and not changed[:, 26:].any()  # at most 3 pixels out


def test_tissue_contrast_scales_tissues_but_never_the_background() -> None:
    labels = torch.zeros(32, 16, 16, dtype=torch.int64)
    labels[:, 4:8], labels[:, 8:12] = 1, 2
    unit = torch.full((32, 1, 16, 16), 0.5)
    out = _tissue_contrast(unit, labels, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0][labels == 0], unit[:, 0][labels == 0])
    ratios = out[:, 0] / unit[:, 0]
    assert ratios.min() >= 0.85 - 1e-6 and ratios.max() <= 1.15 + 1e-6 and ratios.std() > 0


def test_anisotropic_blur_smooths_along_one_axis_only() -> None:
    stripes = torch.zeros(64, 1, 32, 32)
    stripes[..., ::2, :] = 1.0  # alternating rows, constant along each row
    out = _anisotropic_blur(stripes, torch.Generator().manual_seed(0))
    blurred = ~torch.isclose(out, stripes).all(dim=(1, 2, 3))
    assert 0 < int(blurred.sum()) < 64  # a random subset
    assert torch.allclose(out, out[..., :1].expand_as(out), atol=1e-5)  # rows stay constant


class _Stop(Exception):
    pass


def test_a_cancelled_cosine_schedule_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    images, labels = _discs(16, 4)
    straight = train_ldseg(images, labels, None, None, CONFIG, _settings(steps=6, lr_scheduler="cosine"))
    folder = tmp_path / "checkpoints"
    interrupted = _settings(steps=6, lr_scheduler="cosine", checkpoint_dir=str(folder), checkpoint_every=2)

    def cancel_at_five(event: dict) -> None:
        if event["kind"] == "step" and event["step"] == 5:
            raise _Stop

    with pytest.raises(_Stop):
        train_ldseg(images, labels, None, None, CONFIG, interrupted, cancel_at_five)
    resumed = train_ldseg(images, labels, None, None, CONFIG, interrupted)
    assert resumed.start_step == 4
    newest = checkpoints(folder)[0]
    assert torch.load(newest / "scheduler.bin", weights_only=True)["last_epoch"] == 6
    optimizer = torch.load(newest / "optimizer.bin", weights_only=True)
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at zero
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_the_trained_model_is_the_average_of_all_four_networks(tmp_path: Path) -> None:
    images, labels = _discs(16, 5)
    folder = tmp_path / "checkpoints"
    result = train_ldseg(images, labels, None, None, CONFIG, _settings(steps=4, checkpoint_dir=str(folder)))
    newest = checkpoints(folder)[0]
    ema, model = load_file(newest / "ema.safetensors"), load_file(newest / "model.safetensors")
    for name, tensor in result.model.state_dict().items():
        torch.testing.assert_close(tensor, ema[f"module.{name}"], msg=name)
    encoder = [name for name in result.model.state_dict() if name.startswith("label_encoder.")]
    assert encoder and any(not torch.equal(result.model.state_dict()[name], model[name]) for name in encoder)


def test_an_old_checkpoint_or_an_unknown_lr_scheduler_is_refused_clearly(tmp_path: Path) -> None:
    images, labels = _discs(8, 6)
    folder = tmp_path / "checkpoints"
    train_ldseg(images, labels, None, None, CONFIG, _settings(steps=1, checkpoint_dir=str(folder)))
    rewrite_trainer_state(folder, lambda document: document.pop("version"))
    with pytest.raises(JobError, match=f"checkpoint version 1, this one reads {CHECKPOINT_VERSION}"):
        train_ldseg(images, labels, None, None, CONFIG, _settings(steps=2, checkpoint_dir=str(folder)))
    with pytest.raises(ParameterError, match="Unknown lr_scheduler 'warm'"):
        train_ldseg(images, labels, None, None, CONFIG, _settings(steps=1, lr_scheduler="warm"))


def test_resuming_with_other_training_settings_is_refused_clearly(tmp_path: Path) -> None:
    images, labels = _discs(8, 6)
    folder = str(tmp_path / "checkpoints")
    cosine = _settings(steps=2, lr_scheduler="cosine", checkpoint_dir=folder)
    train_ldseg(images, labels, None, None, CONFIG, cosine)
    changed = dataclasses.replace(cosine, steps=3, reconstruction_weight=0.0)
    with pytest.raises(
        JobError, match=r"other training settings \(steps 2 → 3, reconstruction_weight 1.0 → 0.0\)"
    ):
        train_ldseg(images, labels, None, None, CONFIG, changed)
    harmless = dataclasses.replace(
        cosine, checkpoint_every=7, validation_steps=1
    )  # do not change the training
    assert train_ldseg(images, labels, None, None, CONFIG, harmless).start_step == 2


def test_training_can_start_from_a_trained_model_of_the_same_shape() -> None:
    images, labels = _discs(8, 8)
    start = train_ldseg(images, labels, None, None, CONFIG, _settings(steps=2, seed=5)).model
    tuned = train_ldseg(
        images, labels, None, None, CONFIG, _settings(steps=1, learning_rate=1e-9), start_from=start
    )
    scratch = train_ldseg(images, labels, None, None, CONFIG, _settings(steps=1, learning_rate=1e-9)).model
    for name, tensor in start.state_dict().items():
        torch.testing.assert_close(tuned.model.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert any(not torch.allclose(scratch.state_dict()[n], t) for n, t in start.state_dict().items())
    other = LDSegNetwork(tiny_config(["background", "disc", "ring"]))
    with pytest.raises(ParameterError, match="does not fit the training config"):
        train_ldseg(images, labels, None, None, CONFIG, _settings(steps=1), start_from=other)


def test_the_reconstruction_term_is_the_autoencoders_own_segmentation_loss() -> None:
    torch.manual_seed(0)
    model = LDSegNetwork(CONFIG)
    images, labels = (torch.from_numpy(a) for a in _discs(4, 7))
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_dice=2.0, lambda_ce=1.0)
    arguments = (
        model,
        images[:, None],
        labels,
        torch.tensor([10, 200, 600, 990]),
        torch.randn(4, *CONFIG.latent_shape),
        make_scheduler(CONFIG),
        loss_function,
    )
    *_, reconstruction = _losses(*arguments, True)
    expected = loss_function(model.label_decoder(model.encode_labels(labels)), labels[:, None])
    torch.testing.assert_close(reconstruction, expected)
    assert float(_losses(*arguments, False)[2]) == 0.0


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_the_history_reports_the_reconstruction_loss_in_the_total(weight: float) -> None:
    images, labels = _discs(8, 3)
    result = train_ldseg(images, labels, None, None, CONFIG, _settings(steps=2, reconstruction_weight=weight))
    entry = result.history[-1]
    assert (entry["loss_reconstruction"] > 0) == (weight > 0)
    assert entry["loss"] == pytest.approx(
        entry["loss_segmentation"] + entry["loss_noise"] + weight * entry["loss_reconstruction"], rel=1e-5
    )


def test_negative_loss_weights_are_refused() -> None:
    images, labels = _discs(8, 3)
    with pytest.raises(ParameterError, match="reconstruction_weight"):
        train_ldseg(images, labels, None, None, CONFIG, _settings(steps=1, reconstruction_weight=-1.0))


def test_a_checkpoint_folder_of_the_format_before_version_4_is_refused_clearly(tmp_path: Path) -> None:
    images, labels = _discs(8, 6)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "checkpoint.json").write_text(
        json.dumps({"format": "latentdrift-ldseg-checkpoint", "version": 3})
    )
    with pytest.raises(JobError, match=f"checkpoint version 3, this one reads {CHECKPOINT_VERSION}"):
        train_ldseg(images, labels, None, None, CONFIG, _settings(steps=1, checkpoint_dir=str(folder)))
