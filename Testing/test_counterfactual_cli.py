"""`latentdrift counterfactual` and `generate` end to end with tiny models: files, scenes, refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from latentdrift.bridge.scene import DIFFERENCE_COLORMAP, find_nodes, load_scene
from latentdrift.cli import main
from latentdrift.core.settings import EditSettings, counterfactual_settings, settings_json
from latentdrift.core.volumes import extract_slices, read_volume
from latentdrift.fixtures.tiny_models import build_tiny_sd

TOL = 1e-6
EDIT = ["--steps", "2", "--drift", "0.05", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"sd": build_tiny_sd(root / "sd"), "instruct": build_tiny_sd(root / "ip2p", instruct=True)}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_counterfactual_writes_the_console_roles_on_the_input_grid(
    models: dict[str, Path], oblique_nifti: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cf"
    before = _digest(oblique_nifti)
    args = ["counterfactual", str(oblique_nifti), "--model", str(models["instruct"]), *EDIT]
    args += ["--from", "age=70,sex=F,dx=CN", "--to", "age=77,dx=MCI", "--axis", "coronal", "--slices", "2:7"]
    assert main([*args, "--output", str(out)]) == 0
    assert _digest(oblique_nifti) == before
    summary = json.loads((out / "summary.json").read_text())
    outputs = summary["outputs"]
    assert {"scene", "scene_bundle", "input", "preview", "counterfactual", "difference"} == set(outputs) - {
        "summary"
    }
    assert outputs["counterfactual"].endswith(".nrrd") and outputs["difference"].endswith(".nrrd")
    assert summary["settings"]["text"].startswith("Age this CN 70 years old female")
    assert (
        summary["settings"]["negative_text"]
        == "Turn this CN 70 years old female brain MRI into a 70 brain MRI with CN"
    )
    assert {"adjacent_difference_ratio", "mean_abs_difference", "drift"} <= set(summary["figures"])
    assert summary["settings"]["factual_reference"] and summary["figures"]["reference"] == "factual edit"
    source = read_volume(oblique_nifti)
    edited, difference = (read_volume(out / outputs[role]) for role in ("counterfactual", "difference"))
    for volume in (edited, difference):
        assert volume.geometry.is_close(source.geometry, TOL) and volume.voxels.shape == source.voxels.shape
    np.testing.assert_allclose(difference.voxels, edited.voxels - source.voxels, atol=1e-4)
    outside = [n for n in range(extract_slices(source, "coronal").count) if not 2 <= n < 7]
    np.testing.assert_array_equal(
        extract_slices(edited, "coronal").slices[outside], extract_slices(source, "coronal").slices[outside]
    )
    assert (out / outputs["preview"]).stat().st_size > 10_000
    _check_scene(out / outputs["scene"])


def test_the_flags_and_the_settings_json_make_the_same_run(
    models: dict[str, Path], oblique_nifti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The console's settings object, as the JSON the panel sends, runs as the command-line flags do."""
    args = [
        "counterfactual",
        str(oblique_nifti),
        "--model",
        str(models["instruct"]),
        *EDIT,
        "--slices",
        "3:5",
    ]
    args += ["--from", "age=70,sex=F,dx=CN", "--to", "age=77", "--reconstruction-reference"]
    assert main([*args, "--output", str(tmp_path / "flags")]) == 0
    settings = counterfactual_settings(
        source="age=70,sex=F,dx=CN",
        target="age=77",
        factual_reference=False,
        model=str(models["instruct"]),
        steps=2,
        drift=0.05,
        device="cpu",
        slices="3:5",
    )
    (tmp_path / "settings.json").write_text(settings_json(settings))
    file_args = [
        "counterfactual",
        str(oblique_nifti),
        "--settings",
        str(tmp_path / "settings.json"),
        "--quiet",
    ]
    assert main([*file_args, "--output", str(tmp_path / "json")]) == 0
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("flags", "json")]
    assert summaries[0]["settings"] == summaries[1]["settings"]
    assert (
        not summaries[1]["settings"]["factual_reference"]
        and summaries[1]["figures"]["reference"] == "reconstruction"
    )
    assert summaries[1]["settings"]["target"] == {
        "age": 77,
        "sex": "female",
        "diagnosis": "CN",
        "modality": "brain MRI",
    }

    assert main([*file_args, "--steps", "3", "--output", str(tmp_path / "both")]) == 2
    assert "--settings gives every setting of the command: leave out --steps" in capsys.readouterr().err


def _check_scene(path: Path) -> None:
    session = load_scene(path)
    names = {node.GetName(): node for node in find_nodes(session, "vtkMRMLScalarVolumeNode")}
    assert set(names) == {"oblique", "oblique counterfactual", "oblique difference"}
    composite = find_nodes(session, "vtkMRMLSliceCompositeNode")[0]
    assert composite.GetBackgroundVolumeID() == names["oblique"].GetID()
    assert composite.GetForegroundVolumeID() == names["oblique counterfactual"].GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    display = names["oblique difference"].GetDisplayNode()
    assert display.GetColorNode().GetName() in DIFFERENCE_COLORMAP
    assert display.GetWindowLevelMin() == pytest.approx(-display.GetWindowLevelMax())


def test_generate_writes_pngs_and_a_stack(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "gen"
    args = ["generate", "--model", str(models["sd"]), "--attributes", "age=77,sex=F,dx=AD", "--count", "3"]
    assert main([*args, *EDIT, "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["outputs"]["image"]) == 3
    stack = read_volume(out / summary["outputs"]["volume"])
    assert stack.voxels.shape == (3, 32, 32) and stack.geometry.spacing == (1.0, 1.0, 1.0)
    assert stack.voxels.min() >= -1.0 and stack.voxels.max() <= 1.0
    from PIL import Image

    first = np.asarray(Image.open(out / "slice_000.png"), dtype=np.float32) / 127.5 - 1
    np.testing.assert_allclose(first, stack.voxels[0], atol=1 / 127)
    assert not np.allclose(stack.voxels[0], stack.voxels[1])  # sample i uses seed + i


def _without(model: Path, tmp_path: Path, component: str) -> Path:
    broken = shutil.copytree(model, tmp_path / f"no-{component}")
    shutil.rmtree(broken / component)
    return broken


def _pickled(model: Path, tmp_path: Path) -> Path:
    broken = shutil.copytree(model, tmp_path / "pickled")
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.rename(weights.with_name("diffusion_pytorch_model.bin"))
    return broken


def _relabelled(model: Path, tmp_path: Path) -> Path:
    """An InstructPix2Pix folder whose model_index.json claims a plain SD pipeline (8-channel UNet)."""
    broken = shutil.copytree(model, tmp_path / "relabelled")
    index = broken / "model_index.json"
    index.write_text(
        index.read_text().replace("StableDiffusionInstructPix2PixPipeline", "StableDiffusionPipeline")
    )
    return broken


BAD_RUNS = {
    "missing component": (
        lambda m, t: _without(m["sd"], t, "vae"),
        ["--edit", "img2img"],
        "no 'vae' subfolder",
    ),
    "pickled weights": (lambda m, t: _pickled(m["sd"], t), ["--edit", "img2img"], "pickled weights"),
    "instruct on SD": (
        lambda m, t: m["sd"],
        ["--edit", "instruct", "--instruction", "age it"],
        "instruct-pix2pix",
    ),
    "img2img on IP2P": (lambda m, t: m["instruct"], ["--edit", "img2img"], "stable-diffusion"),
    "8-channel UNet": (lambda m, t: _relabelled(m["instruct"], t), ["--edit", "img2img"], "8 UNet input"),
    "steps x strength": (
        lambda m, t: m["sd"],
        ["--edit", "img2img", "--strength", "0.2"],
        "steps × strength",
    ),
    "unknown attribute": (lambda m, t: m["sd"], ["--edit", "img2img", "--to", "height=180"], "height=180"),
    "bad drift": (lambda m, t: m["sd"], ["--edit", "img2img", "--drift", "a,b"], "Cannot read drift"),
    "channel count": (lambda m, t: m["sd"], ["--edit", "img2img", "--drift", "0.1,0.2"], "4 channels"),
    "blend": (lambda m, t: m["sd"], ["--edit", "img2img", "--blend", "1.5"], "blend=1.5"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_bad_runs_fail_with_one_line_and_write_nothing(
    case: str, models: dict[str, Path], oblique_nifti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make_model, extra, message = BAD_RUNS[case]
    model = make_model(models, tmp_path)
    out = tmp_path / "results" / "cf"
    args = [
        "counterfactual",
        str(oblique_nifti),
        "--model",
        str(model),
        *EDIT,
        "--prompt",
        "older",
        "--to",
        "age=77",
    ]
    assert main([*args, *extra, "--output", str(out)]) != 0
    error = capsys.readouterr().err.strip()
    assert error.startswith("latentdrift: error:") and "\n" not in error and message in error
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no result, no partial folder


def test_without_a_model_the_default_of_the_mode_is_used(
    tiny_defaults: Path, oblique_nifti: Path, tmp_path: Path
) -> None:
    edit = [
        "counterfactual",
        str(oblique_nifti),
        *EDIT,
        "--from",
        "age=70",
        "--to",
        "age=75",
        "--slices",
        "2:4",
    ]
    runs = [
        ("brain-mri-instruct", [*edit, "--edit", "instruct"]),
        ("brain-mri-sd", [*edit, "--edit", "img2img"]),
        ("brain-mri-sd", ["generate", "--attributes", "age=75", "--count", "1", *EDIT]),
    ]
    for index, (name, args) in enumerate(runs):
        out = tmp_path / f"run{index}"
        assert main([*args, "--output", str(out)]) == 0
        assert json.loads((out / "summary.json").read_text())["inputs"]["model"] == str(tiny_defaults / name)
    instruct = json.loads((tmp_path / "run0" / "summary.json").read_text())["settings"]
    assert instruct["guidance"] == 3.0  # not given: as the default editor records it
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(f"subject,session,path,age,dx\na,1,{oblique_nifti},70,CN\n", encoding="utf-8")
    no_drift = [arg for arg in EDIT if arg not in ("--drift", "0.05")]
    batch = ["batch", "counterfactual", str(cohort), *no_drift, "--to", "age=75", "--slices", "2:4"]
    assert main([*batch, "--output", str(tmp_path / "batch")]) == 0
    row = json.loads((tmp_path / "batch" / "a_1" / "summary.json").read_text())["settings"]
    assert (row["drift"], row["guidance"]) == (0.05, 3.0)


def test_a_missing_default_model_is_one_line_and_no_output(
    no_models: Path, oblique_nifti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "results" / "cf"
    args = ["counterfactual", str(oblique_nifti), *EDIT, "--from", "age=70", "--to", "age=77"]
    assert main([*args, "--output", str(out)]) == 4
    error = capsys.readouterr().err.strip()
    assert error.startswith("latentdrift: error: The default instruct model 'brain-mri-instruct'")
    assert "\n" not in error and not out.parent.exists()


def test_a_model_is_sampled_with_its_recorded_drift_and_guidance_unless_told_otherwise(
    tiny_defaults: Path, models: dict[str, Path]
) -> None:
    """The console's and the panel's settings take δ and guidance from the model's latentdrift.json
    (the `counterfactual` and `batch` commands: `test_without_a_model_the_default_of_the_mode_is_used`)."""
    from latentdrift.bridge import panel_support
    from latentdrift.counterfactual.recorded_sampling import counterfactual_options

    edit = {"mode": "instruct", "source": "age=70,dx=CN", "target": "age=78,dx=AD"}
    recorded = counterfactual_options(**edit).edit
    assert (recorded.drift, recorded.guidance) == (0.05, 3.0)  # tiny_defaults' editor records both
    given = counterfactual_options(**edit, drift="0", guidance=7.5).edit
    assert (given.drift, given.guidance) == (0.0, 7.5)
    plain = counterfactual_options(**edit, model=str(models["instruct"])).edit  # records neither
    assert (plain.drift, plain.guidance) == (0.0, counterfactual_settings(**edit).edit.guidance)
    assert plain.guidance == EditSettings.guidance
    # what the panel's disabled sliders show while "The model's δ and guidance" is ticked
    assert panel_support.model_sampling_shown("", "instruct") == (0.05, 3.0)
    assert panel_support.model_sampling_shown(models["instruct"], "instruct") == (0.0, EditSettings.guidance)
