"""End-to-end workflows: files in, a scene and a result folder out, one module per command.

The CLI, headless batch runs and the Slicer console call these same functions; each writes through
a :class:`~latentdrift.core.results.ResultFolder`, so its outputs appear whole with a ``summary.json`` or
not at all. Modules are imported on demand: ``scene_check`` needs no model library, ``segment``
loads the LDSeg stack.
"""
