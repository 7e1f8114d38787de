"""The whole workflow on the CPU and on the GPU, on the same sample: time, evaluation, agreement.

Usage (the device check script runs it; it also runs here, CPU only)::

    python -m benchmarks.gpu.workflow_bench --out runs/gpu_workflow
    python -m benchmarks.gpu.workflow_bench --out runs/gpu_workflow --shape 192,512,512 --neurons 96

The bundled sample workflow (``workflows/sample.yaml``) runs once per device
on the same generated sample, each through a local Dask cluster as
``connectome run --device cpu|gpu`` does (CPU: one single-threaded worker per
core, up to one per block; GPU: one worker holding the GPU). It prints, per
device, the wall time of every stage from ``run.json``, the end-to-end
Mvox/s, the ``connectome evaluate`` metrics against the sample's truth, and
how far the two label images are apart (VOI split/merge and adapted Rand
error of the GPU labels against the CPU labels, and the fraction of voxels
whose neuron is the same after matching ids). A device that is not there
gets no row.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.backend import gpu_available
from pipeline.config import validate_config
from workflows.spec import WorkflowConfig, load_workflow

log = logging.getLogger("benchmarks.gpu.workflow_bench")

METRICS = ("voi_split", "voi_merge", "arand", "synapse_f1", "partner_accuracy", "edge_f1",
           "cell_type_accuracy", "barcode_accuracy", "n_neurons_pred")


def workflow_for(base: WorkflowConfig, sample_dir: Path, sample_fields: dict, run_dir: Path, device: str,
                 n_workers: int, scheduler: str = "local") -> WorkflowConfig:
    """The sample workflow on ``device`` writing ``run_dir`` ."""
    data = base.model_dump(mode="json")
    data["input"] = {"sample": {"path": str(sample_dir), "config": sample_fields}, "truth": str(sample_dir)}
    data["output"] = str(run_dir)
    data["compute"].update(device=device, scheduler=scheduler, n_workers=n_workers, threads_per_worker=1)
    return validate_config(WorkflowConfig, data, source="benchmarks.gpu.workflow_bench")


def label_agreement(labels, reference) -> dict:
    """VOI, adapted Rand error and matched-voxel fraction of ``labels`` against ``reference``."""
    from workflows.metrics import adapted_rand_error, match_labels, variation_of_information

    split, merge = variation_of_information(labels, reference)
    arand = adapted_rand_error(labels, reference)[0]
    mapping = match_labels(labels, reference)  # predicted id -> best reference id
    mapped = pd.Series(labels.ravel()).map(mapping).fillna(0).to_numpy(np.int64)
    same = float(np.mean(mapped == reference.ravel().astype(np.int64)))
    return {"voi_split": split, "voi_merge": merge, "arand": arand, "same_voxels": same}


def main(argv=None) -> int:
    from workflows.evaluate import evaluate_run
    from workflows.run import run_workflow
    from pipeline.volume import open_label_image

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.workflow_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_workflow"))
    parser.add_argument("--shape", help="Z,Y,X of the sample (default: the sample's 96,256,256)")
    parser.add_argument("--neurons", type=int, help="neurons in the sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", nargs="+", choices=("cpu", "gpu"), default=["cpu", "gpu"])
    parser.add_argument("--workflow", type=Path, default=Path("workflows/sample.yaml"))
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="run in-process (synchronous scheduler) under cProfile and print the N "
                             "functions with the most own time, per device")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    fields = {"seed": args.seed}
    if args.shape:
        fields["shape"] = [int(v) for v in args.shape.split(",")]
    if args.neurons:
        fields["n_neurons"] = args.neurons
    tag = f"seed{args.seed}" + (f"_{args.shape.replace(',', 'x')}" if args.shape else "")
    sample_dir = args.out / "samples" / tag
    base = load_workflow(args.workflow)
    devices = [d for d in args.devices if d == "cpu" or gpu_available()]
    if "gpu" in args.devices and "gpu" not in devices:
        print("GPU: not measured (no CUDA device visible to CuPy)")
    rows = {}
    for device in devices:
        run_dir = args.out / "runs" / f"{tag}_{device}"
        n_workers = (os.cpu_count() or 1) if device == "cpu" else 1
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resumed one
        config = workflow_for(base, sample_dir, fields, run_dir, device, n_workers,
                              scheduler="synchronous" if args.profile else "local")
        profiler = cProfile.Profile() if args.profile else None
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        run_workflow(config, progress=False)
        wall = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            print(f"--- {device}: the {args.profile} functions with the most own time")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
        record = json.loads((run_dir / "run.json").read_text())
        rows[device] = {"wall": wall, "record": record, "metrics": evaluate_run(run_dir, sample_dir),
                        "labels": np.asarray(open_label_image(run_dir / "labels.zarr", "neurons")[:]),
                        "workers": n_workers}
        log.warning("%s: %.1f s", device, wall)
    if not rows:
        return 1
    first = next(iter(rows.values()))
    mvox = float(np.prod(first["record"]["shape"][-3:])) / 1e6
    print(f"sample {tag}: {'x'.join(map(str, first['record']['shape'][-3:]))} = {mvox:.1f} Mvox, "
          f"{len(first['record']['channels'])} channels, blocks {first['record']['block_shape']}")
    names = list(rows)
    print("| | " + " | ".join(f"{d} ({rows[d]['workers']} worker(s))" for d in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    stages = list(first["record"]["timings_s"])
    for stage in stages:
        print(f"| {stage} s | " + " | ".join(f"{rows[d]['record']['timings_s'].get(stage, float('nan')):.2f}"
                                              for d in names) + " |")
    compute = {d: sum(v for k, v in rows[d]["record"]["timings_s"].items() if k != "input") for d in names}
    print("| stages after input s | " + " | ".join(f"{compute[d]:.2f}" for d in names) + " |")
    print("| stages after input Mvox/s | " + " | ".join(f"{mvox / compute[d]:.2f}" for d in names) + " |")
    print("| segment Mvox/s | " + " | ".join(f"{mvox / rows[d]['record']['timings_s']['segment']:.2f}"
                                            for d in names) + " |")
    print("| wall incl. cluster start s | " + " | ".join(f"{rows[d]['wall']:.1f}" for d in names) + " |")
    for key in METRICS:
        cells = [rows[d]["metrics"][key] for d in names]
        print(f"| {key} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells) + " |")
    if len(names) == 2:
        agreement = label_agreement(rows[names[1]]["labels"], rows[names[0]]["labels"])
        print(f"{names[1]} labels against {names[0]} labels: " +
              ", ".join(f"{k} {v:.4f}" for k, v in agreement.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
