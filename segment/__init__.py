"""Neuron segmentation: fill + barcodes (+ membrane) -> a uint64 neuron label image.

:func:`segment_volume` runs, blockwise on the configured executor:

1. global statistics: robust per-channel percentiles and the foreground
   threshold (Otsu) from a sample of the whole volume, so every block uses
   the same numbers;
2. evidence pass: per block, on the read region (write region + halo):
   normalise, Richardson-Lucy deconvolution of the barcodes (undoes the PSF
   mixing of neighbouring neurites), smoothed fill, barcode discontinuity and
   boundary map, stored in ``RUN/work``; each block also votes for the
   barcode codes of its pure voxels;
3. codebook: the votes of all blocks give the volume's barcode identities
   (:mod:`segment.codebook`);
4. fragments pass: every foreground voxel takes the closest identity,
   specks are flooded by their neighbours, and the connected pieces of one
   identity in a block's write region are its fragments (block-unique ids).
   Without barcodes (or with ``barcode_method="greedy"``) fragments are
   seeded watershed basins instead (:mod:`segment.kernels`);
5. region adjacency graph: contacts between fragments inside blocks and
   across block faces;
6. global agglomeration (:mod:`segment.agglomerate`): touching pieces of one
   identity join, pieces of one identity within ``link_radius`` join
   (long-range linking), different identities never join, tiny pieces join
   their best neighbour, and small neurons are dropped -> lookup table;
7. relabel: ``RUN/labels.zarr/neurons``, consecutive ids ``1..N`` in raster
   order of each neuron's first voxel, 0 = background.

Every pass records finished blocks, so a killed run resumes; a rerun gives
identical output.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from functools import partial
from pathlib import Path

import numpy as np
import zarr

from pipeline import BlockGrid, ConfigError, Executor, Volume, VolumeError, resolve_device, run_blockwise
from pipeline.isolate import call_isolated
from pipeline.storage import array_digest, atomic_path, write_json
from pipeline.volume import COMPRESSORS, create_label_image, open_label_image

from . import kernels
from .agglomerate import EdgeTable, FragmentTable, agglomerate, proximity_links
from .blockwise import (
    EVIDENCE_CHANNELS,
    FragmentPlan,
    edges_step,
    evidence_step,
    fragments_step,
    global_statistics,
    relabel_step,
)
from .codebook import codebook_from_statistics, merge_code_statistics
from .config import SegmentConfig

__all__ = ["SegmentConfig", "segment_volume", "make_plan", "kernels", "NEURON_BARCODES"]

log = logging.getLogger(__name__)

_STEPS = ("segment_evidence", "segment_fragments", "segment_edges", "segment_relabel")


def make_plan(volume: Volume, config: SegmentConfig, stats: dict) -> FragmentPlan:
    """The per-block parameters for ``volume`` under ``config`` and global ``stats``."""
    fill = tuple(volume.channels_with_role("fill", required=True))
    barcodes = tuple(volume.channels_with_role("barcode")) if config.use_barcodes else ()
    membrane = tuple(volume.channels_with_role("membrane"))
    finest = min(volume.voxel_size)
    return FragmentPlan(
        fill=fill, barcodes=barcodes, membrane=membrane,
        lo={c: stats["lo"][c] for c in fill + barcodes + membrane},
        hi={c: stats["hi"][c] for c in fill + barcodes + membrane},
        background={c: stats["background"][c] for c in barcodes if c in stats.get("background", {})},
        contact_iterations=config.contact_deconvolution_iterations,
        contact_method=config.contact_method,
        unmix_iterations=config.contact_unmix_iterations,
        unmix_radius=config.contact_unmix_radius,
        unmix_background=config.contact_unmix_background,
        unmix_rounds=config.contact_unmix_rounds,
        unmix_smoothing=config.contact_smoothing_voxels(volume.voxel_size),
        unmix_grow=config.contact_unmix_grow,
        unmix_brightness=config.contact_unmix_brightness,
        unmix_back_projector=config.contact_back_projector_voxels(volume.voxel_size),
        unmix_early_iterations=config.contact_unmix_early_iterations,
        threshold=float(stats["threshold"]),
        sigma=config.sigma_voxels(volume.voxel_size, "sigma"),
        barcode_sigma=config.sigma_voxels(volume.voxel_size, "barcode_sigma"),
        sampling=tuple(v / finest for v in volume.voxel_size),
        barcode_weight=config.barcode_weight if barcodes else 0.0,
        barcode_floor=config.barcode_floor,
        psf_sigma=config.sigma_voxels(volume.voxel_size, "psf_sigma"),
        deconvolution_iterations=config.deconvolution_iterations,
        deconvolution_acceleration=config.deconvolution_acceleration,
        deconvolution_method=config.deconvolution_method,
        wiener_balance=config.wiener_balance,
        membrane_weight=config.membrane_weight,
        fill_weight=config.fill_weight,
        seed_method=config.seed_method,
        seed_min_size=config.seed_min_size,
        code_alpha=config.code_alpha,
        code_floor=config.code_floor,
        seed_h=config.seed_h,
        seed_min_distance=config.seed_min_distance,
        seed_barcode_cut=config.seed_barcode_cut,
    )


def _ensure_array(path: Path, shape, chunks, dtype, stale_state: list[Path]) -> str:
    """Open the work array at ``path`` if it matches, else create it and drop ``stale_state``."""
    if path.exists():
        try:
            arr = zarr.open_array(str(path), mode="r+")
            if tuple(arr.shape) == tuple(shape) and tuple(arr.chunks) == tuple(chunks) and arr.dtype == np.dtype(dtype):
                return str(path)
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            pass
        shutil.rmtree(path)
    for state in stale_state:
        if state.exists():
            shutil.rmtree(state)
    zarr.create_array(str(path), shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=0,
                      compressors=COMPRESSORS, dimension_names=("c", "z", "y", "x")[-len(shape):])
    return str(path)


#: Per-neuron mean of the normalised, deconvolved barcodes (``RUN/work``; see docs/contracts.md).
NEURON_BARCODES = "neuron_barcodes.npz"


def _write_neuron_barcodes(path: Path, fragments: FragmentTable, neuron_of: np.ndarray) -> None:
    """Save ``ids`` (uint64, 1..N) and ``means`` (N x barcodes) of the final neurons' barcodes.

    Later stages (synapse partners) compare local barcodes with these means;
    they come for free from the fragments' barcode sums.
    """
    neuron_of = np.asarray(neuron_of, np.int64)
    n = int(neuron_of.max(initial=0))
    k = fragments.barcode_sums.shape[1]
    sums = np.zeros((n + 1, k))
    np.add.at(sums, neuron_of, fragments.barcode_sums)
    voxels = np.bincount(neuron_of, weights=fragments.counts, minlength=n + 1)
    means = sums[1:] / np.maximum(voxels[1:, None], 1.0)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=np.arange(1, n + 1, dtype=np.uint64), means=means.astype(np.float32))


def _agglomerate_fragments(fragments: FragmentTable, edges: EdgeTable, config: SegmentConfig, voxel_size, *,
                           link: bool, fill_threshold: float) -> tuple[np.ndarray, dict]:
    """Proximity links (when ``link``) and the global agglomeration: ``neuron_of`` and its summary."""
    links = None
    if link:
        links = proximity_links(fragments, voxel_size, config.link_radius, min_size=config.link_min_size)
    return agglomerate(
        fragments, edges, merge_threshold=config.merge_threshold,
        barcode_merge_weight=config.barcode_merge_weight, contact_barcode_weight=config.contact_barcode_weight,
        barcode_conflict=config.barcode_conflict,
        use_barcodes=config.use_barcodes, min_fragment_size=config.min_fragment_size,
        min_neuron_size=config.min_neuron_size, links=links, min_mean_fill=config.min_mean_fill_ratio * fill_threshold,
    )


def segment_volume(volume: Volume, run_dir, config: SegmentConfig | None = None, *, grid: BlockGrid,
                   executor: Executor | None = None, device: str = "cpu", progress: bool = False) -> dict:
    """Segment the neurons of ``volume`` into ``run_dir/labels.zarr/neurons``.

    Parameters
    ----------
    volume : Volume
        Needs a ``fill`` channel; ``barcode`` and ``membrane`` channels are used when present.
    run_dir : path
        The run directory (see docs/contracts.md); intermediates go to ``run_dir/work``.
    config : SegmentConfig, optional
    grid : BlockGrid
        Gives the block shape and chunks; its halo is replaced by ``config.halo``
        (grown, if needed, so the local kernels are exact in each write region).
    executor : Executor, optional
        Defaults to synchronous, in-process execution.
    device : {"cpu", "gpu", "auto"}
        Where the block kernels run (see :mod:`segment.kernels` for the CPU fallbacks).
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        ``n_fragments``, ``n_edges``, ``n_neurons``, ``threshold``, ``timings``
        (seconds per phase), ``agglomeration`` (merge counts), ``labels_path``.

    Raises
    ------
    pipeline.MissingChannelError
        When the volume has no channel with role ``fill``.
    pipeline.ConfigError
        When ``grid`` does not match the volume.
    """
    config = config or SegmentConfig()
    run_dir = Path(run_dir)
    (run_dir / "work").mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    fill = volume.channels_with_role("fill", required=True)
    if tuple(grid.shape) != tuple(volume.spatial_shape):
        raise ConfigError(f"block grid shape {grid.shape} does not match the volume's spatial shape "
                          f"{volume.spatial_shape} ({volume.path})")
    device = resolve_device(device)
    barcodes = volume.channels_with_role("barcode") if config.use_barcodes else []
    membrane = volume.channels_with_role("membrane")
    if config.use_barcodes and not barcodes:
        log.warning("%s has no barcode channels: segmenting from the fill alone", volume.path)

    stats = global_statistics(
        volume, list(fill) + list(barcodes) + list(membrane), fill,
        percentiles=config.norm_percentiles, sigma=config.sigma_voxels(volume.voxel_size),
        max_voxels=config.sample_voxels, threshold_method=config.threshold_method,
        threshold=config.threshold, threshold_scale=config.threshold_scale,
        background_channels=barcodes,
    )
    plan = make_plan(volume, config, stats)
    timings["statistics"] = time.perf_counter() - t0

    need = kernels.context_radius(plan.sigma, plan.barcode_sigma if plan.barcodes else None)
    halo = tuple(max(h, n) for h, n in zip(config.halo, need))
    hgrid = BlockGrid(volume.spatial_shape, grid.block_shape, halo=halo, chunks=grid.chunks)
    blocks = list(hgrid)
    work = run_dir / "work"
    state = work / "blocks"
    shape, chunks = volume.spatial_shape, volume.chunks
    stale = [state / s for s in _STEPS]
    ev_path = _ensure_array(work / "evidence", (len(EVIDENCE_CHANNELS),) + tuple(shape), (1,) + tuple(chunks),
                            "uint8", stale)
    bc_path = None
    if plan.barcodes:
        bc_path = _ensure_array(work / "barcodes", (len(plan.barcodes),) + tuple(shape), (1,) + tuple(chunks),
                                "float16", stale)
    frag_path = _ensure_array(work / "fragments", shape, chunks, "uint64", stale[1:])
    geometry = {"block_shape": list(hgrid.block_shape), "halo": list(halo), "chunks": list(hgrid.chunks),
                "shape": list(shape), "volume": str(volume.path), "device": device}

    # Pass 1: evidence (normalise, deconvolve, boundary map) and codebook votes.
    t = time.perf_counter()
    code_params = {"pure_discontinuity": config.code_pure_discontinuity,
                   "min_brightness": config.code_min_brightness, "min_gap": config.code_min_gap}
    step = partial(evidence_step, volume_path=str(volume.path), plan=plan, evidence_path=ev_path,
                   barcodes_path=bc_path, device=device, **code_params)
    # The votes carry up to SAMPLES_PER_BLOCK vectors per code from every block, so together they
    # grow with the block count: they stay on disk, and the merge reads one block's at a time.
    votes = run_blockwise(step, blocks, name="segment_evidence", state_dir=state, executor=executor,
                          params={"plan": plan.to_params(), **code_params, **geometry}, progress=progress,
                          in_memory=False)
    timings["evidence"] = time.perf_counter() - t

    codebook = None
    if plan.barcodes and config.barcode_method == "codebook":
        codebook = codebook_from_statistics(merge_code_statistics(votes), min_support=config.code_min_support,
                                            merge_distance=config.code_merge_distance,
                                            split_distance=config.code_split_distance,
                                            split_separation=config.code_split_separation,
                                            mixture_coherence=config.code_mixture_coherence)
        if codebook.n_identities:
            plan = dataclasses.replace(
                plan, centroids=tuple(tuple(float(v) for v in row) for row in codebook.centroids),
                identity=tuple(int(i) for i in codebook.identity), despeckle_size=config.despeckle_size,
                despeckle_landscape=config.despeckle_landscape, refine_contacts=config.refine_contacts,
            )
        else:
            log.warning("%s: no barcode code found; using greedy agglomeration", volume.path)
        write_json(work / "codebook.json", codebook.to_dict())
    # on disk, but its marker paths are one per block too
    del votes

    # Pass 2: fragments.
    t = time.perf_counter()
    step = partial(fragments_step, plan=plan, evidence_path=ev_path, barcodes_path=bc_path,
                   fragments_path=frag_path, shape=tuple(shape), device=device)
    summaries = run_blockwise(step, blocks, name="segment_fragments", state_dir=state, executor=executor,
                              params={"plan": plan.to_params(), **geometry}, progress=progress)
    fragments = FragmentTable.concat(summaries)
    del summaries
    timings["fragments"] = time.perf_counter() - t

    # Pass 3: adjacency edges (inside blocks and across block faces).
    t = time.perf_counter()
    step = partial(edges_step, fragments_path=frag_path, evidence_path=ev_path)
    edge_params = {"fragments": array_digest(fragments.ids, fragments.counts), **geometry}
    edges = EdgeTable.concat(run_blockwise(step, blocks, name="segment_edges", state_dir=state,
                                           executor=executor, params=edge_params, progress=progress))
    timings["edges"] = time.perf_counter() - t

    # Global agglomeration -> lookup table.
    t = time.perf_counter()
    (neuron_of, info), isolation = call_isolated(
        _agglomerate_fragments, fragments, edges, config, volume.voxel_size,
        link=plan.uses_codebook and config.use_barcodes, fill_threshold=float(stats["threshold"]),
        name="the agglomeration", isolate=config.isolate_agglomeration)
    info = {**info, "process": isolation.to_dict()}
    lut_path = work / "segment_lut.npz"
    with atomic_path(lut_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, keys=fragments.ids, values=neuron_of)
    if plan.barcodes:
        _write_neuron_barcodes(work / NEURON_BARCODES, fragments, neuron_of)
    n_edges, n_fragments = int(len(edges)), int(len(fragments))
    lut_digest = array_digest(fragments.ids, neuron_of)
    # The edge and fragment tables grow with the volume and only the lookup table (on disk now)
    # needed them: free them before the relabel pass, whose blocks (with the contact pass) need
    # the most memory.
    del edges, fragments
    timings["agglomerate"] = time.perf_counter() - t

    # Pass 4: relabel into RUN/labels.zarr/neurons.
    t = time.perf_counter()
    labels_dir = run_dir / "labels.zarr"
    try:
        arr = open_label_image(labels_dir, "neurons")
        fresh = tuple(arr.shape) != tuple(shape) or tuple(arr.chunks) != tuple(chunks)
    except (VolumeError, FileNotFoundError, ValueError, KeyError):
        fresh = True
    if fresh:
        if (state / "segment_relabel").exists():
            shutil.rmtree(state / "segment_relabel")
        create_label_image(labels_dir, "neurons", shape_zyx=shape, voxel_size=volume.voxel_size,
                           unit=volume.unit, chunks_zyx=chunks, overwrite=True)
    labels_path = str(labels_dir / "neurons" / "0")
    contact_pass = bool(config.refine_neuron_contacts and plan.uses_codebook and config.use_barcodes)
    contact_paths = {"volume_path": str(volume.path), "plan": plan,
                     "neuron_barcodes_path": str(work / NEURON_BARCODES), "device": device} if contact_pass else {}
    step = partial(relabel_step, fragments_path=frag_path, lut_path=str(lut_path), labels_path=labels_path,
                   **contact_paths)
    # the contact pass reads its own (smaller) context around the same write regions
    contact_halo = list(config.contact_halo_voxels(volume.voxel_size)) if contact_pass else None
    relabel_blocks = blocks if contact_halo is None else list(
        BlockGrid(volume.spatial_shape, grid.block_shape, halo=contact_halo, chunks=grid.chunks))
    relabel_params = {"lut": lut_digest,
                      "contact_pass": plan.to_params() if contact_pass else None,
                      "contact_halo": contact_halo, **geometry}
    relabelled = run_blockwise(step, relabel_blocks, name="segment_relabel", state_dir=state, executor=executor,
                               params=relabel_params, progress=progress)
    timings["relabel"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    summary = {
        "n_fragments": n_fragments,
        "n_edges": n_edges,
        "n_neurons": int(info["n_neurons"]),
        "threshold": stats["threshold"],
        "otsu": stats["otsu"],
        "halo": list(halo),
        "contact_halo": contact_halo,
        "block_shape": list(hgrid.block_shape),
        "n_blocks": len(blocks),
        "device": device,
        "method": "codebook" if plan.uses_codebook else ("greedy" if plan.barcodes else "fill"),
        "n_codes": codebook.n_identities if codebook is not None else 0,
        "agglomeration": info,
        "contact_changes": (int(sum(r.get("contact_changes", 0) for r in relabelled if r)) if contact_pass
                            else None),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "labels_path": labels_path,
    }
    write_json(work / "segment_summary.json", summary)
    log.info("segmentation: %d fragments -> %d neurons in %.1f s", summary["n_fragments"],
             summary["n_neurons"], timings["total"])
    return summary
