"""Shared fixtures: real files on disk, real slicer-core scenes, no fakes."""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SUITE_TEMP = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Give the suite a temporary directory of its own (``TMPDIR`` of every test and every process a test
    starts), checked at the end: nothing the engine makes may outlive its run (issue 21).

    pytest's own ``tmp_path`` folders stay in the system's temporary directory, and so does torch's
    per-user compile cache. The xdist workers inherit the variables from the controller, which makes and
    checks the folder.
    """
    if hasattr(config, "workerinput"):
        return
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    # torch's compile cache, made when torch._dynamo is imported (diffusers does), is per user and kept
    # across runs by design: it stays where torch puts it by default, outside the checked folder
    user_cache = Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(user_cache))
    folder = Path(tempfile.mkdtemp(prefix="latentdrift-tests-"))
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # read TMPDIR again
    config.stash[SUITE_TEMP] = folder


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when tests (or the runs they started) left anything in the suite's temporary directory."""
    folder = session.config.stash.get(SUITE_TEMP, None)
    if folder is None:
        return
    left = sorted(path.name for path in folder.iterdir())
    shutil.rmtree(folder, ignore_errors=True)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"Left in the temporary directory after the tests: {', '.join(left)}", red=True
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def oblique_direction() -> np.ndarray:
    """A rotation (20°, -15°, 30° about x, y, z) applied to a permuted, flipped axis set (LPS)."""
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix()
    permuted = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    return rotation @ permuted


def write_image(
    path: Path, voxels: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None
) -> Path:
    """Write a [k, j, i] array with geometry through SimpleITK (any suffix it knows)."""
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(tuple(np.asarray(direction, float).ravel()))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def oblique_nifti(tmp_path: Path, rng: np.random.Generator) -> Path:
    """An oblique, permuted, anisotropic float volume as NIfTI (smooth blob + noise)."""
    k, j, i = np.meshgrid(np.arange(9), np.arange(11), np.arange(13), indexing="ij")
    blob = np.exp(-((k - 4) ** 2 / 8 + (j - 5) ** 2 / 10 + (i - 6) ** 2 / 12))
    voxels = (100 * blob + rng.normal(0, 1, blob.shape)).astype(np.float32)
    return write_image(
        tmp_path / "oblique.nii.gz",
        voxels,
        spacing=(0.7, 1.3, 2.5),
        origin=(12.5, -30.25, 7.0),
        direction=oblique_direction(),
    )


@pytest.fixture(scope="session")
def mni_t1_path() -> Path:
    """The MNI152 T1 template that ships inside nilearn (the project's sample volume)."""
    from latentdrift.fixtures.sample_data import sample_volume_path

    return sample_volume_path()


@pytest.fixture
def session():
    """A fresh headless slicer-core scene with the application and module logics."""
    from latentdrift.bridge.scene import SceneSession

    return SceneSession.headless()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight Stable Diffusion and InstructPix2Pix folders, built in code (no hub)."""
    from latentdrift.fixtures.tiny_models import build_tiny_sd

    root = tmp_path_factory.mktemp("models")
    return {"sd": build_tiny_sd(root / "sd"), "instruct": build_tiny_sd(root / "ip2p", instruct=True)}


@pytest.fixture(scope="module")
def sd(folders: dict[str, Path]):
    """The tiny Stable Diffusion folder loaded on the CPU."""
    from latentdrift.counterfactual.edit import load_bundle

    return load_bundle(folders["sd"], "cpu")


@pytest.fixture(scope="module")
def default_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of tiny models under the default models' names, for ``LATENTDRIFT_DEFAULT_MODELS``.

    The instruct editor records δ = 0.05 with a drifted start and text guidance 3 in its
    ``latentdrift.json``, as a model fine-tuned with drift and then calibrated does. Tests that set the variable to this folder get these models whether
    or not the real defaults are bundled.
    """
    from latentdrift.finetune.metadata import update_metadata
    from latentdrift.fixtures.tiny_models import build_tiny_sd
    from latentdrift.segmentation.ldseg import LDSegNetwork, save_ldseg_model, tiny_config

    root = tmp_path_factory.mktemp("defaults")
    build_tiny_sd(root / "brain-mri-sd")
    update_metadata(
        build_tiny_sd(root / "brain-mri-instruct", instruct=True), drift=0.05, drift_start=True, guidance=3.0
    )
    (root / "mini-sd-natural").symlink_to(root / "brain-mri-sd")
    save_ldseg_model(LDSegNetwork(tiny_config(("background", "tissue"))), root / "brain-tissue-ldseg")
    return root


@pytest.fixture
def tiny_defaults(default_models: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny default models in front of the registry (see :func:`default_models`)."""
    from latentdrift.core.models import DEFAULT_MODELS_ENV

    monkeypatch.setenv(DEFAULT_MODELS_ENV, str(default_models))
    return default_models


@pytest.fixture
def no_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry with no model at all: empty bundled and user folders, no model variables."""
    from latentdrift.core import models

    empty = tmp_path / "no-models"
    empty.mkdir()
    for name in ("BUNDLED_MODELS", "USER_MODELS"):
        monkeypatch.setattr(models, name, empty)
    for variable in ("LATENTDRIFT_MODELS", models.DEFAULT_MODELS_ENV):
        monkeypatch.delenv(variable, raising=False)
    return empty
