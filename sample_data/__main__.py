"""``python -m sample_data OUT_DIR [--dense] [--seed N] [--shape Z Y X] [--overwrite]``."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import SampleConfig
from .io import write_sample

__all__ = ["main"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sample_data", description=__doc__)
    parser.add_argument("out_dir", help="sample directory to create")
    parser.add_argument("--dense", action="store_true", help="dense tissue (neurites fill most voxels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"))
    parser.add_argument("--neurons", type=int, help="number of neurons")
    parser.add_argument("--barcodes", type=int, help="number of barcode channels")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    values = {"dense": args.dense, "seed": args.seed}
    if args.shape:
        values["shape"] = tuple(args.shape)
    if args.neurons:
        values["n_neurons"] = args.neurons
    if args.barcodes:
        values["n_barcodes"] = args.barcodes
    path = write_sample(args.out_dir, SampleConfig(**values), overwrite=args.overwrite)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
