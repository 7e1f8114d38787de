"""Cost of the per-neuron quantiles (graph.histograms) against the per-neuron sums, one block.

Run after ``make demo`` (it reads the demo's sample and labels)::

    .venv/bin/python -m benchmarks.histogram_cost [--z 32] [--repeats 3]

Both kernels run in this process on the same block (the first ``--z``
planes), after one warm-up call each; the medians of ``--repeats`` runs are
printed with their ratio.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import zarr

from graph.histograms import IntensityBins, label_histograms
from graph.measure import label_sums

log = logging.getLogger("benchmarks.histogram_cost")


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", default="sample_data/sample/volume.zarr/0")
    parser.add_argument("--labels", default="runs/sample/labels.zarr/neurons/0")
    parser.add_argument("--z", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    channels = zarr.open_array(args.volume, mode="r")[:, :args.z]
    labels = zarr.open_array(args.labels, mode="r")[:args.z]
    bins = IntensityBins.for_dtype(channels.dtype)
    sums = _median_seconds(lambda: label_sums(labels, channels), args.repeats)
    hist = _median_seconds(lambda: label_histograms(labels, channels, bins), args.repeats)
    mvox = labels.size / 1e6
    log.info("block %s, %d channels of %s", labels.shape, channels.shape[0], channels.dtype)
    log.info("| kernel | median s | Mvox/s | Mvox/s per channel |")
    log.info("|---|---|---|---|")
    for name, seconds in (("label_sums", sums), ("label_histograms", hist)):
        log.info("| %s | %.3f | %.1f | %.0f |", name, seconds, mvox / seconds, mvox * channels.shape[0] / seconds)
    log.info("histograms / sums: %.2f", hist / sums)


if __name__ == "__main__":
    main()
