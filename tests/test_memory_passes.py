"""pipeline.memory: each pass's own peak RSS, and the process's peak kept across the passes' resets."""

import os

import numpy as np
import pytest

from pipeline import Block, BlockGrid, run_blockwise
from pipeline.memory import current_rss_mib, pass_peaks, peak_rss_mib, track_peak


def _resettable():
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


needs_proc = pytest.mark.skipif(not (os.path.exists("/proc/self/status") and _resettable()),
                                reason="no writable /proc/self/clear_refs here")


def _touch(mib):
    """Allocate and touch ``mib`` MiB, then free it."""
    buffer = np.ones(mib * 2**20 // 8)
    return float(buffer[::4096].sum())


@needs_proc
def test_each_pass_measures_its_own_peak_and_the_process_keeps_the_highest():
    with track_peak("big") as big:
        _touch(200)
    with track_peak("small") as small:
        _touch(8)
    assert big["peak_mib"] - big["start_mib"] > 150
    # the second pass's mark was reset: it does not see the first pass's 200 MiB
    assert small["peak_mib"] < big["peak_mib"] - 100
    assert small["peak_mib"] >= small["start_mib"] - 1 and small["end_mib"] is not None
    assert peak_rss_mib() >= big["peak_mib"]           # the process-wide peak survives the reset
    recorded = pass_peaks()
    assert recorded["big"]["peak_mib"] == big["peak_mib"] and recorded["small"]["peak_mib"] == small["peak_mib"]
    pass_peaks(clear=True)
    assert pass_peaks() == {}


@needs_proc
def test_an_inner_pass_hands_its_erased_mark_to_the_outer_one():
    with track_peak() as outer:
        _touch(200)
        with track_peak() as inner:
            _touch(8)
    assert inner["peak_mib"] < outer["peak_mib"] - 100
    assert outer["peak_mib"] - outer["start_mib"] > 150


def _allocate_step(block: Block):
    return _touch(120)


@needs_proc
def test_run_blockwise_records_the_peak_of_its_pass(tmp_path):
    pass_peaks(clear=True)
    blocks = list(BlockGrid((8, 8, 8), (4, 8, 8)))
    before = current_rss_mib()
    run_blockwise(_allocate_step, blocks, name="allocating", state_dir=tmp_path, progress=False)
    record = pass_peaks()["allocating"]
    assert record["peak_mib"] - before > 90
    assert set(record) == {"start_mib", "peak_mib", "end_mib"}
