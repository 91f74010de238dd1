"""Dependencies inside 3D Slicer: requirements that leave Slicer's packages alone, pip calls that cannot change torch."""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from latentdrift.core import dependencies
from latentdrift.core.dependencies import (
    SLICER_BUNDLED,
    TORCH_PACKAGES,
    TORCH_REQUIREMENT,
    constraints_text,
    missing_requirements,
    pip_ensure_arguments,
    pip_install_arguments,
    read_requirements,
    torch_problem,
)

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "LatentDriftSlicer" / "Resources" / "requirements.txt"
INSTALLED = {
    "torch": "2.7.1",
    "torchvision": "0.22.1",
    "numpy": "2.0.2",
    "SimpleITK": "2.5.2",
    "scipy": "1.13.1",
}


def _named(requirements: list[str]) -> dict[str, str]:
    return {canonicalize_name(Requirement(r).name): str(Requirement(r).specifier) for r in requirements}


def test_requirements_are_the_engine_dependencies_slicer_lacks() -> None:
    """requirements.txt = pyproject's dependencies minus torch and minus everything Slicer 5.10 ships."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    shipped = {canonicalize_name(name) for name in (*SLICER_BUNDLED, *TORCH_PACKAGES)}
    listed = _named(read_requirements(REQUIREMENTS))
    assert not set(listed) & shipped, "requirements.txt names packages Slicer ships"
    assert listed == {name: spec for name, spec in _named(pyproject).items() if name not in shipped}
    assert {"numpy", "scipy", "simpleitk", "torch"} <= set(_named(pyproject))  # declared for pip users


def test_the_torch_minimum_is_pyprojects() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [r for r in pyproject if Requirement(r).name == "torch"] == [TORCH_REQUIREMENT]


def test_the_pip_call_pins_torch_and_slicers_packages_at_their_installed_versions(tmp_path: Path) -> None:
    """Every install path gets the constraints; pip_ensure (Slicer ≥ 5.11) also skips torch's dependency walk."""
    text = constraints_text(INSTALLED.get)
    assert text.splitlines() == [
        "torch==2.7.1",
        "torchvision==0.22.1",
        "numpy==2.0.2",
        "scipy==1.13.1",
        "SimpleITK==2.5.2",
    ]
    constraints = tmp_path / "constraints.txt"
    wanted = missing_requirements(read_requirements(REQUIREMENTS), {}.get)
    arguments = pip_install_arguments(wanted, constraints)
    assert arguments[:2] == ["-c", str(constraints)] and arguments[2:] == wanted
    ensure = pip_ensure_arguments(wanted, constraints)
    assert ensure["constraints"] == str(constraints) and ensure["requirements"] == wanted
    assert set(TORCH_PACKAGES) <= set(ensure["skip_packages"]) and ensure["prompt_install"] is False
    assert not {canonicalize_name(Requirement(r).name) for r in wanted} & {"torch", "torchvision", "numpy"}


def test_the_real_constraints_pin_the_torch_of_this_python() -> None:
    pins = dict(line.split("==") for line in constraints_text().splitlines())
    assert pins["torch"] == dependencies.installed_version("torch")


def test_missing_requirements_and_the_torch_version_check() -> None:
    versions = {"monai": "1.4.0", "einops": "0.8.1"}
    assert missing_requirements(["monai>=1.5", "einops>=0.8", "peft>=0.17"], versions.get) == [
        "monai>=1.5",
        "peft>=0.17",
    ]
    assert torch_problem({"torch": "2.7.1"}.get) is None
    assert torch_problem({}.get) is None  # not installed: the PyTorch extension installs it
    message = torch_problem({"torch": "1.13.1"}.get)
    assert message is not None and "1.13.1" in message and ">=2.4" in message and "PyTorch Utils" in message
