"""Volume files checked before they are read: what the header declares, against the data and this machine.

SimpleITK reads what a header declares and stops there: a truncated ``.nii.gz`` (an interrupted copy)
comes back with zeros where its data ended, a NRRD or MetaImage whose header declares fewer slices than
its data comes back short, a NIfTI ``pixdim`` of 0 comes back as 1 mm, and a header that declares
10¹³ voxels is allocated before anything says it cannot be. :func:`check_volume_file` refuses each of
these with one message, before SimpleITK reads the voxels:

* **Size against memory**: the voxel bytes the header declares (SimpleITK's ``ReadImageInformation``,
  which reads the header only) against the memory available; reading takes about twice that (the
  image and its array).
* **Bytes against the header**: the voxel data stored in the file (for a compressed file, the length of
  the decompressed stream, counted without keeping it; a stream that ends before its end marker is
  truncated) against the bytes the header declares. NIfTI (``.nii``, ``.nii.gz``; header by nibabel),
  NRRD (``.nrrd``, ``.nhdr``; raw, gzip or bzip2 data, attached or in one data file; header by pynrrd)
  and uncompressed MetaImage (``.mha``, ``.mhd``). Other encodings, and DICOM series (GDCM checks its
  own), are left to their readers, which refuse short data themselves.
* **Spacing**: a spacing of 0, less or not a number, in any header, and in a NIfTI ``pixdim``
  (nibabel reads it as stored), which SimpleITK replaces by 1 mm (or its absolute value) without a word,
  so every size and volume in millimetres would be wrong; other readers fail with ITK's own words.

The two readers of headers are imported only when a file of their format is checked, and the memory
available is looked up (psutil) only for a volume of more than :data:`SMALL_VOLUME_BYTES`, so loading
the engine's results in Slicer's own process needs neither.
"""

from __future__ import annotations

import bz2
import gzip
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import SimpleITK as sitk

from .errors import InputError, UnreadableFileError

CHUNK_BYTES = 1 << 20
SMALL_VOLUME_BYTES = 256 << 20
"""A volume declaring at most this many bytes is read without asking for the memory available: any
machine that runs the engine (torch and a model) has far more than twice that free."""


@dataclass(frozen=True)
class VoxelData:
    """Where a file's voxel data is stored: ``file`` from byte ``offset`` on, ``encoding`` raw, gzip or
    bzip2, after ``skip`` bytes of the decoded stream (a ``.nii.gz`` compresses its header too)."""

    file: Path
    offset: int
    encoding: str
    skip: int = 0


def check_volume_file(path: Path, header: sitk.ImageFileReader) -> None:
    """Refuse ``path`` when its header (read by ``header``'s ``ReadImageInformation``) cannot be trusted.

    Raises :class:`InputError` for a spacing of 0 or less, a declared size beyond the memory available
    and voxel data shorter or longer than the header declares (see the module docstring).
    """
    check_spacing(path, header.GetSpacing(), "spacing")
    declared = math.prod(header.GetSize()) * _one_voxel(header).nbytes
    if declared > SMALL_VOLUME_BYTES:
        check_memory(path, header, declared)
    locate = _LOCATORS.get(_format(path))
    data = locate(path) if locate is not None else None
    if data is not None:
        compare_stored_bytes(path, header, data, declared)


def check_spacing(path: Path, spacing: Sequence[float], field: str) -> None:
    """Refuse a voxel spacing of 0, less, or not a number (``field``: where the header declares it)."""
    bad = [(axis, value) for axis, value in zip("ijk", spacing, strict=False) if not value > 0]
    if bad:
        axis, value = bad[0]
        raise InputError(
            f"'{path.name}' declares a voxel spacing of {value:g} mm along {axis} ({field} "
            f"{[round(v, 6) for v in spacing]}): readers would take 1 mm, its absolute value or fail, so "
            "sizes and volumes would be wrong. Write the file again with its true spacing (e.g. nibabel's "
            "header.set_zooms, SimpleITK's SetSpacing)."
        )


def check_memory(path: Path, header: sitk.ImageFileReader, declared: int) -> None:
    """Refuse a volume whose reading (about twice its declared bytes) does not fit in the memory available."""
    available = available_ram()
    if 2 * declared > available:
        raise InputError(
            f"'{path.name}' declares {_voxels(header)}, {_gb(declared)} GB, more than the memory available "
            f"to read it ({_gb(available)} GB; reading takes twice the volume): check the header's sizes, "
            "or crop or downsample the volume first."
        )


def available_ram() -> int:
    """Bytes of RAM available now (psutil, imported on use): the one figure host memory is judged by,
    here and for the CPU device (:func:`latentdrift.core.devices.available_memory`)."""
    import psutil

    return int(psutil.virtual_memory().available)


def compare_stored_bytes(path: Path, header: sitk.ImageFileReader, data: VoxelData, declared: int) -> None:
    """Refuse a file whose stored voxel data is truncated, or shorter or longer than ``declared`` bytes."""
    stored, complete = stored_bytes(data)
    if not complete:
        raise InputError(
            f"'{path.name}' is truncated: its {data.encoding} data ends before the end of its stream, as "
            f"after an interrupted copy ({_voxels(header)} declared): copy the file again."
        )
    if stored != declared:
        which = "truncated: it holds less" if stored < declared else "inconsistent: it holds more"
        raise InputError(
            f"'{path.name}' is {which} voxel data than its header declares ({stored} bytes, not the "
            f"{declared} of {_voxels(header)}): copy the file again, or fix the header's sizes and type."
        )


def stored_bytes(data: VoxelData) -> tuple[int, bool]:
    """``(bytes, complete)``: the voxel bytes stored from ``data.offset`` on (decompressed, counted in
    chunks, none kept) and whether a compressed stream reached its end marker."""
    if data.encoding == "raw":
        return max(0, data.file.stat().st_size - data.offset - data.skip), True
    total = 0
    with open(data.file, "rb") as raw:
        raw.seek(data.offset)
        try:
            with _DECOMPRESSORS[data.encoding](raw) as stream:
                while chunk := stream.read(CHUNK_BYTES):
                    total += len(chunk)
        except EOFError:
            return max(0, total - data.skip), False
        except OSError as error:  # gzip.BadGzipFile, a bzip2 stream that is not one
            raise UnreadableFileError(
                f"'{data.file.name}' has corrupt {data.encoding} data: {error}."
            ) from None
    return max(0, total - data.skip), True


# --------------------------------------------------------------------------- formats


_DECOMPRESSORS: dict[str, Callable[[IO[bytes]], gzip.GzipFile | bz2.BZ2File]] = {
    "gzip": lambda raw: gzip.GzipFile(fileobj=raw),
    "bzip2": lambda raw: bz2.BZ2File(raw),
}


def _format(path: Path) -> str:
    name = path.name.lower()
    for suffix, kind in ((".nii.gz", "nifti"), (".nii", "nifti"), (".nrrd", "nrrd"), (".nhdr", "nrrd")):
        if name.endswith(suffix):
            return kind
    return "metaimage" if name.endswith((".mha", ".mhd")) else "other"


def _nifti_data(path: Path) -> VoxelData:
    """A NIfTI file's voxel data (nibabel reads the header as stored); refuses spacings of 0 or less."""
    import nibabel

    compressed = path.name.lower().endswith(".gz")
    with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
        start = handle.read(4)
        handle.seek(0)
        is_nifti2 = int.from_bytes(start, "little") == 540 or int.from_bytes(start, "big") == 540
        kind = nibabel.Nifti2Header if is_nifti2 else nibabel.Nifti1Header
        header = kind.from_fileobj(handle, check=False)
    axes = min(3, int(header["dim"][0]))
    check_spacing(path, [float(value) for value in header["pixdim"][1 : 1 + axes]], "NIfTI pixdim")
    offset = int(header.get_data_offset())
    return VoxelData(path, 0, "gzip", skip=offset) if compressed else VoxelData(path, offset, "raw")


NRRD_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}


def _nrrd_data(path: Path) -> VoxelData | None:
    """A NRRD file's voxel data (pynrrd reads the header); None for layouts left to the reader (text
    encodings, skipped bytes or lines, lists of data files)."""
    import nrrd

    with open(path, "rb") as handle:
        try:
            header = nrrd.read_header(handle)
        except nrrd.NRRDError as error:
            raise UnreadableFileError(f"Cannot read the NRRD header of '{path.name}': {error}.") from None
        offset = handle.tell()
    encoding = NRRD_ENCODINGS.get(str(header.get("encoding", "")).lower())
    skips = [header.get(name, 0) for name in ("line skip", "lineskip", "byte skip", "byteskip")]
    data_file = header.get("data file", header.get("datafile"))
    if encoding is None or any(skips) or (data_file is not None and " " in str(data_file).strip()):
        return None
    if data_file is None:
        return VoxelData(path, offset, encoding)
    return VoxelData(path.parent / str(data_file), 0, encoding)


_METAIMAGE_LINE = re.compile(rb"^\s*([^=]+?)\s*=\s*(.*?)\s*$")


def _metaimage_data(path: Path) -> VoxelData | None:
    """An uncompressed MetaImage's voxel data (the header is ``Key = Value`` lines up to ``ElementDataFile``);
    None for compressed data, headers with a ``HeaderSize`` and lists of data files."""
    fields: dict[str, str] = {}
    with open(path, "rb") as handle:
        for line in handle:
            match = _METAIMAGE_LINE.match(line)
            if match is None:
                return None
            key = match.group(1).decode("ascii", "replace").lower()
            fields[key] = match.group(2).decode("utf-8", "replace")
            if key == "elementdatafile":
                offset = handle.tell()
                break
        else:
            return None
    data_file = fields["elementdatafile"]
    if fields.get("compresseddata", "false").lower() == "true" or "headersize" in fields:
        return None
    if data_file.upper() == "LOCAL":
        return VoxelData(path, offset, "raw")
    if data_file.upper().startswith("LIST") or "%" in data_file:
        return None
    return VoxelData(path.parent / data_file, 0, "raw")


_LOCATORS: dict[str, Callable[[Path], VoxelData | None]] = {
    "nifti": _nifti_data,
    "nrrd": _nrrd_data,
    "metaimage": _metaimage_data,
}


def _one_voxel(header: sitk.ImageFileReader) -> np.ndarray:
    """The array of one voxel of the header's pixel type (its ``nbytes`` counts every component)."""
    image = sitk.Image([1] * header.GetDimension(), header.GetPixelID(), header.GetNumberOfComponents())
    return sitk.GetArrayFromImage(image)


def _voxels(header: sitk.ImageFileReader) -> str:
    """What the header declares, for messages: ``"40 × 40 × 20 voxels of float32"``."""
    components = header.GetNumberOfComponents()
    kind = _one_voxel(header).dtype.name + (f" × {components}" if components > 1 else "")
    return " × ".join(str(n) for n in header.GetSize()) + f" voxels of {kind}"


def _gb(count: int) -> str:
    return f"{count / 1e9:.3g}"
