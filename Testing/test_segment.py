"""`latentdrift segment` and `train-ldseg` end to end with tiny models: real files, real scenes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import oblique_direction
from safetensors.torch import load_file

from latentdrift.bridge.scene import find_nodes, load_scene, node_to_volume
from latentdrift.cli import main
from latentdrift.core.errors import ParameterError
from latentdrift.core.settings import TrainLDSegSettings
from latentdrift.core.volumes import Geometry, Volume, read_volume, write_volume
from latentdrift.fixtures.synthetic import SubjectSettings, synthetic_subject
from latentdrift.segmentation.data import pair_slices
from latentdrift.segmentation.ldseg import LDSegNetwork, save_ldseg_model, tiny_config
from latentdrift.segmentation.volume_segmentation import intensity_statistics
from latentdrift.segmentation.workflow import ldseg_training

TOL = 1e-6
CLASSES = ("background", "CSF", "grey matter", "white matter")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-ldseg"
    save_ldseg_model(LDSegNetwork(tiny_config(CLASSES, image_size=32)), folder)
    return folder


@pytest.fixture(scope="module")
def brain(tmp_path_factory) -> Path:
    """A small synthetic brain (4 mm voxels) re-oriented onto an oblique, permuted grid."""
    image, _labels = synthetic_subject(3, SubjectSettings(spacing_mm=4.0))
    oblique = Volume(image.voxels, Geometry((4.0, 4.0, 4.0), (10.0, -5.0, 2.0), oblique_direction()), "brain")
    return write_volume(oblique, tmp_path_factory.mktemp("data") / "brain.nii.gz")


def test_segment_writes_nodes_on_the_input_grid(tiny_model: Path, brain: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg"
    args = ["segment", str(brain), "--model", str(tiny_model), "--samples", "3", "--steps", "2"]
    assert main([*args, "--probabilities", "--output", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    outputs = summary["outputs"]
    assert {"scene", "scene_bundle", "segmentation", "uncertainty", "probability", "preview", "input"} <= set(
        outputs
    )
    assert len(outputs["probability"]) == 3
    assert (out / outputs["preview"]).stat().st_size > 10_000
    source = read_volume(brain)
    uncertainty = read_volume(out / outputs["uncertainty"])
    assert uncertainty.geometry.is_close(source.geometry, TOL)
    assert uncertainty.voxels.min() >= 0.0 and uncertainty.voxels.max() <= 1.0
    assert uncertainty.voxels.std() > 0.01
    session = load_scene(out / outputs["scene"])
    segmentation = find_nodes(session, "vtkMRMLSegmentationNode")[0].GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
    assert names == list(CLASSES[1:])
    for node in find_nodes(session, "vtkMRMLScalarVolumeNode"):
        assert node_to_volume(node).geometry.is_close(source.geometry, TOL)
    assert set(summary["figures"]["classes"]) == set(CLASSES[1:])


def test_segment_is_deterministic_with_a_seed(tiny_model: Path, brain: Path, tmp_path: Path) -> None:
    runs = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        out = tmp_path / name
        args = [
            "segment",
            str(brain),
            "--model",
            str(tiny_model),
            "--samples",
            "2",
            "--steps",
            "2",
            "--seed",
            seed,
        ]
        assert main([*args, "--slices", "4:8", "-o", str(out), "--quiet"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        runs.append(read_volume(out / summary["outputs"]["uncertainty"]).voxels)
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_unusual_intensities_warn_but_do_not_fail(tmp_path: Path) -> None:
    """A model that knows its training intensities warns on an inverted scan, not on a normal one."""
    image, labels = synthetic_subject(5, SubjectSettings(spacing_mm=4.0))
    config = tiny_config(CLASSES, image_size=32)
    slices, _ = pair_slices(image, labels, config)
    config = replace(config, intensity_reference=intensity_statistics(slices, config.intensity_range[0]))
    model = save_ldseg_model(LDSegNetwork(config), tmp_path / "model")
    normal = write_volume(image, tmp_path / "normal.nrrd")
    inverted = write_volume(image.with_voxels(image.voxels.max() - image.voxels), tmp_path / "inverted.nrrd")
    warnings = {}
    for path in (normal, inverted):
        out = tmp_path / path.stem
        args = [
            "segment",
            str(path),
            "--model",
            str(model),
            "--samples",
            "1",
            "--steps",
            "1",
            "--slices",
            "8:12",
        ]
        assert main([*args, "-o", str(out), "--quiet"]) == 0
        warnings[path.stem] = json.loads((out / "summary.json").read_text())["warnings"]
    assert warnings["normal"] == []
    assert (
        len(warnings["inverted"]) == 1 and "far outside the training distribution" in warnings["inverted"][0]
    )


def _broken_models(tmp_path: Path, tiny_model: Path) -> dict[str, tuple[Path, str]]:
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_model / "config.json").read_text())
    (no_weights / "pytorch_model.bin").write_bytes(b"pickle")
    broken = tmp_path / "broken-config"
    broken.mkdir()
    (broken / "config.json").write_text('{"format": "latentdrift-ldseg", "format_version": 1, "image_size": ')
    (broken / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes())
    return {
        "pickled weights only": (no_weights, "pickled weights are refused"),
        "broken config": (broken, "config"),
        "unknown name": (tmp_path / "no-such-model", "No model named"),
    }


@pytest.mark.parametrize("case", ["pickled weights only", "broken config", "unknown name"])
def test_bad_models_fail_with_one_clear_line(
    case: str, tiny_model: Path, brain: Path, tmp_path: Path, capsys
) -> None:
    model, words = _broken_models(tmp_path, tiny_model)[case]
    out = tmp_path / "out"
    assert main(["segment", str(brain), "--model", str(model), "-o", str(out)]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and words in error[0], error
    assert not out.exists()


def test_model_axis_mismatch_is_refused(tiny_model: Path, brain: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["segment", str(brain), "--model", str(tiny_model), "--axis", "coronal", "-o", str(out)]) != 0
    assert "trained on axial slices" in capsys.readouterr().err
    assert not out.exists()


def _training_pairs(folder: Path) -> Path:
    """Three coarse synthetic subjects as ``s*_image.nrrd`` / ``s*_label.nrrd`` in ``folder``."""
    for seed in range(3):
        image, labels = synthetic_subject(seed, SubjectSettings(spacing_mm=6.0))
        write_volume(image, folder / f"s{seed}_image.nrrd")
        write_volume(labels, folder / f"s{seed}_label.nrrd")
    return folder


def test_train_ldseg_makes_a_model_that_segments(tmp_path: Path) -> None:
    data = _training_pairs(tmp_path / "pairs")
    model = tmp_path / "model"
    args = ["train-ldseg", str(data), "--classes", ",".join(CLASSES), "--image-size", "32", "--steps", "3"]
    options = [
        "--batch-size",
        "4",
        "--checkpoint-every",
        "2",
        "--latent-channels",
        "2",
        "--reconstruction-weight",
        "0",
    ]
    assert main([*args, *options, "-o", str(model), "--quiet"]) == 0
    assert {"config.json", "model.safetensors", "MODEL_CARD.md", "training.json"} <= {
        p.name for p in model.iterdir()
    }
    assert json.loads((model / "config.json").read_text())["latent_channels"] == 2
    history = json.loads((model / "training.json").read_text())
    assert history[-1]["loss_reconstruction"] == 0.0
    card = (model / "MODEL_CARD.md").read_text()
    assert "White matter" in card or "white matter" in card
    assert (tmp_path / "model.checkpoints" / "step-00000003" / "checkpoint.json").exists()
    out = tmp_path / "seg"
    brain = data / "s0_image.nrrd"
    assert (
        main(
            [
                "segment",
                str(brain),
                "--model",
                str(model),
                "--samples",
                "1",
                "--steps",
                "2",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )


def test_train_ldseg_defaults_follow_the_dimensions_and_axis_of_the_model_trained(
    tmp_path: Path, tiny_model: Path
) -> None:
    """One home for the defaults that depend on the model: a new 2D or 3D one, or the one fine-tuned."""
    config, settings = ldseg_training(TrainLDSegSettings(classes="background,ball"), tmp_path / "m")
    assert (config.spatial_dims, config.image_size, config.axis) == (2, 128, "axial")
    assert (config.latent_downsampling, config.latent_channels) == (4, 4)
    assert (settings.batch_size, settings.flip_left_right) == (16, True)
    assert settings.checkpoint_dir == f"{tmp_path / 'm'}.checkpoints"
    options = TrainLDSegSettings(classes="background,ball", spatial_dims=3, axis="sagittal")
    config, settings = ldseg_training(options, tmp_path / "m")
    assert (config.spatial_dims, config.image_size, settings.batch_size) == (3, 64, 2)
    assert not settings.flip_left_right
    config, settings = ldseg_training(TrainLDSegSettings(init_from=str(tiny_model)), tmp_path / "m")
    assert config is None and settings.batch_size == 16
    sagittal_3d = tmp_path / "sagittal-3d"
    save_ldseg_model(
        LDSegNetwork(replace(tiny_config(CLASSES, image_size=16, spatial_dims=3), axis="sagittal")),
        sagittal_3d,
    )
    config, settings = ldseg_training(TrainLDSegSettings(init_from=str(sagittal_3d)), tmp_path / "m")
    assert config is None and settings.batch_size == 2 and not settings.flip_left_right  # the model's
    with pytest.raises(ParameterError, match="leave out --spatial-dims, --latent-channels"):
        TrainLDSegSettings(init_from=str(tiny_model), spatial_dims=2, latent_channels=1)
    with pytest.raises(ParameterError, match="Give --classes"):
        TrainLDSegSettings(classes=" , ")
    with pytest.raises(ParameterError, match="image_size 0 is outside"):  # a 0 is not "the default"
        ldseg_training(TrainLDSegSettings(classes="background,ball", image_size=0), tmp_path / "m")


def test_ldseg_training_takes_mixed_precision_from_train_ldseg_and_from_an_ldseg_job(tmp_path: Path) -> None:
    """`--mixed-precision` reaches the LDSeg training from both commands (auto: fp16 on CUDA, off on the CPU)."""
    from latentdrift.finetune.config import FinetuneConfig
    from latentdrift.finetune.jobs import ldseg_train_settings

    assert (
        ldseg_training(TrainLDSegSettings(classes="background,ball"), tmp_path / "m")[1].mixed_precision
        == "auto"
    )
    chosen = TrainLDSegSettings(classes="background,ball", mixed_precision="bf16")
    assert ldseg_training(chosen, tmp_path / "m")[1].mixed_precision == "bf16"
    with pytest.raises(ParameterError, match="mixed_precision must be one of"):
        ldseg_training(TrainLDSegSettings(classes="background,ball", mixed_precision="fp8"), tmp_path / "m")
    job = FinetuneConfig(cohort="cohort.csv", scheme="ldseg", mixed_precision="no")
    assert ldseg_train_settings(job, tmp_path / "checkpoints").mixed_precision == "no"


def test_ldseg_training_asks_its_accelerator_for_the_mixed_precision_of_its_settings(monkeypatch) -> None:
    """``TrainSettings.mixed_precision`` reaches the run's ``Accelerator`` (trained here in float32)."""
    from latentdrift.segmentation.ldseg import TrainSettings, train_ldseg
    from latentdrift.segmentation.ldseg import training as ldseg_training_module

    asked: list[str] = []
    real = ldseg_training_module.training_accelerator

    def recording(device: str, mixed_precision: str, *rest: int) -> object:
        asked.append(mixed_precision)
        return real(device, "no", *rest)

    monkeypatch.setattr(ldseg_training_module, "training_accelerator", recording)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16)).astype(np.float32)
    settings = TrainSettings(steps=1, batch_size=2, device="cpu", augment=False, mixed_precision="bf16")
    train_ldseg(images, (images > 0).astype(np.int64), None, None, tiny_config(image_size=16), settings)
    assert asked == ["bf16"]


def test_train_ldseg_init_from_fine_tunes_a_model_and_keeps_its_config(tmp_path: Path, capsys) -> None:
    data = _training_pairs(tmp_path / "pairs")
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    common = ["train-ldseg", str(data), "--steps", "2", "--batch-size", "4", "--quiet"]
    assert main([*common, "--classes", ",".join(CLASSES), "--image-size", "32", "-o", str(base)]) == 0
    assert main([*common, "--init-from", str(base), "--learning-rate", "1e-9", "-o", str(tuned)]) == 0
    base_config, tuned_config = (json.loads((m / "config.json").read_text()) for m in (base, tuned))
    assert tuned_config == base_config
    assert f"Fine-tuned from `{base}`" in (tuned / "MODEL_CARD.md").read_text()
    start, result = (load_file(m / "model.safetensors") for m in (base, tuned))
    for name, tensor in start.items():  # a learning rate of 1e-9 leaves the start weights in place
        torch.testing.assert_close(result[name], tensor, rtol=0, atol=1e-6, msg=name)
    capsys.readouterr()
    assert main([*common, "--init-from", str(base), "--image-size", "64", "-o", str(tmp_path / "x")]) != 0
    assert "--init-from keeps the model's architecture: leave out --image-size" in capsys.readouterr().err
    assert (
        main([*common, "--init-from", str(base), "--classes", "background,ball", "-o", str(tmp_path / "y")])
        != 0
    )
    assert "differ from the model's" in capsys.readouterr().err
    assert main([*common, "-o", str(tmp_path / "z")]) != 0
    assert "Give --classes" in capsys.readouterr().err
