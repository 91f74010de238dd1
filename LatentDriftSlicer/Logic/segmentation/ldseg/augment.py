"""On-the-fly 2D and 3D augmentation of training batches, in torch, driven by one CPU generator.

Spatial transforms (affine, elastic, optional left-right flip) act identically on image and label
(bilinear for the image, nearest for the label; outside the slice: background). Intensity transforms
(scale/shift, gamma, bias field, Gaussian noise) and resolution reduction act on the image only.
Each transform is applied to a random subset of the batch. All random numbers come from the given
generator, so a batch is reproducible from its seed.

3D batches (volumes ``(B, 1, D, H, W)``, the stack axis first) get the same transforms with one more
axis: the rotation stays in the (H, W) plane, scale is isotropic, translation and the elastic field
are 3D, resolution reduction and fields use trilinear instead of bilinear/bicubic interpolation.

``scanner_variation`` (2D only) adds what a real scan keeps after the brain front end, which a model
trained on template-derived subjects never saw: each tissue's contrast scaled on its own (another
scanner and sequence), sharper tissue borders than the averaged template (unsharp masking), blur along
one in-plane axis only (a thick-slice acquisition resampled into the model's slices), and a thin rim of
dark or bright non-brain tissue around the brain (a brain mask a millimetre or two too wide), which
stays background in the labels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

P_AFFINE = 0.7
P_ELASTIC = 0.3
P_FLIP = 0.5
P_LOW_RESOLUTION = 0.25
P_BIAS = 0.3
P_GAMMA = 0.3
P_SCALE_SHIFT = 0.5
P_NOISE = 0.3
MAX_ROTATION = math.radians(15)
SCALE_RANGE = (0.85, 1.15)
MAX_TRANSLATION = 0.05  # fraction of the field of view
ELASTIC_AMPLITUDE = 0.03  # displacement in normalised coordinates ([-1, 1] spans the slice)
LOW_RESOLUTION_FACTOR = (1.5, 3.0)
BIAS_AMPLITUDE = 0.3  # log-scale amplitude of the multiplicative field
MAX_LOG_GAMMA = 0.4
MAX_NOISE_STD = 0.05  # in units of the intensity range
P_TISSUE_CONTRAST = 0.5
TISSUE_CONTRAST = 0.15  # each tissue's intensity scaled by up to ±15 %
P_SHARPEN = 0.4
MAX_SHARPEN = 1.0  # unsharp-mask amount
P_ANISOTROPIC = 0.3
ANISOTROPIC_FACTOR = (1.5, 3.0)
P_RIM = 0.3
RIM_WIDTH = (1, 3)  # pixels


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    value_range: tuple[float, float] = (-1.0, 1.0),
    flip_left_right: bool = False,
    scanner_variation: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment ``images`` ``(B, 1, H, W)`` in ``value_range`` and integer ``labels`` ``(B, H, W)``.

    3D: ``images`` ``(B, 1, D, H, W)`` and ``labels`` ``(B, D, H, W)``.

    ``flip_left_right`` mirrors the column axis (left-right on axial and coronal slices); leave it off
    for sagittal slices and for classes that differ between left and right. Returns tensors of the
    same shapes, dtypes and device, images clipped to ``value_range``. ``scanner_variation`` adds the
    real-scan transforms of the module docstring (2D batches).
    """
    low, high = value_range
    unit = (images - low) / (high - low)
    unit, labels = _spatial(unit, labels, generator, flip_left_right)
    if scanner_variation:
        unit = _tissue_contrast(unit, labels, generator)
        unit = _rim(unit, labels, generator)
    unit = _low_resolution(unit, generator)
    if scanner_variation:
        unit = _anisotropic_blur(_sharpen(unit, generator), generator)
    unit = _intensity(unit, generator)
    return unit.clamp(0.0, 1.0) * (high - low) + low, labels


def augment_pairs(
    sources: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, flip_left_right: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same augmentation, scanner variation included, on each source ``(B, 1, H, W)`` and its target.

    A longitudinal pair is one subject on one scanner: both images get the same warp, contrast, rim,
    blur, bias field and noise (the same random numbers, drawn twice from one generator state), so
    what differs between them is still only what the pair changes. The brain (pixels more than 2 % of
    the range above the background, -1) is the label the tissue contrast and the rim read. Images in
    [-1, 1]; returns tensors of the same shapes.
    """
    brain = (sources[:, 0] > -0.96).long()
    twin = torch.Generator().set_state(generator.get_state())
    augmented_sources, _ = augment_batch(
        sources, brain, generator, flip_left_right=flip_left_right, scanner_variation=True
    )
    augmented_targets, _ = augment_batch(
        targets, brain, twin, flip_left_right=flip_left_right, scanner_variation=True
    )
    return augmented_sources, augmented_targets


def _uniform(generator: torch.Generator, count: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(count, generator=generator) * (high - low) + low


def _chosen(generator: torch.Generator, count: int, probability: float) -> torch.Tensor:
    """Float mask ``(count,)``: 1 for the samples that get a transform."""
    return (torch.rand(count, generator=generator) < probability).float()


def _smooth_field(generator: torch.Generator, shape: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise on a coarse ``shape`` grid, upsampled to ``size`` (bicubic in 2D, trilinear in 3D)."""
    return F.interpolate(
        torch.randn(shape, generator=generator),
        size=size,
        mode="bicubic" if len(size) == 2 else "trilinear",
        align_corners=True,
    )


def _per_sample_shape(count: int, ndim: int) -> tuple[int, ...]:
    """``(count, 1, …, 1)`` broadcasting one value per sample over a tensor with ``ndim`` axes."""
    return (count, *(1,) * (ndim - 1))


def _spatial(
    unit: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine + elastic (+ flip) warp of image ``(B, 1, H, W)`` in [0, 1] and labels ``(B, H, W)``.

    3D ``(B, 1, D, H, W)``: rotation about the D axis, isotropic scale, 3D shift and elastic field.
    """
    count, _, *size = unit.shape
    dims = len(size)
    affine = _chosen(generator, count, P_AFFINE)
    angle = _uniform(generator, count, -MAX_ROTATION, MAX_ROTATION) * affine
    scale = 1 + (_uniform(generator, count, *SCALE_RANGE) - 1) * affine
    shift = (
        _uniform(generator, dims * count, -MAX_TRANSLATION, MAX_TRANSLATION).view(count, dims)
        * 2
        * affine[:, None]
    )
    mirror = 1 - 2 * _chosen(generator, count, P_FLIP) if flip else torch.ones(count)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = [torch.zeros(count)] * (dims - 2)  # grid coordinates are (x = W, y = H[, z = D])
    rows = [
        torch.stack([cos * mirror, -sin, *zero, shift[:, 0]], 1),
        torch.stack([sin * mirror, cos, *zero, shift[:, 1]], 1),
    ]
    if dims == 3:
        rows.append(torch.stack([zero[0], zero[0], 1 / scale, shift[:, 2]], 1))
    theta = torch.stack(rows, 1)
    grid = F.affine_grid(theta, [count, 1, *size], align_corners=False)
    elastic = (
        _chosen(generator, count, P_ELASTIC).view(_per_sample_shape(count, dims + 2)) * ELASTIC_AMPLITUDE
    )
    field_shape = (count, dims, *(5,) * dims)
    grid = grid + (_smooth_field(generator, field_shape, tuple(size)) * elastic).movedim(1, -1)
    grid = grid.to(unit.device, unit.dtype)
    warped = F.grid_sample(unit, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped_labels = F.grid_sample(labels[:, None].to(unit.dtype), grid, mode="nearest", align_corners=False)
    return warped, warped_labels[:, 0].round().to(labels.dtype)


def _low_resolution(unit: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Down-sample a random subset of images by 1.5–3× and back up (bilinear): blur of a coarser scan.

    3D volumes use trilinear interpolation (without antialiasing, which torch only offers in 2D).
    """
    count, _, *full = unit.shape
    planar = len(full) == 2
    mode = "bilinear" if planar else "trilinear"
    chosen = _chosen(generator, count, P_LOW_RESOLUTION)
    factors = _uniform(generator, count, *LOW_RESOLUTION_FACTOR)
    out = unit.clone()
    for index in torch.nonzero(chosen).flatten().tolist():
        size = tuple(max(2, round(side / float(factors[index]))) for side in full)
        small = F.interpolate(
            unit[index : index + 1], size=size, mode=mode, antialias=planar, align_corners=False
        )
        out[index : index + 1] = F.interpolate(small, size=tuple(full), mode=mode, align_corners=False)
    return out


def _intensity(unit: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Bias field, gamma, scale/shift and Gaussian noise on images ``(B, 1, H, W)`` (or 3D) in [0, 1]."""
    count, _, *size = unit.shape
    device = unit.device
    broadcast = _per_sample_shape(count, unit.ndim)

    def per_sample(values: torch.Tensor) -> torch.Tensor:
        return values.view(broadcast).to(device, unit.dtype)

    bias_amplitude = _chosen(generator, count, P_BIAS) * BIAS_AMPLITUDE
    bias = torch.exp(
        _smooth_field(generator, (count, 1, *(4,) * len(size)), tuple(size)) * bias_amplitude.view(broadcast)
    )
    gamma = torch.exp(
        _uniform(generator, count, -MAX_LOG_GAMMA, MAX_LOG_GAMMA) * _chosen(generator, count, P_GAMMA)
    )
    scale_shift = _chosen(generator, count, P_SCALE_SHIFT)
    scale = 1 + _uniform(generator, count, -0.1, 0.1) * scale_shift
    shift = _uniform(generator, count, -0.1, 0.1) * scale_shift
    noise_std = _uniform(generator, count, 0.0, MAX_NOISE_STD) * _chosen(generator, count, P_NOISE)
    noise = torch.randn(unit.shape, generator=generator).to(device, unit.dtype)
    out = (unit * bias.to(device, unit.dtype)).clamp(0.0, 1.0) ** per_sample(gamma)
    return out * per_sample(scale) + per_sample(shift) + noise * per_sample(noise_std)


def _tissue_contrast(unit: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Scale each tissue's intensities by its own factor in 1 ± :data:`TISSUE_CONTRAST` (a random subset)."""
    count = unit.shape[0]
    classes = int(labels.max()) + 1
    factors = 1 + _uniform(generator, count * classes, -TISSUE_CONTRAST, TISSUE_CONTRAST).view(count, classes)
    factors = torch.where(
        _chosen(generator, count, P_TISSUE_CONTRAST)[:, None] > 0, factors, torch.ones_like(factors)
    )
    factors[:, 0] = 1.0  # the background stays
    per_pixel = torch.gather(factors, 1, labels.reshape(count, -1).long()).view_as(labels)
    return unit * per_pixel[:, None].to(unit.device, unit.dtype)


def _rim(unit: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A 1–3 pixel rim of uniform dark or bright tissue just outside the brain, on a random subset (labels unchanged)."""
    count = unit.shape[0]
    chosen = _chosen(generator, count, P_RIM)
    widths = torch.randint(RIM_WIDTH[0], RIM_WIDTH[1] + 1, (count,), generator=generator)
    levels = _uniform(generator, count, 0.05, 0.95)
    brain = (labels > 0).to(unit.dtype)[:, None]
    out = unit.clone()
    for index in torch.nonzero(chosen).flatten().tolist():
        size = 2 * int(widths[index]) + 1
        grown = F.max_pool2d(brain[index : index + 1], size, stride=1, padding=size // 2)
        rim = (grown - brain[index : index + 1]) > 0
        out[index : index + 1][rim] = float(levels[index])
    return out


def _sharpen(unit: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Unsharp masking (amount up to :data:`MAX_SHARPEN`, 3×3 box blur) on a random subset: crisper borders."""
    count = unit.shape[0]
    amount = _uniform(generator, count, 0.0, MAX_SHARPEN) * _chosen(generator, count, P_SHARPEN)
    blurred = F.avg_pool2d(unit, 3, stride=1, padding=1, count_include_pad=False)
    return unit + amount.view(count, 1, 1, 1).to(unit.device, unit.dtype) * (unit - blurred)


def _anisotropic_blur(unit: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Down-sample one in-plane axis (rows or columns, at random) by 1.5–3× and back, on a random subset."""
    count, _, height, width = unit.shape
    chosen = _chosen(generator, count, P_ANISOTROPIC)
    factors = _uniform(generator, count, *ANISOTROPIC_FACTOR)
    along_rows = torch.rand(count, generator=generator) < 0.5
    out = unit.clone()
    for index in torch.nonzero(chosen).flatten().tolist():
        factor = float(factors[index])
        size = (
            (max(2, round(height / factor)), width)
            if along_rows[index]
            else (height, max(2, round(width / factor)))
        )
        small = F.interpolate(
            unit[index : index + 1], size=size, mode="bilinear", antialias=True, align_corners=False
        )
        out[index : index + 1] = F.interpolate(
            small, size=(height, width), mode="bilinear", align_corners=False
        )
    return out
