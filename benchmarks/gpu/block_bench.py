"""The block kernels on the CPU (NumPy) and, when CuPy sees a device, on the GPU, side by side.

Usage (the device check script runs it; it also runs here, CPU only)::

    python -m benchmarks.gpu.block_bench                    # one 64x256x256 block, 8 barcodes
    python -m benchmarks.gpu.block_bench --shape 128,512,512 --repeats 5

One synthetic block (``segment.synthetic``: tubes and balls with barcodes,
blurred, with noise) goes through the segmentation's per-block chain --
normalise, Richardson-Lucy deconvolution (the configured default), evidence,
codebook labelling, speck flooding, connected pieces -- then puncta
detection on one channel and per-label sums and intensity histograms of every channel. Each step is
timed as the median of ``--repeats`` after one warm-up; on the GPU the data
stay on the device for the whole chain (it is copied there once, not timed)
and every timing ends with a device synchronisation. The table gives seconds,
Gvox/s of the block and the GPU/CPU speed-up. No number is printed for a
device that is not there.

``--unmix-engines auto,xp`` times the contact pass with its fused kernels and
as array operations side by side; ``--breakdown`` times the parts of one
contact round on the GPU (candidate slots, one iteration's slot passes and
Gaussians, the smoothing), each synchronised: cProfile cannot split a GPU's
time.
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import time

import numpy as np

log = logging.getLogger("benchmarks.gpu.block_bench")


def _cupy():
    """CuPy when it imports and sees a CUDA device, else None."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception as exc:  # noqa: BLE001 - CUDA raises its own error types without a driver
        log.info("no GPU: %s", exc)
    return None


def make_block(shape, n_barcodes: int = 8, seed: int = 0):
    """A synthetic block (``segment.synthetic.SyntheticVolume``) and its objects' distinct codes."""
    from segment.synthetic import random_objects, render

    objects = random_objects(tuple(shape), max(4, int(np.prod(shape) // 60000)), n_barcodes=n_barcodes, seed=seed)
    codes = sorted({tuple(obj.code) for obj in objects if any(obj.code)})
    return render(tuple(shape), objects, seed=seed), np.asarray(codes, np.float32)


def chain(xp, fill, barcodes, codebook, sync, unmix_engines=("auto",), state=None):
    """The per-block steps on arrays of ``xp``; returns {step: callable} run in order.

    The contact pass runs once per engine of ``unmix_engines`` (``segment.unmix``'s "auto": fused
    kernels, "xp": array operations); the first is "unmix contacts", the others "unmix contacts [ENGINE]".
    """
    import dataclasses

    from graph.histograms import IntensityBins, label_histograms
    from graph.measure import label_sums
    from segment import SegmentConfig, kernels
    from segment.codebook import assign_codes, despeckle
    from segment.puncta import PunctaConfig, detect_puncta
    from segment.unmix import UnmixSettings, unmix_rounds

    config = SegmentConfig()
    state = {} if state is None else state

    def normalise():
        stack = xp.concatenate([fill[None], barcodes])
        lo = [float(v) for v in np.zeros(stack.shape[0])]
        hi = [float(v) for v in np.ones(stack.shape[0])]
        state["norm"] = kernels.normalize(stack, lo, hi)

    def deconvolve():
        state["bc"] = kernels.deconvolve(state["norm"][1:], config.psf_sigma, config.deconvolution_iterations,
                                         acceleration=config.deconvolution_acceleration,
                                         method=config.deconvolution_method, balance=config.wiener_balance)

    def evidence():
        state["ev"] = kernels.compute_evidence(state["norm"][0], state["bc"], None, sigma=config.sigma,
                                               barcode_sigma=config.barcode_sigma, threshold=0.2)

    def codes():
        centroids, identity = codebook
        state["codes"] = assign_codes(state["bc"], centroids, identity, mask=state["ev"].foreground,
                                      floor=config.code_floor)

    def flood():
        state["labels"] = despeckle(state["codes"], state["ev"].foreground, state["ev"].boundary,
                                    config.despeckle_size)

    def unmix(engine):
        # the default contact pass (segment.unmix.unmix_rounds, as the relabel pass runs it) on the
        # flooded identities, one barcode per identity as the fallback of the cores' barcodes
        centroids, identity = codebook
        table = np.zeros((int(max(identity, default=0)), np.shape(centroids)[1]))
        for row, ident in zip(np.asarray(centroids), identity):
            table[int(ident) - 1] = row
        # the block's sigmas are in voxels (as the other steps use them): voxel size 1
        settings = dataclasses.replace(UnmixSettings.from_config(config, (1.0, 1.0, 1.0)), engine=engine)
        state["contacts"] = unmix_rounds(state["labels"], state["norm"][1:], table, settings)

    def pieces():
        state["pieces"] = kernels.label_components(state["labels"] > 0)

    def puncta():
        state["puncta"] = detect_puncta(barcodes[0], PunctaConfig(), noise=1.0)

    def measure():
        state["sums"] = label_sums(state["labels"], barcodes)

    def histograms():
        state["histograms"] = label_histograms(state["labels"], barcodes, IntensityBins.for_dtype(barcodes.dtype))

    steps = {"normalise": normalise, "deconvolve": deconvolve, "evidence": evidence, "codebook labels": codes,
             "flood specks": flood}
    for i, engine in enumerate(unmix_engines):
        steps["unmix contacts" if i == 0 else f"unmix contacts [{engine}]"] = functools.partial(unmix, engine)
    steps.update({"connected pieces": pieces, "puncta (1 channel)": puncta,
                  "per-label sums": measure, "per-label histograms": histograms})

    def timed(fn):
        def run():
            fn()
            sync()
        return run

    return {name: timed(fn) for name, fn in steps.items()}


def run_chain(xp, fill, barcodes, codebook, repeats: int, sync, skip=(), unmix_engines=("auto",)) -> dict:
    """Median seconds of every step (and of the whole chain) after one warm-up; ``skip`` names steps left out.

    The whole chain counts the first of ``unmix_engines`` only (the others are comparisons).
    """
    steps = {name: fn for name, fn in chain(xp, fill, barcodes, codebook, sync, unmix_engines).items()
             if name not in skip}
    for fn in steps.values():  # warm-up: kernels compiled, memory touched
        fn()
    times = {name: [] for name in steps}
    totals = []
    for _ in range(repeats):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        totals.append(sum(v[-1] for name, v in times.items() if not name.startswith("unmix contacts [")))
    out = {name: statistics.median(v) for name, v in times.items()}
    out["whole chain"] = statistics.median(totals)
    return out


def _median_seconds(fn, repeats: int, sync) -> float:
    """Median seconds of ``fn()`` then ``sync()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def unmix_breakdown(xp, fill, barcodes, codebook, repeats: int, sync) -> dict:
    """Seconds (median of ``repeats`` after a warm-up, ``sync``-ed) of the parts of one contact round on ``xp``'s device.

    The chain up to the speck flood runs once; then, on its labels, with both engines of
    ``segment.unmix``: the candidate slots, one slot pass of each kind (mix, update), the 2 x c
    Gaussians of one fit iteration, and the smoothing. cProfile cannot split a GPU's time (it
    charges the queue's waits to whichever launch blocks); these timings can.
    """
    from segment import SegmentConfig
    from segment.kernels import PSF_TRUNCATE
    from segment.unmix import _slot_passes, candidate_slots, smooth_abundances
    from pipeline.filters import gaussian

    state = {}
    steps = chain(xp, xp.asarray(fill), xp.asarray(barcodes), codebook, sync, state=state)
    for name in ("normalise", "deconvolve", "evidence", "codebook labels", "flood specks"):
        steps[name]()
    config = SegmentConfig()
    labels = state["labels"].astype(xp.uint16)
    observed = xp.ascontiguousarray(state["norm"][1:], dtype=xp.float32)
    c = observed.shape[0]
    n = int(labels.max())
    table = xp.asarray(np.random.default_rng(0).random((n + 1, c)).astype(np.float32))
    sigma = tuple(float(v) for v in config.psf_sigma)
    smoothing = tuple(float(v) for v in config.contact_unmix_smoothing)

    timed = functools.partial(_median_seconds, repeats=repeats, sync=sync)
    out = {}
    for engine in ("auto", "xp"):
        slots, _ = candidate_slots(labels, config.contact_unmix_radius, 6, engine=engine)
        out[f"candidate slots [{engine}]"] = timed(
            lambda: candidate_slots(labels, config.contact_unmix_radius, 6, engine=engine))
        slots = xp.ascontiguousarray(slots[[k for k in range(slots.shape[0]) if bool((slots[k] > 0).any())]])
        u = (slots > 0).astype(xp.float32)
        mixed, ratio = xp.empty_like(observed), xp.ones_like(observed)
        mix, update = _slot_passes(slots, table, c, engine)
        step = xp.empty_like(u)
        out[f"mix, one iteration [{engine}]"] = timed(lambda: mix(u, mixed))
        out[f"update, one iteration [{engine}]"] = timed(lambda: update(u, ratio, step))
        out[f"smoothing [{engine}]"] = timed(lambda: smooth_abundances(u, slots, smoothing, engine=engine))
    model = xp.empty_like(observed)

    def blurs():
        for _ in range(2):
            for ch in range(c):
                gaussian(observed[ch], sigma, truncate=PSF_TRUNCATE, mode="reflect", output=model[ch])

    out[f"2 x {c} Gaussians, one iteration"] = timed(blurs)
    stack_sigma = (0.0, *sigma)
    out[f"2 Gaussians of the {c}-channel stack"] = timed(lambda: [gaussian(observed, stack_sigma, truncate=PSF_TRUNCATE,
                                                                          mode="reflect", output=model)
                                                                 for _ in range(2)])
    out["slots in use"] = float(slots.shape[0])
    out["neurons"] = float(n)
    return out


def gaussian_baseline(cp, stack, repeats: int) -> dict:
    """Seconds (median of ``repeats`` after a warm-up) of one Gaussian of the barcode stack:
    ``cupyx.scipy.ndimage.gaussian_filter`` against :func:`pipeline.filters.gaussian`
    (the same passes, weights kept on the device), at the deconvolution's PSF sigma."""
    import cupyx.scipy.ndimage as cndi

    from pipeline.filters import gaussian
    from segment import SegmentConfig

    sigma = (0.0, *SegmentConfig().psf_sigma)
    return {name: _median_seconds(fn, repeats, cp.cuda.Stream.null.synchronize)
            for name, fn in (("cupyx gaussian_filter", lambda: cndi.gaussian_filter(stack, sigma, mode="reflect")),
                             ("pipeline.filters.gaussian", lambda: gaussian(stack, sigma, mode="reflect")))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.block_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64,256,256", help="Z,Y,X of the block (default 64,256,256)")
    parser.add_argument("--barcodes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="CPU only, even with a GPU")
    parser.add_argument("--gpu-only", action="store_true", help="no CPU baseline (for blocks too big to wait for)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the timings, run the chain once more under cProfile and print the N "
                             "functions with the most cumulative time (GPU when there is one)")
    parser.add_argument("--skip", action="append", default=[], metavar="STEP",
                        help='leave a step out of the chain (repeatable), e.g. "unmix contacts"')
    parser.add_argument("--unmix-engines", default="auto",
                        help='engines of the contact pass, comma-separated (segment.unmix: "auto" fused kernels, '
                             '"xp" array operations); the first counts in the whole chain, the others are compared')
    parser.add_argument("--breakdown", action="store_true",
                        help="on the GPU, also time the parts of one contact round (unmix_breakdown)")
    parser.add_argument("--tile", default="1,1,1",
                        help="repeat the synthetic block Z,Y,X times (a big block without rendering one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    shape = tuple(int(v) for v in args.shape.split(","))
    if len(shape) != 3 or min(shape) < 8:
        parser.error(f"--shape needs three sizes >= 8, got {args.shape}")
    engines = tuple(v.strip() for v in args.unmix_engines.split(",") if v.strip())
    if not engines or set(engines) - {"auto", "xp"}:
        parser.error(f"--unmix-engines takes auto and/or xp, got {args.unmix_engines!r}")
    tile = tuple(int(v) for v in args.tile.split(","))
    if len(tile) != 3 or min(tile) < 1:
        parser.error(f"--tile needs three counts >= 1, got {args.tile}")
    scene, codes = make_block(shape, args.barcodes)
    fill = np.tile(scene.image[0].astype(np.float32), tile)
    barcodes = np.tile(scene.image[1:1 + args.barcodes].astype(np.float32), (1, *tile))
    shape = fill.shape
    scale = np.float32(1.0 / max(float(np.percentile(scene.image, 99.5)), 1e-6))
    fill, barcodes = fill * scale, barcodes * scale
    codebook = (codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-6),
                list(range(1, len(codes) + 1)))
    mvox = float(np.prod(shape)) / 1e6

    cp = None if args.cpu else _cupy()
    if args.gpu_only and cp is None:
        print("GPU: not measured (no CUDA device visible to CuPy)")
        return 0
    rows = {} if args.gpu_only else {"cpu": run_chain(np, fill, barcodes, codebook, args.repeats, lambda: None,
                                                          args.skip, engines)}
    device = "none"
    if cp is not None:
        device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        rows["gpu"] = run_chain(cp, cp.asarray(fill), cp.asarray(barcodes), codebook, args.repeats,
                                lambda: cp.cuda.Stream.null.synchronize(), args.skip, engines)
    from pipeline.filters import opencv_available

    filters = "OpenCV" if opencv_available() else "scipy.ndimage (no OpenCV here: slower than our CPU path)"
    print(f"block {'x'.join(map(str, shape))} = {mvox:.1f} Mvox" + (f" (a {args.shape} block tiled {args.tile})"
          if max(tile) > 1 else "") + f", {args.barcodes} barcodes, median of {args.repeats} after a warm-up; "
          f"CPU: 1 process, filters {filters}; GPU: {device}")
    columns = [("CPU", "cpu", 1.0, "Mvox/s")] if "cpu" in rows else []
    columns += [("GPU", "gpu", 1e3, "Gvox/s")] if "gpu" in rows else []
    header = "| step |" + "".join(f" {name} s | {name} {unit} |" for name, _, _, unit in columns)
    header += " GPU÷CPU |" if len(columns) == 2 else ""
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for step in next(iter(rows.values())):
        line = f"| {step} |" + "".join(f" {rows[key][step]:.4f} | {mvox / scale_ / rows[key][step]:.3f} |"
                                       for _, key, scale_, _ in columns)
        if len(columns) == 2:
            line += f" {rows['cpu'][step] / rows['gpu'][step]:.1f} |"
        print(line)
    if "gpu" not in rows:
        print("GPU: not measured (no CUDA device visible to CuPy)")
    else:
        stack = cp.asarray(barcodes)
        base = gaussian_baseline(cp, stack, max(args.repeats, 5))
        print(f"one Gaussian of the {stack.shape[0]}-channel stack on the GPU (median of {max(args.repeats, 5)}):")
        print("| filter | s | Gvox/s (all channels) |")
        print("|---|---|---|")
        for name, seconds in base.items():
            print(f"| {name} | {seconds:.5f} | {stack.size / 1e9 / seconds:.3f} |")
    if args.breakdown and cp is not None:
        print(f"parts of one contact round on the GPU (median of {max(args.repeats, 3)}, synchronised):")
        print("| part | s |")
        print("|---|---|")
        for name, value in unmix_breakdown(cp, fill, barcodes, codebook, max(args.repeats, 3),
                                                   cp.cuda.Stream.null.synchronize).items():
            print(f"| {name} | {value:.4f} |" if "[" in name or "Gauss" in name else f"| {name} | {value:.0f} |")
    if args.profile:
        import cProfile
        import pstats

        if cp is not None:
            steps = chain(cp, cp.asarray(fill), cp.asarray(barcodes), codebook, lambda: cp.cuda.Stream.null.synchronize())
        else:
            steps = chain(np, fill, barcodes, codebook, lambda: None)
        profiler = cProfile.Profile()
        profiler.enable()
        for fn in steps.values():
            fn()
        profiler.disable()
        print(f"--- {'GPU' if cp is not None else 'CPU'} chain: the {args.profile} functions with the most cumulative time")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
