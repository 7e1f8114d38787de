"""A real Dask cluster started from the command line: ``dask scheduler`` + two ``dask worker`` processes.

This is how a user runs on a cluster (``connectome run wf.yaml --scheduler
tcp://HOST:PORT``): the scheduler and the workers are separate processes started
by the ``dask`` CLI of this environment, not a ``LocalCluster`` made by the
pipeline. The tiny sample goes through them; its label image and tables must
be byte-identical to a synchronous in-process run, and the block tasks must
have run on the two workers.

Every subprocess has a hard timeout and is killed (its whole process group)
in a ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from pipeline.memory import MMAP_THRESHOLD, TRIM_THRESHOLD
from sample_data import SampleConfig, write_sample
from workflows.cli import main

distributed = pytest.importorskip("distributed")

HEAP_CONFIG = Path(__file__).resolve().parents[1] / "docs" / "dask"  # heap.yaml: the workers' glibc settings
TINY = {"shape": [32, 96, 96], "n_neurons": 6, "seed": 3, "chunks_zyx": [16, 48, 48]}
TABLES = ("neurons.parquet", "synapses.parquet", "edges.parquet")
DASK = Path(sys.executable).parent / "dask"
START_TIMEOUT_S = 30


def _workflow(tmp_path, sample, run) -> Path:
    path = tmp_path / f"{run.name}.yaml"
    path.write_text(f"input: {{volume: {sample / 'volume.zarr'}}}\noutput: {run}\n"
                    "compute: {scheduler: synchronous, block_shape: [16, 48, 48], device: cpu, retries: 1}\n")
    return path


def _outputs(run):
    labels = zarr.open_array(str(run / "labels.zarr" / "neurons" / "0"), mode="r")[:]
    return {"labels": labels.tobytes(), **{n: (run / n).read_bytes() for n in TABLES}}


def _start(args, log_path: Path, **env) -> subprocess.Popen:
    """A subprocess in its own process group (so the nanny's worker dies with it), output to a log file."""
    log = open(log_path, "wb")
    try:
        return subprocess.Popen([str(DASK), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    finally:
        log.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def _scheduler_address(scheduler_file: Path, process: subprocess.Popen, log_path: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dask scheduler exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            return json.loads(scheduler_file.read_text())["address"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    pytest.fail(f"dask scheduler did not start within {START_TIMEOUT_S} s:\n{log_path.read_text()[-2000:]}")


@pytest.mark.skipif(not DASK.exists(), reason="the dask command line is not installed in this environment")
def test_dask_cli_cluster_gives_the_same_outputs(tmp_path):
    sample = tmp_path / "sample"
    write_sample(sample, SampleConfig(**TINY))
    reference = tmp_path / "reference"
    assert main(["-q", "run", str(_workflow(tmp_path, sample, reference))]) == 0

    want_heap = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
                 "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
    processes = []
    try:
        scheduler_file = tmp_path / "scheduler.json"
        processes.append(_start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                 "--scheduler-file", str(scheduler_file), "--idle-timeout", "300"],
                                tmp_path / "scheduler.log"))
        address = _scheduler_address(scheduler_file, processes[0], tmp_path / "scheduler.log")
        assert address.startswith("tcp://127.0.0.1:")
        for i in range(2):
            processes.append(_start(["worker", address, "--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1",
                                     "--no-dashboard", "--death-timeout", "60", "--name", f"w{i}",
                                     "--local-directory", str(tmp_path / f"worker{i}")],
                                    tmp_path / f"worker{i}.log", DASK_CONFIG=str(HEAP_CONFIG)))
        with distributed.Client(address, timeout=f"{START_TIMEOUT_S}s") as client:
            try:
                client.wait_for_workers(2, timeout=START_TIMEOUT_S)
            except TimeoutError:
                logs = "\n".join((tmp_path / f"worker{i}.log").read_text()[-1500:] for i in range(2))
                pytest.fail(f"the two dask workers did not connect within {START_TIMEOUT_S} s:\n{logs}")

            run = tmp_path / "run"
            # The run's workflow says synchronous; --scheduler sends it to the CLI cluster instead.
            assert main(["-q", "run", str(_workflow(tmp_path, sample, run)), "--scheduler", address]) == 0

            executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
            heap = client.run(lambda: {name: os.environ.get(name) for name in want_heap})
            prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        assert len(executed) == 2 and all(n > 0 for n in executed.values()), executed
        assert list(heap.values()) == [want_heap] * 2   # docs/dask/heap.yaml reached the workers
        assert {"segment_fragments", "puncta_pre", "measure"} <= set(prefixes), prefixes
    finally:
        for process in reversed(processes):
            _stop(process)

    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete" and record["config"]["compute"]["scheduler"] == address
    got, want = _outputs(run), _outputs(reference)
    assert [k for k in want if got[k] != want[k]] == []
