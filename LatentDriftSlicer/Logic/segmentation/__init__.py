"""Segmentation: the segmenter seam (input spec, protocol, registry), LDSeg its first kind, whole-volume
segmentation, training data from image/label pairs, ``.seg.nrrd`` files and the command's workflow."""
