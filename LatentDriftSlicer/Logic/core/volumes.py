"""Volumes: voxels with their geometry, file I/O, anatomical slicing, intensity windows, reassembly.

Conventions (the only place in the project that handles geometry):

* ``Volume.voxels`` is a NumPy array indexed ``[k, j, i]`` — the order of SimpleITK's
  ``GetArrayFromImage`` and of Slicer's ``arrayFromVolume``.
* ``Geometry`` is stored in LPS, as ITK/DICOM do: ``physical = origin + direction @ (spacing * ijk)``,
  the columns of ``direction`` being the unit vectors of the i, j, k axes. Slicer's IJK-to-RAS matrix is
  the same map with x and y negated (:meth:`Geometry.ijk_to_ras`).
* Slices are cut along an anatomical axis found from the direction matrix (so permuted and oblique
  volumes slice correctly) and shown the way radiologists look at them: axial rows run anterior →
  posterior and columns right → left; coronal rows superior → inferior, columns right → left;
  sagittal rows superior → inferior, columns anterior → posterior. A slice's index counts from the
  inferior (axial), anterior (coronal) or right (sagittal) end of the volume.
* Every step that changes layout (slicing, padding) has an exact inverse here, so results go back onto
  the input grid voxel for voxel; resizing to a model's resolution and back is in :mod:`.resampling`.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import (
    EmptyVolumeError,
    LabelMapGivenError,
    MissingFileError,
    NonFiniteVoxelsError,
    SliceRangeError,
    UnreadableFileError,
    VolumeShapeError,
)
from .file_checks import check_volume_file
from .values import Axis, check_axis, slice_bounds

LOG = logging.getLogger(__name__)


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm")


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """Where the voxels are: spacing (mm, along i, j, k), origin and direction in LPS."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def ijk_to_lps(self) -> np.ndarray:
        """4×4 matrix from voxel index (i, j, k, 1) to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(self.direction, float) @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """4×4 matrix from voxel index to RAS millimetres: Slicer's IJKToRASMatrix."""
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        return flip @ self.ijk_to_lps()

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray) -> Geometry:
        """Inverse of :meth:`ijk_to_ras` (the matrix may hold any rotation and positive spacing)."""
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(matrix, float)
        columns = lps[:3, :3]
        spacing = np.linalg.norm(columns, axis=0)
        return cls(
            spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
            origin=(float(lps[0, 3]), float(lps[1, 3]), float(lps[2, 3])),
            direction=columns / spacing,
        )

    def is_close(self, other: Geometry, tolerance: float = 1e-6) -> bool:
        """True when spacing, origin and direction agree to ``tolerance``."""
        return bool(
            np.allclose(self.spacing, other.spacing, atol=tolerance, rtol=0)
            and np.allclose(self.origin, other.origin, atol=tolerance, rtol=0)
            and np.allclose(self.direction, other.direction, atol=tolerance, rtol=0)
        )


@dataclass(frozen=True)
class Volume:
    """A 3D scalar volume: ``voxels[k, j, i]`` and its :class:`Geometry`."""

    voxels: np.ndarray
    geometry: Geometry
    name: str = "volume"

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Size along i, j, k (the reverse of ``voxels.shape``)."""
        k, j, i = self.voxels.shape
        return (i, j, k)

    def with_voxels(self, voxels: np.ndarray, name: str | None = None) -> Volume:
        """A new volume on the same grid (shape must match)."""
        if voxels.shape != self.voxels.shape:
            raise ValueError(f"voxel array {voxels.shape} does not match the grid {self.voxels.shape}")
        return replace(self, voxels=voxels, name=name or self.name)


# --------------------------------------------------------------------------- file I/O


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a NRRD, NIfTI, MHA/MHD file or a DICOM series folder into a :class:`Volume`.

    Raises :class:`MissingFileError`, :class:`UnreadableFileError` or :class:`VolumeShapeError`
    (2D, 4D or vector data) with a message that says how to fix it.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"Input '{path}' does not exist: check the path.")
    image = _read_dicom_folder(path) if path.is_dir() else _read_file(path)
    return volume_from_sitk(image, name=_stem(path))


def _read_file(path: Path) -> sitk.Image:
    """The image in ``path``, its header checked first (:func:`latentdrift.core.file_checks.check_volume_file`:
    size against memory, stored bytes against the header, NIfTI spacing)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UnreadableFileError(
            f"Cannot read '{path}' as an image ({_first_line(error)}): use NRRD, NIfTI, MHA/MHD "
            "or a folder holding one DICOM series."
        ) from error
    check_volume_file(path, reader)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise UnreadableFileError(f"Cannot read the voxels of '{path}': {_first_line(error)}") from error


def _read_dicom_folder(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise UnreadableFileError(
            f"Folder '{folder}' holds no DICOM series: give a volume file or a DICOM folder."
        )
    files_by_series = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    chosen = max(files_by_series, key=lambda sid: len(files_by_series[sid]))
    if len(series_ids) > 1:
        LOG.warning("'%s' holds %d DICOM series; reading the largest (%s)", folder, len(series_ids), chosen)
    reader.SetFileNames(files_by_series[chosen])
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise UnreadableFileError(
            f"Cannot read the DICOM series in '{folder}': {_first_line(error)}"
        ) from error


def volume_from_sitk(image: sitk.Image, name: str = "volume") -> Volume:
    """Wrap a 3D scalar SimpleITK image; refuse 2D, 4D and vector images with specific advice."""
    dimension = image.GetDimension()
    if dimension == 2:
        raise VolumeShapeError(
            f"'{name}' is a 2D image: this tool works on 3D volumes. Save the image as a single-slice "
            "volume (for example from 3D Slicer as NRRD) and try again."
        )
    if dimension == 4:
        frames = image.GetSize()[3]
        raise VolumeShapeError(
            f"'{name}' is a 4D series with {frames} frames: extract one frame first, e.g. with "
            "SimpleITK `sitk.ReadImage(path)[:, :, :, 0]` or Slicer's Sequences module."
        )
    if dimension != 3:
        raise VolumeShapeError(f"'{name}' has {dimension} dimensions: a 3D scalar volume is required.")
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise VolumeShapeError(
            f"'{name}' is a vector volume with {image.GetNumberOfComponentsPerPixel()} components per voxel: "
            "pick one component first, e.g. `sitk.VectorIndexSelectionCast(image, 0)`, or convert RGB to grey."
        )
    geometry = Geometry(
        spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
        direction=np.array(image.GetDirection(), float).reshape(3, 3),
    )
    return Volume(voxels=sitk.GetArrayFromImage(image), geometry=geometry, name=name)


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """The SimpleITK image of a :class:`Volume` (voxels copied, geometry set exactly)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.voxels), isVector=False)
    image.SetSpacing(volume.geometry.spacing)
    image.SetOrigin(volume.geometry.origin)
    image.SetDirection(tuple(np.asarray(volume.geometry.direction, float).ravel()))
    return image


def write_volume(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write ``volume`` as NRRD, NIfTI or MHA/MHD by suffix, or as a DICOM series into a folder.

    A path without a known suffix is taken as a DICOM series folder. Returns the path written.
    """
    path = Path(path)
    if path.name.lower().endswith(VOLUME_SUFFIXES[:-1]):
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(volume_to_sitk(volume), str(path), useCompression=True)
        return path
    return write_dicom_series(volume, path)


def write_dicom_series(volume: Volume, folder: Path) -> Path:
    """Write ``volume`` as a DICOM series (one file per k-slice, int16 with rescale slope/intercept).

    Geometry is carried by ImagePositionPatient / ImageOrientationPatient per slice, so oblique
    volumes read back with their direction.
    """
    folder.mkdir(parents=True, exist_ok=True)
    voxels = volume.voxels.astype(np.float64)
    low, high = float(np.min(voxels)), float(np.max(voxels))
    slope = max((high - low) / 65000.0, 1e-12) if not _is_int16_exact(voxels) else 1.0
    intercept = low + 32500.0 * slope if slope != 1.0 else 0.0
    stored = np.round((voxels - intercept) / slope).astype(np.int16)
    geometry = volume.geometry
    direction = np.asarray(geometry.direction, float)
    orientation = "\\".join(f"{v:.10g}" for v in (*direction[:, 0], *direction[:, 1]))
    series_uid = "1.2.826.0.1.3680043.2.1125." + str(abs(hash((volume.name, low, high))) % 10**12)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(stored.shape[0]):
        image = sitk.GetImageFromArray(stored[k])
        image.SetSpacing(geometry.spacing[:2])
        position = geometry.ijk_to_lps() @ np.array([0.0, 0.0, k, 1.0])
        tags = {
            "0008|0060": "MR",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10g}" for v in position[:3]),
            "0020|0037": orientation,
            "0018|0050": f"{geometry.spacing[2]:.10g}",
            "0028|1052": f"{intercept:.10g}",
            "0028|1053": f"{slope:.10g}",
            "0008|103e": volume.name,
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:04d}.dcm"))
        writer.Execute(image)
    return folder


def _is_int16_exact(voxels: np.ndarray) -> bool:
    return bool(voxels.min() >= -32768 and voxels.max() <= 32767 and np.all(voxels == np.round(voxels)))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".seg.nrrd", *VOLUME_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "ERROR" in line or "error" in line.lower()]
    return (useful or lines or ["unknown error"])[-1][:200]


# --------------------------------------------------------------------------- checks


def check_image_volume(volume: Volume, max_label_values: int = 16) -> None:
    """Refuse volumes that cannot be an intensity image (for models that expect one).

    Raises :class:`EmptyVolumeError` (no voxels, or constant), :class:`NonFiniteVoxelsError`
    (NaN/Inf) or :class:`LabelMapGivenError` (an integer volume with at most ``max_label_values``
    distinct values).
    """
    voxels = volume.voxels
    if voxels.size == 0 or min(voxels.shape) == 0:
        raise EmptyVolumeError(f"'{volume.name}' has no voxels (shape {voxels.shape}).")
    if np.issubdtype(voxels.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(voxels)))
        if bad:
            raise NonFiniteVoxelsError(
                f"'{volume.name}' has {bad} NaN or infinite voxels: replace them (e.g. with 0) before running."
            )
    low, high = voxels.min(), voxels.max()
    if low == high:
        raise EmptyVolumeError(
            f"'{volume.name}' is constant (every voxel is {low}): there is no image to work on."
        )
    if np.issubdtype(voxels.dtype, np.integer) or voxels.dtype == bool:
        distinct = np.unique(voxels[:: max(1, voxels.shape[0] // 16)])
        if len(distinct) <= max_label_values and len(np.unique(voxels)) <= max_label_values:
            raise LabelMapGivenError(
                f"'{volume.name}' looks like a label map ({len(np.unique(voxels))} distinct integer values), "
                "not an intensity image: give the image volume it was drawn on."
            )


# --------------------------------------------------------------------------- anatomical slicing


@dataclass(frozen=True)
class SliceLayout:
    """How the axes of ``voxels[k, j, i]`` map onto a display-oriented slice stack ``[n, row, col]``.

    ``permutation`` and ``flips`` turn the voxel array into the stack (``np.transpose`` then
    ``np.flip``); :meth:`to_stack` and :meth:`from_stack` are exact inverses. ``spacing`` is the
    voxel size along (n, row, col) in mm.
    """

    axis: Axis
    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    spacing: tuple[float, float, float]

    def to_stack(self, voxels: np.ndarray) -> np.ndarray:
        """``voxels[k, j, i]`` → ``stack[n, row, col]`` (a view where NumPy allows)."""
        stack = np.transpose(voxels, self.permutation)
        flip_axes = tuple(a for a, flip in enumerate(self.flips) if flip)
        return np.flip(stack, flip_axes) if flip_axes else stack

    def from_stack(self, stack: np.ndarray) -> np.ndarray:
        """``stack[n, row, col]`` → ``voxels[k, j, i]``, the exact inverse of :meth:`to_stack`."""
        flip_axes = tuple(a for a, flip in enumerate(self.flips) if flip)
        unflipped = np.flip(stack, flip_axes) if flip_axes else stack
        return np.transpose(unflipped, np.argsort(self.permutation))

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """In-plane spacing (row, col) in mm."""
        return (self.spacing[1], self.spacing[2])


def _nearest_lps_axes(direction: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """For voxel axes i, j, k: the LPS axis each is closest to, and the sign (+1/-1) of that match.

    The assignment is the permutation with the largest total alignment, so oblique volumes (even at
    45°) get one consistent answer.
    """
    magnitude = np.abs(np.asarray(direction, float))
    best = max(itertools.permutations(range(3)), key=lambda p: sum(magnitude[p[v], v] for v in range(3)))
    signs = tuple(1 if direction[best[v], v] >= 0 else -1 for v in range(3))
    return best, signs  # type: ignore[return-value]


# For each slicing axis: the LPS axis slices are stacked along, then the row and column LPS axes,
# with the direction each should increase in on screen (+1: towards L/P/S, -1: towards R/A/I).
_DISPLAY = {
    "axial": ((2, +1), (1, +1), (0, +1)),  # n: I→S, rows: A→P, cols: R→L
    "coronal": ((1, +1), (2, -1), (0, +1)),  # n: A→P, rows: S→I, cols: R→L
    "sagittal": ((0, +1), (2, -1), (1, +1)),  # n: R→L, rows: S→I, cols: A→P
}


def slice_layout(geometry: Geometry, axis: Axis) -> SliceLayout:
    """The :class:`SliceLayout` that cuts a volume of this geometry along an anatomical ``axis``."""
    check_axis(axis)
    lps_of_voxel_axis, signs = _nearest_lps_axes(geometry.direction)
    voxel_axis_of_lps = {lps: v for v, lps in enumerate(lps_of_voxel_axis)}
    permutation, flips, spacing = [], [], []
    for lps_axis, wanted_sign in _DISPLAY[axis]:
        voxel_axis = voxel_axis_of_lps[lps_axis]
        permutation.append(2 - voxel_axis)  # voxels are stored [k, j, i]
        flips.append(signs[voxel_axis] != wanted_sign)
        spacing.append(float(geometry.spacing[voxel_axis]))
    return SliceLayout(
        axis=axis,
        permutation=tuple(permutation),  # type: ignore[arg-type]
        flips=tuple(flips),  # type: ignore[arg-type]
        spacing=tuple(spacing),  # type: ignore[arg-type]
    )


def parse_slice_range(text: str | None, count: int) -> range:
    """``"a:b"`` (:func:`latentdrift.core.values.slice_bounds`) → a range within ``[0, count)``.

    ``None`` or ``""`` means every slice. Raises :class:`SliceRangeError` for an empty or reversed range
    and for one that ends outside the volume.
    """
    start, stop = slice_bounds(text)
    end = count if stop is None else stop
    if not start < end <= count:
        raise SliceRangeError(
            f"Slice range '{text}' lies outside the volume, which has {count} slices along this axis "
            f"(valid: 0:{count})."
        )
    return range(start, end)


@dataclass(frozen=True)
class SliceStack:
    """Display-oriented slices of a volume: ``slices[n, row, col]`` and where they came from."""

    slices: np.ndarray
    layout: SliceLayout
    indices: tuple[int, ...]

    @property
    def count(self) -> int:
        """Number of slices in the stack."""
        return len(self.indices)


def slice_index_at(
    geometry: Geometry, shape: tuple[int, int, int], ras: Sequence[float] | np.ndarray, axis: Axis
) -> int | None:
    """The index (as ``--slices`` counts along ``axis``) of the slice of a ``[k, j, i]`` grid through RAS
    point ``ras`` (e.g. the crosshair); None when the point lies outside the grid along ``axis``."""
    layout = slice_layout(geometry, axis)
    ijk = np.linalg.inv(geometry.ijk_to_ras()) @ np.array([*ras[:3], 1.0])
    array_axis = layout.permutation[0]  # voxels are [k, j, i]: array axis a is voxel axis 2 - a
    size = shape[array_axis]
    index = int(np.floor(ijk[2 - array_axis] + 0.5))
    if layout.flips[0]:
        index = size - 1 - index
    return index if 0 <= index < size else None


def plane_point_through_centre(
    geometry: Geometry, shape: tuple[int, int, int], slice_to_ras: np.ndarray
) -> np.ndarray:
    """Where the line through the centre of a ``[k, j, i]`` grid, along the normal of a slice view's plane,
    meets that plane: RAS ``(3,)``. ``slice_to_ras`` ``(4, 4)`` is the view's SliceToRAS (its third
    column the plane's normal, its fourth a point of the plane); the slice through this point is the
    one the view shows, also when the view is panned or the grid is oblique."""
    normal, origin = slice_to_ras[:3, 2], slice_to_ras[:3, 3]
    k, j, i = shape
    centre = (geometry.ijk_to_ras() @ np.array([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0]))[:3]
    return centre - normal * float(np.dot(centre - origin, normal) / np.dot(normal, normal))


def extract_slices(
    volume: Volume, axis: Axis = "axial", slice_range: str | range | None = None
) -> SliceStack:
    """Cut ``volume`` into display-oriented 2D slices along ``axis`` (a copy; float32 kept as is)."""
    layout = slice_layout(volume.geometry, axis)
    full = layout.to_stack(volume.voxels)
    indices = slice_range if isinstance(slice_range, range) else parse_slice_range(slice_range, full.shape[0])
    return SliceStack(
        slices=np.ascontiguousarray(full[indices.start : indices.stop]), layout=layout, indices=tuple(indices)
    )


def reassemble(
    stack_slices: np.ndarray, stack: SliceStack, template: Volume, fill: np.ndarray | float = 0.0
) -> np.ndarray:
    """Put ``stack_slices[n, row, col]`` back onto ``template``'s grid as ``voxels[k, j, i]``.

    Voxels outside the stack's slice range take ``fill``: a scalar, or a full voxel array (e.g. the
    input, so a partial edit keeps the rest of the volume). ``stack_slices`` must have the stack's
    shape; the dtype of the result is that of ``stack_slices``.
    """
    if stack_slices.shape != stack.slices.shape:
        raise ValueError(f"slices {stack_slices.shape} do not match the stack {stack.slices.shape}")
    full = stack.layout.to_stack(np.empty(template.voxels.shape, dtype=stack_slices.dtype))
    if isinstance(fill, np.ndarray):
        full[...] = stack.layout.to_stack(fill)
    else:
        full[...] = fill
    full[stack.indices[0] : stack.indices[-1] + 1] = stack_slices
    return np.ascontiguousarray(stack.layout.from_stack(full))


# --------------------------------------------------------------------------- intensities

FOREGROUND_MARGIN = 0.02
"""In model units (range ``[-1, 1]``): a pixel is foreground when it lies this far above the background."""


def foreground_fraction(slices: np.ndarray, level: float | np.ndarray) -> np.ndarray:
    """Share ``(n,)`` of each slice's pixels above ``level``, for slices ``(n, ...)``.

    ``level`` is one value, or one per slice ``(n,)``. The one rule for "an empty slice" of the
    project is this share being zero (:func:`nonempty_slices`); where slices are chosen for
    training, a minimum share of anatomy (cohorts) or of labelled pixels (LDSeg data) is asked of it.
    """
    values = np.asarray(slices).reshape(len(slices), -1)
    return (values > np.asarray(level, dtype=np.float64).reshape(-1, 1)).mean(axis=1)


def nonempty_slices(
    slices: np.ndarray, background: float | np.ndarray | None = None, margin: float = FOREGROUND_MARGIN
) -> np.ndarray:
    """Bool ``(n,)``: which slices ``(n, ...)`` hold a pixel more than ``margin`` above ``background``.

    ``background`` ``None`` takes each slice's own minimum, so a constant slice is empty whatever its value.
    """
    values = np.asarray(slices).reshape(len(slices), -1)
    floor = values.min(axis=1) if background is None else background
    return foreground_fraction(values, np.asarray(floor, dtype=np.float64) + margin) > 0


@dataclass(frozen=True)
class IntensityWindow:
    """A linear map of the window ``[low, high]`` onto the model range ``[target_min, target_max]``.

    :meth:`forward` clips to the model range; :meth:`inverse` is the exact inverse of the linear map
    (so values inside the window return unchanged up to float rounding).
    """

    low: float
    high: float
    target_min: float = -1.0
    target_max: float = 1.0

    @classmethod
    def from_percentiles(
        cls,
        voxels: np.ndarray,
        percentiles: tuple[float, float] = (0.5, 99.5),
        target: tuple[float, float] = (-1.0, 1.0),
    ) -> IntensityWindow:
        """A robust window: the given percentiles of the voxels (sampled to at most ~2 M values)."""
        flat = voxels.ravel()
        step = max(1, flat.size // 2_000_000)
        low, high = np.percentile(flat[::step].astype(np.float64), percentiles)
        if high <= low:
            low, high = float(flat.min()), float(flat.max())
        if high <= low:
            raise EmptyVolumeError("The volume is constant: no intensity window can be set.")
        return cls(float(low), float(high), float(target[0]), float(target[1]))

    @property
    def _scale(self) -> float:
        return (self.target_max - self.target_min) / (self.high - self.low)

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Image intensities → model range, clipped; float32."""
        mapped = (values.astype(np.float64) - self.low) * self._scale + self.target_min
        return np.clip(mapped, self.target_min, self.target_max).astype(np.float32)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Model range → image intensities (exact inverse of the linear map); float32."""
        return ((values.astype(np.float64) - self.target_min) / self._scale + self.low).astype(np.float32)


@dataclass(frozen=True)
class WindowedSlices:
    """An intensity volume cut into slices (``stack``) and those slices mapped by ``window`` (``windowed``)."""

    stack: SliceStack
    window: IntensityWindow
    windowed: np.ndarray


def windowed_slices(
    volume: Volume,
    axis: Axis,
    slice_range: str | None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    target: tuple[float, float] = (-1.0, 1.0),
) -> WindowedSlices:
    """What a model sees of ``volume``: its slices along ``axis`` (range ``slice_range``), windowed to
    ``target`` over the whole volume's ``percentiles``. Raises when ``volume`` is not an intensity image
    (:func:`check_image_volume`), for an unknown axis and for a range outside the volume."""
    check_image_volume(volume)
    check_axis(axis)
    window = IntensityWindow.from_percentiles(volume.voxels, percentiles, target)
    stack = extract_slices(volume, axis, slice_range)
    return WindowedSlices(stack, window, window.forward(stack.slices))


# --------------------------------------------------------------------------- resampling


def resample_volume(
    volume: Volume, spacing: tuple[float, float, float], direction: np.ndarray | None = None
) -> Volume:
    """``volume`` resampled (linearly, float32) onto a grid of ``spacing`` and ``direction`` covering it.

    ``direction`` (LPS columns, default: the volume's own) orients the new grid; its extent is the
    bounding box of the volume's corners in that orientation, so nothing of the volume is cut. Used to
    make test and benchmark acquisitions (e.g. a coronal 2 × 2 × 3 mm scan of a 1 mm head).
    """
    axes = np.asarray(volume.geometry.direction if direction is None else direction, float)
    matrix = volume.geometry.ijk_to_lps()
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in volume.shape_ijk])), float)
    physical = (matrix[:3, :3] @ corners.T).T + matrix[:3, 3]
    along = physical @ axes  # coordinates along the new axes
    low, high = along.min(axis=0), along.max(axis=0)
    size = [int(np.floor((h - lo) / s)) + 1 for lo, h, s in zip(low, high, spacing, strict=True)]
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(tuple(float(s) for s in spacing))
    reference.SetDirection(tuple(axes.ravel()))
    reference.SetOrigin(tuple(float(v) for v in axes @ low))
    image = sitk.Cast(volume_to_sitk(volume), sitk.sitkFloat32)
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    return volume_from_sitk(resampled, name=volume.name)
