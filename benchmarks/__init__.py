"""Speed and scale benchmarks (run ``python -m benchmarks``; see BENCHMARKS.md).

:mod:`benchmarks.suite` times, on one generated sample volume, the full
pipeline and each of its stages against the field's tools (scikit-image
seeded watershed, waterz, cc3d vs scipy labelling, plain Zarr I/O) and
checks how peak memory grows with the volume at a fixed block shape.
``benchmarks/ingest_bench.py`` benchmarks ingest separately.

These are benchmarks, not tests: nothing here fails because a machine is slow.
"""

__all__: list[str] = []
