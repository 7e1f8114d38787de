"""Array backends: NumPy/SciPy on the CPU, CuPy/cupyx on the GPU.

Kernels take an array and return the same kind; inside they call
``xp = array_module(x)`` and ``ndi = ndimage(x)`` so one body runs on both.
Host <-> device copies happen only at the block boundary
(:func:`to_device` after reading, :func:`to_host` before writing).
CuPy is optional: nothing here imports it unless a GPU is asked for.
"""

from __future__ import annotations

import importlib
import logging
import sys

import numpy as np
import scipy.ndimage

from .errors import ConfigError

__all__ = ["DEVICES", "array_module", "ndimage", "gpu_available", "gpu_count", "resolve_device", "to_device",
           "to_host"]

log = logging.getLogger(__name__)

DEVICES = ("cpu", "gpu", "auto")


def _cupy():
    """CuPy if it is already imported or importable, else None."""
    if "cupy" in sys.modules:
        return sys.modules["cupy"]
    try:
        return importlib.import_module("cupy")
    except ImportError:
        return None


def gpu_count() -> int:
    """How many CUDA devices CuPy sees (0 without CuPy or a driver)."""
    cp = _cupy()
    if cp is None:
        return 0
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception as exc:  # CUDA raises its own error types when no driver is present
        log.debug("CuPy present but no usable GPU: %s", exc)
        return 0


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return gpu_count() > 0


def resolve_device(device: str) -> str:
    """Turn ``cpu|gpu|auto`` into ``cpu`` or ``gpu``; ``gpu`` without one is an error."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if device == "gpu":
        raise ConfigError("device 'gpu' was requested but CuPy or a CUDA device is not available "
                          "(install the [gpu] extra, or use --device cpu/auto)")
    return "cpu"


def array_module(x):
    """``numpy`` or ``cupy``, whichever owns ``x``."""
    if type(x).__module__.startswith("cupy"):
        return sys.modules["cupy"]
    return np


def ndimage(x):
    """``scipy.ndimage`` or ``cupyx.scipy.ndimage``, matching ``x``."""
    if type(x).__module__.startswith("cupy"):
        return importlib.import_module("cupyx.scipy.ndimage")
    return scipy.ndimage


def to_device(x: np.ndarray, device: str):
    """Copy a host array to ``device`` (no copy for ``cpu``)."""
    if device == "gpu":
        return _cupy().asarray(x)
    return x


def to_host(x) -> np.ndarray:
    """A NumPy array with the contents of ``x`` (no copy if already on the host)."""
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)
