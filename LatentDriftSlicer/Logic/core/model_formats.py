"""The ``format`` values the engine's own model folders declare in their ``config.json``.

A leaf module: the light recognisers (:mod:`latentdrift.segmentation.segmenters`) and the readers and writers that
import torch (:mod:`latentdrift.segmentation.ldseg.model_io`) both take the value from here.
"""

LDSEG_FORMAT = "latentdrift-ldseg"
"""The ``format`` value of an LDSeg model's config.json (written by :mod:`latentdrift.segmentation.ldseg.model_io`)."""
