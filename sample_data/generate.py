"""Generate the synthetic barcoded optical volume and its ground truth in memory.

The pipeline of the generator (each stage draws from its own random stream,
``numpy.random.default_rng([seed, stage])``, so the same config always gives
the same bytes):

1. morphology: somata and branching neurites (:mod:`._morphology`);
2. rasterisation into a segment-id volume, hence truth labels and the
   compartment (soma / dendrite / axon) of every voxel (:mod:`._raster`);
3. identities: cell types, barcodes (with collisions and dropout),
   expression levels;
4. synapses at axon-dendrite contacts (:mod:`._synapses`);
5. image formation, channel by channel (:mod:`._imaging`).
"""

from __future__ import annotations

import colorsys
import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._imaging import blob_density, expression_density, form_image
from ._morphology import AXON, DENDRITE, KIND_NAMES, SOMA, build_morphology
from ._raster import paint_segments
from ._synapses import orphan_puncta, place_synapses
from .config import CELL_TYPES, MARKERS, SampleConfig, bits_on_choices, n_codes

__all__ = ["FORMAT_VERSION", "Sample", "generate_sample"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# random stream of each stage
_MORPHOLOGY, _IDENTITY, _SYNAPSES, _IMAGING = range(4)
#: Level of a dropped-out barcode bit relative to its normal level.
_DROPOUT_LEVEL = 0.15
#: Path length (um) over which marker expression decays away from the soma.
_MARKER_DECAY_UM = 3.0

_FIXED_COLORS = {"fill": "FFFFFF", "pre": "FF00FF", "post": "00FF00",
                 "vglut": "FF8000", "vgat": "00FFFF", "pv": "FFFF00"}


@dataclass
class Sample:
    """A generated sample, in memory.

    Attributes
    ----------
    image : ndarray, uint16, (c, z, y, x)
    channels : list of (str, str)
        ``(name, role)`` of every channel, in image order.
    truth_labels : ndarray, uint64, (z, y, x)
        Neuron id per voxel (1..N), 0 = background.
    neurons : pandas.DataFrame
        ``neuron_id, cell_type, barcode, soma_z, soma_y, soma_x``.
    synapses : pandas.DataFrame
        ``synapse_id, pre_neuron, post_neuron, pre_z, pre_y, pre_x,
        post_z, post_y, post_x``.
    meta : dict
        JSON-serialisable description (config, cell types, connection matrix,
        markers, channels, collisions, dropouts, statistics).
    compartments : ndarray, uint8, (z, y, x), optional
        0 background, 1 soma, 2 dendrite, 3 axon (not written to disk).
    timings : dict
        Seconds spent per stage (not part of the deterministic output).
    """

    image: np.ndarray
    channels: list[tuple[str, str]]
    truth_labels: np.ndarray
    neurons: pd.DataFrame
    synapses: pd.DataFrame
    meta: dict
    compartments: np.ndarray | None = field(default=None, repr=False)
    timings: dict = field(default_factory=dict, repr=False)

    def channel_index(self, name: str) -> int:
        """Index of the channel called ``name``."""
        for i, (n, _) in enumerate(self.channels):
            if n == name:
                return i
        raise KeyError(f"no channel {name!r}; channels are {[n for n, _ in self.channels]}")


def _rng(config: SampleConfig, stage: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, stage])


def _hue_hex(i: int, n: int) -> str:
    r, g, b = colorsys.hsv_to_rgb((i / max(n, 1)) % 1.0, 0.85, 1.0)
    return f"{int(round(r * 255)):02X}{int(round(g * 255)):02X}{int(round(b * 255)):02X}"


def _channel_specs(config: SampleConfig) -> list[dict]:
    bg = config.background
    specs = [{"name": "fill", "role": "fill", "color": _FIXED_COLORS["fill"],
              "window": [bg, bg + config.fill_level]}]
    for k in range(config.n_barcodes):
        specs.append({"name": f"bc{k:02d}", "role": "barcode", "color": _hue_hex(k, config.n_barcodes),
                      "window": [bg, bg + config.barcode_level]})
    for name in ("pre", "post"):
        specs.append({"name": name, "role": name, "color": _FIXED_COLORS[name],
                      "window": [bg, bg + config.punctum_level]})
    for name in MARKERS:
        specs.append({"name": name, "role": "marker", "color": _FIXED_COLORS[name],
                      "window": [bg, bg + config.marker_level]})
    return specs


def _cell_types(rng, config: SampleConfig) -> np.ndarray:
    """Type index per neuron: counts by largest remainder of the fractions, shuffled."""
    n = config.n_neurons
    frac = np.asarray(config.type_fractions, float)
    frac = frac / frac.sum()
    exact = frac * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    types = np.repeat(np.arange(len(frac)), counts)
    return rng.permutation(types)


def _barcodes(rng, config: SampleConfig):
    """Boolean codes (N, K) with 3-4 bits on, unique except the collision pairs."""
    n, k, n_coll = config.n_neurons, config.n_barcodes, config.n_collisions
    choices = bits_on_choices(k)
    n_unique = n - n_coll
    codes = np.zeros((n, k), bool)
    if n_codes(k) <= 50_000:
        pool = [c for m in choices for c in itertools.combinations(range(k), m)]
        picked = [pool[i] for i in rng.choice(len(pool), size=n_unique, replace=False)]
    else:
        seen: set[tuple[int, ...]] = set()
        picked = []
        while len(picked) < n_unique:
            bits = tuple(sorted(rng.choice(k, size=int(rng.choice(choices)), replace=False).tolist()))
            if bits not in seen:
                seen.add(bits)
                picked.append(bits)
    order = rng.permutation(n)
    firsts, seconds = order[:n_coll], order[n_coll:2 * n_coll]
    owners = np.setdiff1d(np.arange(n), seconds)          # neurons with their own code
    for neuron, bits in zip(owners, picked):
        codes[neuron, list(bits)] = True
    codes[seconds] = codes[firsts]
    pairs = sorted(tuple(sorted((int(a) + 1, int(b) + 1))) for a, b in zip(firsts, seconds))
    return codes, pairs


def _expression(rng, config: SampleConfig, codes: np.ndarray, types: np.ndarray):
    """Per-neuron levels (row 0 = background): fill, barcodes, markers; dropout list."""
    n, k = codes.shape
    fill = np.zeros(n + 1)
    fill[1:] = rng.uniform(0.6, 1.4, n)
    barcode = np.zeros((n + 1, k))
    on_level = rng.uniform(0.6, 1.4, (n, k))
    off_level = rng.uniform(0.0, 0.04, (n, k))
    dropped = codes & (rng.random((n, k)) < config.dropout)
    levels = np.where(codes, on_level, off_level)
    levels[dropped] *= _DROPOUT_LEVEL
    barcode[1:] = levels
    dropouts = [[int(i) + 1, f"bc{int(j):02d}"] for i, j in zip(*np.nonzero(dropped))]
    markers = np.zeros((n + 1, len(MARKERS)))
    high = rng.uniform(0.7, 1.3, (n, len(MARKERS)))
    low = rng.uniform(0.0, 0.08, (n, len(MARKERS)))
    for m, expressing in enumerate(MARKERS.values()):
        mask = np.isin(types, [CELL_TYPES.index(t) for t in expressing])
        markers[1:, m] = np.where(mask, high[:, m], low[:, m])
    return fill, barcode, markers, dropouts


def _punctum_mass(config: SampleConfig) -> float:
    """Mass of a punctum whose peak after the PSF is ``punctum_level``."""
    voxel = np.asarray(config.voxel_size)
    s_p = config.punctum_sigma_um / voxel
    s_psf = np.asarray(config.psf_sigma_um) / voxel
    return float(config.punctum_level * np.prod(np.sqrt(2.0 * np.pi * (s_p ** 2 + s_psf ** 2))))


def generate_sample(config: SampleConfig | None = None) -> Sample:
    """Generate a sample volume with ground truth; same config, same bytes.

    Parameters
    ----------
    config : SampleConfig, optional
        Defaults to ``SampleConfig()`` (the demo sample).

    Returns
    -------
    Sample
    """
    if config is None:
        config = SampleConfig()
    if not isinstance(config, SampleConfig):
        raise TypeError(f"config must be a SampleConfig, got {type(config).__name__}")
    t_start = time.perf_counter()
    timings = {}
    shape = tuple(config.shape)
    n_voxels = int(np.prod(shape))

    # 1-2. morphology and rasterisation
    t = time.perf_counter()
    morph = build_morphology(config, _rng(config, _MORPHOLOGY))
    timings["morphology"] = time.perf_counter() - t
    t = time.perf_counter()
    seg = paint_segments(shape, morph.p0, morph.p1, morph.radius).ravel()
    fg = np.flatnonzero(seg >= 0)
    fg_seg = seg[fg]
    del seg
    fg_neuron = morph.neuron[fg_seg]
    fg_kind = morph.kind[fg_seg]
    missing = np.flatnonzero(np.bincount(fg_neuron, minlength=config.n_neurons + 1)[1:] == 0) + 1
    if missing.size:
        raise ValueError(
            f"neurons {missing.tolist()} were completely overgrown by others: shape {shape} is too "
            f"small for n_neurons={config.n_neurons} with somata of {config.soma_radius_um} um; "
            f"use a larger shape, fewer neurons or smaller somata"
        )
    labels = np.zeros(n_voxels, np.int32)
    labels[fg] = fg_neuron
    labels = labels.reshape(shape)
    kind = np.zeros(n_voxels, np.uint8)
    kind[fg] = fg_kind
    kind = kind.reshape(shape)
    timings["rasterise"] = time.perf_counter() - t

    # 3. identities
    rng = _rng(config, _IDENTITY)
    types = _cell_types(rng, config)
    codes, collisions = _barcodes(rng, config)
    fill, barcode, marker, dropouts = _expression(rng, config, codes, types)
    type_by_id = np.concatenate([[0], types])

    # 4. synapses
    t = time.perf_counter()
    rng = _rng(config, _SYNAPSES)
    syn = place_synapses(config, rng, labels, kind, type_by_id)
    n_orphans = int(round(config.orphan_puncta_fraction * len(syn)))
    orphan_pre = orphan_puncta(rng, kind, AXON, n_orphans)
    orphan_post = orphan_puncta(rng, kind, DENDRITE, n_orphans)
    timings["synapses"] = time.perf_counter() - t

    # 5. image formation
    t = time.perf_counter()
    rng = _rng(config, _IMAGING)
    specs = _channel_specs(config)
    image = np.empty((len(specs),) + shape, np.uint16)
    backgrounds = config.background * rng.uniform(0.9, 1.1, len(specs))
    proximity = np.where(fg_kind == SOMA, 1.0,
                         np.exp(-morph.path_um[fg_seg] / _MARKER_DECAY_UM)).astype(np.float32)
    sigma_punctum = config.punctum_sigma_um / np.asarray(config.voxel_size)
    mass = _punctum_mass(config)
    cv = config.expression_noise
    marker_index = {name: m for m, name in enumerate(MARKERS)}
    for c, spec in enumerate(specs):
        name, role = spec["name"], spec["role"]
        if role == "fill":
            level = (config.fill_level * fill)[fg_neuron].astype(np.float32)
            density = expression_density(rng, n_voxels, fg, level, cv)
        elif role == "barcode":
            level = (config.barcode_level * barcode[:, int(name[2:])])[fg_neuron].astype(np.float32)
            density = expression_density(rng, n_voxels, fg, level, cv)
        elif role in ("pre", "post"):
            centres = np.concatenate([syn.pre, orphan_pre] if role == "pre" else [syn.post, orphan_post])
            masses = mass * rng.uniform(0.7, 1.3, len(centres))
            density = blob_density(shape, centres, masses, sigma_punctum)
        else:
            m = marker_index[name]
            level = (config.marker_level * marker[:, m])[fg_neuron].astype(np.float32) * proximity
            density = expression_density(rng, n_voxels, fg, level, cv)
        form_image(config, rng, density, image[c], float(backgrounds[c]))
        del density
    timings["imaging"] = time.perf_counter() - t

    # tables and metadata
    neurons = pd.DataFrame({
        "neuron_id": np.arange(1, config.n_neurons + 1, dtype=np.uint64),
        "cell_type": [CELL_TYPES[t] for t in types],
        "barcode": ["".join("1" if b else "0" for b in row) for row in codes],
        "soma_z": morph.soma_centre[:, 0],
        "soma_y": morph.soma_centre[:, 1],
        "soma_x": morph.soma_centre[:, 2],
    })
    synapses = pd.DataFrame({
        "synapse_id": np.arange(1, len(syn) + 1, dtype=np.int64),
        "pre_neuron": syn.pre_neuron.astype(np.uint64),
        "post_neuron": syn.post_neuron.astype(np.uint64),
        "pre_z": syn.pre[:, 0], "pre_y": syn.pre[:, 1], "pre_x": syn.pre[:, 2],
        "post_z": syn.post[:, 0], "post_y": syn.post[:, 1], "post_x": syn.post[:, 2],
    })
    compartment_voxels = np.bincount(fg_kind, minlength=4)
    timings["total"] = time.perf_counter() - t_start
    meta = {
        "generator": "sample_data",
        "format_version": FORMAT_VERSION,
        "config": config.model_dump(mode="json"),
        "seed": config.seed,
        "shape": list(shape),
        "voxel_size": list(config.voxel_size),
        "unit": "micrometer",
        "channels": specs,
        "backgrounds": {s["name"]: float(b) for s, b in zip(specs, backgrounds)},
        "barcode_channels": [s["name"] for s in specs if s["role"] == "barcode"],
        "cell_types": list(CELL_TYPES),
        "connection_matrix": {
            pre: {post: float(config.connection_matrix[i][j]) for j, post in enumerate(CELL_TYPES)}
            for i, pre in enumerate(CELL_TYPES)
        },
        "connection_matrix_note": "outer key = presynaptic type, inner key = postsynaptic type; "
                                  "probability that a candidate contact site becomes a synapse",
        "markers": {name: list(types_) for name, types_ in MARKERS.items()},
        "type_markers": {t: [m for m, ts in MARKERS.items() if t in ts] for t in CELL_TYPES},
        "collisions": [list(p) for p in collisions],
        "dropouts": dropouts,
        "dropout_level": _DROPOUT_LEVEL,
        "n_neurons": config.n_neurons,
        "n_synapses": len(syn),
        "n_contact_pairs": syn.n_contact_pairs,
        "n_orphan_puncta": {"pre": len(orphan_pre), "post": len(orphan_post)},
        "n_segments": morph.n_segments,
        "foreground_fraction": float(fg.size / n_voxels),
        "compartment_fractions": {KIND_NAMES[k]: float(compartment_voxels[k] / n_voxels)
                                  for k in (SOMA, DENDRITE, AXON)},
    }
    log.info(
        "generated sample %s: %d neurons, %d synapses, foreground %.1f%% in %.1f s",
        shape, config.n_neurons, len(syn), 100 * meta["foreground_fraction"], timings["total"],
    )
    return Sample(
        image=image,
        channels=[(s["name"], s["role"]) for s in specs],
        truth_labels=labels.astype(np.uint64),
        neurons=neurons,
        synapses=synapses,
        meta=meta,
        compartments=kind,
        timings=timings,
    )
