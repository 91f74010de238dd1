"""Run the ``latentdrift`` command inside 3D Slicer's Python (no main window).

    Slicer --no-main-window --python-script scripts/slicer_cli.py -- segment INPUT --model NAME --output DIR

Everything after ``--`` is the usual ``latentdrift`` command line; the process exits with the
command's status. The engine is found the way the Slicer module finds it: an importable
``latentdrift`` (pip install, or the module already loaded by Slicer) is used as is; otherwise the
module folder of this checkout is put on ``sys.path`` (as Slicer does for scripted modules) and
importing ``LatentDriftSlicer`` registers ``LatentDriftSlicer/Logic`` as ``latentdrift``.
Also runs with a plain Python that has the engine installed (``python scripts/slicer_cli.py -- …``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

MODULE_FOLDER = Path(__file__).resolve().parent.parent / "LatentDriftSlicer"


def register_engine() -> None:
    """Make ``latentdrift`` importable (see the module docstring)."""
    if importlib.util.find_spec("latentdrift") is not None:
        return
    if importlib.util.find_spec("LatentDriftSlicer") is None:
        sys.path.insert(0, str(MODULE_FOLDER))
    importlib.import_module("LatentDriftSlicer")  # registers the engine at import


def arguments(argv: list[str]) -> list[str]:
    """The command line after ``--`` (or after the script name when there is no ``--``)."""
    return argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]


def exit_with(status: int) -> None:
    """Leave Slicer (or plain Python) with ``status``."""
    slicer = sys.modules.get("slicer")
    if getattr(slicer, "app", None) is not None:
        slicer.util.exit(status)  # type: ignore[union-attr]
    else:
        sys.exit(status)


def main() -> None:
    """Register the engine, run the command, exit with its status."""
    register_engine()
    from latentdrift.cli import main as cli_main

    try:
        status = cli_main(arguments(sys.argv))
    except SystemExit as stop:  # argparse: --help, usage errors
        status = stop.code if isinstance(stop.code, int) else 2
    exit_with(status)


if __name__ == "__main__":
    main()
