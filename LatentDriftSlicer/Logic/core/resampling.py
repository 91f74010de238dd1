"""Resizing slices and slice stacks to a model's resolution and back (torch's interpolation).

Kept apart from :mod:`.volumes` so that geometry, file I/O and slicing load without torch: the Slicer
panel imports those, and only the engine process resizes. Field-of-view padding keeps anisotropic
voxels in proportion; every resize has its inverse here, so results go back onto the stack's shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- in-plane resampling


@dataclass(frozen=True)
class SliceResizer:
    """Pads slices to a square field of view (in mm) and resizes them to ``size × size``, and back.

    Anisotropic in-plane spacing is honoured: the padded slice covers the same millimetres along
    rows and columns, so anatomy keeps its proportions at the model's resolution. Resizing uses
    ``torch.nn.functional.interpolate`` (bilinear with antialiasing), batched over slices.
    """

    slice_shape: tuple[int, int]
    pixel_spacing: tuple[float, float]
    size: int

    @property
    def padded_shape(self) -> tuple[int, int]:
        """Slice shape after padding to a square field of view."""
        rows, cols = self.slice_shape
        field_mm = max(rows * self.pixel_spacing[0], cols * self.pixel_spacing[1])
        return (
            max(rows, round(field_mm / self.pixel_spacing[0])),
            max(cols, round(field_mm / self.pixel_spacing[1])),
        )

    @property
    def _pads(self) -> tuple[int, int, int, int]:
        (rows, cols), (padded_rows, padded_cols) = self.slice_shape, self.padded_shape
        top, left = (padded_rows - rows) // 2, (padded_cols - cols) // 2
        return top, padded_rows - rows - top, left, padded_cols - cols - left

    def to_model(self, slices: np.ndarray, background: float) -> np.ndarray:
        """``[n, rows, cols]`` → ``[n, size, size]`` float32, padding with ``background``."""
        top, bottom, left, right = self._pads
        padded = np.pad(
            slices.astype(np.float32), ((0, 0), (top, bottom), (left, right)), constant_values=background
        )
        return _resize(padded, (self.size, self.size))

    def from_model(self, slices: np.ndarray) -> np.ndarray:
        """``[n, (c,) size, size]`` → ``[n, (c,) rows, cols]`` float32 (bilinear; crop the padding)."""
        top, _bottom, left, _right = self._pads
        rows, cols = self.slice_shape
        resized = _resize(slices.astype(np.float32), self.padded_shape)
        return np.ascontiguousarray(resized[..., top : top + rows, left : left + cols])


def _resize(slices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the last two axes of ``[n, (c,) h, w]`` to ``shape`` (antialiased when shrinking)."""
    if tuple(slices.shape[-2:]) == tuple(shape):
        return slices.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(slices))
    lead = tensor.shape[:-2]
    tensor = tensor.reshape(-1, 1, *tensor.shape[-2:])
    shrinking = shape[0] < tensor.shape[-2] or shape[1] < tensor.shape[-1]
    out = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False, antialias=shrinking)
    return out.reshape(*lead, *shape).numpy()


# --------------------------------------------------------------------------- whole-volume resampling


@dataclass(frozen=True)
class VolumeResizer:
    """Pads a slice stack to a cube field of view (in mm) and resizes it to ``size × size × size``, and back.

    The 3D counterpart of :class:`SliceResizer`: ``stack_shape`` is ``(n, rows, cols)`` with voxel
    ``spacing`` (mm) along those axes (a :class:`SliceLayout`'s ``spacing``), so anisotropic voxels keep
    the anatomy's proportions at the model's resolution. Resizing uses ``torch.nn.functional.interpolate``:
    area averaging along the axes that shrink (antialiasing), then trilinear. :meth:`from_model` returns
    exactly ``stack_shape``.
    """

    stack_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    size: int

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        """Stack shape after padding to a cube field of view."""
        field_mm = max(count * step for count, step in zip(self.stack_shape, self.spacing, strict=True))
        padded = (
            max(count, round(field_mm / step))
            for count, step in zip(self.stack_shape, self.spacing, strict=True)
        )
        return tuple(padded)  # type: ignore[return-value]

    @property
    def _starts(self) -> tuple[int, int, int]:
        return tuple(  # type: ignore[return-value]
            (padded - count) // 2 for padded, count in zip(self.padded_shape, self.stack_shape, strict=True)
        )

    def to_model(self, stack: np.ndarray, background: float) -> np.ndarray:
        """``[(c,) n, rows, cols]`` → ``[(c,) size, size, size]`` float32, padding with ``background``."""
        pads = [
            (start, padded - count - start)
            for start, padded, count in zip(self._starts, self.padded_shape, self.stack_shape, strict=True)
        ]
        lead = [(0, 0)] * (stack.ndim - 3)
        padded = np.pad(stack.astype(np.float32), lead + pads, constant_values=background)
        return _resize_volume(padded, (self.size,) * 3)

    def from_model(self, volumes: np.ndarray) -> np.ndarray:
        """``[..., size, size, size]`` → ``[..., n, rows, cols]`` float32 (trilinear; crop the padding)."""
        resized = _resize_volume(volumes.astype(np.float32), self.padded_shape)
        (first, top, left), (count, rows, cols) = self._starts, self.stack_shape
        return np.ascontiguousarray(resized[..., first : first + count, top : top + rows, left : left + cols])


def _resize_volume(volumes: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resize the last three axes of ``[..., d, h, w]`` to ``shape``: area along shrinking axes, then trilinear."""
    if tuple(volumes.shape[-3:]) == tuple(shape):
        return volumes.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(volumes))
    lead = tensor.shape[:-3]
    tensor = tensor.reshape(-1, 1, *tensor.shape[-3:])
    reduced = tuple(min(now, wanted) for now, wanted in zip(tensor.shape[-3:], shape, strict=True))
    if reduced != tuple(tensor.shape[-3:]):
        tensor = F.interpolate(tensor, size=reduced, mode="area")
    if reduced != tuple(shape):
        tensor = F.interpolate(tensor, size=shape, mode="trilinear", align_corners=False)
    return tensor.reshape(*lead, *shape).numpy()
