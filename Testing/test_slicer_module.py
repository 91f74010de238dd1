"""The Slicer module without the application: .ui, parameter bindings, imports, CMake lists, packaging."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "LatentDriftSlicer"
MODULE_FILE = MODULE / "LatentDriftSlicer.py"
UI_FILE = MODULE / "Resources" / "UI" / "LatentDriftSlicer.ui"

# Widget classes the parameterNodeWrapper connects to each parameter type (Slicer's guiConnectors).
CONNECTORS = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "str": {"QLineEdit", "QTextEdit"},
    "choice": {"QComboBox"},
    "node": {"qMRMLNodeComboBox"},
}
# Classes the module code expects of the widgets it drives directly.
EXPECTED_CLASSES = {
    "Button": "QPushButton",
    "ProgressBar": "QProgressBar",
    "Label": "QLabel",
    "ComboBox": "QComboBox",
    "TabWidget": "QTabWidget",
    "TextEdit": "QPlainTextEdit",
    "LineEdit": "QLineEdit",
    "Slider": "ctkSliderWidget",
    "SpinBox": "QSpinBox",
    "DoubleSpinBox": "QDoubleSpinBox",
    "Selector": "qMRMLNodeComboBox",
}
SLICER_ONLY_MODULES = (
    "qt",
    "ctk",
    "PythonQt",
    "slicer.ScriptedLoadableModule",
    "slicer.parameterNodeWrapper",
    "PyTorchUtils",
)
SLICER_GUI_FUNCTIONS = {
    "loadUI",
    "childWidgetVariables",
    "mainWindow",
    "errorDisplay",
    "warningDisplay",
    "infoDisplay",
    "confirmOkCancelDisplay",
    "confirmYesNoDisplay",
    "tryWithErrorDisplay",
    "delayDisplay",
    "VTKObservationMixin",
    "pip_install",
    "pip_ensure",
    "launchConsoleProcess",
    "exit",
    "selectModule",
    "setSliceViewerLayers",
}


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def _parameter_property(widget: ET.Element) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == "SlicerParameterName":
            return prop.findtext("string")
    return None


def _wrapper_fields() -> dict[str, str]:
    """name → annotation source of the @parameterNodeWrapper class."""
    tree = ast.parse(MODULE_FILE.read_text())
    wrappers = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list)
    ]
    assert len(wrappers) == 1, "expected exactly one @parameterNodeWrapper class"
    return {
        item.target.id: ast.unparse(item.annotation)
        for item in wrappers[0].body
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
    }


def _kind(annotation: str) -> str:
    if annotation.startswith("vtkMRML"):
        return "node"
    if annotation.startswith("Annotated["):
        base = annotation[len("Annotated[") :].split(",", 1)[0].strip()
        return "choice" if "Choice(" in annotation else base
    return annotation


def test_module_file_compiles() -> None:
    compile(MODULE_FILE.read_text(), str(MODULE_FILE), "exec")


def test_ui_parses_and_every_widget_the_code_uses_exists_with_its_class() -> None:
    widgets = _ui_widgets()
    assert ET.parse(UI_FILE).getroot().find("widget").get("class") == "qMRMLWidget"
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    missing = sorted(used - set(widgets))
    assert not missing, f"used in LatentDriftSlicer.py but not in the .ui: {missing}"
    expected = {  # the longest suffix decides: "…DoubleSpinBox" is a QDoubleSpinBox, "…SpinBox" a QSpinBox
        name: EXPECTED_CLASSES[max((s for s in EXPECTED_CLASSES if name.endswith(s)), key=len)]
        for name in used
        if any(name.endswith(s) for s in EXPECTED_CLASSES)
    }
    wrong = {
        name: widgets[name].get("class")
        for name, cls in expected.items()
        if widgets[name].get("class") != cls
    }
    assert not wrong, f"unexpected widget classes: {wrong}"


def test_every_parameter_is_bound_to_exactly_one_widget_of_a_fitting_class() -> None:
    fields = _wrapper_fields()
    bound: dict[str, list[ET.Element]] = {}
    for widget in _ui_widgets().values():
        name = _parameter_property(widget)
        if name:
            bound.setdefault(name, []).append(widget)
    assert sorted(set(fields) - set(bound)) == [], "parameters without a widget"
    assert sorted(set(bound) - set(fields)) == [], "widgets bound to no parameter"
    assert {n: len(w) for n, w in bound.items() if len(w) != 1} == {}, "parameters bound to several widgets"
    for name, annotation in fields.items():
        widget = bound[name][0]
        kind = _kind(annotation)
        assert widget.get("class") in CONNECTORS[kind], (
            f"{name}: {annotation} cannot bind to {widget.get('class')}"
        )
        if kind == "node":
            types = [
                s.text
                for p in widget.findall("property")
                if p.get("name") == "nodeTypes"
                for s in p.iter("string")
            ]
            assert types == [annotation], f"{name}: node combo box lists {types}"


def test_node_combo_boxes_follow_the_scene() -> None:
    combos = {n for n, w in _ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    connected = {
        c.findtext("receiver")
        for c in ET.parse(UI_FILE).getroot().iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
    }
    assert combos == connected


def _slicer_only_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith(SLICER_ONLY_MODULES)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(SLICER_ONLY_MODULES):
                found.append(node.module)
            if node.module == "slicer.util":
                found += [f"slicer.util.{a.name}" for a in node.names if a.name in SLICER_GUI_FUNCTIONS]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in SLICER_GUI_FUNCTIONS
            and ast.unparse(node.value) == "slicer.util"
        ):
            found.append(f"slicer.util.{node.attr}")
    return found


def test_qt_and_slicer_gui_only_in_the_module_file() -> None:
    offenders = {
        str(path.relative_to(ROOT)): uses
        for path in sorted((MODULE / "Logic").rglob("*.py"))
        if (uses := _slicer_only_uses(path))
    }
    assert offenders == {}, f"Slicer-only/Qt imports in the engine: {offenders}"
    assert {"qt", "slicer.ScriptedLoadableModule", "slicer.util.loadUI"} <= set(
        _slicer_only_uses(MODULE_FILE)
    )


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not found"
    return [token.replace("${MODULE_NAME}", "LatentDriftSlicer") for token in match.group(1).split()]


def _tree_files(suffix_filter) -> set[str]:
    return {
        str(p.relative_to(MODULE))
        for p in MODULE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and suffix_filter(p)
    }


def test_cmake_lists_every_python_file_and_resource_and_nothing_else() -> None:
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "file(GLOB" not in text.upper().replace(" ", "")
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    problems = []
    for label, listed, present in (
        ("SCRIPTS", set(scripts), _tree_files(lambda p: p.suffix == ".py")),
        (
            "RESOURCES",
            set(resources),
            _tree_files(lambda p: p.suffix not in (".py", ".pyc") and p.name != "CMakeLists.txt"),
        ),
    ):
        problems += [
            f"{label}: missing from LatentDriftSlicer/CMakeLists.txt: {name}"
            for name in sorted(present - listed)
        ]
        problems += [f"{label}: listed but not in the tree: {name}" for name in sorted(listed - present)]
    assert len(scripts) == len(set(scripts)) and len(resources) == len(set(resources)), "listed twice"
    assert not problems, "\n".join(problems)
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text


def test_extension_cmake_has_the_template_structure() -> None:
    """The extension CMake of Slicer's template; the description files' rules: test_extension_submission.py."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for needle in (
        "project(LatentDriftSlicer)",
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        'set(EXTENSION_DEPENDS "PyTorch")',
        "find_package(Slicer 5.10 REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(LatentDriftSlicer)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert needle in cmake, needle
    category = re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', cmake).group(1)
    assert json.loads((ROOT / "LatentDriftSlicer.json").read_text())["category"] == category
    assert re.search(r'categories = \["' + category, MODULE_FILE.read_text())


def test_icon_is_a_128_pixel_png() -> None:
    with Image.open(MODULE / "Resources" / "Icons" / "LatentDriftSlicer.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


def _function_source(path: Path, name: str) -> str:
    tree = ast.parse(path.read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    return ast.get_source_segment(path.read_text(), function)


def test_register_engine_maps_logic_to_latentdrift_without_putting_logic_on_sys_path() -> None:
    """The module's registration, run in a Python without site-packages (so no pip-installed engine)."""
    checks = """
assert importlib.util.find_spec("latentdrift") is None
registerEngine()
registerEngine()
import latentdrift.core.errors
assert Path(latentdrift.__file__).parent == ENGINE_FOLDER
assert issubclass(latentdrift.core.errors.InputError, latentdrift.core.errors.LatentDriftError)
assert not any(Path(p or ".").resolve() == ENGINE_FOLDER for p in sys.path)
assert importlib.util.find_spec("errors") is None
print("registered")
"""
    code = "\n".join(
        [
            "import importlib, importlib.util, sys",
            "from pathlib import Path",
            f"ENGINE_FOLDER = Path({str(MODULE / 'Logic')!r})",
            _function_source(MODULE_FILE, "registerEngine"),
            checks,
        ]
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT / "Testing"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "registered"


def test_slicer_cli_script_runs_the_command_and_exits_with_its_status(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "slicer_cli.py"
    done = subprocess.run(
        [sys.executable, str(script), "--", "no-such-command"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 2 and "invalid choice: 'no-such-command'" in done.stderr
    done = subprocess.run(
        [sys.executable, str(script), "--", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.startswith("latentdrift ")


HEAVY = ("torch", "psutil", "diffusers", "transformers", "monai", "accelerate", "peft", "tqdm")
"""Packages Slicer does not ship (or that load a GPU stack): never imported into Slicer's own process."""


def _engine_modules_the_module_imports() -> list[str]:
    """Every ``latentdrift`` module LatentDriftSlicer.py imports, at load time or in any function."""
    found = set()
    for node in ast.walk(ast.parse(MODULE_FILE.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("latentdrift"):
            found.add(node.module)
            if node.module == "latentdrift":
                found.update(f"latentdrift.{alias.name}" for alias in node.names)
    return sorted(found)


def test_the_engine_modules_the_panel_imports_load_without_any_heavy_package() -> None:
    """Panel set-up, choices, parameter changes and loading results never bring torch & co. into Slicer."""
    modules = _engine_modules_the_module_imports()
    assert {
        "latentdrift.bridge.console",
        "latentdrift.core.settings",
        "latentdrift.core.dependencies",
    } <= set(modules)
    code = f"""
import importlib, importlib.util, sys
from pathlib import Path
HEAVY = {HEAVY!r}

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"blocked: {{name}}")
        return None

sys.meta_path.insert(0, Blocker())
ENGINE_FOLDER = Path({str(MODULE / "Logic")!r})
{_function_source(MODULE_FILE, "registerEngine")}
registerEngine()
for name in {modules!r}:
    importlib.import_module(name)
loaded = sorted(n for n in sys.modules if n.split(".")[0] in HEAVY)
assert not loaded, loaded
print("light:", len({modules!r}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT / "Testing"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"light: {len(modules)}"


def test_the_module_file_parses_on_python_3_9_and_imports_no_engine_module_there() -> None:
    """On Slicer 5.8 (Python 3.9) the file must load to say, once, that the module needs Slicer 5.10."""
    tree = ast.parse(MODULE_FILE.read_text(), feature_version=(3, 9))
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [ast.unparse(n) for n in top_level if "latentdrift" in ast.unparse(n)]
    gate = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "SUPPORTED")
    assert "registerEngine()" in ast.unparse(gate)
