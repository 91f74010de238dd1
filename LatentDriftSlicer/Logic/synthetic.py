"""Synthetic brains from the MNI152 template: tissue labels, random subjects, deterministic by seed.

Real cohorts cannot be downloaded here, so training and evaluation data is made from the one real
adult brain that ships offline (the MNI152 2009c T1 and its grey/white-matter maps, see
``docs/data.md``). Everything this module makes is synthetic and is labelled so wherever it is used.

Tissue labels (0 background, 1 CSF, 2 grey matter, 3 white matter) come from the template: inside the
brain (T1 > 0; the template is skull-stripped), grey or white matter where their probabilities sum to
at least 0.5 (whichever is larger), CSF elsewhere. A *subject* is the template under a random smooth
B-spline deformation, resampled to a chosen spacing, with random tissue contrast, gamma, bias field
and noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk

from .sample_data import sample_volume_path, tissue_map_paths
from .volumes import Volume, read_volume, volume_from_sitk, volume_to_sitk

BACKGROUND, CSF, GREY_MATTER, WHITE_MATTER = 0, 1, 2, 3
TISSUE_NAMES = ("Background", "Cerebrospinal fluid", "Grey matter", "White matter")


@lru_cache(maxsize=1)
def brain_tissue_template() -> tuple[Volume, Volume]:
    """The MNI152 T1 (float32, 0–255) and its tissue labels (uint8, 0–3) on the same 1 mm grid."""
    t1 = read_volume(sample_volume_path())
    maps = tissue_map_paths()
    grey = read_volume(maps["grey_matter"]).voxels.astype(np.float32) / 255.0
    white = read_volume(maps["white_matter"]).voxels.astype(np.float32) / 255.0
    brain = t1.voxels > 0
    tissue = (grey + white) >= 0.5
    labels = np.zeros(t1.voxels.shape, np.uint8)
    labels[brain & ~tissue] = CSF
    labels[brain & tissue & (grey >= white)] = GREY_MATTER
    labels[brain & tissue & (white > grey)] = WHITE_MATTER
    image = t1.with_voxels(t1.voxels.astype(np.float32), name="mni152_t1")
    return image, t1.with_voxels(labels, name="mni152_tissue")


@dataclass(frozen=True)
class SubjectSettings:
    """How far synthetic subjects vary from the template.

    ``deformation_mm``: standard deviation of B-spline control-point displacements;
    ``contrast``: relative jitter of each tissue's mean intensity; ``gamma``: range of the intensity
    exponent; ``bias``: amplitude of the smooth multiplicative bias field; ``noise``: Gaussian noise
    as a fraction of the white-matter intensity.
    """

    spacing_mm: float = 1.5
    deformation_mm: float = 4.0
    control_points: int = 6
    contrast: float = 0.08
    gamma: tuple[float, float] = (0.8, 1.25)
    bias: float = 0.15
    noise: float = 0.03


def synthetic_subject(seed: int, settings: SubjectSettings | None = None) -> tuple[Volume, Volume]:
    """A random subject: (T1-like image float32, tissue labels uint8) on an isotropic grid.

    The same ``seed`` always gives the same subject.
    """
    settings = settings or SubjectSettings()
    rng = np.random.default_rng(seed)
    image, labels = brain_tissue_template()
    transform = _random_bspline(volume_to_sitk(image), settings, rng)
    reference = _isotropic_reference(volume_to_sitk(image), settings.spacing_mm)
    warped_image = sitk.Resample(
        volume_to_sitk(image), reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    warped_labels = sitk.Resample(volume_to_sitk(labels), reference, transform, sitk.sitkNearestNeighbor, 0)
    label_volume = volume_from_sitk(warped_labels, name=f"subject{seed:04d}_labels")
    voxels = _vary_intensity(volume_from_sitk(warped_image).voxels, label_volume.voxels, settings, rng)
    return label_volume.with_voxels(voxels, name=f"subject{seed:04d}_t1"), label_volume


def _random_bspline(image: sitk.Image, settings: SubjectSettings, rng: np.random.Generator) -> sitk.Transform:
    transform = sitk.BSplineTransformInitializer(image, [settings.control_points] * 3, order=3)
    parameters = rng.normal(0.0, settings.deformation_mm, len(transform.GetParameters()))
    transform.SetParameters(parameters.tolist())
    return transform


def _isotropic_reference(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    size = [
        max(1, round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)
    ]
    reference = sitk.Image(size, sitk.sitkUInt8)
    reference.SetSpacing([spacing_mm] * 3)
    reference.SetOrigin(image.GetOrigin())
    reference.SetDirection(image.GetDirection())
    return reference


def _vary_intensity(
    voxels: np.ndarray, labels: np.ndarray, settings: SubjectSettings, rng: np.random.Generator
) -> np.ndarray:
    """Tissue contrast jitter, gamma, smooth bias field and noise; returns float32 in about [0, 255]."""
    scaled = voxels / 255.0
    for tissue in (CSF, GREY_MATTER, WHITE_MATTER):
        scaled[labels == tissue] *= 1.0 + rng.uniform(-settings.contrast, settings.contrast)
    scaled = np.clip(scaled, 0.0, None) ** rng.uniform(*settings.gamma)
    scaled *= _bias_field(voxels.shape, settings.bias, rng)
    brain = labels > 0
    scaled[brain] += rng.normal(0.0, settings.noise, int(brain.sum()))
    return (np.clip(scaled, 0.0, None) * 255.0).astype(np.float32)


def _bias_field(shape: tuple[int, ...], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """exp of a random low-order polynomial in normalised coordinates: smooth, positive, ~1 on average."""
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    field = sum(rng.normal(0.0, amplitude / 2) * g + rng.normal(0.0, amplitude / 4) * g**2 for g in grids)
    return np.exp(field - np.mean(field)).astype(np.float32)


# --------------------------------------------------------------------------- synthetic heads

HEAD_LAYERS = (
    # (outer distance from the brain in mm, intensity as a fraction of white matter): the tissues a T1
    # shows between the brain and the air, from the inside out
    (2.0, None),  # CSF and dura: the subject's CSF intensity
    (4.0, 0.12),  # inner table of the skull (cortical bone: dark)
    (6.5, 0.75),  # diploë (fatty marrow: bright)
    (8.5, 0.12),  # outer table
    (12.5, 1.15),  # scalp fat (brighter than white matter)
    (15.0, 0.45),  # skin and muscle
)
HEAD_PADDING_MM = 24.0


def synthetic_head(image: Volume, labels: Volume, seed: int) -> tuple[Volume, Volume]:
    """A skull-stripped synthetic brain wrapped in CSF, skull, scalp and noisy air: a stand-in head.

    ``image`` and ``labels`` are a subject of :func:`synthetic_subject` (or the template). The grid is
    padded by :data:`HEAD_PADDING_MM`; around the brain's closed outline the :data:`HEAD_LAYERS` follow
    (thicknesses jittered by up to ±20 % per seed), then air with noise; a smooth bias field multiplies
    the whole head. Returns (head float32, brain mask uint8 — the truth a brain extractor should find).
    """
    rng = np.random.default_rng(seed)
    spacing = image.geometry.spacing
    padding = [round(HEAD_PADDING_MM / s) for s in spacing]
    brain_image = sitk.ConstantPad(volume_to_sitk(image), padding, padding, 0.0)
    brain_labels = sitk.ConstantPad(volume_to_sitk(labels), padding, padding, 0)
    voxels = sitk.GetArrayFromImage(brain_image).astype(np.float32)
    label_voxels = sitk.GetArrayFromImage(brain_labels)
    brain = label_voxels > BACKGROUND
    white = float(np.median(voxels[label_voxels == WHITE_MATTER]))
    csf = float(np.median(voxels[label_voxels == CSF]))
    outline = sitk.BinaryMorphologicalClosing(sitk.Cast(brain_labels > BACKGROUND, sitk.sitkUInt8), [6] * 3)
    distance = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(
            outline, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
    )
    head = rng.normal(0.0, 0.02 * white, voxels.shape).__abs__().astype(np.float32)  # air: noise only
    inner = 0.0
    for outer, fraction in HEAD_LAYERS:
        outer_mm = outer * rng.uniform(0.8, 1.2)
        layer = (distance > inner) & (distance <= outer_mm)
        level = csf if fraction is None else fraction * white
        head[layer] = level * (1.0 + rng.normal(0.0, 0.04, int(layer.sum())))
        inner = outer_mm
    head[brain | (distance <= 0)] = voxels[brain | (distance <= 0)]
    head[(distance <= 0) & ~brain] = csf
    head *= _bias_field(head.shape, 0.2, rng)
    volume = volume_from_sitk(brain_image, name=image.name.replace("_t1", "") + "_head")
    return volume.with_voxels(np.clip(head, 0.0, None).astype(np.float32)), volume.with_voxels(
        brain.astype(np.uint8), name=f"{volume.name}_brain_mask"
    )
