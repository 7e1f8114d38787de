"""Client-side memory that must not grow with the volume (issue #7: out-of-core peak RSS).

Measured causes of the growth from 256^3 to 512^3 (BENCHMARKS.md, "Peak memory
vs volume size"):

* :func:`segment.agglomerate.proximity_links` compared every row of an
  identity with all its members at once (``2048 x members x 3`` doubles per
  temporary): its peak grew with the fragments per identity, i.e. with the volume;
* glibc kept the per-block arrays that Zarr's decoder threads allocated
  resident in those threads' arenas after they were freed, so RSS between
  blocks sat 100-200 MiB above the libraries; :func:`workflows.run.limit_heap_retention`
  keeps one arena;
* glibc's dynamic mmap threshold put a block's planes on the heap after the
  first block, where freed pages stay resident below any small allocation
  that outlives them (RSS between relabel blocks 485-501 MiB with 250 MiB
  live); :func:`workflows.run.limit_heap_retention` fixes the threshold at 1 MiB;
* the codebook's score tables (codes x voxels) grew with the codes, which
  grow with the volume; they go by column chunks (``tests/test_segment.py``);
* the evaluation (inside ``connectome run`` when the workflow names a truth)
  read both label volumes whole; it now counts overlaps slab by slab;
* :func:`segment.segment_volume` kept the codebook votes (up to 256 sample
  vectors per code from every block), the block summaries, the edges and the
  links alive through the relabel pass, whose blocks need the most memory; it
  frees them once used (tested in ``tests/test_segment_blockwise.py``).

These tests use tracemalloc (allocations, not timings) and, for the
allocator, the RSS of a fresh subprocess.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from segment.agglomerate import FragmentTable, proximity_links


def _fragments(n: int, n_identities: int = 2, seed: int = 0) -> FragmentTable:
    """``n`` small boxes spread along z (a long neurite's pieces), a few identities."""
    rng = np.random.default_rng(seed)
    lo = np.stack([np.sort(rng.uniform(0, 4 * n, n)), rng.uniform(0, 200, n), rng.uniform(0, 200, n)], axis=1)
    lo = np.floor(lo).astype(np.int64)
    hi = lo + rng.integers(1, 12, size=(n, 3))
    return FragmentTable(
        ids=np.arange(1, n + 1, dtype=np.uint64), counts=rng.integers(10, 1000, n).astype(np.int64),
        first=np.arange(n, dtype=np.int64), barcode_sums=np.zeros((n, 0)), fill_sums=np.ones(n),
        identity=(np.arange(n) % n_identities + 1).astype(np.int64), bbox_lo=lo, bbox_hi=hi)


def _reference_links(fragments: FragmentTable, voxel_size, radius: float, min_size: int = 0) -> np.ndarray:
    """The all-pairs definition (small inputs only)."""
    vs = np.asarray(voxel_size, np.float64)
    eligible = (fragments.identity > 0) & (fragments.counts >= min_size)
    out = []
    for g in np.unique(fragments.identity[eligible]):
        m = np.flatnonzero(eligible & (fragments.identity == g))
        lo, hi = fragments.bbox_lo[m].astype(np.float64), fragments.bbox_hi[m].astype(np.float64)
        gap = np.maximum(0.0, np.maximum(lo[:, None, :] - hi[None, :, :], lo[None, :, :] - hi[:, None, :]))
        i, j = np.nonzero(np.sqrt(((gap * vs) ** 2).sum(axis=-1)) <= max(radius, 0.0))
        keep = i < j
        out.append(np.stack([m[i[keep]], m[j[keep]]], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


@pytest.mark.parametrize("radius", [0.0, 0.7, 2.5, np.inf])
def test_proximity_links_equal_the_all_pairs_definition(radius):
    frags = _fragments(700, n_identities=3, seed=1)
    frags.identity[::17] = 0                               # unknown identity: never linked
    voxel = (0.25, 0.1, 0.1)
    expected = _reference_links(frags, voxel, radius, min_size=50)
    got = proximity_links(frags, voxel, radius, min_size=50, chunk=4096)   # many small runs
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)           # same pairs, same order


def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    return (peak - result.nbytes) / 2**20


def test_proximity_links_peak_does_not_grow_with_the_fragments():
    # 4x the fragments of one identity (a 4x larger volume): the old code's
    # temporaries were 2048 x members x 3 doubles (98 MiB at 2000 members, 393 MiB at 8000).
    small = _peak_mib(lambda: proximity_links(_fragments(2000, 1), (0.2, 0.1, 0.1), 2.0))
    large = _peak_mib(lambda: proximity_links(_fragments(8000, 1), (0.2, 0.1, 0.1), 2.0))
    assert large < 40.0, f"proximity_links peak {large:.1f} MiB for 8000 fragments"
    assert large < small + 8.0, f"peak grew from {small:.1f} to {large:.1f} MiB with 4x the fragments"


_ARENA_PROBE = textwrap.dedent("""
    import sys
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np

    if sys.argv[1] == "tuned":
        from workflows.run import limit_heap_retention
        assert limit_heap_retention() and limit_heap_retention()    # applied, idempotent

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    def decode(_):                                  # like zarr's codec threads: 4 x 25 MiB in 64 kB pieces
        return [np.ones(8000) for _ in range(400)]

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(decode, range(4)))
    pinned = [a for p in parts for a in p[::16]]    # a few stay alive: the freed rest is fragmented
    del parts
    before = rss_mib()
    block = [np.ones(8000) for _ in range(1500)]    # the main thread's next 96 MiB
    print(rss_mib() - before)
""")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_one_arena_lets_the_main_thread_reuse_memory_freed_by_decoder_threads():
    grown = {}
    for mode in ("plain", "tuned"):
        proc = subprocess.run([sys.executable, "-c", _ARENA_PROBE, mode], capture_output=True, text=True,
                              timeout=120, check=False, env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"})
        assert proc.returncode == 0, proc.stderr
        grown[mode] = float(proc.stdout.strip().splitlines()[-1])
    # measured: plain +92 MiB (nothing reused: the freed pages belong to the threads' arenas), tuned +46
    assert grown["tuned"] < 0.75 * 96, grown
    assert grown["tuned"] < grown["plain"] - 20, grown



_THRESHOLD_PROBE = textwrap.dedent("""
    import sys
    import numpy as np

    if sys.argv[1] == "tuned":
        from workflows.run import limit_heap_retention
        assert limit_heap_retention()

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    before = rss_mib()
    survivors = []
    for block in range(4):                          # a block's planes, then a small result that outlives them
        planes = [np.ones(6 << 18, np.float32) for _ in range(10)]
        survivors.append(bytearray(64 << 10))
        del planes
    print(rss_mib() - before)
""")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_fixed_mmap_threshold_returns_freed_block_arrays_between_blocks():
    grown = {}
    for mode in ("plain", "tuned"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        proc = subprocess.run([sys.executable, "-c", _THRESHOLD_PROBE, mode], capture_output=True, text=True,
                              timeout=120, check=False, env=env)
        assert proc.returncode == 0, proc.stderr
        grown[mode] = float(proc.stdout.strip().splitlines()[-1])
    # glibc raises its threshold to the first freed plane (6 MiB): later planes come from the heap,
    # and the small survivor above them keeps them resident (measured: plain +60 MiB, tuned +0)
    assert grown["plain"] > 30, grown
    assert grown["tuned"] < 10, grown

_TRIM_PROBE = textwrap.dedent("""
    import functools
    import resource
    import sys
    import numpy as np
    import workflows.run as run

    settings = {"lean": functools.partial(run.limit_heap_retention, trim_threshold=None),
                "tuned": run.limit_heap_retention}
    assert settings[sys.argv[1]]()

    def step():                                     # a step's small arrays (below the mmap threshold), then freed
        parts = [np.ones(100 << 7) for _ in range(40)]
        return sum(float(p[0]) for p in parts)

    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_trim_threshold_keeps_the_heap_top_for_the_next_step():
    faults = {}
    for mode in ("lean", "tuned"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        proc = subprocess.run([sys.executable, "-c", _TRIM_PROBE, mode], capture_output=True, text=True,
                              timeout=120, check=False, env=env)
        assert proc.returncode == 0, proc.stderr
        faults[mode] = int(proc.stdout.strip().splitlines()[-1])
    # a fixed mmap threshold freezes glibc's trim threshold at 128 KiB: each step's 4 MiB of freed
    # heap top goes back to the kernel and faults in again (measured: lean 43k faults, tuned 0)
    assert faults["lean"] > 20 * 1000, faults
    assert faults["tuned"] < faults["lean"] / 10, faults


# ----------------------------------------------------------------------------- evaluation

def _label_pair(shape, n_seg, n_truth, seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_truth, shape).astype(np.uint64)
    seg = (rng.integers(0, n_seg, shape) * 7).astype(np.uint64)
    seg[:, : shape[1] // 2] = truth[:, : shape[1] // 2] + 1      # some agreement, some background
    return seg, truth


@pytest.mark.parametrize("shape,n_seg,n_truth,slab", [
    ((6, 20, 30), 9, 5, 1), ((6, 20, 30), 9, 5, 700), ((6, 20, 30), 9, 5, 10**9),
    ((1, 1, 7), 3, 2, 1),
    ((4, 50, 50), 3000, 3000, 2500),          # more label pairs than voxels: metrics' hash path
])
def test_streamed_evaluation_equals_whole_array_metrics(shape, n_seg, n_truth, slab):
    from workflows import metrics
    from workflows.evaluate import (
        _count_overlaps,
        _information_metrics,
        _match_labels,
        _match_truth_labels,
    )

    seg, truth = _label_pair(shape, n_seg, n_truth, seed=3)
    counts = _count_overlaps(seg, truth, slab)
    expected = (*metrics.variation_of_information(seg, truth), metrics.adapted_rand_error(seg, truth)[0])
    assert _information_metrics(counts) == expected                # bit for bit
    pd.testing.assert_series_equal(_match_labels(counts), metrics.match_labels(seg, truth))
    pd.testing.assert_series_equal(_match_truth_labels(counts, 0.5), metrics.match_truth_labels(seg, truth))


def test_streamed_evaluation_empty_truth():
    from workflows import metrics
    from workflows.evaluate import _count_overlaps, _information_metrics

    seg, truth = np.ones((3, 4, 4), np.uint64), np.zeros((3, 4, 4), np.uint64)
    expected = (*metrics.variation_of_information(seg, truth), metrics.adapted_rand_error(seg, truth)[0])
    assert _information_metrics(_count_overlaps(seg, truth, 16)) == expected


def test_evaluation_peak_does_not_grow_with_the_volume():
    from workflows.evaluate import _count_overlaps

    slab = 64 * 64 * 4
    small = _label_pair((16, 64, 64), 20, 12, seed=5)
    large = _label_pair((128, 64, 64), 20, 12, seed=5)                 # 8x the voxels, same labels

    def peak(pair):
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            _count_overlaps(*pair, slab)
            return (tracemalloc.get_traced_memory()[1] - start) / 2**20
        finally:
            tracemalloc.stop()

    p_small, p_large = peak(small), peak(large)
    whole = large[0].nbytes * 2 / 2**20                                # 8 MiB: both volumes at once
    assert p_large < whole / 2, f"{p_large:.1f} MiB, whole volumes are {whole:.1f} MiB"
    assert p_large < p_small + 1.0, f"peak grew from {p_small:.2f} to {p_large:.2f} MiB with 8x the voxels"
