"""Cost of the final contact pass: the pipeline with each contact-pass variant in one process.

    .venv/bin/python -m benchmarks.contact_cost [--shape 64,256,256] [--repeats 3] [--variants unmix ...]

One synthetic sample (seed 0) is generated into a temporary folder; then the
whole pipeline (synchronous, device cpu) runs once untimed and ``--repeats``
times timed for each method, alternating so that a slow spell of a shared
machine hits both. Printed: median wall seconds of the run and of its
``segment_relabel`` phase (where the contact pass runs), Mvox/s per core,
and the ratio to the cosine pass, plus VOI and ARAND of the last run of each
method against the sample's truth.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .suite import _make_sample, _quiet_stdout, _shape

log = logging.getLogger("benchmarks.contact_cost")

def _variants() -> dict:
    from segment import SegmentConfig

    return {
        "cosine": {"contact_method": "cosine"},
        "unmix": {"contact_method": "unmix"},
        # session 23's default: the early rounds fit as many iterations as the last
        "unmix, early rounds in full": {"contact_method": "unmix", "contact_unmix_early_iterations": None},
        # the default until session 23: classic Richardson-Lucy (the PSF as back projector), 60 iterations
        "unmix, matched back projector": {"contact_method": "unmix", "contact_unmix_back_projector": 1.0,
                                          "contact_unmix_iterations": 60, "contact_unmix_early_iterations": None},
        "unmix, full halo": {"contact_method": "unmix", "contact_halo": list(SegmentConfig().halo)},
        # the default until session 8: one round, argmax of the raw abundances, no growth
        "unmix, session 8": {"contact_method": "unmix", "contact_unmix_rounds": 1, "contact_unmix_radius": 2,
                             "contact_unmix_background": 0.05, "contact_unmix_smoothing": None,
                             "contact_unmix_grow": None, "contact_unmix_brightness": 0.0},
    }


def _config(sample_dir: Path, out: Path, block_shape, name: str, segment: dict):
    from workflows.spec import WorkflowConfig

    return WorkflowConfig.model_validate({
        "name": "contact-" + name.replace(", ", "-").replace(" ", "-"),
        "input": {"volume": str(sample_dir / "volume.zarr")},
        "output": str(out),
        "compute": {"scheduler": "synchronous", "device": "cpu", "block_shape": list(block_shape)},
        "segment": segment,
    })


def _evaluate(run_dir: Path, sample_dir: Path) -> dict:
    import zarr

    from pipeline.volume import Volume
    from workflows.metrics import adapted_rand_error, variation_of_information

    labels = zarr.open_array(str(run_dir / "labels.zarr" / "neurons" / "0"), mode="r")[...]
    truth = np.asarray(Volume.open(sample_dir / "volume.zarr", mode="r").labels("truth")[...])
    split, merge = variation_of_information(labels, truth)
    arand = adapted_rand_error(labels, truth)
    return {"voi_split": split, "voi_merge": merge, "arand": float(np.ravel(arand)[0])}


def run(shape, block_shape, repeats: int, work: Path, names=None) -> dict:
    from workflows.run import run_workflow

    sample = _make_sample(work, shape, seed=0)
    variants = _variants()
    if names:
        variants = {name: variants[name] for name in ["cosine"] + [n for n in names if n != "cosine"]}
    walls = {m: [] for m in variants}
    relabel = {m: [] for m in variants}
    quality = {}
    for i in range(repeats + 1):                      # the first round is the warm-up
        for k, (method, segment) in enumerate(variants.items()):
            out = work / f"run-{k}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            with _quiet_stdout():
                run_workflow(_config(sample, out, block_shape, method, segment), progress=False)
            wall = time.perf_counter() - start
            record = json.loads((out / "run.json").read_text())
            if i:
                walls[method].append(wall)
                relabel[method].append(record["segment"]["timings"]["relabel"])
            log.info("%s round %d: %.1f s (relabel %.1f s)", method, i, wall, record["segment"]["timings"]["relabel"])
            if i == repeats:
                quality[method] = _evaluate(out, sample)
    mvox = float(np.prod(shape)) / 1e6
    return {m: {"wall_s": statistics.median(walls[m]), "runs_s": [round(w, 2) for w in walls[m]],
                "relabel_s": statistics.median(relabel[m]), "mvox_per_s": mvox / statistics.median(walls[m]),
                **quality[m]} for m in variants}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=_shape, default=(64, 256, 256))
    parser.add_argument("--block-shape", type=_shape, default=(64, 128, 128))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=sorted(_variants()), metavar="NAME",
                        help=f"contact passes to time besides cosine (default: all of {sorted(_variants())})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="contact-cost-") as tmp:
        result = run(args.shape, args.block_shape, args.repeats, Path(tmp), args.variants)
    base = result["cosine"]["wall_s"]
    print(f"sample {'x'.join(map(str, args.shape))}, blocks {'x'.join(map(str, args.block_shape))}, "
          f"synchronous, 1 process; medians of {args.repeats} after a warm-up")
    print("| contact pass | run s | relabel s | Mvox/s per core | run ÷ cosine | VOI split | VOI merge | ARAND |")
    print("|---|---|---|---|---|---|---|---|")
    for method, r in result.items():
        print(f"| {method} | {r['wall_s']:.2f} | {r['relabel_s']:.2f} | {r['mvox_per_s']:.3f} | "
              f"{r['wall_s'] / base:.2f} | {r['voi_split']:.3f} | {r['voi_merge']:.3f} | {r['arand']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
