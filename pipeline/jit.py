"""Numba kernels built lazily: the decorator every host kernel of the pipeline shares.

Numba is a dependency, but a kernel module must still import (and its array
fallback run) where numba cannot be loaded, and importing must not compile:
each builder runs on first use, once per process.
"""

from __future__ import annotations

import functools

__all__ = ["numba_kernels"]


def numba_kernels(build):
    """Decorator: ``build(numba)`` runs once per process and its kernels are kept; None without numba.

    The kernels compile on their first call (``cache=True`` keeps the machine
    code on disk), so importing a module that defines them costs nothing.
    """
    built = []

    @functools.wraps(build)
    def kernels():
        if not built:
            try:
                import numba
            except ImportError:
                built.append(None)
            else:
                built.append(build(numba))
        return built[0]

    return kernels
