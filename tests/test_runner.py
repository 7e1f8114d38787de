"""run_blockwise: every block once, summaries back in order, resume, retries, errors name the block."""

import functools
import re

import numpy as np
import pytest
import zarr

from pipeline import BlockError, BlockGrid, ComputeConfig, Executor, run_blockwise
from pipeline.memory import worker_heap_environ
from pipeline.runner import StoredSummaries, block_marker


def _double_block(block, source, target):
    """A tiny step: read the read region, write twice the write region, return its sum."""
    data = zarr.open_array(source, mode="r")[block.read]
    out = (data * 2)[block.write_in_read]
    zarr.open_array(target, mode="r+")[block.write] = out
    return {"id": block.id, "sum": int(out.sum())}


def _flaky(block, attempts_dir, fail_times):
    marker = attempts_dir / f"{block.id}"
    count = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(count + 1))
    if count < fail_times:
        raise OSError(f"transient failure {count}")
    return block.id


def _always_fails(block):
    raise ValueError("bad voxel data")


@pytest.fixture
def arrays(tmp_path):
    data = np.random.default_rng(0).integers(0, 100, size=(12, 20, 20)).astype(np.int32)
    source = zarr.create_array(str(tmp_path / "src.zarr"), shape=data.shape, chunks=(4, 5, 5), dtype=data.dtype)
    source[:] = data
    zarr.create_array(str(tmp_path / "dst.zarr"), shape=data.shape, chunks=(4, 5, 5), dtype=data.dtype)
    return data, str(tmp_path / "src.zarr"), str(tmp_path / "dst.zarr")


@pytest.mark.parametrize("block_shape", [(4, 5, 5), (8, 10, 10), (12, 20, 20)])
def test_blockwise_equals_whole_volume(tmp_path, arrays, block_shape):
    data, source, target = arrays
    grid = BlockGrid(data.shape, block_shape, halo=1, chunks=(4, 5, 5))
    step = functools.partial(_double_block, source=source, target=target)
    summaries = run_blockwise(step, grid, name="double", state_dir=tmp_path / "state", progress=False)
    np.testing.assert_array_equal(zarr.open_array(target)[:], data * 2)
    assert [s["id"] for s in summaries] == list(range(len(grid)))
    assert sum(s["sum"] for s in summaries) == int(data.sum() * 2)


def test_rerun_resumes_and_skips_done_blocks(tmp_path, arrays):
    data, source, target = arrays
    grid = BlockGrid(data.shape, (4, 10, 10), chunks=(4, 5, 5))
    blocks = list(grid)
    calls = []

    def counting(block):
        calls.append(block.id)
        return _double_block(block, source, target)

    # An interrupted run: only the first half of the blocks finished.
    run_blockwise(counting, blocks[: len(blocks) // 2], name="double", state_dir=tmp_path / "s", progress=False)
    calls.clear()
    summaries = run_blockwise(counting, blocks, name="double", state_dir=tmp_path / "s", progress=False)
    assert sorted(calls) == [b.id for b in blocks[len(blocks) // 2:]]
    assert len(summaries) == len(blocks)
    np.testing.assert_array_equal(zarr.open_array(target)[:], data * 2)
    calls.clear()
    run_blockwise(counting, blocks, name="double", state_dir=tmp_path / "s", progress=False)
    assert calls == []


def test_summaries_can_stay_on_disk(tmp_path, arrays):
    data, source, target = arrays
    blocks = list(BlockGrid(data.shape, (4, 10, 10), chunks=(4, 5, 5)))
    step = functools.partial(_double_block, source=source, target=target)
    # half the blocks done before (a resumed run), so both the found and the new markers are read back
    run_blockwise(step, blocks[::2], name="double", state_dir=tmp_path / "s", progress=False)
    stored = run_blockwise(step, blocks, name="double", state_dir=tmp_path / "s", progress=False, in_memory=False)
    assert isinstance(stored, StoredSummaries) and len(stored) == len(blocks)
    in_memory = run_blockwise(step, blocks, name="double", state_dir=tmp_path / "s", progress=False)
    assert list(stored) == in_memory == list(stored), "walked twice, read from disk each time"
    assert stored[-1] == in_memory[-1] and stored[1:3] == in_memory[1:3]
    block_marker(tmp_path / "s", "double", blocks[2]).unlink()
    with pytest.raises(BlockError, match=re.escape(f"{blocks[2]} finished but its done-marker")):
        list(stored)


def test_changed_parameters_recompute(tmp_path, arrays):
    data, source, target = arrays
    grid = list(BlockGrid(data.shape, (12, 20, 20)))
    calls = []

    def counting(block):
        calls.append(block.id)
        return block.id

    run_blockwise(counting, grid, name="s", state_dir=tmp_path, params={"sigma": 1}, progress=False)
    run_blockwise(counting, grid, name="s", state_dir=tmp_path, params={"sigma": 1}, progress=False)
    run_blockwise(counting, grid, name="s", state_dir=tmp_path, params={"sigma": 2}, progress=False)
    assert calls == [0, 0]


def test_retries_then_succeeds(tmp_path):
    grid = list(BlockGrid((4, 4, 4), (2, 4, 4)))
    step = functools.partial(_flaky, attempts_dir=tmp_path, fail_times=2)
    with Executor(ComputeConfig(scheduler="synchronous", retries=2)) as ex:
        assert run_blockwise(step, grid, name="flaky", state_dir=tmp_path / "s", executor=ex, progress=False) == [0, 1]


def test_failure_names_the_block_and_marks_nothing_done(tmp_path):
    grid = BlockGrid((4, 8, 8), (4, 4, 4))
    with Executor(ComputeConfig(scheduler="synchronous", retries=1)) as ex:
        with pytest.raises(BlockError, match=r"step 'broken': block 0 \(0, 0, 0\).*ValueError: bad voxel data"):
            run_blockwise(_always_fails, grid, name="broken", state_dir=tmp_path, executor=ex, progress=False)
    assert not block_marker(tmp_path, "broken", grid.block((0, 0, 0))).exists()


def _heap_environ():
    import os

    return {name: os.environ.get(name) for name in worker_heap_environ()}


def test_worker_heap_environ_defaults_and_passes_the_environment_on(monkeypatch):
    from pipeline.memory import MMAP_THRESHOLD, TRIM_THRESHOLD

    for name in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    assert worker_heap_environ() == {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
                                     "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert worker_heap_environ()["MALLOC_TRIM_THRESHOLD_"] == "131072"


def test_distributed_cluster_gives_the_same_result(tmp_path, arrays):
    data, source, target = arrays
    grid = BlockGrid(data.shape, (4, 10, 10), halo=1, chunks=(4, 5, 5))
    step = functools.partial(_double_block, source=source, target=target)
    config = ComputeConfig(scheduler="local", n_workers=2, dashboard_address="127.0.0.1:0", retries=1)
    with Executor(config) as ex:
        assert ex.dashboard_link.startswith("http://127.0.0.1:")
        assert ex.client.scheduler.address.startswith("tcp://127.0.0.1:")
        # each worker process gets the run process's heap settings, not the nanny's 64 KiB trim threshold
        seen = ex.client.run(_heap_environ)
        assert list(seen.values()) == [worker_heap_environ()] * 2
        summaries = run_blockwise(step, grid, name="double", state_dir=tmp_path / "s", executor=ex, progress=False)
        with pytest.raises(BlockError, match=r"step 'broken': block \d.*bad voxel data"):
            run_blockwise(_always_fails, grid, name="broken", state_dir=tmp_path / "s", executor=ex, progress=False)
    np.testing.assert_array_equal(zarr.open_array(target)[:], data * 2)
    assert [s["id"] for s in summaries] == list(range(len(grid)))


# -- GPU blocks and worker resources (no GPU needed: the scheduling is what is tested) ----------

def _worker_name(block, pause=0.05):
    """A step that reports which Dask worker ran it."""
    import time

    from distributed import get_worker

    time.sleep(pause)
    return get_worker().name


def _spec_cluster(**workers):
    """In-process scheduler and workers; ``workers`` maps a worker name to its declared resources."""
    from distributed import Scheduler, SpecCluster, Worker

    return SpecCluster(
        scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}},
        workers={name: {"cls": Worker, "options": {"nthreads": 1, "host": "127.0.0.1", "resources": res}}
                 for name, res in workers.items()},
        silence_logs=40,
    )


def test_gpu_runs_hold_one_gpu_resource_per_task():
    local = ComputeConfig(scheduler="local")
    assert Executor(local, device="gpu").task_resources == {"GPU": 1}
    assert Executor(local, device="cpu").task_resources is None
    assert Executor(local).task_resources is None  # CPU unless asked
    assert Executor(ComputeConfig(scheduler="synchronous"), device="gpu").task_resources is None
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        Executor(local, device="auto")


def test_gpu_blocks_go_only_to_workers_with_a_gpu(tmp_path):
    """Two workers, one declaring GPU=1: a GPU run puts every block on it; a CPU run uses both."""
    pytest.importorskip("distributed")
    grid = BlockGrid((12, 20, 20), (4, 10, 10))
    with _spec_cluster(gpu={"GPU": 1}, cpu={}) as cluster:
        address = cluster.scheduler_address
        with Executor(ComputeConfig(scheduler=address, retries=0), device="gpu") as ex:
            on_gpu = run_blockwise(_worker_name, grid, name="gpu", state_dir=tmp_path, executor=ex, progress=False)
        with Executor(ComputeConfig(scheduler=address, retries=0), device="cpu") as ex:
            on_any = run_blockwise(_worker_name, grid, name="cpu", state_dir=tmp_path, executor=ex, progress=False)
    assert len(on_gpu) == len(grid) == 12
    assert set(on_gpu) == {"gpu"}
    assert set(on_any) == {"gpu", "cpu"}, "the CPU run should spread over both workers"


def test_cluster_without_gpu_workers_is_refused_not_left_waiting(tmp_path):
    import time

    from pipeline import PipelineError

    with _spec_cluster(a={}, b={"FPGA": 2}) as cluster:
        address = cluster.scheduler_address
        started = time.monotonic()
        with pytest.raises(PipelineError) as info:
            with Executor(ComputeConfig(scheduler=address), device="gpu"):
                pass
        assert time.monotonic() - started < 15
        # A CPU run on the same cluster is unaffected.
        with Executor(ComputeConfig(scheduler=address, retries=0), device="cpu") as ex:
            assert run_blockwise(_worker_name, BlockGrid((4, 10, 10), (4, 10, 10)), name="cpu", state_dir=tmp_path,
                                 executor=ex, progress=False) in (["a"], ["b"])
    message = str(info.value)
    assert type(info.value) is PipelineError
    for words in (address, "GPU=1", f"dask worker {address} --resources GPU=1", "2 worker(s)", "FPGA",
                  "--device cpu"):
        assert words in message, f"{words!r} not in: {message}"


def test_scheduler_with_no_workers_gets_a_bounded_wait():
    from distributed import Client

    from pipeline import PipelineError
    from pipeline.runner import check_worker_resources

    with _spec_cluster() as cluster, Client(cluster.scheduler_address, timeout="10s") as client:
        with pytest.raises(PipelineError, match="no worker connected"):
            check_worker_resources(client, {"GPU": 1}, cluster.scheduler_address, wait_s=0.5)


class _FakeCUDACluster:
    made = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        _FakeCUDACluster.made.append(self)


def test_local_gpu_cluster_uses_dask_cuda_when_installed(monkeypatch):
    import sys
    import types

    import pipeline.runner as runner

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=_FakeCUDACluster))
    monkeypatch.setattr(runner, "gpu_count", lambda: 4)
    cluster = runner.local_cluster(ComputeConfig(), "gpu")
    assert isinstance(cluster, _FakeCUDACluster)
    assert cluster.kwargs["n_workers"] == 4 and cluster.kwargs["resources"] == {"GPU": 1}
    assert cluster.kwargs["host"] == "127.0.0.1"
    assert runner.local_cluster(ComputeConfig(n_workers=2), "gpu").kwargs["n_workers"] == 2
    assert runner.local_cluster(ComputeConfig(n_workers=9), "gpu").kwargs["n_workers"] == 4


def test_local_gpu_cluster_without_dask_cuda_declares_the_gpu(monkeypatch):
    import sys

    import pipeline.runner as runner

    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # import dask_cuda -> ImportError
    monkeypatch.setattr(runner, "gpu_count", lambda: 1)
    with runner.local_cluster(ComputeConfig(dashboard_address="127.0.0.1:0"), "gpu") as cluster:
        workers = cluster.scheduler_info["workers"]
        assert [w["resources"] for w in workers.values()] == [{"GPU": 1}]
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
