"""What every task stands on: volumes and their geometry, value rules and settings, devices, result folders,
errors, progress, interruptions, input checks, the model registry and the engine's dependencies."""
