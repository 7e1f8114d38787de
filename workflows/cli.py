"""The ``connectome`` command line.

Commands::

    connectome ingest SOURCE... OUT.zarr --channels CHANNELS.yaml [--voxel-size Z,Y,X] ...
    connectome sample OUT [--shape Z,Y,X] [--neurons N] [--barcodes K] [--dense] [--seed S]
    connectome run WORKFLOW.yaml [--output RUN_DIR] [--scheduler ADDRESS] [--device cpu|gpu|auto]
    connectome evaluate RUN_DIR --truth SAMPLE [--json]
    connectome report RUN_DIR [--truth SAMPLE] [--output report.html]
    connectome export RUN_DIR --format graphml --output PATH

Exit codes: 0 success; 1 unexpected internal error (a bug: the traceback is
printed); 2 bad input or configuration (one line naming the culprit).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ingest.cli import add_ingest_parser
from pipeline.errors import PipelineError

from .report import add_report_parser

__all__ = ["main", "build_parser"]

log = logging.getLogger("connectome")

EXIT_OK, EXIT_BUG, EXIT_USAGE = 0, 1, 2


def _triple(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three integers Z,Y,X, got {text!r}") from None
    if len(values) != 3 or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected three positive integers Z,Y,X, got {text!r}")
    return values


def _cmd_sample(args) -> int:
    from sample_data import SampleConfig, write_sample

    from pipeline.config import validate_config

    fields = {"seed": args.seed, "dense": args.dense}
    if args.shape:
        fields["shape"] = args.shape
    if args.neurons is not None:
        fields["n_neurons"] = args.neurons
    if args.barcodes is not None:
        fields["n_barcodes"] = args.barcodes
    config = validate_config(SampleConfig, fields, source="connectome sample")
    path = write_sample(args.out, config, overwrite=args.overwrite)
    print(f"sample written to {path}")
    return EXIT_OK


def _cmd_run(args) -> int:
    from .evaluate import format_report
    from .run import run_workflow
    from .spec import load_workflow

    config = load_workflow(args.workflow)
    if args.output is not None:
        config.output = args.output
    if args.scheduler is not None:
        config.compute.scheduler = args.scheduler
    if args.device is not None:
        config.compute.device = args.device
    if args.block_shape is not None:
        config.compute.block_shape = args.block_shape
    run_dir = run_workflow(config, progress=not args.quiet)
    record = json.loads((run_dir / "run.json").read_text())
    print(f"run complete: {run_dir}  ({record['total_s']:.1f} s; {record['counts']})")
    if "evaluation" in record:
        print(format_report(record["evaluation"]["metrics"]))
    return EXIT_OK


def _cmd_evaluate(args) -> int:
    from .evaluate import evaluate_run, format_report

    metrics = evaluate_run(args.run_dir, args.truth, synapse_radius_um=args.radius)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(format_report(metrics))
    return EXIT_OK


def _cmd_export(args) -> int:
    from graph.export import export

    options = {"multigraph": True} if args.multigraph else {}
    export(args.run_dir, args.format, args.output, overwrite=args.overwrite, **options)
    print(f"wrote {args.format} to {args.output}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connectome",
        description="Optical (expansion/light) microscopy connectomics: barcoded volume to connectome.",
        epilog="Exit codes: 0 ok, 1 internal error (bug), 2 bad input or configuration.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample", help="write the synthetic sample volume with ground truth",
                       epilog="example: connectome sample sample_data/big --shape 128,512,512 --seed 3")
    p.add_argument("out", type=Path, help="output folder (volume.zarr + truth/)")
    p.add_argument("--shape", type=_triple, help="Z,Y,X voxels (default 96,256,256)")
    p.add_argument("--neurons", type=int, help="number of neurons")
    p.add_argument("--barcodes", type=int, help="number of barcode channels K")
    p.add_argument("--dense", action="store_true", help="dense labelling: neurites fill the tissue")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing sample")
    p.set_defaults(func=_cmd_sample)

    add_ingest_parser(sub)
    add_report_parser(sub)

    p = sub.add_parser("run", help="run a workflow YAML end to end",
                       epilog="example: connectome run workflows/sample.yaml --output runs/sample --device auto")
    p.add_argument("workflow", type=Path, help="workflow YAML file")
    p.add_argument("--output", type=Path, help="run directory (overrides 'output' in the YAML)")
    p.add_argument("--scheduler", help="'local', 'synchronous', or a Dask scheduler address tcp://HOST:PORT")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"))
    p.add_argument("--block-shape", type=_triple, help="Z,Y,X block (write region) shape")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("evaluate", help="compare a run with ground truth",
                       epilog="example: connectome evaluate runs/sample --truth sample_data/sample --json")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--truth", type=Path, required=True, help="sample folder with truth/ and volume.zarr")
    p.add_argument("--radius", type=float, default=1.0, help="synapse matching radius in micrometres")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("export", help="export a run's connectome",
                       epilog="example: connectome export runs/sample --format graphml --output sample.graphml")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--format", choices=("graphml", "neuprint", "precomputed", "swc", "sonata", "nwb", "all"),
                   required=True, help="all writes every format into OUTPUT/")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.add_argument("--multigraph", action="store_true", help="graphml: one graph edge per synapse")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # distributed is chatty at INFO; its warnings still show.
    logging.getLogger("distributed").setLevel(max(level, logging.WARNING))
    try:
        return args.func(args)
    except (PipelineError, FileNotFoundError) as exc:
        print(f"connectome {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"connectome {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
