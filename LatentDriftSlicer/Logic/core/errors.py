"""One error hierarchy for everything the engine refuses.

Every error raised on purpose by the engine is a :class:`LatentDriftError`. Its message is written
for the person at the keyboard: one line saying what is wrong and how to fix it. The CLI prints
exactly that line (no traceback unless ``--debug``) and exits with :attr:`LatentDriftError.exit_code`;
the Slicer module shows it in an error dialog.
"""

from __future__ import annotations


class LatentDriftError(Exception):
    """Base class: a problem the user can fix. ``str(error)`` is the whole message."""

    exit_code = 2


class InputError(LatentDriftError):
    """An input file, folder, node or array cannot be used as given."""


class MissingFileError(InputError):
    """A path that should exist does not."""


class UnreadableFileError(InputError):
    """A file exists but no reader understands it."""


class VolumeShapeError(InputError):
    """Not a 3D scalar volume: a 2D image, a 4D series or a vector (multi-component) volume."""


class LabelMapGivenError(InputError):
    """A label map (segmentation) was given where an intensity image is expected."""


class NonFiniteVoxelsError(InputError):
    """The volume holds NaN or infinite voxels."""


class EmptyVolumeError(InputError):
    """The volume is empty or constant, so it carries no image to work on."""


class SliceRangeError(InputError):
    """A slice range is not ``a:b``, is empty or reversed, or lies (partly) outside the volume."""


class OutputError(LatentDriftError):
    """The result folder cannot be written: it is a file, its file system is read-only or full, or
    another run is writing it."""


class ParameterError(LatentDriftError):
    """A setting is out of range or inconsistent with the others."""


class DeviceError(LatentDriftError):
    """The requested compute device does not exist on this machine."""

    exit_code = 3


class ModelError(LatentDriftError):
    """A model folder is missing, incomplete, unsafe to load or does not fit the task."""

    exit_code = 4


class JobError(LatentDriftError):
    """A background job cannot be started, found, resumed or cancelled."""

    exit_code = 5


class OutOfMemoryError(LatentDriftError):
    """Even a batch of one does not fit on the device."""

    exit_code = 6


class CancelledError(LatentDriftError):
    """A run was cancelled before it finished (nothing was written)."""

    exit_code = 130
