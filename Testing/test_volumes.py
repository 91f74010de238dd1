"""Volumes: real files through SimpleITK, geometry to 1e-6, exact slicing and reassembly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_direction, write_image

from latentdrift.core import errors
from latentdrift.core.resampling import SliceResizer
from latentdrift.core.values import AXES
from latentdrift.core.volumes import (
    Geometry,
    IntensityWindow,
    Volume,
    check_image_volume,
    extract_slices,
    foreground_fraction,
    nonempty_slices,
    parse_slice_range,
    read_volume,
    reassemble,
    slice_layout,
    write_volume,
)

TOL = 1e-6


def _oblique_volume(rng: np.random.Generator, shape=(5, 6, 7)) -> Volume:
    geometry = Geometry((0.7, 1.3, 2.5), (12.5, -30.25, 7.0), oblique_direction())
    return Volume(rng.normal(size=shape).astype(np.float32), geometry, "oblique")


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha", ".mhd"])
def test_file_round_trip_keeps_voxels_and_geometry(tmp_path: Path, rng, suffix: str) -> None:
    volume = _oblique_volume(rng)
    written = write_volume(volume, tmp_path / f"v{suffix}")
    back = read_volume(written)
    assert np.array_equal(back.voxels, volume.voxels)
    assert back.geometry.is_close(volume.geometry, TOL)


def test_dicom_series_round_trip(tmp_path: Path, rng) -> None:
    voxels = rng.integers(-1000, 3000, size=(6, 8, 9)).astype(np.int16)
    volume = Volume(voxels, Geometry((0.8, 0.9, 2.0), (-5.0, 3.5, 40.0), oblique_direction()), "ct")
    folder = write_volume(volume, tmp_path / "dicom")
    assert len(list(folder.glob("*.dcm"))) == 6
    back = read_volume(folder)
    assert np.array_equal(back.voxels.astype(np.int64), voxels.astype(np.int64))
    assert back.geometry.is_close(volume.geometry, 1e-4)  # DICOM stores decimal strings


def test_ijk_to_ras_matches_sitk_physical_points(rng) -> None:
    volume = _oblique_volume(rng)
    image = sitk.GetImageFromArray(volume.voxels)
    image.SetSpacing(volume.geometry.spacing)
    image.SetOrigin(volume.geometry.origin)
    image.SetDirection(tuple(volume.geometry.direction.ravel()))
    for index in [(0, 0, 0), (3, 2, 1), (6, 5, 4)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = volume.geometry.ijk_to_ras() @ np.array([*index, 1.0])
        assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=TOL)
    again = Geometry.from_ijk_to_ras(volume.geometry.ijk_to_ras())
    assert again.is_close(volume.geometry, TOL)


def _physical_step(volume: Volume, axis, stack_axis: int) -> np.ndarray:
    """LPS displacement of one step along a stack axis (n, row or col) at the stack's origin."""
    layout = slice_layout(volume.geometry, axis)
    ids = np.arange(volume.voxels.size).reshape(volume.voxels.shape)
    stack = layout.to_stack(ids)
    start = [0, 0, 0]
    step = list(start)
    step[stack_axis] = 1
    points = []
    for position in (start, step):
        k, j, i = np.unravel_index(stack[tuple(position)], volume.voxels.shape)
        points.append(volume.geometry.ijk_to_lps() @ np.array([i, j, k, 1.0]))
    return points[1][:3] - points[0][:3]


# LPS axis index and sign that each stack axis (n, row, col) must move along, per slicing axis.
EXPECTED_DIRECTIONS = {
    "axial": [(2, +1), (1, +1), (0, +1)],
    "coronal": [(1, +1), (2, -1), (0, +1)],
    "sagittal": [(0, +1), (2, -1), (1, +1)],
}


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("direction_kind", ["identity", "ras", "oblique"])
def test_slices_follow_anatomy_for_any_direction(rng, axis, direction_kind) -> None:
    direction = {"identity": np.eye(3), "ras": np.diag([-1.0, -1.0, 1.0]), "oblique": oblique_direction()}[
        direction_kind
    ]
    volume = Volume(np.zeros((5, 6, 7), np.float32), Geometry((0.7, 1.3, 2.5), (0, 0, 0), direction))
    for stack_axis, (lps_axis, sign) in enumerate(EXPECTED_DIRECTIONS[axis]):
        step = _physical_step(volume, axis, stack_axis)
        dominant = int(np.argmax(np.abs(step)))
        assert dominant == lps_axis, (axis, stack_axis, step)
        assert np.sign(step[dominant]) == sign


@pytest.mark.parametrize("axis", AXES)
def test_reassembly_is_exact_on_oblique_volume(rng, axis) -> None:
    volume = _oblique_volume(rng)
    stack = extract_slices(volume, axis)
    assert np.array_equal(reassemble(stack.slices, stack, volume), volume.voxels)
    part = extract_slices(volume, axis, "1:3")
    assert part.count == 2
    edited = reassemble(part.slices + 100, part, volume, fill=volume.voxels)
    changed = edited != volume.voxels
    assert changed.sum() == part.slices.size
    assert np.allclose(edited[changed], volume.voxels[changed] + 100)


def test_stack_spacing_matches_geometry(rng) -> None:
    volume = _oblique_volume(rng)
    for axis in AXES:
        layout = slice_layout(volume.geometry, axis)
        for stack_axis, spacing in enumerate(layout.spacing):
            assert np.linalg.norm(_physical_step(volume, axis, stack_axis)) == pytest.approx(spacing, abs=TOL)


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        (None, 5, range(5)),
        ("1:3", 5, range(1, 3)),
        (":2", 5, range(2)),
        ("3:", 5, range(3, 5)),
        ("4", 5, range(4, 5)),
    ],
)
def test_parse_slice_range(text, count, expected) -> None:
    assert parse_slice_range(text, count) == expected


@pytest.mark.parametrize("text", ["3:9", "-1:2", "4:2", "a:b", "5"])
def test_slice_range_outside_volume_is_refused(text) -> None:
    with pytest.raises(errors.SliceRangeError, match=r"[Ss]lice"):
        parse_slice_range(text, 5)


def test_intensity_window_inverse_is_exact_inside_window(rng) -> None:
    voxels = rng.normal(100, 20, size=(20, 20, 20)).astype(np.float32)
    window = IntensityWindow.from_percentiles(voxels, (1, 99))
    mapped = window.forward(voxels)
    assert mapped.min() == -1.0 and mapped.max() == 1.0
    inside = (voxels >= window.low) & (voxels <= window.high)
    assert np.allclose(window.inverse(mapped)[inside], voxels[inside], atol=1e-4)
    assert np.all(window.inverse(mapped)[voxels > window.high] == pytest.approx(window.high, abs=1e-4))


def test_resizer_round_trip_and_square_field_of_view() -> None:
    resizer = SliceResizer(slice_shape=(40, 20), pixel_spacing=(1.0, 4.0), size=32)
    assert resizer.padded_shape == (80, 20)  # 80 mm × 80 mm
    smooth = np.tile(np.linspace(0, 1, 20, dtype=np.float32), (2, 40, 1))
    model = resizer.to_model(smooth, background=0.0)
    assert model.shape == (2, 32, 32)
    back = resizer.from_model(model)
    assert back.shape == smooth.shape
    assert np.abs(back - smooth)[:, 2:-2, 2:-2].max() < 0.1
    constant = resizer.from_model(np.full((1, 3, 32, 32), 0.25, np.float32))
    assert constant.shape == (1, 3, 40, 20) and np.allclose(constant, 0.25)


def test_mni_sample_reads_with_ras_geometry(mni_t1_path) -> None:
    volume = read_volume(mni_t1_path)
    assert volume.voxels.shape == (189, 233, 197)
    assert np.allclose(volume.geometry.direction, np.diag([-1, -1, 1]))
    axial = extract_slices(volume, "axial", "90:91").slices[0]
    # anterior at the top: the first rows (anterior) hold less head than the middle rows
    assert axial.shape == (233, 197)
    assert axial[:20].mean() < axial[100:130].mean()


# --------------------------------------------------------------------------- bad input


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(errors.MissingFileError, match="does not exist"):
        read_volume(tmp_path / "nope.nrrd")
    junk = tmp_path / "junk.nrrd"
    junk.write_text("not an image")
    with pytest.raises(errors.UnreadableFileError, match="Cannot read"):
        read_volume(junk)
    with pytest.raises(errors.UnreadableFileError, match="no DICOM"):
        read_volume(tmp_path)


def test_2d_4d_and_vector_images_are_refused(tmp_path: Path, rng) -> None:
    flat = sitk.GetImageFromArray(rng.normal(size=(8, 8)).astype(np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.nrrd"))
    with pytest.raises(errors.VolumeShapeError, match="2D image"):
        read_volume(tmp_path / "flat.nrrd")
    series = sitk.GetImageFromArray(rng.normal(size=(3, 4, 5, 6)).astype(np.float32), isVector=False)
    sitk.WriteImage(series, str(tmp_path / "series.nii.gz"))
    with pytest.raises(errors.VolumeShapeError, match="4D series with 3 frames"):
        read_volume(tmp_path / "series.nii.gz")
    vector = sitk.GetImageFromArray(rng.normal(size=(4, 5, 6, 3)).astype(np.float32), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "vector.nrrd"))
    with pytest.raises(errors.VolumeShapeError, match="3 components"):
        read_volume(tmp_path / "vector.nrrd")


def test_image_checks(tmp_path: Path, rng) -> None:
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    nan = rng.normal(size=(4, 4, 4)).astype(np.float32)
    nan[1, 2, 3] = np.nan
    nan[0, 0, 0] = np.inf
    with pytest.raises(errors.NonFiniteVoxelsError, match="2 NaN or infinite"):
        check_image_volume(Volume(nan, geometry))
    with pytest.raises(errors.EmptyVolumeError, match="constant"):
        check_image_volume(Volume(np.full((4, 4, 4), 7, np.int16), geometry))
    with pytest.raises(errors.EmptyVolumeError, match="no voxels"):
        check_image_volume(Volume(np.zeros((0, 4, 4), np.float32), geometry))
    labels = rng.integers(0, 4, size=(8, 8, 8)).astype(np.uint8)
    with pytest.raises(errors.LabelMapGivenError, match="label map"):
        check_image_volume(Volume(labels, geometry))
    check_image_volume(Volume(rng.integers(0, 255, size=(8, 8, 8)).astype(np.uint8), geometry))


def test_write_image_helper_matches_reader(tmp_path: Path, rng) -> None:
    voxels = rng.normal(size=(3, 4, 5)).astype(np.float32)
    path = write_image(tmp_path / "x.nrrd", voxels, spacing=(1, 2, 3), origin=(4, 5, 6))
    volume = read_volume(path)
    assert volume.geometry.spacing == (1.0, 2.0, 3.0) and volume.name == "x"


def test_one_empty_slice_rule_for_background_constant_and_faint_slices() -> None:
    slices = np.full((4, 3, 3), -1.0, np.float32)  # 0: all background
    slices[1, 0, 0] = -0.97  # a pixel just above the margin
    slices[2, 0, 0] = -0.99  # within the margin: still empty
    slices[3] = 0.3  # constant but bright
    assert nonempty_slices(slices, background=-1.0).tolist() == [False, True, False, True]
    assert nonempty_slices(slices, margin=1e-6).tolist() == [
        False,
        True,
        True,
        False,
    ]  # against its own minimum
    np.testing.assert_allclose(foreground_fraction(slices, -0.98), [0, 1 / 9, 0, 1])
    np.testing.assert_allclose(foreground_fraction(slices, np.array([0, -1, -1, 0])), [0, 1 / 9, 1 / 9, 1])
