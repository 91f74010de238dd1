"""The MRML bridge: engine values ↔ Slicer scene nodes, display set-up, saving and loading scenes.

Works in two places with the same calls:

* inside the 3D Slicer application: ``SceneSession.from_application()`` wraps ``slicer.mrmlScene`` and
  the running module logics;
* anywhere else, on PyPI's ``slicer-core`` (the real MRML core without Qt):
  ``SceneSession.headless()`` builds a scene, an application logic and the Colors, Terminologies,
  Volumes and Segmentations module logics, the way the application does at start-up.

The engine process never needs it: every command writes its results as files by role (NRRD volumes,
``.seg.nrrd`` segmentations). :func:`load_outputs` turns those files into nodes with their display set
up; the Slicer panel and the console run it in Slicer's process (or on slicer-core), and a command
run from the command line runs it on slicer-core to save its optional scene (``scene.mrml``,
``scene.mrb``). Only MRML/VTK calls and the ``slicer.util`` array helpers that exist in both are used;
``slicer`` is imported only when a function needs it. This module never touches tensors, and never
recomputes geometry: IJK-to-RAS comes from :mod:`.volumes`. Input nodes are never modified: every
result is a new node.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError, MissingFileError, UnreadableFileError
from ..core.volumes import Geometry, Volume, read_volume

# Colour tables by preference: the first that exists in the scene is used. The last of each is built
# procedurally by Slicer's colour logic, so it exists headless too; the file-based ones exist in the app.
UNCERTAINTY_COLORMAP = ("Inferno", "Iron")
PROBABILITY_COLORMAP = ("Viridis", "PET-Heat")
DIFFERENCE_COLORMAP = ("DivergingBlueRed", "fMRI")
GEOMETRY_TOLERANCE = 1e-3  # mm: outputs go through float32 files


def _slicer() -> Any:
    import slicer  # slicer-core outside the application, the application's own module inside

    return slicer


def _vtk_matrix(array: np.ndarray) -> Any:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(array[row, col]))
    return matrix


def _numpy_matrix(matrix: Any) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


MODULE_LOGICS = (
    ("Colors", "vtkSlicerColorLogic"),
    ("Terminologies", "vtkSlicerTerminologiesModuleLogic"),
    ("Volumes", "vtkSlicerVolumesLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
)
"""The module logics a headless scene registers (by module name), as the application does at start-up."""


def headless_unavailable() -> str | None:
    """Why :meth:`SceneSession.headless` cannot work in this Python (None when it can).

    It needs ``slicer-core`` (PyPI) or Slicer's own ``slicer`` package with the module logics; Slicer's
    ``PythonSlicer`` (the interpreter of the panel's engine process) loads no module logics.
    """
    try:
        slicer = _slicer()
    except ImportError:
        return "Slicer's MRML core is not installed here (pip install 'latentdrift-slicer[scene]')"
    missing = [name for _, name in MODULE_LOGICS if not hasattr(slicer, name)]
    if missing:
        return f"this Python's slicer package lacks the module logics {', '.join(missing)}"
    return None


@dataclass
class SceneSession:
    """A scene and the module logics the bridge needs."""

    scene: Any
    application_logic: Any
    volumes_logic: Any
    segmentations_logic: Any
    colors_logic: Any
    terminologies_logic: Any

    @classmethod
    def headless(cls) -> SceneSession:
        """A new scene with Slicer's application and module logics, without the application."""
        slicer = _slicer()
        import vtk

        scene = slicer.vtkMRMLScene()
        cache = slicer.vtkCacheManager()  # no remote cache folder: scenes here refer to local files only
        io_manager = slicer.vtkDataIOManager()
        io_manager.SetCacheManager(cache)
        scene.SetCacheManager(cache)
        scene.SetDataIOManager(io_manager)
        app_logic = slicer.vtkSlicerApplicationLogic()
        app_logic.SetMRMLScene(scene)
        logics = {}
        verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
        # Terminology and colour *files* ship with the application, not with slicer-core: their
        # loaders log errors here although the built-in tables and codes still work.
        vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
        try:
            for name, class_name in MODULE_LOGICS:
                logic = getattr(slicer, class_name)()
                logic.SetMRMLApplicationLogic(app_logic)
                logic.SetMRMLScene(scene)
                app_logic.SetModuleLogic(name, logic)
                logics[name] = logic
        finally:
            vtk.vtkLogger.SetStderrVerbosity(verbosity)
        return cls(
            scene,
            app_logic,
            logics["Volumes"],
            logics["Segmentations"],
            logics["Colors"],
            logics["Terminologies"],
        )

    @classmethod
    def from_application(cls) -> SceneSession:
        """The running Slicer application's scene and logics (only inside Slicer)."""
        slicer = _slicer()
        return cls(
            scene=slicer.mrmlScene,
            application_logic=slicer.app.applicationLogic(),
            volumes_logic=slicer.modules.volumes.logic(),
            segmentations_logic=slicer.modules.segmentations.logic(),
            colors_logic=slicer.modules.colors.logic(),
            terminologies_logic=slicer.modules.terminologies.logic(),
        )

    @classmethod
    def current(cls) -> SceneSession:
        """The application's session inside Slicer, otherwise a new headless one."""
        slicer = _slicer()
        if getattr(slicer, "app", None) is not None and getattr(slicer, "mrmlScene", None) is not None:
            return cls.from_application()
        return cls.headless()

    def color_node_id(self, preferences: Sequence[str]) -> str:
        """ID of the first colour table in ``preferences`` that this scene has (else grey)."""
        for name in (*preferences, "Grey"):
            node = self.scene.GetFirstNodeByName(name)
            if node is not None and node.IsA("vtkMRMLColorNode"):
                return str(node.GetID())
        raise InputError("The scene has no colour tables: create the session with SceneSession.headless().")


# --------------------------------------------------------------------------- volumes ↔ nodes


def load_volume_node(session: SceneSession, path: str | Path, name: str | None = None) -> Any:
    """Load a volume file (or DICOM series folder) into a new scalar volume node.

    Files go through Slicer's own archetype reader (so the node keeps a storage node pointing at
    the file); DICOM folders go through :func:`volumes.read_volume`. The file is checked first with
    :func:`volumes.read_volume` rules: 2D, 4D and vector files are refused with advice.
    """
    path = Path(path)
    volume = read_volume(path)  # validates shape and readability with specific messages
    if path.is_dir():
        return volume_to_node(session, volume, name or volume.name)
    node = session.volumes_logic.AddArchetypeVolume(str(path), name or volume.name)
    if node is None:
        raise UnreadableFileError(f"Slicer could not load '{path}' as a scalar volume.")
    return node


def node_to_volume(node: Any) -> Volume:
    """A :class:`Volume` copy of a scalar volume node's voxels and geometry (the node is untouched)."""
    slicer = _slicer()
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        kind = "nothing" if node is None else node.GetClassName()
        raise InputError(f"Expected a scalar volume node, got {kind}: pick an image volume.")
    if node.GetImageData() is None:
        raise MissingFileError(f"Volume node '{node.GetName()}' holds no image data.")
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    voxels = np.array(slicer.util.arrayFromVolume(node), copy=True)
    return Volume(
        voxels=voxels, geometry=Geometry.from_ijk_to_ras(_numpy_matrix(matrix)), name=node.GetName()
    )


def volume_to_node(
    session: SceneSession, volume: Volume, name: str, node_class: str = "vtkMRMLScalarVolumeNode"
) -> Any:
    """A NEW volume node (scalar or label map) holding ``volume``'s voxels on its exact geometry."""
    slicer = _slicer()
    node = session.scene.AddNewNodeByClass(node_class, session.scene.GenerateUniqueName(name))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.voxels))
    node.SetIJKToRASMatrix(_vtk_matrix(volume.geometry.ijk_to_ras()))
    node.CreateDefaultDisplayNodes()
    return node


def add_map_node(
    session: SceneSession,
    volume: Volume,
    name: str,
    colormap: Sequence[str],
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Any:
    """A scalar volume for a map (uncertainty, probability, difference) with a colour table and window.

    ``value_range`` sets window/level so the colour table spans it (e.g. (0, 1) for entropy, a
    symmetric range for signed differences).
    """
    node = volume_to_node(session, volume, name)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(session.color_node_id(colormap))
    display.AutoWindowLevelOff()
    low, high = value_range
    display.SetWindowLevelMinMax(low, high)
    return node


def match_display(node: Any, reference: Any) -> None:
    """Show ``node`` with the window/level and colour table of ``reference`` (e.g. a result over its input).

    Fading between the two then compares like with like.
    """
    source, target = reference.GetDisplayNode(), node.GetDisplayNode()
    if source is None or target is None:
        return
    target.AutoWindowLevelOff()
    target.SetWindowLevel(source.GetWindow(), source.GetLevel())
    target.SetAndObserveColorNodeID(source.GetColorNodeID())


# --------------------------------------------------------------------------- result files → nodes


@dataclass
class OutputFiles:
    """Result files by role (names relative to ``folder``), to load over ``input_node`` on its grid."""

    folder: Path
    outputs: dict[str, list[str]]
    input_node: Any
    template: Volume


def load_outputs(
    session: SceneSession, files: OutputFiles, roles: Sequence[str], foreground_opacity: float
) -> dict[str, list[Any]]:
    """Load the files of ``roles`` as NEW nodes on the input's exact grid, display set up; returns them by role.

    Each role has its loader (:data:`ROLE_LOADERS`): images take the input's window and colour table,
    maps a colour table and a fixed window, segmentations (``.seg.nrrd``) fill and outline. The nodes
    keep no link to the files. The input is shown in the background of every slice view, the first
    result of :data:`FOREGROUND_ROLES` in the foreground at ``foreground_opacity``. Node names are the
    input's name and the role (``MRHead uncertainty``, ``MRHead probability 2``).
    """
    unknown = [role for role in roles if role not in ROLE_LOADERS]
    if unknown:
        raise InputError(
            f"Cannot load output role(s) {', '.join(unknown)}: known roles are {', '.join(ROLE_LOADERS)}."
        )
    nodes: dict[str, list[Any]] = {}
    base = files.input_node.GetName()
    for role in roles:
        for index, name in enumerate(files.outputs.get(role, [])):
            label = f"{base} {role}" if index == 0 else f"{base} {role} {index + 1}"
            node = ROLE_LOADERS[role](session, files.folder / name, files.template, files.input_node, label)
            nodes.setdefault(role, []).append(node)
    foreground = next((nodes[role][0] for role in FOREGROUND_ROLES if nodes.get(role)), None)
    show_in_slice_views(session, files.input_node, foreground, foreground_opacity)
    return nodes


def link_to_files(nodes: dict[str, list[Any]], files: OutputFiles) -> None:
    """Point each node :func:`load_outputs` made at the file it came from, so a scene saved beside the
    files refers to them instead of writing the data again."""
    for role, role_nodes in nodes.items():
        for node, name in zip(role_nodes, files.outputs[role], strict=True):
            node.AddDefaultStorageNode()
            node.GetStorageNode().SetFileName(str(files.folder / name))


def _load_image(session: SceneSession, path: Path, template: Volume, reference: Any, name: str) -> Any:
    node = volume_to_node(session, template.with_voxels(_voxels_on_grid(path, template)), name)
    match_display(node, reference)
    return node


def _map_loader(colormap: Sequence[str], symmetric: bool) -> Callable[..., Any]:
    """A loader for maps: ``symmetric`` ones get a window of ±max|value|, others 0…1, and a colour legend."""

    def load(session: SceneSession, path: Path, template: Volume, reference: Any, name: str) -> Any:
        voxels = _voxels_on_grid(path, template)
        value_range = (0.0, 1.0)
        if symmetric:
            bound = float(np.max(np.abs(voxels))) or 1.0
            value_range = (-bound, bound)
        node = add_map_node(session, template.with_voxels(voxels), name, colormap, value_range)
        session.colors_logic.AddDefaultColorLegendDisplayNode(node)
        return node

    return load


def _segmentation_loader(fill: bool) -> Callable[..., Any]:
    """A loader for ``.seg.nrrd`` files (segment names, colours, terminology from the header): a new
    segmentation node shown with outlines, and with a translucent fill when ``fill``."""

    def load(session: SceneSession, path: Path, template: Volume, reference: Any, name: str) -> Any:
        slicer = _slicer()
        node = session.scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", session.scene.GenerateUniqueName(name)
        )
        reader = slicer.vtkMRMLSegmentationStorageNode()  # not added to the scene: no link to the file
        reader.SetFileName(str(path))
        if not reader.ReadData(node):
            session.scene.RemoveNode(node)
            raise UnreadableFileError(f"Could not read the segmentation '{path}'.")
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        display = node.GetDisplayNode()
        display.SetVisibility2DFill(fill)
        display.SetVisibility2DOutline(True)
        display.SetOpacity2DFill(0.35)
        return node

    return load


def _voxels_on_grid(path: Path, template: Volume) -> np.ndarray:
    """The voxels of an output file, checked to lie on the input's grid."""
    volume = read_volume(path)
    if volume.voxels.shape != template.voxels.shape or not volume.geometry.is_close(
        template.geometry, GEOMETRY_TOLERANCE
    ):
        raise InputError(
            f"Output '{path.name}' is not on the input's voxel grid "
            f"({volume.voxels.shape} vs {template.voxels.shape}): it cannot be shown over the input."
        )
    return volume.voxels


ROLE_LOADERS: dict[str, Callable[..., Any]] = {
    "volume": _load_image,
    "counterfactual": _load_image,
    "difference": _map_loader(DIFFERENCE_COLORMAP, symmetric=True),
    "uncertainty": _map_loader(UNCERTAINTY_COLORMAP, symmetric=False),
    "probability": _map_loader(PROBABILITY_COLORMAP, symmetric=False),
    "segmentation": _segmentation_loader(fill=True),
    "brain_mask": _segmentation_loader(fill=False),
}
"""Each output role a result folder can hold, and how its files become nodes (``.seg.nrrd`` roles:
segmentation nodes; volumes: scalar volume nodes on the input's grid)."""
FOREGROUND_ROLES = ("counterfactual", "volume", "uncertainty")
"""The roles shown over the input, by preference."""
SEGMENT_ROLES = ("segmentation", "uncertainty", "probability", "brain_mask")
"""The roles of ``latentdrift segment``'s result files that show over the input (a role a run did not
write is skipped: ``brain_mask`` appears once the brain front end writes it)."""
COUNTERFACTUAL_ROLES = ("counterfactual", "difference", "brain_mask")
"""The roles of ``latentdrift counterfactual``'s result files that show over the input."""


def segmentation_to_labels(segmentation_node: Any, reference: Any) -> np.ndarray:
    """The label array ``[k, j, i]`` of a segmentation node on a reference volume's grid (1, 2, … by segment order)."""
    slicer = _slicer()
    labelmap = segmentation_node.GetScene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "_tmp_export")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(
            segmentation_node, labelmap, reference
        )
        if not ok:
            raise InputError(f"Could not export segmentation '{segmentation_node.GetName()}' to labels.")
        return np.array(slicer.util.arrayFromVolume(labelmap), copy=True)
    finally:
        segmentation_node.GetScene().RemoveNode(labelmap)


# --------------------------------------------------------------------------- display


def show_in_slice_views(
    session: SceneSession,
    background: Any,
    foreground: Any | None = None,
    foreground_opacity: float = 0.5,
) -> None:
    """Input as background, a result as foreground at ``foreground_opacity``, in every slice view.

    Headless scenes have no views yet: the three standard slice composite nodes (Red, Yellow,
    Green) are created so that the saved scene opens in Slicer with these layers.
    """
    composites = _slice_composite_nodes(session)
    for composite in composites:
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(foreground_opacity)


def _slice_composite_nodes(session: SceneSession) -> list[Any]:
    scene = session.scene
    nodes = [
        scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
        for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]
    if nodes:
        return nodes
    slicer = _slicer()
    for view in ("Red", "Yellow", "Green"):
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(view)
        composite.SetSingletonTag(view)
        nodes.append(scene.AddNode(composite))
    return nodes


# --------------------------------------------------------------------------- scenes on disk


def save_scene(session: SceneSession, path: str | Path) -> dict[str, str]:
    """Write the scene with its data: ``*.mrml`` (data files beside it) or a single-file ``*.mrb``.

    For ``.mrml`` each storable node gets its data file next to the scene: a node whose storage node
    already names a file there keeps it (result files loaded by role, :func:`link_to_files`), the
    others are written (volumes as ``.nrrd``, segmentations as ``.seg.nrrd``) under a file name made
    from the node name. Returns the data file name of each node ID (empty for ``.mrb``, whose data
    lives inside the bundle).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mrb":
        if not session.scene.WriteToMRB(str(path)):
            raise UnreadableFileError(f"Could not write the scene bundle '{path}'.")
        return {}
    if path.suffix.lower() != ".mrml":
        raise InputError(f"Scene file '{path}' must end in .mrml or .mrb.")
    written = _write_storable_nodes(session, path.parent)
    session.scene.SetURL(str(path))
    session.scene.SetRootDirectory(str(path.parent))
    if not session.scene.Commit():
        raise UnreadableFileError(f"Could not write the scene '{path}'.")
    return written


def _write_storable_nodes(session: SceneSession, folder: Path) -> dict[str, str]:
    """Give every storable node a data file in ``folder``; returns the file name of each node ID.

    A node whose storage node already names a file in ``folder`` keeps it (nothing is rewritten);
    the others are written there under a name made from the node name.
    """
    nodes = [
        node for node in _storable_nodes(session) if node.GetStorageNode() or node.AddDefaultStorageNode()
    ]
    written = {
        node.GetID(): Path(node.GetStorageNode().GetFileName()).name
        for node in nodes
        if _stored_in(node, folder)
    }
    used = set(written.values())
    for node in nodes:
        if node.GetID() in written:
            continue
        suffix = ".seg.nrrd" if node.IsA("vtkMRMLSegmentationNode") else ".nrrd"
        file_name = _unique_file_name(node.GetName(), suffix, used)
        storage = node.GetStorageNode()
        storage.SetFileName(str(folder / file_name))
        if not storage.WriteData(node):
            raise UnreadableFileError(f"Could not write '{file_name}' for node '{node.GetName()}'.")
        written[node.GetID()] = file_name
    return written


def _storable_nodes(session: SceneSession) -> list[Any]:
    """The scene's data nodes (built-in colour tables and the like are recreated by Slicer: left out)."""
    candidates = find_nodes(session, "vtkMRMLStorableNode")
    return [node for node in candidates if not node.GetHideFromEditors() or node.IsA("vtkMRMLVolumeNode")]


def _stored_in(node: Any, folder: Path) -> bool:
    """True when ``node``'s storage node names an existing file in ``folder``."""
    name = node.GetStorageNode().GetFileName()
    return bool(name) and Path(name).is_file() and Path(name).resolve().parent == folder.resolve()


def _unique_file_name(name: str, suffix: str, used: set[str]) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "node"
    candidate, counter = stem + suffix, 1
    while candidate in used:
        counter += 1
        candidate = f"{stem}_{counter}{suffix}"
    used.add(candidate)
    return candidate


def load_scene(path: str | Path) -> SceneSession:
    """A new headless session holding the scene read from a ``.mrml`` or ``.mrb`` file."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"Scene '{path}' does not exist.")
    session = SceneSession.headless()
    if path.suffix.lower() == ".mrb":
        if not zipfile.is_zipfile(path):
            raise UnreadableFileError(f"'{path}' is not a Slicer scene bundle (.mrb is a zip file).")
        ok = session.scene.ReadFromMRB(str(path))
    else:
        session.scene.SetURL(str(path))
        ok = session.scene.Connect()
    if not ok:
        raise UnreadableFileError(f"Could not read the scene '{path}'.")
    return session


def find_nodes(session: SceneSession, class_name: str) -> list[Any]:
    """All nodes of a class (e.g. ``vtkMRMLScalarVolumeNode``), in scene order."""
    scene = session.scene
    return [scene.GetNthNodeByClass(n, class_name) for n in range(scene.GetNumberOfNodesByClass(class_name))]
