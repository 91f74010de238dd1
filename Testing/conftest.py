"""Shared fixtures: real files on disk, real slicer-core scenes, no fakes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
    from latentdrift.sample_data import sample_volume_path

    return sample_volume_path()


@pytest.fixture
def session():
    """A fresh headless slicer-core scene with the application and module logics."""
    from latentdrift.scene import SceneSession

    return SceneSession.headless()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight Stable Diffusion and InstructPix2Pix folders, built in code (no hub)."""
    from latentdrift.tiny_models import build_tiny_sd

    root = tmp_path_factory.mktemp("models")
    return {"sd": build_tiny_sd(root / "sd"), "instruct": build_tiny_sd(root / "ip2p", instruct=True)}


@pytest.fixture(scope="module")
def sd(folders: dict[str, Path]):
    """The tiny Stable Diffusion folder loaded on the CPU."""
    from latentdrift.edit import load_bundle

    return load_bundle(folders["sd"], "cpu")
