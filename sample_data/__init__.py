"""Synthetic barcoded optical volume with ground truth: the bundled sample.

>>> from sample_data import SampleConfig, generate_sample, write_sample
>>> sample = generate_sample(SampleConfig(shape=(32, 64, 64), n_neurons=5))  # doctest: +SKIP
>>> write_sample("sample", SampleConfig())                                   # doctest: +SKIP

Same config (seed included), same bytes. See :mod:`sample_data.generate` for
how the volume is made and docs/contracts.md for the directory layout.
"""

from .config import CELL_TYPES, MARKERS, SampleConfig
from .generate import Sample, generate_sample
from .io import is_complete, load_sample, save_sample, write_sample

__all__ = [
    "CELL_TYPES",
    "MARKERS",
    "Sample",
    "SampleConfig",
    "generate_sample",
    "is_complete",
    "load_sample",
    "save_sample",
    "write_sample",
]
