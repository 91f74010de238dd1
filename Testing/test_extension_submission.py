"""The 3D Slicer ExtensionsIndex checks that need no network, applied to our description files.

The rules are those of Slicer/ExtensionsIndex ``scripts/check_description_files.py`` (read at commit
07f1d1b2, August 2026) and of the catalog-entry schema its ``$schema`` names
(``Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json`` in Slicer/Slicer). The checks that
download something (the schema itself, the icon and screenshot images, the repository's GitHub
topics) are replaced by their offline part: the URL's form and the file it names in this repository.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "LatentDriftSlicer.json"
S4EXT = ROOT / "LatentDriftSlicer.s4ext"
CMAKE = ROOT / "CMakeLists.txt"
EXTENSION = CATALOG.stem

SCHEMA_V101 = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
SCHEMA_PROPERTIES = {
    "$schema": str,
    "category": str,
    "scm_url": str,
    "scm_revision": str,
    "scm_type": str,
    "build_dependencies": list,
    "build_subdirectory": str,
    "enabled": bool,
    "tier": int,
}
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
ACCEPTED_CATEGORIES = {
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda",
    "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation",
    "Filtering", "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "Image Synthesis", "IGT",
    "Informatics", "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning",
    "Otolaryngology", "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy",
    "Registration", "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis",
    "Shape Regression", "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging",
    "Supervisely", "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking", "Tractography",
    "Training", "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools",
    "Web System Tools", "Wizards",
}  # fmt: skip
REPOSITORY_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
SIZE_LIMIT_MB = 100


def _catalog() -> dict:
    return json.loads(CATALOG.read_text(encoding="utf-8"))


def _cmake_value(name: str) -> str:
    match = re.search(rf'set\s*\({name}\s*"([^"]*)"\s*\)', CMAKE.read_text(), re.IGNORECASE)
    assert match, f"{name} is not set in CMakeLists.txt"
    return match.group(1)


def _s4ext() -> dict[str, str]:
    lines = (line for line in S4EXT.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return dict(line.split(" ", 1) if " " in line else (line, "") for line in lines)


def test_the_catalog_entry_is_lf_only_json_that_fits_its_schema() -> None:
    assert b"\r" not in CATALOG.read_bytes()
    catalog = _catalog()
    assert catalog["$schema"] == SCHEMA_V101
    assert SCHEMA_REQUIRED <= set(catalog) <= set(SCHEMA_PROPERTIES)  # additionalProperties: false
    assert {key: type(value) for key, value in catalog.items()} == {
        key: SCHEMA_PROPERTIES[key] for key in catalog
    }
    assert catalog.get("scm_type", "git") in ("git", "local")
    assert 1 <= catalog.get("tier", 1) <= 5
    assert all(isinstance(name, str) for name in catalog.get("build_dependencies", []))


def test_names_category_and_repository() -> None:
    """The extension name must not start with 'Slicer'; the repository name must; a known category."""
    catalog = _catalog()
    assert not EXTENSION.lower().startswith("slicer")
    assert catalog["category"] in ACCEPTED_CATEGORIES
    url = urllib.parse.urlsplit(catalog["scm_url"])
    assert "://" in catalog["scm_url"] and url.scheme in ("git", "https")
    repository = Path(url.path.strip("/").split("/")[-1]).stem
    assert repository.startswith(REPOSITORY_PREFIXES), repository


def test_cmake_project_icon_and_screenshots() -> None:
    """project() is the extension name; icon and screenshots are https image URLs of files in this repository."""
    assert re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", CMAKE.read_text(), re.IGNORECASE)[0] == EXTENSION
    repository = urllib.parse.urlsplit(_catalog()["scm_url"]).path.removesuffix(".git").strip("/")
    urls = [_cmake_value("EXTENSION_ICONURL"), *_cmake_value("EXTENSION_SCREENSHOTURLS").split()]
    assert len(urls) >= 2, "no screenshot URL"
    for url in urls:
        prefix = f"https://raw.githubusercontent.com/{repository}/main/"
        assert url.startswith(prefix) and url.lower().endswith((".png", ".jpg", ".jpeg", ".gif")), url
        with Image.open(ROOT / url.removeprefix(prefix)) as image:
            assert image.format in ("PNG", "JPEG", "GIF")


def test_the_s4ext_says_what_the_cmake_and_catalog_say() -> None:
    s4ext = _s4ext()
    catalog = _catalog()
    assert s4ext["scmurl"] == catalog["scm_url"] and s4ext["category"] == catalog["category"]
    assert (
        s4ext["depends"].split() == catalog["build_dependencies"] == _cmake_value("EXTENSION_DEPENDS").split()
    )
    assert s4ext["iconurl"] == _cmake_value("EXTENSION_ICONURL")
    assert s4ext["screenshoturls"] == _cmake_value("EXTENSION_SCREENSHOTURLS")
    assert s4ext["homepage"] == _cmake_value("EXTENSION_HOMEPAGE")
    for description in (s4ext["description"], _cmake_value("EXTENSION_DESCRIPTION")):
        assert "3D Slicer 5.10 or later" in description
    assert "find_package(Slicer 5.10 REQUIRED)" in CMAKE.read_text()


def test_a_licence_file_at_the_repository_root() -> None:
    found = [name for name in LICENSE_NAMES if (ROOT / name).is_file()]
    assert found == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "END OF TERMS AND CONDITIONS" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def _git(*arguments: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=ROOT, input=stdin, capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.xfail(
    strict=True,
    reason="known blocker for submission: the history holds about 63 MB of earlier bundled model weights "
    "(files 41 MB + history 63 MB on 2026-12-03); only a history rewrite or weights hosted outside the "
    "repository bring a clone under 100 MB. Strict: the day it passes, this mark must go.",
)
def test_a_clone_stays_under_the_size_limit() -> None:
    """A clone (the checked-out files and the history it packs) must stay under 100 MB.

    The history is counted as the packed size of every object reachable from HEAD (a lower bound:
    a clone also fetches the repository's other branches).
    """
    try:
        tracked = [name for name in _git("ls-files", "-z").split("\0") if name]
        objects = "".join(
            line.split(" ", 1)[0] + "\n" for line in _git("rev-list", "--objects", "HEAD").splitlines()
        )
        packed = _git("cat-file", "--batch-check=%(objectsize:disk)", stdin=objects)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = sum((ROOT / name).stat().st_size for name in tracked if (ROOT / name).is_file())
    history = sum(int(size) for size in packed.split())
    assert (files + history) / 2**20 < SIZE_LIMIT_MB, (
        f"files {files / 2**20:.1f} MB + history {history / 2**20:.1f} MB"
    )
