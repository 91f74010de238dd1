"""LDSeg networks (2D slices or 3D volumes): label autoencoder, image encoder and latent denoiser, with their config.

Shapes at the default 2D config (``image_size=256``, ``latent_downsampling=16``):

* label encoder: one-hot mask ``(B, C, 256, 256)`` in {0, 1} → latent ``(B, 1, 16, 16)``, standardised
  per sample (LayerNorm over (1, h, w) without affine: mean 0, standard deviation 1);
* label decoder: latent ``(B, 1, 16, 16)`` → logits ``(B, C, 256, 256)`` (softmax gives probabilities);
* image encoder: image ``(B, 1, 256, 256)`` in the model range ``[-1, 1]`` → embedding ``(B, 1, 16, 16)``;
* denoiser: MONAI ``DiffusionModelUNet`` on ``[noisy latent, embedding]`` ``(B, 2, 16, 16)`` and integer
  timesteps ``(B,)`` in ``[0, T)`` → predicted noise ``(B, 1, 16, 16)``.

About 1.8 M parameters in all at default widths (denoiser about 1.0 M). With ``latent_channels = c``
every latent and embedding has ``c`` channels (the denoiser takes ``2c`` and predicts ``c``);
:func:`training_config` is what ``train-ldseg`` and the bundled model use.

With ``spatial_dims=3`` every part is the same network with 3D convolutions (MONAI ``spatial_dims``):
images ``(B, 1, S, S, S)``, one-hot masks ``(B, C, S, S, S)``, latents ``(B, c, s, s, s)``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit, SpatialAttentionBlock
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from ...core.errors import ParameterError
from ...core.values import MAX_RESOLUTION
from ...frontend.contract import NATIVE, TEMPLATE_TISSUES, InputContract
from ..segmenters.spec import LabelClass

AXES = ("axial", "coronal", "sagittal")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
ACTIVATION = "SWISH"

# Colours for classes 1, 2, ... when none are given (class 0, background, is black).
_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)


def default_classes(names: Sequence[str]) -> tuple[LabelClass, ...]:
    """Classes named ``names`` (the first is background, black) with palette colours for the rest."""
    return tuple(
        LabelClass(name, (0, 0, 0) if index == 0 else _PALETTE[(index - 1) % len(_PALETTE)])
        for index, name in enumerate(names)
    )


MAX_IMAGE_SIZE = {2: MAX_RESOLUTION, 3: 512}
"""The largest model resolution by ``spatial_dims`` (pixels per side): beyond it a config is taken for a mistake."""


@dataclass(frozen=True)
class LDSegConfig:
    """Everything that defines an LDSeg model: classes, architecture, diffusion schedule, input conventions.

    ``classes[0]`` is the background. Channel tuples list the width at each resolution, full resolution
    first: ``label_channels`` and ``image_channels`` need ``log2(latent_downsampling) + 1`` entries, and
    ``denoiser_channels`` one entry per U-Net level (its latent side ``image_size / latent_downsampling``
    is halved ``len(denoiser_channels) - 1`` times). ``norm_groups`` is the GroupNorm group count (reduced
    to a divisor where a width is not a multiple). Images are expected windowed to the
    ``intensity_percentiles`` of their volume and mapped linearly onto ``intensity_range``.
    ``intensity_reference`` (foreground fraction, mean, standard deviation of the training slices in
    that range; see :func:`latentdrift.segmentation.volume_segmentation.intensity_statistics`) lets inference warn about
    inputs unlike the training data; ``None`` when unknown.

    ``latent_channels`` is the number of channels of the label latent and of the image embedding: 1 in
    the LDSeg reference; more let a latent at a coarse ``latent_downsampling`` still carry thin
    structures (the denoiser's cost barely grows, unlike a finer latent grid).

    ``first_timestep`` is where DDIM sampling starts (see :func:`latentdrift.segmentation.ldseg.sampler.sampling_scheduler`):
    ``None`` starts the ``N`` steps at diffusers' leading ``(N − 1)·(T // N)``; a value starts them there or
    later when ``N`` steps of ``T // N`` do not fit below it.

    ``mirror_samples`` runs half of a slice's samples (``N // 2``) on its left-right mirror image and
    mirrors their probabilities back (test-time augmentation; axial and coronal models only, whose
    training mirrors the column axis), so the samples also disagree where the model is not symmetric.

    ``spatial_dims`` is 2 (slices ``S × S`` cut along ``axis``) or 3 (the whole slice stack along
    ``axis`` resampled to ``S × S × S`` over a cube field of view); config files without it are 2D.

    ``input`` is what the model expects of a volume (:class:`~latentdrift.frontend.InputContract`: a
    brain model declares a skull-stripped, bias-corrected T1 aligned to the MNI152 template, and the
    brain front end prepares real heads accordingly); config files without it take the volume as loaded.

    ``tissue_prior_weight`` ``w`` ≥ 0 weights the MNI152 template's tissue prior into a brain model's
    class probabilities on the template grid (:mod:`latentdrift.frontend.tissue_prior`); 0 (the default,
    and config files without it) uses none. Above 0 the model needs ``input.space`` ``mni152`` and the
    classes :data:`~latentdrift.frontend.contract.TEMPLATE_TISSUES`.
    """

    classes: tuple[LabelClass, ...] = field(default_factory=lambda: default_classes(["background", "object"]))
    image_size: int = 256
    latent_downsampling: int = 16
    latent_channels: int = 1
    label_channels: tuple[int, ...] = (16, 32, 48, 64, 64)
    image_channels: tuple[int, ...] = (16, 32, 48, 64, 64)
    denoiser_channels: tuple[int, ...] = (16, 32, 64)
    denoiser_attention: tuple[bool, ...] = (False, True, True)
    denoiser_res_blocks: int = 2
    denoiser_head_channels: int = 16
    norm_groups: int = 8
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    sampling_steps: int = 15
    first_timestep: int | None = None
    mirror_samples: bool = False
    axis: str = "axial"
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)
    intensity_range: tuple[float, float] = (-1.0, 1.0)
    intensity_reference: tuple[float, float, float] | None = None
    spatial_dims: int = 2
    input: InputContract = NATIVE
    tissue_prior_weight: float = 0.0

    def __post_init__(self) -> None:
        for problem in _config_problems(self):
            raise ParameterError(f"Invalid LDSeg config: {problem}.")

    @property
    def num_classes(self) -> int:
        """Number of output classes C, background included (≥ 2)."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Class names, background first."""
        return [label.name for label in self.classes]

    @property
    def latent_size(self) -> int:
        """Side of the square (cubic in 3D) latent: ``image_size // latent_downsampling``."""
        return self.image_size // self.latent_downsampling

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Spatial shape of one model input: ``(S, S)`` or ``(S, S, S)``."""
        return (self.image_size,) * self.spatial_dims

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent, channel first: ``(c, s, s)`` or ``(c, s, s, s)``, ``c = latent_channels``."""
        return (self.latent_channels,) + (self.latent_size,) * self.spatial_dims

    @property
    def activation_bytes(self) -> int:
        """Bytes of one full-resolution activation of one sample (float32): a floor under any run of the model."""
        return 4 * self.image_size**self.spatial_dims * max(self.label_channels[0], self.image_channels[0])

    @property
    def latent_bound(self) -> float:
        """No standardised latent of ``n`` values can exceed ``sqrt(n)`` in magnitude: the x̂₀ clip range."""
        return math.sqrt(math.prod(self.latent_shape))

    def with_classes(self, names: Sequence[str]) -> LDSegConfig:
        """A copy with classes ``names`` (background first) and default colours."""
        return replace(self, classes=default_classes(names))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists; classes become objects)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LDSegConfig:
        """Inverse of :meth:`to_dict`. Every key must be present and valid, else :class:`ParameterError`."""
        if not isinstance(data, dict):
            raise ParameterError("Invalid LDSeg config: expected a JSON object.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError(f"Invalid LDSeg config: unknown key '{unknown[0]}'.")
        values = {name: _parse_field(name, data) for name in [f.name for f in fields(cls)]}
        return cls(**values)


def _parse_field(name: str, data: dict[str, Any]) -> Any:
    """Read one config key from JSON data, with its Python type, or raise naming the key."""
    if name in _OPTIONAL_FIELDS and data.get(name) is None:
        return None
    if name in _DEFAULT_WHEN_MISSING and name not in data:
        return _DEFAULT_WHEN_MISSING[name]
    if name not in data:
        raise ParameterError(f"Invalid LDSeg config: missing key '{name}'.")
    value = data[name]
    try:
        return _FIELD_PARSERS[name](value)
    except (TypeError, ValueError, KeyError) as error:
        raise ParameterError(f"Invalid LDSeg config: key '{name}' has an invalid value ({error}).") from error


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _list(value: Any) -> list:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _pair(value: Any) -> tuple[float, float]:
    items = _list(value)
    if len(items) != 2:
        raise ValueError("expected two numbers")
    return (_float(items[0]), _float(items[1]))


def _label_class(value: Any) -> LabelClass:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object with name, color, terminology, got {value!r}")
    color = tuple(_int(c) for c in _list(value["color"]))
    if len(color) != 3:
        raise ValueError("a class color needs three values (R, G, B)")
    return LabelClass(_str(value["name"]), color, _str(value.get("terminology", "")))


_FIELD_PARSERS: dict[str, Any] = {
    "classes": lambda v: tuple(_label_class(c) for c in _list(v)),
    "image_size": _int,
    "latent_downsampling": _int,
    "latent_channels": _int,
    "label_channels": lambda v: tuple(_int(c) for c in _list(v)),
    "image_channels": lambda v: tuple(_int(c) for c in _list(v)),
    "denoiser_channels": lambda v: tuple(_int(c) for c in _list(v)),
    "denoiser_attention": lambda v: tuple(_bool(c) for c in _list(v)),
    "denoiser_res_blocks": _int,
    "denoiser_head_channels": _int,
    "norm_groups": _int,
    "train_timesteps": _int,
    "beta_schedule": _str,
    "sampling_steps": _int,
    "first_timestep": _int,
    "mirror_samples": _bool,
    "axis": _str,
    "intensity_percentiles": _pair,
    "intensity_range": _pair,
    "intensity_reference": lambda v: tuple(_float(x) for x in _list(v)),
    "spatial_dims": _int,
    "input": InputContract.from_dict,
    "tissue_prior_weight": _float,
}
_OPTIONAL_FIELDS = {"intensity_reference", "first_timestep"}
_DEFAULT_WHEN_MISSING: dict[str, Any] = {
    "spatial_dims": 2,
    "latent_channels": 1,
    "mirror_samples": False,
    "input": NATIVE,
    "tissue_prior_weight": 0.0,
}  # keys added after format version 1


def _config_problems(config: LDSegConfig) -> list[str]:
    """Human-readable reasons why ``config`` is inconsistent (empty when it is fine)."""
    problems = []
    levels = math.log2(config.latent_downsampling) if config.latent_downsampling > 0 else -1.0
    if not 2 <= config.num_classes <= 255:
        problems.append("from 2 to 255 classes are needed (background and at least one structure)")
    if any(not 0 <= c <= 255 for label in config.classes for c in label.color):
        problems.append("class colors must be RGB values from 0 to 255")
    if levels < 1 or not levels.is_integer():
        problems.append("latent_downsampling must be a power of two, at least 2")
    elif config.image_size % config.latent_downsampling:
        problems.append("image_size must be a multiple of latent_downsampling")
    elif len(config.label_channels) != levels + 1 or len(config.image_channels) != levels + 1:
        problems.append(
            f"label_channels and image_channels need log2(latent_downsampling) + 1 = {levels + 1:.0f} widths"
        )
    elif config.latent_size % 2 ** (len(config.denoiser_channels) - 1):
        problems.append("the latent side must be divisible by 2 for every denoiser level below the first")
    if len(config.denoiser_attention) != len(config.denoiser_channels):
        problems.append("denoiser_attention needs one entry per denoiser level")
    if (
        min(
            (
                config.norm_groups,
                config.denoiser_res_blocks,
                config.denoiser_head_channels,
                config.train_timesteps,
            )
        )
        < 1
    ):
        problems.append(
            "norm_groups, denoiser_res_blocks, denoiser_head_channels and train_timesteps must be positive"
        )
    elif config.latent_channels < 1:
        problems.append("latent_channels must be positive")
    elif min((*config.label_channels, *config.image_channels, *config.denoiser_channels), default=0) < 1:
        problems.append("every channel width must be positive")
    elif any(c % config.norm_groups for c in config.denoiser_channels):
        problems.append("every denoiser width must be a multiple of norm_groups")
    elif any(
        c % config.denoiser_head_channels
        for c, a in zip(config.denoiser_channels, config.denoiser_attention, strict=True)
        if a
    ):
        problems.append("denoiser widths with attention must be multiples of denoiser_head_channels")
    if not 1 <= config.sampling_steps <= config.train_timesteps:
        problems.append("sampling_steps must be between 1 and train_timesteps")
    if config.first_timestep is not None and not 0 <= config.first_timestep < config.train_timesteps:
        problems.append("first_timestep must be between 0 and train_timesteps - 1 (or null)")
    if config.beta_schedule not in BETA_SCHEDULES:
        problems.append(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}")
    if config.axis not in AXES:
        problems.append(f"axis must be one of {', '.join(AXES)}")
    elif config.mirror_samples and config.axis == "sagittal":
        problems.append(
            "mirror_samples needs an axial or coronal model (columns of sagittal slices run front to back)"
        )
    if config.spatial_dims not in (2, 3):
        problems.append("spatial_dims must be 2 (slices) or 3 (whole volumes)")
    elif not 8 <= config.image_size <= MAX_IMAGE_SIZE[config.spatial_dims]:
        problems.append(
            f"image_size {config.image_size} is outside 8–{MAX_IMAGE_SIZE[config.spatial_dims]} "
            f"for a {config.spatial_dims}D model"
        )
    if not 0 <= config.intensity_percentiles[0] < config.intensity_percentiles[1] <= 100:
        problems.append("intensity_percentiles must be increasing, within 0–100")
    if not config.intensity_range[0] < config.intensity_range[1]:
        problems.append("intensity_range must be increasing")
    if not 0.0 <= config.tissue_prior_weight <= 10.0:
        problems.append("tissue_prior_weight must be from 0 (no prior) to 10")
    elif config.tissue_prior_weight and (
        config.input.space != "mni152" or not set(TEMPLATE_TISSUES) <= set(config.class_names)
    ):
        problems.append(
            "tissue_prior_weight above 0 needs input space 'mni152' and the classes "
            + ", ".join(f"'{name}'" for name in TEMPLATE_TISSUES)
        )
    return problems


def _norm(channels: int, groups: int) -> tuple[str, dict[str, int]]:
    """MONAI GroupNorm spec with the largest group count ≤ ``groups`` that divides ``channels``."""
    return ("group", {"num_groups": math.gcd(channels, groups)})


def _residual(dims: int, in_channels: int, out_channels: int, groups: int, strides: int = 1) -> ResidualUnit:
    """Two 3×3 (3×3×3) convolutions with GroupNorm and SiLU and a (projected) skip connection."""
    return ResidualUnit(
        dims, in_channels, out_channels, strides=strides, norm=_norm(out_channels, groups), act=ACTIVATION
    )


def _head(dims: int, in_channels: int, out_channels: int) -> Convolution:
    """Plain 1×1 (1×1×1) convolution."""
    return Convolution(dims, in_channels, out_channels, kernel_size=1, conv_only=True)


class LabelEncoder(nn.Module):
    """One-hot mask ``(B, C, H, W)`` in [0, 1] → standardised latent ``(B, c, H/f, W/f)`` (or 3D).

    Residual blocks with max-pooling between levels (``log2 f`` poolings), a 1×1 convolution to
    ``c = latent_channels``, then LayerNorm over (c, h, w) without affine parameters, so every latent
    has mean 0 and standard deviation 1 whatever the resolution.
    """

    def __init__(
        self, num_classes: int, channels: Sequence[int], groups: int, dims: int = 2, latent_channels: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = num_classes
        for level, width in enumerate(channels):
            if level:
                layers.append(nn.MaxPool2d(2) if dims == 2 else nn.MaxPool3d(2))
            layers.append(_residual(dims, previous, width, groups))
            previous = width
        layers.append(_head(dims, previous, latent_channels))
        self.body = nn.Sequential(*layers)

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        latent = self.body(onehot)
        return F.layer_norm(latent, latent.shape[1:])


class LabelDecoder(nn.Module):
    """Latent ``(B, c, h, w)`` → class logits ``(B, C, h·f, w·f)`` (or 3D; transposed convs, residual blocks)."""

    def __init__(
        self, num_classes: int, channels: Sequence[int], groups: int, dims: int = 2, latent_channels: int = 1
    ) -> None:
        super().__init__()
        widths = list(reversed(channels))
        layers: list[nn.Module] = [_residual(dims, latent_channels, widths[0], groups)]
        for previous, width in itertools.pairwise(widths):
            layers.append(
                Convolution(
                    dims,
                    previous,
                    width,
                    strides=2,
                    kernel_size=3,
                    is_transposed=True,
                    norm=_norm(width, groups),
                    act=ACTIVATION,
                )
            )
            layers.append(_residual(dims, width, width, groups))
        layers.append(_head(dims, widths[-1], num_classes))
        self.body = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.body(latent)


class ImageEncoder(nn.Module):
    """Image ``(B, 1, H, W)`` in the model range → embedding ``(B, c, H/f, W/f)`` (or 3D).

    A 3×3 stem, strided residual blocks (one per halving), self-attention at the lowest resolution,
    then a 1×1 convolution to ``c = latent_channels``: the embedding has the label latent's shape.
    """

    def __init__(
        self,
        channels: Sequence[int],
        groups: int,
        head_channels: int,
        dims: int = 2,
        latent_channels: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [_residual(dims, 1, channels[0], groups)]
        layers += [_residual(dims, a, b, groups, strides=2) for a, b in itertools.pairwise(channels)]
        width = channels[-1]
        layers.append(
            SpatialAttentionBlock(
                dims,
                width,
                num_head_channels=math.gcd(width, head_channels),
                norm_num_groups=math.gcd(width, groups),
            )
        )
        layers.append(_head(dims, width, latent_channels))
        self.body = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


class LDSegNetwork(nn.Module):
    """The four LDSeg parts and their :class:`LDSegConfig`.

    For inference the ``denoiser`` holds the EMA weights (that is what :func:`save_ldseg_model` stores).
    """

    def __init__(self, config: LDSegConfig) -> None:
        super().__init__()
        self.config = config
        groups, dims, latent = config.norm_groups, config.spatial_dims, config.latent_channels
        self.label_encoder = LabelEncoder(config.num_classes, config.label_channels, groups, dims, latent)
        self.label_decoder = LabelDecoder(config.num_classes, config.label_channels, groups, dims, latent)
        self.image_encoder = ImageEncoder(
            config.image_channels, groups, config.denoiser_head_channels, dims, latent
        )
        self.denoiser = DiffusionModelUNet(
            spatial_dims=dims,
            in_channels=2 * latent,
            out_channels=latent,
            channels=config.denoiser_channels,
            attention_levels=config.denoiser_attention,
            num_res_blocks=config.denoiser_res_blocks,
            norm_num_groups=groups,
            num_head_channels=config.denoiser_head_channels,
        )

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Integer labels ``(B, H, W)`` (``(B, D, H, W)`` in 3D) in ``[0, C)`` → standardised latent ``(B, c, h, w)``."""
        onehot = F.one_hot(labels.long(), self.config.num_classes).movedim(-1, 1).float()
        return self.label_encoder(onehot)

    def predict_noise(
        self, noisy: torch.Tensor, embedding: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """ε̂ ``(B, c, h, w)`` from noisy latent and image embedding (both ``(B, c, h, w)``), timesteps ``(B,)``.

        In 3D every latent is ``(B, c, d, h, w)``.
        """
        return self.denoiser(torch.cat([noisy, embedding], dim=1), timesteps)

    def parameter_counts(self) -> dict[str, int]:
        """Number of parameters of each part and in total."""
        parts = {
            name: sum(p.numel() for p in getattr(self, name).parameters())
            for name in ("label_encoder", "label_decoder", "image_encoder", "denoiser")
        }
        parts["total"] = sum(parts.values())
        return parts


def training_config(
    classes: Sequence[LabelClass],
    axis: str = "axial",
    image_size: int = 128,
    latent_downsampling: int = 4,
    latent_channels: int = 4,
    spatial_dims: int = 2,
) -> LDSegConfig:
    """The config new models are trained with: default widths cut to ``log2(latent_downsampling) + 1`` levels.

    Four latent channels by default: the reference's one channel at 4× downsampling cannot carry thin
    structures such as CSF (its autoencoder's reconstruction of the true labels scores low;
    ``benchmarks/ldseg`` measures that ceiling).
    """
    base = LDSegConfig()
    levels = int(math.log2(latent_downsampling)) + 1 if latent_downsampling > 0 else 0
    return replace(
        base,
        classes=tuple(classes),
        axis=axis,
        image_size=image_size,
        latent_downsampling=latent_downsampling,
        latent_channels=latent_channels,
        label_channels=base.label_channels[:levels],
        image_channels=base.image_channels[:levels],
        spatial_dims=spatial_dims,
    )


def tiny_config(
    class_names: Sequence[str] = ("background", "object"), image_size: int = 32, spatial_dims: int = 2
) -> LDSegConfig:
    """A very small config (about 66 k parameters in 2D, 8×8 latent at 32×32) for tests and self-tests.

    ``spatial_dims=3`` gives the same widths with 3D convolutions (an 8×8×8 latent at 32³).
    """
    return LDSegConfig(
        classes=default_classes(class_names),
        image_size=image_size,
        latent_downsampling=4,
        label_channels=(8, 8, 16),
        image_channels=(8, 8, 16),
        denoiser_channels=(8, 16),
        denoiser_attention=(False, True),
        denoiser_res_blocks=1,
        denoiser_head_channels=8,
        norm_groups=4,
        sampling_steps=5,
        spatial_dims=spatial_dims,
    )
