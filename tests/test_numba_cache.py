"""Numba kernels compile once per machine, not once per process.

Every kernel is ``cache=True``; numba finds its disk cache again only when the
kernel's closure pickles the same way in the next process. A kernel that
calls another dispatcher held in its closure (a helper defined beside it in a
``numba_kernels`` builder) gets a new cache key in every process: each Dask
worker then compiles it anew, seconds per kernel.
"""

import importlib
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

numba = pytest.importorskip("numba")
from numba.core.dispatcher import Dispatcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _packages():
    return sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests")


def _builders():
    """Every ``numba_kernels`` builder of the repository's packages, as (module, name, builder)."""
    found = []
    for package in _packages():
        top = importlib.import_module(package)
        names = [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules(top.__path__)]
        for name in names:
            module = importlib.import_module(name)
            for attr, value in vars(module).items():
                wrapped = getattr(value, "__wrapped__", None)
                if callable(value) and wrapped is not None and getattr(value, "__module__", None) == name \
                        and wrapped.__code__.co_varnames[:1] == ("numba",):
                    found.append((name, attr, value))
    return found


def _dispatchers(built):
    if isinstance(built, Dispatcher):
        yield built
    elif isinstance(built, (tuple, list)):
        for item in built:
            yield from _dispatchers(item)


def test_no_cached_kernel_holds_a_dispatcher_in_its_closure():
    builders = _builders()
    names = {f"{module}.{attr}" for module, attr, _ in builders}
    assert {"segment.blur._kernel", "segment.kernels._discontinuity_kernel", "segment.unmix._host_entry_kernels"} <= names
    offenders = []
    for module, attr, builder in builders:
        for kernel in _dispatchers(builder()):
            cells = kernel.py_func.__closure__ or ()
            held = [c.cell_contents.py_func.__name__ for c in cells if isinstance(c.cell_contents, Dispatcher)]
            if held and kernel._cache.__class__.__name__ != "NullCache":
                offenders.append(f"{module}.{attr}: {kernel.py_func.__name__} calls {held}")
    assert offenders == [], "make these helpers inner functions of the kernel: " + "; ".join(offenders)


def test_the_blur_kernel_is_loaded_from_the_disk_cache_by_the_next_process(tmp_path):
    script = textwrap.dedent("""
        import numpy as np
        from segment.blur import _kernel, blur_channels_last
        image = np.ones((5, 6, 7, 3), np.float32)
        blur_channels_last(image, (1.5, 1.5, 1.5), truncate=2.5, output=image)
        stats = _kernel().stats
        print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONPATH=str(ROOT))
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                           check=True).stdout.split() for _ in range(2)]
    assert runs[0] == ["0", "1"]          # compiled, then written to the cache
    assert runs[1] == ["1", "0"]          # found there
