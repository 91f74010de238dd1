"""LatentDriftSlicer's engine: Latent Drift counterfactual editing and LDSeg segmentation.

Imported as ``latentdrift``. The folder is ``LatentDriftSlicer/Logic`` in the repository: pip maps
it to this name (``pyproject.toml``), and the Slicer module registers the same name when Slicer
loads it, so a bare ``Logic`` never lands on ``sys.path``. Nothing here imports Qt or Slicer's GUI.
"""

from __future__ import annotations

__version__ = "0.1.0"
