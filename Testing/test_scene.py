"""The scene bridge against the real MRML core (slicer-core): nodes, segmentations, display, scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import vtk

from latentdrift.bridge.scene import (
    OutputFiles,
    add_map_node,
    find_nodes,
    link_to_files,
    load_outputs,
    load_scene,
    load_volume_node,
    node_to_volume,
    save_scene,
    segmentation_to_labels,
    show_in_slice_views,
    volume_to_node,
)
from latentdrift.core import errors
from latentdrift.core.volumes import Volume, read_volume, write_volume
from latentdrift.segmentation.seg_files import SegmentClass, write_segmentation_file

TOL = 1e-6

CLASSES = [
    SegmentClass(
        1,
        "Cerebrospinal fluid",
        (0.3, 0.6, 1.0),
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^65216001^Cerebrospinal fluid~^^~Anatomic codes - DICOM master list~^^~^^",
    ),
    SegmentClass(2, "Grey matter", (0.8, 0.5, 0.5)),
    SegmentClass(3, "White matter", (0.95, 0.95, 0.85)),
]


def _matrix(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_loaded_node_has_the_file_geometry(session, oblique_nifti: Path) -> None:
    node = load_volume_node(session, oblique_nifti)
    from_file = read_volume(oblique_nifti)
    from_node = node_to_volume(node)
    assert np.array_equal(from_node.voxels, from_file.voxels)
    assert from_node.geometry.is_close(from_file.geometry, TOL)
    assert np.allclose(_matrix(node), from_file.geometry.ijk_to_ras(), atol=TOL)


def test_volume_to_node_makes_a_new_node_and_leaves_the_input_alone(session, oblique_nifti: Path) -> None:
    node = load_volume_node(session, oblique_nifti)
    before_voxels = node_to_volume(node).voxels.copy()
    before_matrix = _matrix(node)
    volume = node_to_volume(node)
    result = volume_to_node(session, volume.with_voxels(volume.voxels * 2), "doubled")
    assert result.GetID() != node.GetID()
    assert np.allclose(_matrix(result), before_matrix, atol=TOL)
    assert np.array_equal(node_to_volume(node).voxels, before_voxels)
    assert np.array_equal(_matrix(node), before_matrix)
    assert np.array_equal(node_to_volume(result).voxels, before_voxels * 2)


def test_node_to_volume_refuses_other_nodes(session) -> None:
    model = session.scene.AddNewNodeByClass("vtkMRMLModelNode", "m")
    with pytest.raises(errors.InputError, match="scalar volume"):
        node_to_volume(model)
    with pytest.raises(errors.InputError, match="nothing"):
        node_to_volume(None)


def _labels_like(volume):
    labels = np.zeros(volume.voxels.shape, np.uint8)
    labels[2:5, 3:8, 2:6] = 1
    labels[5:7, 1:4, 6:11] = 2
    return volume.with_voxels(labels)  # no voxel of class 3: its segment must still exist


def _segmentation(session, node, folder: Path):
    """The labels of ``_labels_like`` written as a .seg.nrrd and loaded by role over ``node``."""
    volume = node_to_volume(node)
    write_segmentation_file(_labels_like(volume), CLASSES, folder / "tissues.seg.nrrd")
    files = OutputFiles(folder, {"segmentation": ["tissues.seg.nrrd"]}, node, volume)
    return load_outputs(session, files, ["segmentation"], 0.5)["segmentation"][0], files


def test_segmentation_file_loads_as_named_coloured_segments_on_the_input_grid(
    session, oblique_nifti: Path, tmp_path: Path
) -> None:
    node = load_volume_node(session, oblique_nifti)
    segmentation, _ = _segmentation(session, node, tmp_path)
    segments = segmentation.GetSegmentation()
    assert [segments.GetNthSegment(n).GetName() for n in range(segments.GetNumberOfSegments())] == [
        c.name for c in CLASSES
    ]
    assert segments.GetNthSegment(1).GetColor() == pytest.approx(CLASSES[1].color)
    assert segments.GetNthSegment(0).GetTerminology() == CLASSES[0].terminology
    labelmap = segments.GetNthSegment(0).GetRepresentation("Binary labelmap")
    to_world = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(to_world)
    grid = np.array([[to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
    assert np.allclose(grid, _matrix(node), atol=TOL)  # the input's geometry, exactly
    assert np.array_equal(
        segmentation_to_labels(segmentation, node), _labels_like(node_to_volume(node)).voxels
    )
    assert segmentation.GetStorageNode() is None  # no link to the result file
    display = segmentation.GetDisplayNode()
    assert display.GetVisibility2DFill() and display.GetVisibility2DOutline()


def test_brain_mask_role_loads_as_a_segmentation(session, oblique_nifti: Path, tmp_path: Path) -> None:
    """The front end's ``brain_mask`` is a .seg.nrrd like ``segmentation``: writing the file is enough."""
    node = load_volume_node(session, oblique_nifti)
    volume = node_to_volume(node)
    mask = volume.with_voxels((_labels_like(volume).voxels > 0).astype(np.uint8))
    brain = SegmentClass(
        1,
        "Brain",
        (0.9, 0.7, 0.6),
        CLASSES[0].terminology.replace("65216001^Cerebrospinal fluid", "12738006^Brain"),
    )
    write_segmentation_file(mask, [brain], tmp_path / "brain.seg.nrrd")
    files = OutputFiles(tmp_path, {"brain_mask": ["brain.seg.nrrd"]}, node, volume)
    loaded = load_outputs(session, files, ["brain_mask"], 0.5)["brain_mask"][0]
    segment = loaded.GetSegmentation().GetNthSegment(0)
    assert (segment.GetName(), segment.GetTerminology()) == ("Brain", brain.terminology)
    assert loaded.GetName() == "oblique brain_mask"
    display = loaded.GetDisplayNode()  # outlined, not filled over the other results
    assert display.GetVisibility2DOutline() and not display.GetVisibility2DFill()
    assert np.array_equal(segmentation_to_labels(loaded, node), mask.voxels)


def test_unknown_roles_and_files_off_the_grid_are_refused(
    session, oblique_nifti: Path, tmp_path: Path
) -> None:
    node = load_volume_node(session, oblique_nifti)
    volume = node_to_volume(node)
    with pytest.raises(errors.InputError, match="known roles"):
        load_outputs(session, OutputFiles(tmp_path, {}, node, volume), ["no-such-role"], 0.5)
    write_volume(Volume(volume.voxels[:-1].copy(), volume.geometry), tmp_path / "small.nrrd")
    with pytest.raises(errors.InputError, match="not on the input's voxel grid"):
        load_outputs(
            session, OutputFiles(tmp_path, {"volume": ["small.nrrd"]}, node, volume), ["volume"], 0.5
        )


def test_map_node_has_colour_table_and_window(session, oblique_nifti: Path) -> None:
    node = load_volume_node(session, oblique_nifti)
    volume = node_to_volume(node)
    entropy = volume.with_voxels(
        np.linspace(0, 1, volume.voxels.size, dtype=np.float32).reshape(volume.voxels.shape)
    )
    map_node = add_map_node(session, entropy, "uncertainty", ("Inferno", "Iron"))
    display = map_node.GetDisplayNode()
    assert display.GetColorNode().GetName() == "Iron"  # Inferno ships with the application only
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, 1.0))
    assert np.allclose(_matrix(map_node), _matrix(node), atol=TOL)


def test_slice_views_show_background_and_foreground(session, oblique_nifti: Path) -> None:
    node = load_volume_node(session, oblique_nifti)
    result = volume_to_node(session, node_to_volume(node), "result")
    show_in_slice_views(session, node, result, foreground_opacity=0.4)
    composites = find_nodes(session, "vtkMRMLSliceCompositeNode")
    assert [c.GetLayoutName() for c in composites] == ["Red", "Yellow", "Green"]
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == node.GetID()
        assert composite.GetForegroundVolumeID() == result.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.4)


@pytest.mark.parametrize("scene_name", ["scene.mrml", "scene.mrb"])
def test_scene_saves_and_loads_back(session, oblique_nifti: Path, tmp_path: Path, scene_name: str) -> None:
    """Nodes linked to their result files are saved by reference; the others get data files."""
    out = tmp_path / "out"
    out.mkdir()
    node = load_volume_node(session, oblique_nifti)
    volume = node_to_volume(node)
    segmentation, files = _segmentation(session, node, out)
    link_to_files({"segmentation": [segmentation]}, files)
    show_in_slice_views(session, node)
    saved = save_scene(session, out / scene_name)
    if scene_name.endswith(".mrml"):
        assert sorted(saved.values()) == ["oblique.nrrd", "tissues.seg.nrrd"]
        assert sorted(p.name for p in out.iterdir()) == ["oblique.nrrd", "scene.mrml", "tissues.seg.nrrd"]
    loaded = load_scene(out / scene_name)
    volume_nodes = find_nodes(loaded, "vtkMRMLScalarVolumeNode")
    assert [n.GetName() for n in volume_nodes] == ["oblique"]
    reloaded = node_to_volume(volume_nodes[0])
    assert np.array_equal(reloaded.voxels, volume.voxels)
    assert reloaded.geometry.is_close(volume.geometry, TOL)
    segmentation = find_nodes(loaded, "vtkMRMLSegmentationNode")[0]
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 3
    assert np.array_equal(segmentation_to_labels(segmentation, volume_nodes[0]), _labels_like(volume).voxels)


def test_scene_errors(session, tmp_path: Path) -> None:
    with pytest.raises(errors.InputError, match=r"\.mrml or \.mrb"):
        save_scene(session, tmp_path / "scene.txt")
    with pytest.raises(errors.MissingFileError):
        load_scene(tmp_path / "missing.mrml")
    fake = tmp_path / "fake.mrb"
    fake.write_text("nope")
    with pytest.raises(errors.UnreadableFileError, match="zip"):
        load_scene(fake)
