"""Worker death: a real distributed cluster loses a worker process mid-run; outputs are unchanged.

A ``LocalCluster`` with two worker processes (nannies) runs the tiny workflow
through its scheduler address. A watcher thread SIGKILLs one worker process as
soon as the segmentation has finished a few fragment blocks; the nanny starts a
new worker, the scheduler reschedules the lost tasks (block tasks are
idempotent: a block whose done-marker exists is not recomputed), and the
run's label image and tables must equal a synchronous, uninterrupted run's —
which also checks that the scheduler does not change the result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import pytest
import zarr

from sample_data import SampleConfig, write_sample
from workflows.cli import main

TINY = {"shape": [32, 96, 96], "n_neurons": 6, "seed": 3, "chunks_zyx": [16, 48, 48]}
TABLES = ("neurons.parquet", "synapses.parquet", "edges.parquet")


def _workflow(tmp_path, sample, run, scheduler):
    path = tmp_path / f"{run.name}.yaml"
    path.write_text(f"input: {{volume: {sample / 'volume.zarr'}}}\noutput: {run}\n"
                    f"compute: {{scheduler: '{scheduler}', block_shape: [16, 48, 48], device: cpu, retries: 2}}\n")
    return path


def _outputs(run):
    labels = zarr.open_array(str(run / "labels.zarr" / "neurons" / "0"), mode="r")[:]
    return {"labels": labels.tobytes(), **{n: (run / n).read_bytes() for n in TABLES}}


def test_killed_worker_does_not_change_the_outputs(tmp_path):
    distributed = pytest.importorskip("distributed")
    sample = tmp_path / "sample"
    write_sample(sample, SampleConfig(**TINY))
    reference = tmp_path / "reference"
    assert main(["-q", "run", str(_workflow(tmp_path, sample, reference, "synchronous"))]) == 0

    run = tmp_path / "run"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=40) as cluster:
        # No Client in this process besides the pipeline's own: read worker pids from the nannies.
        pids = sorted(n.process.pid for n in cluster.workers.values())
        assert len(pids) == 2
        victim = pids[0]
        killed = threading.Event()

        def watch():
            markers = run / "work" / "blocks" / "segment_fragments"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if markers.is_dir() and len(list(markers.glob("*.pkl"))) >= 2:
                    os.kill(victim, signal.SIGKILL)
                    killed.set()
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert main(["-q", "run", str(_workflow(tmp_path, sample, run, cluster.scheduler_address))]) == 0
        watcher.join(5)
        assert killed.is_set(), "the worker was never killed (run finished too early?)"
        # The nanny replaced the dead worker.
        assert victim not in {n.process.pid for n in cluster.workers.values() if n.process is not None}

    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    got, want = _outputs(run), _outputs(reference)
    assert [k for k in want if got[k] != want[k]] == []
    shutil.rmtree(sample)
