"""The brain front end: brings a real head scan into a brain model's domain and its results back.

Real scans are heads (skull, scalp, bias fields, any orientation, anisotropic voxels); the bundled brain
models were trained on a skull-stripped template. Each model declares what it expects
(:class:`InputContract`, in its own config); :func:`.head.prepare_head` satisfies that contract (N4 bias-field
correction, deepbet brain extraction, affine alignment to the MNI152 template) and the functions of
:mod:`.tasks` put the model's results back on the input's grid.

``contract`` is light (no torch, no SimpleITK) and imported eagerly; the steps load on first use.
"""

from __future__ import annotations

from .contract import BRAIN_T1, NATIVE, InputContract, read_contract

__all__ = ["BRAIN_T1", "NATIVE", "InputContract", "read_contract"]
