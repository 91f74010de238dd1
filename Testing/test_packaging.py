"""Repository invariants: the package list, the README commands, the engine's import boundary."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "LatentDriftSlicer" / "Logic"


def test_pyproject_lists_every_engine_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(("latentdrift", *init.parent.relative_to(ENGINE).parts))
        for init in ENGINE.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert listed == folders, f"missing: {sorted(folders - listed)}, extra: {sorted(listed - folders)}"


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quick_start, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readme_test_command() -> None:
    main_job, test_command = _readme_commands()
    assert "setup.sh" in main_job and "latentdrift" in main_job
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_engine_imports_without_qt_or_the_slicer_application() -> None:
    code = (
        "import sys, importlib, pkgutil, latentdrift\n"
        "for m in pkgutil.walk_packages(latentdrift.__path__, 'latentdrift.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('qt', 'ctk', 'PythonQt', 'PySide6', 'PyQt5')]\n"
        "assert not bad, bad\n"
        "import slicer\n"
        "assert getattr(slicer, 'app', None) is None\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_pickle_loading_of_weights_in_the_engine() -> None:
    offenders = []
    for path in ENGINE.rglob("*.py"):
        text = path.read_text()
        if re.search(r"torch\.load\((?![^)]*weights_only=True)", text) or "pickle.load" in text:
            offenders.append(str(path.relative_to(ROOT)))
        if "trust_remote_code=True" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders
