"""The bundled sample data: the MNI ICBM152 2009 template that ships inside nilearn.

Nothing is downloaded: the files are read from the installed ``nilearn`` package (its licence notice,
which permits redistribution with attribution, is reproduced in ``docs/data.md``).
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


SAMPLE_PREFIX = "sample:"
SAMPLES = {"mni152-t1": sample_volume_path}


def resolve_input(text: str) -> Path:
    """A user's input argument as a path: ``sample:mni152-t1`` names the bundled sample volume."""
    if not text.startswith(SAMPLE_PREFIX):
        return Path(text)
    name = text[len(SAMPLE_PREFIX) :]
    if name not in SAMPLES:
        raise MissingFileError(f"Unknown sample '{name}': available samples are {', '.join(SAMPLES)}.")
    return SAMPLES[name]()
