"""Quality on several synthetic samples: `connectome evaluate` numbers, with and without barcodes.

Usage::

    python -m benchmarks.quality --seeds 0 1 2 3 --ablation --out runs/quality
    python -m benchmarks.quality --seeds 0 --shape 128,384,384 --neurons 48
    python -m benchmarks.quality --seeds 0 --set n_barcodes=6 --set read_noise=32

``--set FIELD=VALUE`` sets any :class:`sample_data.SampleConfig` field (a
harder sample: fewer barcode channels, more noise, more puncta, ...).

Each sample is generated once under ``OUT/samples``; each run writes
``OUT/runs/<name>``. The table printed at the end (Markdown) is what
README.md / BENCHMARKS.md quote. The ablation runs the same workflow with
``segment.use_barcodes: false`` (fill-only watershed + fill-contrast merging).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipeline.config import validate_config
from workflows.evaluate import evaluate_run
from workflows.run import run_workflow
from workflows.spec import WorkflowConfig, load_workflow

log = logging.getLogger("benchmarks.quality")

COLUMNS = ("voi_split", "voi_merge", "arand", "foreground_precision", "foreground_recall", "synapse_f1",
           "partner_accuracy", "edge_f1", "cell_type_accuracy", "barcode_accuracy", "n_neurons_pred",
           "n_neurons_true")


def _config(base: WorkflowConfig, sample_dir: Path, run_dir: Path, sample_fields: dict,
            use_barcodes: bool) -> WorkflowConfig:
    data = base.model_dump(mode="json")
    data["input"] = {"sample": {"path": str(sample_dir), "config": sample_fields}, "truth": str(sample_dir)}
    data["output"] = str(run_dir)
    data["compute"]["scheduler"] = "synchronous"
    data["compute"]["device"] = "cpu"
    data["segment"]["use_barcodes"] = use_barcodes
    return validate_config(WorkflowConfig, data, source="benchmarks.quality")


def _settings(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """``["n_barcodes=6", "read_noise=32"]`` -> ``{"n_barcodes": 6, "read_noise": 32.0}`` (YAML scalars)."""
    import yaml

    fields = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--set needs FIELD=VALUE, got {item!r}")
        fields[key.strip()] = yaml.safe_load(value)
    return fields


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--shape", help="Z,Y,X of each sample (default: the sample default 96,256,256)")
    parser.add_argument("--neurons", type=int, help="neurons per sample")
    parser.add_argument("--dense", action="store_true")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                        help="a SampleConfig field of every sample (repeatable), e.g. n_barcodes=6")
    parser.add_argument("--ablation", action="store_true", help="also run without barcode evidence")
    parser.add_argument("--workflow", type=Path, default=Path("workflows/sample.yaml"))
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = load_workflow(args.workflow)
    rows = []
    for seed in args.seeds:
        fields = {"seed": seed, "dense": args.dense}
        if args.shape:
            fields["shape"] = [int(v) for v in args.shape.split(",")]
        if args.neurons:
            fields["n_neurons"] = args.neurons
        extra = _settings(parser, args.settings)
        fields.update(extra)
        tag = f"seed{seed}" + ("_dense" if args.dense else "") + (f"_{args.shape.replace(',', 'x')}" if args.shape else "")
        tag += "".join(f"_{k}{v}" for k, v in extra.items())
        sample_dir = args.out / "samples" / tag
        for use_barcodes in (True, False) if args.ablation else (True,):
            name = tag + ("" if use_barcodes else "_nobarcodes")
            config = _config(base, sample_dir, args.out / "runs" / name, fields, use_barcodes)
            started = time.perf_counter()
            run_dir = run_workflow(config, progress=False)
            seconds = time.perf_counter() - started
            metrics = evaluate_run(run_dir, sample_dir)
            rows.append((name, seconds, metrics))
            log.warning("%s: %.1f s %s", name, seconds, {k: round(metrics[k], 3) for k in COLUMNS[:3]})
    print("| run | seconds | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for name, seconds, metrics in rows:
        values = [f"{metrics[k]:.3f}" if isinstance(metrics[k], float) else str(metrics[k]) for k in COLUMNS]
        print(f"| {name} | {seconds:.1f} | " + " | ".join(values) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
