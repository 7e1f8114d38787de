"""Exceptions shared by every stage.

Every error a user can cause derives from :class:`PipelineError`, so the command
line can print its one-line message instead of a traceback.
"""

__all__ = [
    "PipelineError",
    "ConfigError",
    "VolumeError",
    "InputError",
    "BlockError",
    "MissingChannelError",
]


class PipelineError(Exception):
    """Base class of every error caused by input, configuration or data."""


class ConfigError(PipelineError, ValueError):
    """A workflow file or option is malformed; the message names the key path."""


class VolumeError(PipelineError, ValueError):
    """An OME-Zarr volume is missing or invalid; the message names the path."""


class InputError(PipelineError, ValueError):
    """An input file or array is unusable; the message names it."""


class MissingChannelError(VolumeError):
    """A step needs a channel of a role that the volume does not have."""


class BlockError(PipelineError, RuntimeError):
    """A block failed after all retries; the message names the block."""
