"""The ``connectome`` command line.

Commands::

    connectome sample OUT [--shape Z,Y,X] [--neurons N] [--barcodes K] [--dense] [--seed S]
    connectome ingest SOURCE... OUT.zarr --channels CHANNELS.yaml [--voxel-size Z,Y,X] ...
    connectome run WORKFLOW.yaml [--output RUN_DIR] [--scheduler ADDRESS] [--device cpu|gpu|auto]
    connectome evaluate RUN_DIR --truth SAMPLE [--json]
    connectome report RUN_DIR [--truth SAMPLE] [--output report.html]
    connectome export RUN_DIR --format graphml --output PATH
    connectome view RUN_DIR [--host HOST] [--port PORT] [--volume VOLUME.zarr]

Every command's ``--help`` lists its options and examples.

Exit codes: 0 success; 1 unexpected internal error (a bug: the traceback is
printed); 2 bad input or configuration (one line naming the culprit; also
argparse's usage errors); 130 interrupted by Ctrl-C (rerun the same command to
resume). ``connectome view`` serves until Ctrl-C and then exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from pathlib import Path

from ingest.cli import add_ingest_parser
from pipeline.errors import PipelineError

from .report import add_report_parser

__all__ = ["build_parser", "main"]

log = logging.getLogger("connectome")

EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

EXIT_CODES = """\
exit codes:
  0    success
  1    internal error (a bug: the traceback is printed; please report it)
  2    bad input or configuration (one line naming the file, key, channel or
       path), or a command-line usage error
  130  interrupted by Ctrl-C (rerun the same command to resume; 'view' exits 0)"""


def _wrap(text: str | None) -> str | None:
    """Pre-wrap a description: RawDescriptionHelpFormatter keeps line breaks as written."""
    return textwrap.fill(" ".join(text.split()), 79) if text else text


def _epilog(*examples: str) -> str:
    """A sub-command epilog: its examples, then the exit codes."""
    lines = ["examples:"] + [f"  {e}" for e in examples]
    return "\n".join(lines) + "\n\n" + EXIT_CODES


def _triple(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three integers Z,Y,X, got {text!r}") from None
    if len(values) != 3 or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected three positive integers Z,Y,X, got {text!r}")
    return values


def _cmd_sample(args) -> int:
    from pipeline.config import validate_config
    from sample_data import SampleConfig, write_sample

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


def _cmd_view(args) -> int:
    from .view import serve

    return serve(args.run_dir, host=args.host, port=args.port, volume=args.volume,
                 rebuild=args.overwrite, skeletons=args.skeletons)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535 (0: any free port), got {value}")
    return value


def _add_view_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "view", help="look at a run in Neuroglancer (raw channels, segmentation, meshes, synapses)",
        description="Serve a run directory to a local Neuroglancer viewer and print its URL: the raw "
                    "channels of the input volume, the segmentation with meshes and cell types as "
                    "segment properties (skeletons with --skeletons), and the synapses as annotations. The Neuroglancer "
                    "precomputed export is written to RUN_DIR/neuroglancer/ when it is missing or "
                    "the run has changed since. Serves until Ctrl-C; binds 127.0.0.1 (this machine only) "
                    "unless --host says otherwise.",
        epilog=_epilog("connectome view runs/sample                  # prints http://127.0.0.1:PORT/v/...",
                       "connectome view runs/sample --port 8080",
                       "connectome view runs/sample --host 0.0.0.0 --port 8080   # other machines too",
                       "connectome view runs/sample --volume data/volume.zarr    # raw channels from here",
                       "connectome view runs/sample --skeletons                  # add neuron skeletons"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory written by 'connectome run'")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=_port, default=0, help="viewer port (default 0: a free port)")
    p.add_argument("--volume", type=Path, metavar="VOLUME.zarr",
                   help="OME-Zarr volume for the raw channels (default: the run's input from run.json)")
    p.add_argument("--skeletons", action="store_true",
                   help="also show skeletons (computed on first use: slow, ~40 s on the bundled sample)")
    p.add_argument("--overwrite", action="store_true",
                   help="rewrite RUN_DIR/neuroglancer/ even when it is up to date")
    p.set_defaults(func=_cmd_view)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``connectome`` argument parser with every sub-command.

    Returns
    -------
    argparse.ArgumentParser
        Each sub-command sets ``func``; ``args.func(args)`` returns the exit code.
    """
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="connectome",
        description="Optical (expansion/light) microscopy connectomics: barcoded volume to connectome.",
        epilog="examples:\n"
               "  connectome sample sample_data/sample\n"
               "  connectome run workflows/sample.yaml\n"
               "  connectome evaluate runs/sample --truth sample_data/sample\n"
               "  connectome view runs/sample\n"
               "  connectome COMMAND --help        # options and examples of one command\n\n" + EXIT_CODES,
        formatter_class=raw,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample", help="write the synthetic sample volume with ground truth",
                       description="Write the synthetic barcoded sample: raw TIFFs + channels.yaml, "
                                   "their OME-Zarr volume and the ground truth (labels, neurons, synapses).",
                       epilog=_epilog("connectome sample sample_data/sample",
                                      "connectome sample sample_data/big --shape 128,512,512 --seed 3",
                                      "connectome sample sample_data/dense --dense --shape 64,256,256"),
                       formatter_class=raw)
    p.add_argument("out", type=Path, metavar="OUT", help="output folder (volume.zarr + truth/ + raw/)")
    p.add_argument("--shape", type=_triple, metavar="Z,Y,X", help="voxels (default 96,256,256)")
    p.add_argument("--neurons", type=int, metavar="N", help="number of neurons")
    p.add_argument("--barcodes", type=int, metavar="K", help="number of barcode channels K")
    p.add_argument("--dense", action="store_true", help="dense labelling: neurites fill the tissue")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing sample")
    p.set_defaults(func=_cmd_sample)

    p = add_ingest_parser(sub)
    p.formatter_class = raw
    p.epilog = _epilog(
        "connectome ingest --channels raw/channels.yaml data/volume.zarr   # sources named in the spec",
        "connectome ingest raw/ch0 raw/ch1 data/volume.zarr --channels CHANNELS.yaml --levels 4",
        "connectome ingest raw/barcodes/ raw/markers.h5 data/volume.zarr --channels channels.yaml "
        "--voxel-size 0.4,0.1,0.1")

    p = sub.add_parser("run", help="run a workflow YAML end to end",
                       description="Run a workflow: ingest or sample if asked, segment, detect and pair "
                                   "synapses, measure, call barcodes and cell types, write the run "
                                   "directory. An interrupted run resumes when the same command is run "
                                   "again.",
                       epilog=_epilog("connectome run workflows/sample.yaml",
                                      "connectome run workflows/sample.yaml --output runs/sample --device auto",
                                      "connectome run wf.yaml --scheduler tcp://HOST:8786 --device gpu",
                                      "connectome run wf.yaml --scheduler synchronous --block-shape 32,128,128"),
                       formatter_class=raw)
    p.add_argument("workflow", type=Path, metavar="WORKFLOW.yaml", help="workflow YAML file")
    p.add_argument("--output", type=Path, metavar="RUN_DIR",
                   help="run directory (overrides 'output' in the YAML)")
    p.add_argument("--scheduler", help="'local', 'synchronous', or a Dask scheduler address tcp://HOST:PORT")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), help="array backend (auto: GPU if CuPy finds one)")
    p.add_argument("--block-shape", type=_triple, metavar="Z,Y,X", help="block (write region) shape")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("evaluate", help="compare a run with ground truth",
                       description="Score a run against a sample's ground truth: VOI, adapted Rand "
                                   "error, synapse detection, partner, edge, cell-type and barcode accuracy.",
                       epilog=_epilog("connectome evaluate runs/sample --truth sample_data/sample",
                                      "connectome evaluate runs/sample --truth sample_data/sample --json"),
                       formatter_class=raw)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory written by 'connectome run'")
    p.add_argument("--truth", type=Path, required=True, metavar="SAMPLE",
                   help="sample folder with truth/ and volume.zarr")
    p.add_argument("--radius", type=float, default=1.0, help="synapse matching radius in micrometres")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)

    p = add_report_parser(sub)
    p.formatter_class = raw
    p.epilog = _epilog("connectome report runs/sample                 # rewrites runs/sample/report.html",
                       "connectome report runs/sample --truth sample_data/sample --output report.html")

    p = sub.add_parser("export", help="export a run's connectome",
                       description="Export a run to neuPrint CSVs, Neuroglancer precomputed, SWC, SONATA, "
                                   "NWB or GraphML (or all of them).",
                       epilog=_epilog("connectome export runs/sample --format graphml --output sample.graphml",
                                      "connectome export runs/sample --format precomputed --output exports/ng",
                                      "connectome export runs/sample --format all --output exports/ --overwrite"),
                       formatter_class=raw)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory written by 'connectome run'")
    p.add_argument("--format", choices=("graphml", "neuprint", "precomputed", "swc", "sonata", "nwb", "all"),
                   required=True, help="all writes every format into OUTPUT/")
    p.add_argument("--output", type=Path, required=True, metavar="OUTPUT", help="file or folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.add_argument("--multigraph", action="store_true", help="graphml: one graph edge per synapse")
    p.set_defaults(func=_cmd_export)

    _add_view_parser(sub)
    for command in sub.choices.values():
        command.description = _wrap(command.description)
        for action in command._actions:
            if action.dest == "run_dir" and not action.option_strings and action.metavar is None:
                action.metavar = "RUN_DIR"
    return parser


def _is_user_error(exc: BaseException) -> bool:
    """Errors caused by input or configuration: a one-line message, exit 2."""
    if isinstance(exc, (PipelineError, FileNotFoundError, FileExistsError)):
        return True
    try:
        from graph.export_common import ExportError
    except ImportError:  # pragma: no cover - graph is part of this project
        return False
    return isinstance(exc, ExportError)


def main(argv=None) -> int:
    """Run the ``connectome`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code (see the module docstring); argparse usage errors raise
        ``SystemExit(2)``, unexpected errors propagate (exit 1 from the shell).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # distributed is chatty at INFO; its warnings still show.
    logging.getLogger("distributed").setLevel(max(level, logging.WARNING))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"connectome {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not _is_user_error(exc):
            raise  # a bug: Python prints the traceback and exits 1
        print(f"connectome {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
