"""Synapses from puncta: one-to-one pre/post pairing and partner assignment.

A synapse is a presynaptic punctum (``pre`` channel, on the axon of the
presynaptic neuron) paired with a postsynaptic punctum (``post`` channel, on
the dendrite of the postsynaptic neuron) a short distance away.

Pairing (:func:`pair_puncta`)
-----------------------------
1. Candidate pairs: every (pre, post) pair closer than ``max_distance_um``, in
   physical coordinates (voxel index x voxel size), from a ``cKDTree``.
   Each candidate's two neurons are the labels at its puncta or, with
   ``partners="barcode"`` (default) and barcode work files in the run, the
   neurons decided from the local barcodes (:mod:`graph.partners`): synapses
   sit where segment boundaries are least sure.
2. With ``pair_valid_only`` (default), candidates whose partners cannot make a
   synapse (either punctum on background, or both on the same neuron) are
   removed *before* matching, so such a pair cannot steal a punctum from a
   valid one.
3. Greedy one-to-one matching, nearest first: candidates sorted by distance
   (ties by post then pre punctum index); a pair is accepted when neither of
   its puncta is taken yet.
4. Pairs whose partners are background or the same neuron (only possible with
   ``pair_valid_only=False``) are dropped; the counts of everything dropped
   are in ``frame.attrs["dropped"]``.

Confidence
----------
``confidence = contrast x proximity x labelling``, each factor in [0, 1]:

* ``contrast = s / (s + contrast_half)`` with ``s`` the smaller of the two
  puncta scores (response in noise units): 0.5 at ``contrast_half``.
* ``proximity = 1 - (d / max_distance_um)^2``: 1 for coincident puncta, 0 at
  the cutoff.
* ``labelling = sqrt(certainty_pre x certainty_post)`` (geometric mean of the
  puncta label certainties, see :func:`segment.puncta.lookup_labels`), or the
  partner certainty of :mod:`graph.partners` when the barcodes decided the pair.

Output
------
The synapse table of ``docs/contracts.md``: ``synapse_id`` (int64, consecutive from
0 in order of the physical midpoint z, y, x), ``pre_neuron``, ``post_neuron``
(uint64), ``pre_z/y/x``, ``post_z/y/x`` (voxels), ``z_um, y_um, x_um``
(midpoint, physical) and ``confidence``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from scipy.spatial import cKDTree

from pipeline.config import StrictModel
from pipeline.errors import InputError

__all__ = ["SynapseConfig", "SYNAPSE_TABLE_COLUMNS", "pair_puncta", "synapses_from_puncta", "detect_synapses"]

log = logging.getLogger(__name__)

#: Columns of the synapse table, in order.
SYNAPSE_TABLE_COLUMNS = (
    "synapse_id", "pre_neuron", "post_neuron", "pre_z", "pre_y", "pre_x",
    "post_z", "post_y", "post_x", "z_um", "y_um", "x_um", "confidence",
)

_PUNCTA_NEEDS = ("z", "y", "x", "neuron_id")


class SynapseConfig(StrictModel):
    """Settings of pre/post pairing.

    Attributes
    ----------
    enabled : bool
        Detect puncta and synapses (the volume then needs ``pre`` and ``post``
        channels). ``False``: neurons only; the synapse and edge tables are
        written empty, with their columns.
    max_distance_um : float
        Largest pre-to-post punctum distance of a synapse, physical units.
    pair_valid_only : bool
        Match only candidate pairs on two different, non-background neurons.
    contrast_half : float
        Punctum score (noise units) at which the contrast factor is 0.5.
    min_confidence : float
        Synapses below this confidence are dropped (0 keeps all).
    partners : {"barcode", "label"}
        ``barcode`` (default): the two neurons of each candidate pair are
        decided from the local barcodes (:mod:`graph.partners`) when the
        segmentation left barcode work files; ``label``: the labels at the puncta.
    partner_window_um : float
        Neurons whose labels lie within this distance of either punctum are
        the candidates of the barcode decision.
    partner_wide_window_um : float
        When no two candidates explain the barcodes at the puncta (relative
        residual above ``partner_expand_residual``), the neurons within this
        distance are tried too, and a pair that halves the residual wins
        (:mod:`graph.partners`). At or below ``partner_window_um``: no wider search.
    partner_expand_residual : float
    """

    enabled: bool = True
    max_distance_um: float = Field(default=0.6, gt=0.0)
    pair_valid_only: bool = True
    contrast_half: float = Field(default=6.0, gt=0.0)
    min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    partners: Literal["barcode", "label"] = "barcode"
    partner_window_um: float = Field(default=0.3, gt=0.0)
    partner_wide_window_um: float = Field(default=0.8, gt=0.0)
    partner_expand_residual: float = Field(default=0.1, ge=0.0)


def _check_puncta(frame: pd.DataFrame, name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in _PUNCTA_NEEDS if c not in frame.columns]
    if missing:
        raise InputError(f"{name} lacks columns {missing}; it has {list(frame.columns)}")


def _column(frame: pd.DataFrame, name: str, default: float) -> np.ndarray:
    if name in frame.columns:
        return np.nan_to_num(frame[name].to_numpy(dtype=np.float64), nan=default)
    return np.full(len(frame), default)


def _empty_synapses() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in SYNAPSE_TABLE_COLUMNS})
    frame["synapse_id"] = frame["synapse_id"].astype(np.int64)
    for c in ("pre_neuron", "post_neuron"):
        frame[c] = frame[c].astype(np.uint64)
    return frame


def pair_puncta(pre_df: pd.DataFrame, post_df: pd.DataFrame, voxel_size, config: SynapseConfig | None = None,
                *, partners: pd.DataFrame | None = None) -> pd.DataFrame:
    """Pair pre- and postsynaptic puncta one-to-one, nearest first, into synapses.

    Parameters
    ----------
    pre_df, post_df : pandas.DataFrame
        Puncta tables with at least ``z, y, x`` (voxels) and ``neuron_id``;
        ``score`` and ``label_certainty`` feed the confidence when present
        (missing: treated as a perfect punctum).
    voxel_size : sequence of float
        Physical voxel size (z, y, x).
    config : SynapseConfig, optional
    partners : pandas.DataFrame, optional
        Partners decided per candidate pair (:func:`graph.partners.barcode_partners`:
        ``pre_index, post_index`` into the puncta tables, ``pre_neuron,
        post_neuron, certainty``). They replace the labels at the puncta (and
        the label certainty) for the candidate pairs they list.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SYNAPSE_TABLE_COLUMNS`; ``attrs["dropped"]`` counts the
        pairs dropped (``background``, ``same_neuron``, ``low_confidence``)
        and ``attrs["candidates_removed"]`` the invalid candidates removed
        before matching.
    """
    config = config or SynapseConfig()
    _check_puncta(pre_df, "pre_df")
    _check_puncta(post_df, "post_df")
    voxel = np.asarray(voxel_size, dtype=np.float64).reshape(-1)
    if voxel.shape != (3,) or not np.all(np.isfinite(voxel) & (voxel > 0)):
        raise InputError(f"voxel_size must be three positive numbers (z, y, x), got {voxel_size!r}")
    dropped = {"background": 0, "same_neuron": 0, "low_confidence": 0}
    pre_pos = pre_df[["z", "y", "x"]].to_numpy(dtype=np.float64)
    post_pos = post_df[["z", "y", "x"]].to_numpy(dtype=np.float64)
    if len(pre_pos) == 0 or len(post_pos) == 0:
        frame = _empty_synapses()
        frame.attrs.update(dropped=dropped, candidates_removed=0)
        return frame
    pre_um, post_um = pre_pos * voxel, post_pos * voxel
    pre_lab = pre_df["neuron_id"].to_numpy().astype(np.uint64)
    post_lab = post_df["neuron_id"].to_numpy().astype(np.uint64)

    sparse = cKDTree(pre_um).sparse_distance_matrix(cKDTree(post_um), config.max_distance_um, output_type="ndarray")
    ii = sparse["i"].astype(np.int64)
    jj = sparse["j"].astype(np.int64)
    dist = sparse["v"].astype(np.float64)
    # Partners and label certainty per candidate pair: the labels at the puncta,
    # unless a partner table decided the pair.
    cand_pre, cand_post = pre_lab[ii], post_lab[jj]
    certainty = np.sqrt(np.clip(_column(pre_df, "label_certainty", 1.0)[ii], 0, 1)
                        * np.clip(_column(post_df, "label_certainty", 1.0)[jj], 0, 1))
    if partners is not None and len(partners) and len(ii):
        key = ii * len(post_pos) + jj
        pkey = partners["pre_index"].to_numpy(np.int64) * len(post_pos) + partners["post_index"].to_numpy(np.int64)
        order = np.argsort(pkey)
        pos = np.clip(np.searchsorted(pkey[order], key), 0, len(pkey) - 1)
        hit = pkey[order][pos] == key
        src = order[pos[hit]]
        cand_pre[hit] = partners["pre_neuron"].to_numpy(np.uint64)[src]
        cand_post[hit] = partners["post_neuron"].to_numpy(np.uint64)[src]
        certainty[hit] = np.clip(partners["certainty"].to_numpy(np.float64)[src], 0, 1)
    removed = 0
    if config.pair_valid_only and len(ii):
        valid = (cand_pre != 0) & (cand_post != 0) & (cand_pre != cand_post)
        removed = int((~valid).sum())
        ii, jj, dist = ii[valid], jj[valid], dist[valid]
        cand_pre, cand_post, certainty = cand_pre[valid], cand_post[valid], certainty[valid]

    # greedy one-to-one, nearest first; deterministic ties (post index, then pre index)
    order = np.lexsort((ii, jj, dist))
    pre_taken = np.zeros(len(pre_pos), dtype=bool)
    post_taken = np.zeros(len(post_pos), dtype=bool)
    chosen = []
    for k in order:
        i, j = ii[k], jj[k]
        if pre_taken[i] or post_taken[j]:
            continue
        pre_taken[i] = post_taken[j] = True
        chosen.append(k)
    chosen = np.asarray(chosen, dtype=np.int64)
    pi, pj, pd_ = ii[chosen], jj[chosen], dist[chosen]
    a, b, cert = cand_pre[chosen], cand_post[chosen], certainty[chosen]

    background = (a == 0) | (b == 0)
    same = ~background & (a == b)
    dropped["background"] = int(background.sum())
    dropped["same_neuron"] = int(same.sum())
    keep = ~background & ~same
    pi, pj, pd_, a, b, cert = pi[keep], pj[keep], pd_[keep], a[keep], b[keep], cert[keep]

    score = np.minimum(_column(pre_df, "score", np.inf)[pi], _column(post_df, "score", np.inf)[pj])
    with np.errstate(invalid="ignore"):
        contrast = np.where(np.isinf(score), 1.0, score / (score + config.contrast_half))
    contrast = np.clip(np.nan_to_num(contrast, nan=0.0), 0.0, 1.0)
    proximity = np.clip(1.0 - (pd_ / config.max_distance_um) ** 2, 0.0, 1.0)
    confidence = contrast * proximity * cert

    low = confidence < config.min_confidence
    dropped["low_confidence"] = int(low.sum())
    pi, pj, a, b, confidence = pi[~low], pj[~low], a[~low], b[~low], confidence[~low]

    mid_um = (pre_um[pi] + post_um[pj]) / 2.0
    frame = pd.DataFrame({
        "pre_neuron": a,
        "post_neuron": b,
        "pre_z": pre_pos[pi, 0], "pre_y": pre_pos[pi, 1], "pre_x": pre_pos[pi, 2],
        "post_z": post_pos[pj, 0], "post_y": post_pos[pj, 1], "post_x": post_pos[pj, 2],
        "z_um": mid_um[:, 0], "y_um": mid_um[:, 1], "x_um": mid_um[:, 2],
        "confidence": confidence.astype(np.float64),
    })
    frame = frame.sort_values(["z_um", "y_um", "x_um", "pre_neuron", "post_neuron"], kind="stable")
    frame = frame.reset_index(drop=True)
    frame.insert(0, "synapse_id", np.arange(len(frame), dtype=np.int64))
    frame = frame[list(SYNAPSE_TABLE_COLUMNS)]
    frame.attrs.update(dropped=dropped, candidates_removed=removed)
    log.info("synapses: %d from %d pre / %d post puncta (dropped %s, %d invalid candidates removed)",
             len(frame), len(pre_pos), len(post_pos), dropped, removed)
    return frame


def detect_synapses(volume, run_dir, *, puncta=None, synapses: SynapseConfig | None = None, grid,
                    executor=None, device: str = "cpu", noise: dict | None = None,
                    progress: bool = False) -> pd.DataFrame:
    """Blockwise puncta detection (:func:`segment.puncta.detect_puncta_volume`) then :func:`pair_puncta`.

    Parameters
    ----------
    volume : pipeline.volume.Volume
    run_dir : path
        Run directory with ``labels.zarr/neurons``; work files go to ``run_dir/work``.
    puncta : segment.puncta.PunctaConfig, optional
    synapses : SynapseConfig, optional
    grid : pipeline.blocks.BlockGrid
    executor, device, noise, progress
        Passed to :func:`segment.puncta.detect_puncta_volume`.

    Returns
    -------
    pandas.DataFrame
        The synapse table; ``attrs`` also hold the puncta counts.
    """
    from segment.puncta import detect_puncta_volume

    synapses = synapses or SynapseConfig()
    pre, post = detect_puncta_volume(volume, Path(run_dir), puncta, grid=grid, executor=executor,
                                     device=device, noise=noise, progress=progress)
    frame = synapses_from_puncta(pre, post, volume.voxel_size, run_dir, synapses, grid=grid, executor=executor,
                                 progress=progress)
    frame.attrs.update(n_pre_puncta=len(pre), n_post_puncta=len(post))
    return frame


def synapses_from_puncta(pre_df: pd.DataFrame, post_df: pd.DataFrame, voxel_size, run_dir,
                         config: SynapseConfig | None = None, *, grid, executor=None,
                         progress: bool = False) -> pd.DataFrame:
    """Partners (from barcodes when ``config.partners == "barcode"``) then :func:`pair_puncta`.

    The barcode partners (:func:`graph.partners.barcode_partners`) need the
    run's segmentation work files; without them the labels at the puncta are used.
    """
    config = config or SynapseConfig()
    partners = None
    if config.partners == "barcode":
        from .partners import barcode_partners

        partners = barcode_partners(pre_df, post_df, run_dir, voxel_size, grid=grid,
                                    max_distance_um=config.max_distance_um, window_um=config.partner_window_um,
                                    wide_window_um=config.partner_wide_window_um,
                                    expand_residual=config.partner_expand_residual,
                                    executor=executor, progress=progress)
    return pair_puncta(pre_df, post_df, voxel_size, config, partners=partners)
