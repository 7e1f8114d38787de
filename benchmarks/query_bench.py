"""Benchmark the Connectome query API on a synthetic 100k-neuron / 1M-synapse connectome.

Usage::

    .venv/bin/python benchmarks/query_bench.py [--neurons 100000] [--synapses 1000000]

Each query runs once as warm-up (which also fills caches such as the CSR
adjacency used by ``shortest_paths``), then ``--repeats`` times; the median
wall time is reported. Construction (validation + edge aggregation) is timed
once.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graph.connectome import Connectome  # noqa: E402

__all__ = ["make_tables", "run"]

logger = logging.getLogger("query_bench")

CELL_TYPES = ["exc_a", "exc_b", "inh_pv", "inh_sst", "inh_vip"]


def make_tables(n_neurons: int, n_synapses: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic neurons and synapses tables (run-directory schemas).

    Synapse partners are local in id space (``post = pre + 1..400 mod N``) so
    most pairs carry one synapse and some several, like a sparse connectome.
    """
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n_neurons + 1, dtype="uint64")
    shape = np.array([2000.0, 20000.0, 20000.0])
    cent = rng.random((n_neurons, 3)) * shape
    neurons = pd.DataFrame({
        "neuron_id": ids,
        "size_voxels": rng.lognormal(7.5, 1.0, n_neurons).astype("int64"),
        "z": cent[:, 0], "y": cent[:, 1], "x": cent[:, 2],
        "barcode": [format(int(v), "08b") for v in rng.integers(0, 256, n_neurons)],
        "barcode_confidence": rng.random(n_neurons),
        "cell_type": rng.choice(CELL_TYPES, n_neurons),
        "cell_type_confidence": rng.random(n_neurons),
    })
    pre_idx = rng.integers(0, n_neurons, n_synapses)
    post_idx = (pre_idx + rng.integers(1, 400, n_synapses)) % n_neurons
    pre_pos = cent[pre_idx] + rng.normal(0, 5, (n_synapses, 3))
    post_pos = pre_pos + rng.normal(0, 1, (n_synapses, 3))
    synapses = pd.DataFrame({
        "synapse_id": np.arange(n_synapses, dtype="int64"),
        "pre_neuron": ids[pre_idx],
        "post_neuron": ids[post_idx],
        "pre_z": pre_pos[:, 0], "pre_y": pre_pos[:, 1], "pre_x": pre_pos[:, 2],
        "post_z": post_pos[:, 0], "post_y": post_pos[:, 1], "post_x": post_pos[:, 2],
        "confidence": rng.random(n_synapses),
    })
    return neurons, synapses


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, int]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    size = len(result) if hasattr(result, "__len__") else len(result.neuron_table)
    return statistics.median(times), size


def run(n_neurons: int, n_synapses: int, repeats: int = 3) -> pd.DataFrame:
    """Time every query; returns a table of (query, median_ms, rows)."""
    neurons, synapses = make_tables(n_neurons, n_synapses)
    t0 = time.perf_counter()
    c = Connectome(neurons, synapses)
    build_s = time.perf_counter() - t0
    print(f"{c!r}; construction (validate + aggregate edges) {build_s:.2f} s", flush=True)
    rng = np.random.default_rng(1)
    some_ids = rng.choice(c.neuron_ids, 1000, replace=False).tolist()
    hub = int(c.neuron_ids[n_neurons // 2])
    a, b = int(c.neuron_ids[0]), int(c.neuron_ids[900])
    box = ((500, 5000, 5000), (1500, 10000, 10000))
    queries: dict[str, Callable[[], object]] = {
        "neurons(type='inh_pv')": lambda: c.neurons(type="inh_pv"),
        "neurons(ids=1000 ids)": lambda: c.neurons(ids=some_ids),
        "neurons(min_size=5000)": lambda: c.neurons(min_size=5000),
        "neurons(where='size_voxels > 1000')": lambda: c.neurons(where="size_voxels > 1000"),
        "neurons(where=size & type)": lambda: c.neurons(
            where="size_voxels > 1000 and cell_type == 'exc_a'"),
        "synapses(pre=1000 ids)": lambda: c.synapses(pre=some_ids),
        "synapses(min_confidence=0.9)": lambda: c.synapses(min_confidence=0.9),
        "synapses(within=bbox)": lambda: c.synapses(within=box),
        "adjacencies(min_weight=2)": lambda: c.adjacencies(min_weight=2),
        "adjacencies(sources=1000 ids)": lambda: c.adjacencies(sources=some_ids),
        "adjacencies(min_confidence=0.5)": lambda: c.adjacencies(min_confidence=0.5),
        "upstream(id)": lambda: c.upstream(hub),
        "downstream(id)": lambda: c.downstream(hub),
        "connectivity_by_type()": lambda: c.connectivity_by_type(),
        "shortest_paths(a, b)": lambda: c.shortest_paths(a, b),
        "shortest_paths(a, b, min_weight=2)": lambda: c.shortest_paths(a, b, min_weight=2),
        "subgraph(type='inh_pv')": lambda: c.subgraph(type="inh_pv"),
        "subgraph(ids=1000 ids)": lambda: c.subgraph(ids=some_ids),
    }
    rows = []
    for name, fn in queries.items():
        median_s, size = _time(fn, repeats)
        rows.append({"query": name, "median_ms": round(median_s * 1000, 1), "rows": size})
        print(f"  {name:<40s} {median_s * 1000:9.1f} ms  ({size} rows)", flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=100_000)
    parser.add_argument("--synapses", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    table = run(args.neurons, args.synapses, args.repeats)
    print()
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
