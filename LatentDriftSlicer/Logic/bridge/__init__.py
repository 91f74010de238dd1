"""Between the engine and Slicer: engine child processes, result files → scene nodes, and the node-level
API of the Python console and the panel. Nothing here imports torch (Slicer's own process imports it)."""
