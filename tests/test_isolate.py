"""pipeline.isolate: a step in a forked child process gives the same result and keeps its garbage."""

import os

import numpy as np
import pytest

from pipeline.isolate import IsolatedStepError, call_isolated, fork_available
from pipeline.memory import current_rss_mib

needs_fork = pytest.mark.skipif(not fork_available(), reason="no fork start method on this platform")


def _cumsum_and_note(values, seen):
    seen.append("ran")
    return np.cumsum(values), {"n": int(values.size)}


@needs_fork
def test_the_child_returns_the_result_and_leaves_the_parent_untouched():
    values = np.arange(100_000, dtype=np.int64)
    seen = []
    (total, info), report = call_isolated(_cumsum_and_note, values, seen, name="cumsum")
    np.testing.assert_array_equal(total, np.cumsum(values))
    assert info == {"n": 100_000}
    assert seen == []                                     # it ran in the child, on the child's copy
    assert report.isolated and report.peak_rss_mib >= report.start_rss_mib > 0
    assert set(report.to_dict()) == {"isolated", "start_rss_mib", "peak_rss_mib"}


def test_isolate_false_runs_in_the_process():
    seen = []
    (total, _), report = call_isolated(_cumsum_and_note, np.ones(3), seen, name="cumsum", isolate=False)
    np.testing.assert_array_equal(total, [1, 2, 3])
    assert seen == ["ran"] and not report.isolated and report.peak_rss_mib is None


def _fail():
    raise ValueError("fragment 7 is not in the table")


def _die():
    os._exit(3)


def _unpicklable():
    return lambda: None


@needs_fork
def test_errors_come_back_with_their_type_and_the_childs_traceback():
    with pytest.raises(ValueError, match="fragment 7") as caught:
        call_isolated(_fail, name="the agglomeration")
    assert any("child process of the agglomeration" in note and "_fail" in note for note in caught.value.__notes__)
    with pytest.raises(IsolatedStepError, match=r"the agglomeration: its child process died .*exit code 3"):
        call_isolated(_die, name="the agglomeration")
    with pytest.raises(IsolatedStepError, match="result could not be sent back"):
        call_isolated(_unpicklable, name="the agglomeration")


def _many_objects(n):
    table = [{"a": i, "b": [i, i + 1]} for i in range(n)]      # ~300 bytes each, as the agglomeration's adjacency
    return len(table)


@needs_fork
def test_the_childs_objects_never_enter_the_parents_memory():
    before = current_rss_mib()
    count, report = call_isolated(_many_objects, 1_000_000, name="objects")
    after = current_rss_mib()
    assert count == 1_000_000
    assert report.peak_rss_mib - report.start_rss_mib > 150     # the objects were built, in the child
    assert after - before < 30, (before, after)
