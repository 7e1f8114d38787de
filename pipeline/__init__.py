"""The engine every stage shares: volumes, the block grid, running blocks, backends, config.

``pipeline`` imports none of the stages (``ingest``, ``segment``, ``graph``,
``workflows``); they import it.
"""

from .backend import array_module, ndimage, resolve_device, to_device, to_host
from .blocks import Block, BlockGrid
from .config import ComputeConfig, StrictModel, load_yaml, validate_config
from .errors import (
    BlockError,
    ConfigError,
    InputError,
    MissingChannelError,
    PipelineError,
    VolumeError,
)
from .runner import Executor, run_blockwise
from .volume import ROLES, Channel, Volume

__all__ = [
    "ROLES", "Block", "BlockError", "BlockGrid", "Channel", "ComputeConfig", "ConfigError",
    "Executor", "InputError", "MissingChannelError", "PipelineError", "StrictModel", "Volume",
    "VolumeError", "array_module", "load_yaml", "ndimage", "resolve_device", "run_blockwise",
    "to_device", "to_host", "validate_config",
]

__version__ = "0.1.0"
