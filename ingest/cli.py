"""``connectome ingest``: the argparse sub-command, registered by ``workflows.cli``.

Usage::

    connectome ingest SOURCE... OUT.zarr --channels CHANNELS.yaml
        [--voxel-size Z,Y,X] [--unit UNIT] [--expansion-factor F] [--chunks Z,Y,X]
        [--shards Z,Y,X] [--levels N] [--dtype DTYPE] [--scaling clip|range|window]
        [--compression blosc|zstd|none] [--compression-level L] [--scheduler synchronous|local|tcp://HOST:PORT]
        [--overwrite]

Command-line values override the same keys in ``CHANNELS.yaml``. Rerunning
an interrupted command resumes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_ingest_parser", "run_ingest_command"]


def _triple(kind):
    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected three numbers Z,Y,X, got {text!r}") from None
        if len(values) != 3 or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected three positive numbers Z,Y,X, got {text!r}")
        return values

    return parse


def add_ingest_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``ingest`` command to ``subparsers`` (from ``ArgumentParser.add_subparsers``).

    The command's handler is set as ``func``: ``args.func(args)`` returns the
    exit code (0). Errors are :class:`pipeline.errors.PipelineError` with a
    one-line message, for the caller to print.
    """
    p = subparsers.add_parser(
        "ingest",
        help="convert microscopy sources into an OME-Zarr volume with channel roles",
        description=(
            "Stream TIFF/OME-TIFF (files or folders of planes), HDF5, Zarr, N5, Neuroglancer "
            "precomputed or .npy sources, block by block, into one OME-Zarr 0.5 volume. "
            "An interrupted run resumes when the same command is run again."
        ),
        epilog="example: connectome ingest raw/ch0 raw/ch1 volume.zarr --channels CHANNELS.yaml --levels 4",
    )
    p.add_argument("paths", nargs="+", metavar="SOURCE... OUT.zarr",
                   help="sources (files, folders, glob patterns, file:// or gs:// URLs), then the output")
    p.add_argument("--channels", type=Path, required=True, metavar="CHANNELS.yaml",
                   help="channel spec: names, roles, sources, colours (see ingest.spec)")
    p.add_argument("--voxel-size", type=_triple(float), metavar="Z,Y,X",
                   help="voxel size as imaged (default: from the metadata)")
    p.add_argument("--unit", help="length unit of the voxel size (default micrometer; nm, um, mm accepted)")
    p.add_argument("--expansion-factor", type=float, metavar="F",
                   help="tissue expansion: the output scale becomes biological (voxel size / F)")
    p.add_argument("--chunks", type=_triple(int), metavar="Z,Y,X", help="output chunk shape (default 64,128,128)")
    p.add_argument("--shards", type=_triple(int), metavar="Z,Y,X", help="output shard shape, a multiple of --chunks")
    p.add_argument("--levels", type=int, help="multiscale levels (default 1)")
    p.add_argument("--dtype", help="output dtype (default: keep the sources')")
    p.add_argument("--scaling", choices=("clip", "range", "window"),
                   help="value mapping for a lossy --dtype conversion")
    p.add_argument("--compression", choices=("zstd", "blosc", "none"), help="chunk compression (default blosc: zstd after a byte shuffle)")
    p.add_argument("--compression-level", type=int, metavar="L",
                   help="compressor level (default 3; blosc takes 0-9)")
    p.add_argument("--scheduler", default="synchronous",
                   help="'synchronous' (default: this process), 'local' (a Dask LocalCluster) or tcp://HOST:PORT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run_ingest_command)
    return p


def run_ingest_command(args) -> int:
    """Handler of ``connectome ingest``; returns the exit code."""
    from pipeline.config import ComputeConfig
    from pipeline.errors import ConfigError
    from pipeline.runner import Executor

    from .core import ingest

    if len(args.paths) < 1:
        raise ConfigError("connectome ingest needs an output path")
    *sources, out = args.paths
    progress = not getattr(args, "quiet", False)
    with Executor(ComputeConfig(scheduler=args.scheduler)) as executor:
        volume = ingest(
            sources, out, args.channels, voxel_size=args.voxel_size, unit=args.unit,
            expansion_factor=args.expansion_factor, chunks=args.chunks, levels=args.levels,
            dtype=args.dtype, scaling=args.scaling, compression=args.compression,
            compression_level=args.compression_level, shards=args.shards,
            overwrite=args.overwrite, executor=executor, progress=progress,
        )
    roles = ", ".join(f"{c.name}:{c.role}" for c in volume.channels)
    print(f"ingested {volume.path}: shape {volume.shape} {volume.dtype}, voxel size {volume.voxel_size} "
          f"{volume.unit}, {volume.levels} level(s); channels {roles}")
    return 0
