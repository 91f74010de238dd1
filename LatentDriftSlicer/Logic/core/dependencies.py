"""The engine's Python packages inside 3D Slicer: what is missing, and a pip call that cannot break Slicer.

Slicer ships its own builds of numpy, scipy, SimpleITK, VTK, pydicom, requests and more
(:data:`SLICER_BUNDLED`); torch comes from the PyTorch extension, which picks the build that fits the
GPU. Installing the engine's other requirements (``Resources/requirements.txt``, which names none of
those) must change neither: the pip call gets a constraints file pinning every one of them that is
installed at its installed version (:func:`constraints_text`), and on Slicer ≥ 5.11
``slicer.packaging.pip_ensure`` also leaves torch out of the dependency walk (``skip_packages``).
A torch older than :data:`TORCH_REQUIREMENT` (another extension's) is reported, not replaced
(:func:`torch_problem`).

Pure functions, no Slicer and no torch: the Slicer module calls them and the tests check what they
build. Nothing is imported or installed here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

TORCH_REQUIREMENT = "torch>=2.4"
"""The oldest torch the engine runs on (``pyproject.toml`` says the same; a test checks)."""
TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")
"""The PyTorch extension's packages: pinned at their installed versions, never installed by us."""
SLICER_BUNDLED = (
    "numpy",
    "scipy",
    "SimpleITK",
    "vtk",
    "pydicom",
    "pillow",
    "six",
    "retrying",
    "dicomweb-client",
    "requests",
    "certifi",
    "idna",
    "charset-normalizer",
    "urllib3",
    "chardet",
    "couchdb",
    "GitPython",
    "gitdb",
    "smmap",
    "cryptography",
    "PyJWT",
    "wrapt",
    "Deprecated",
    "pycparser",
    "cffi",
    "PyNaCl",
    "python-dateutil",
    "typing-extensions",
    "PyGithub",
    "packaging",
    "pyparsing",
    "pip",
    "setuptools",
    "wheel",
)
"""The Python distributions 3D Slicer 5.10 ships (its ``SuperBuild/External_python-*.cmake``, SimpleITK
and VTK): never listed in the requirements, pinned when installing."""
REQUESTER = "LatentDrift"

Lookup = Callable[[str], "str | None"]


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (None when it is not installed); imports nothing."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def read_requirements(path: str | Path) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines left out)."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def missing_requirements(requirements: Iterable[str], version_of: Lookup = installed_version) -> list[str]:
    """The requirements that are not installed, or installed at a version they exclude."""
    missing = []
    for text in requirements:
        requirement = Requirement(text)
        installed = version_of(requirement.name)
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            missing.append(text)
    return missing


def torch_problem(version_of: Lookup = installed_version) -> str | None:
    """Why the installed torch cannot run the engine (None when it can, or when torch is not installed)."""
    installed = version_of("torch")
    requirement = Requirement(TORCH_REQUIREMENT)
    if installed is None or requirement.specifier.contains(installed, prereleases=True):
        return None
    return (
        f"LatentDrift needs PyTorch {requirement.specifier}, but this Slicer has torch {installed} "
        "(installed by another extension?). Open the PyTorch Utils module, uninstall PyTorch, restart "
        "Slicer, and run LatentDrift again: it installs a current PyTorch through the PyTorch extension."
    )


def constraints_text(version_of: Lookup = installed_version) -> str:
    """A pip constraints file pinning torch and Slicer's own packages at their installed versions."""
    pins = [
        f"{name}=={version}"
        for name in (*TORCH_PACKAGES, *SLICER_BUNDLED)
        if (version := version_of(name)) is not None
    ]
    return "".join(pin + "\n" for pin in pins)


def pip_install_arguments(requirements: Iterable[str], constraints: str | Path) -> list[str]:
    """The argument list for ``slicer.util.pip_install`` (Slicer 5.10): ``install -c CONSTRAINTS REQ…``."""
    return ["-c", str(constraints), *requirements]


def pip_ensure_arguments(requirements: Iterable[str], constraints: str | Path) -> dict[str, Any]:
    """The keyword arguments for ``slicer.packaging.pip_ensure`` (Slicer ≥ 5.11), asked without its own prompt
    (the module has asked once already)."""
    return {
        "requirements": list(requirements),
        "constraints": str(constraints),
        "skip_packages": list(TORCH_PACKAGES),
        "prompt_install": False,
        "requester": REQUESTER,
    }
