"""A self-contained HTML report of one run directory.

:func:`write_report` reads a run directory (``run.json``, the three connectome tables,
``labels.zarr/neurons``) and the input OME-Zarr volume named in ``run.json``
``input``, and writes one ``report.html``: every plot is a PNG embedded as base64,
the CSS is inline and nothing is fetched from the network, so the file can be mailed
or opened offline.

Sections, in order:

* **Run summary**: volume shape, voxel size, channels and their roles, device, block
  shape and count, counts, and the time of every step (table and bar chart).
* **Orthogonal slices**: a z, a y and an x slice through the fill channel and two
  barcode channels (RGB composite) with the segmentation outline and the synapses
  near each slice. Only those slices are read from disk.
* **Neuron sizes**: histogram of ``size_voxels``.
* **Barcodes**: the neuron x barcode-channel on/off matrix and the number of neurons
  sharing a barcode (``barcode_shared``).
* **Cell types**: composition bar chart.
* **Connectivity by cell type**: pre x post synapse-count heatmap
  (:meth:`graph.connectome.Connectome.connectivity_by_type`).
* **Synapse confidence**: histogram.
* **Evaluation**: the metrics of :func:`workflows.evaluate.evaluate_run`, only when
  a ground-truth sample is given.

Sections without data (no neurons, no synapses) show a one-line note instead of a
plot. The command line front end is ``connectome report`` (:func:`add_report_parser`).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from pipeline.errors import InputError, PipelineError
from pipeline.storage import write_text_atomic

__all__ = ["REPORT_FILE", "SECTION_TITLES", "add_report_parser", "write_report"]

logger = logging.getLogger(__name__)

#: Default file name, written inside the run directory.
REPORT_FILE = "report.html"
#: Section headings (``<h2>``) in report order; "Evaluation" only with ground truth.
SECTION_TITLES = (
    "Run summary",
    "Orthogonal slices",
    "Neuron sizes",
    "Barcodes",
    "Cell types",
    "Connectivity by cell type",
    "Synapse confidence",
    "Evaluation",
)
#: Largest slice side (voxels) read for the orthogonal views; larger volumes are cropped
#: around the slice centre.
MAX_SLICE_SIDE = 1024
#: Synapses whose midpoint lies within this many voxels of a slice are drawn on it.
SYNAPSE_SLAB_VOXELS = 2.0
# Neuron ids are written as tick labels on the barcode matrix up to this many neurons.
_MAX_TICK_NEURONS = 60

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 1.5em .8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.tables { display: flex; flex-wrap: wrap; align-items: flex-start; }
img { max-width: 100%; height: auto; display: block; margin: .5em 0; }
.note { color: #666; font-style: italic; }
.caption { color: #444; font-size: 0.9em; }
.status-complete { color: #2a7d2a; font-weight: bold; }
.status-other { color: #b03030; font-weight: bold; }
"""


# --------------------------------------------------------------------------- HTML helpers


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value) -> str:
    """Human-readable cell text for numbers, sequences and other values."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,d}"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return " x ".join(_fmt(v) for v in value)
    return str(value)


def _table(rows, header=None, numeric_cols=()) -> str:
    """An HTML table; every cell is escaped."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if i in numeric_cols else ""
            cells.append(f"<td{cls}>{_esc(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- inputs


def _load_run_json(run_dir: Path) -> dict:
    from workflows.evaluate import MissingOutputError

    if not run_dir.is_dir():
        raise MissingOutputError(f"run directory {run_dir} does not exist")
    path = run_dir / "run.json"
    if not path.is_file():
        raise MissingOutputError(f"{path} not found; is {run_dir} a run directory?")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable run record ({exc})") from None
    if not isinstance(record, dict):
        raise InputError(f"{path} must hold a JSON object, got {type(record).__name__}")
    return record


def _resolve_input(record: dict, run_dir: Path) -> Path | None:
    """Find the input volume of ``run.json`` ``input`` (often relative to the run's cwd)."""
    value = record.get("input")
    if not value:
        return None
    path = Path(value)
    candidates = [path]
    if not path.is_absolute():
        candidates.append(run_dir / path)
        # The run recorded paths relative to its working directory; recover that
        # directory by stripping the configured output path off the run directory.
        output = (record.get("config") or {}).get("output")
        if output and not Path(output).is_absolute():
            resolved = run_dir.resolve()
            parts = Path(output).parts
            if len(resolved.parts) > len(parts) and resolved.parts[-len(parts):] == parts:
                candidates.append(resolved.parents[len(parts) - 1] / path)
        candidates.extend(parent / path for parent in run_dir.resolve().parents)
    for candidate in candidates:
        if (candidate / "0").exists():
            return candidate
    return None


def _load_connectome(run_dir: Path):
    from graph.connectome import Connectome
    from workflows.evaluate import MissingOutputError

    try:
        return Connectome.load(run_dir)
    except FileNotFoundError as exc:
        raise MissingOutputError(f"cannot report on {run_dir}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"cannot report on {run_dir}: {exc}") from None


def _channel_names(record: dict, role: str) -> list[str]:
    return [str(c.get("name")) for c in record.get("channels") or []
            if isinstance(c, dict) and c.get("role") == role]


# --------------------------------------------------------------------------- sections


def _summary_section(record: dict, run_dir: Path) -> str:
    plt = _pyplot()
    parts = []
    status = str(record.get("status", "unknown"))
    css = "status-complete" if status == "complete" else "status-other"
    parts.append(f'<p>Run <b>{_esc(record.get("name", run_dir.name))}</b> in <code>{_esc(run_dir)}</code>: '
                 f'<span class="{css}">{_esc(status)}</span>; started {_esc(record.get("started", "?"))}, '
                 f'finished {_esc(record.get("finished", "?"))}.</p>')
    unit = record.get("unit", "")
    voxel = record.get("voxel_size")
    general = [
        ("input volume", record.get("input", "-")),
        ("shape (z, y, x)", _fmt(record.get("shape"))),
        ("voxel size (z, y, x)", f"{_fmt(voxel)} {unit}".strip() if voxel else "-"),
        ("device", record.get("device", "-")),
        ("block shape (z, y, x)", _fmt(record.get("block_shape"))),
        ("blocks", _fmt(record.get("n_blocks"))),
        ("total time", f"{_fmt(record.get('total_s'))} s" if record.get("total_s") is not None else "-"),
    ]
    shape = record.get("shape")
    if shape and voxel and len(shape) == 3 and len(voxel) == 3:
        extent = [float(s) * float(v) for s, v in zip(shape, voxel)]
        general.insert(3, ("extent (z, y, x)", f"{_fmt(extent)} {unit}".strip()))
    tables = [_table(general, header=("run", ""))]
    channels = [(c.get("name", "?"), c.get("role", "?")) for c in record.get("channels") or []
                if isinstance(c, dict)]
    if channels:
        tables.append(_table(channels, header=("channel", "role")))
    counts = record.get("counts") or {}
    if counts:
        tables.append(_table([(k, _fmt(v)) for k, v in counts.items()], header=("count", "n"),
                             numeric_cols=(1,)))
    timings = {str(k): float(v) for k, v in (record.get("timings_s") or {}).items()
               if isinstance(v, (int, float))}
    if timings:
        total = sum(timings.values()) or 1.0
        rows = [(k, f"{v:.3f}", f"{100 * v / total:.1f} %") for k, v in timings.items()]
        tables.append(_table(rows, header=("step", "time (s)", "share"), numeric_cols=(1, 2)))
    sub = (record.get("segment") or {}).get("timings") or {}
    if isinstance(sub, dict) and sub:
        tables.append(_table([(k, f"{float(v):.3f}") for k, v in sub.items()
                              if isinstance(v, (int, float))],
                             header=("segment sub-step", "time (s)"), numeric_cols=(1,)))
    parts.append('<div class="tables">' + "\n".join(tables) + "</div>")
    if timings:
        names = list(timings)
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.0))
        ax.barh(names, [timings[n] for n in names], color="#4878a8")
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.set_title("Time per step")
        for i, n in enumerate(names):
            ax.text(timings[n], i, f" {timings[n]:.2f} s", va="center", fontsize=8)
        ax.margins(x=0.15)
        parts.append(_img(_png(fig), "time per step"))
    else:
        parts.append(_note("No step timings recorded (run incomplete?)."))
    versions = record.get("versions") or {}
    if versions:
        parts.append("<details><summary>Software versions</summary>"
                     + _table(list(versions.items()), header=("package", "version")) + "</details>")
    return "\n".join(parts)


def _normalise(plane: np.ndarray) -> np.ndarray:
    """Scale to 0..1 between the 1st and 99.8th percentile."""
    plane = plane.astype(np.float32)
    if plane.size == 0:
        return plane
    lo, hi = np.percentile(plane, (1.0, 99.8))
    if hi <= lo:
        return np.zeros_like(plane)
    return np.clip((plane - lo) / (hi - lo), 0.0, 1.0)


def _crop(center: int, size: int) -> slice:
    if size <= MAX_SLICE_SIDE:
        return slice(0, size)
    start = int(np.clip(center - MAX_SLICE_SIDE // 2, 0, size - MAX_SLICE_SIDE))
    return slice(start, start + MAX_SLICE_SIDE)


def _slices_section(record: dict, run_dir: Path, synapses: pd.DataFrame) -> str:
    from skimage.segmentation import find_boundaries

    volume_path = _resolve_input(record, run_dir)
    labels_path = run_dir / "labels.zarr" / "neurons" / "0"
    if volume_path is None:
        return _note(f"Input volume {record.get('input')!r} not found; no slices shown.")
    try:
        image = zarr.open_array(str(volume_path / "0"), mode="r")
    except (OSError, ValueError, KeyError) as exc:  # zarr raises these for a broken array
        return _note(f"Input volume {volume_path} unreadable ({exc}); no slices shown.")
    if image.ndim != 4:
        return _note(f"Input volume {volume_path}/0 has shape {image.shape}, not (c, z, y, x); no slices shown.")
    names = [str(c.get("name")) for c in record.get("channels") or [] if isinstance(c, dict)]
    roles = [c.get("role") for c in record.get("channels") or [] if isinstance(c, dict)]
    if len(names) != image.shape[0]:
        names = [f"c{i}" for i in range(image.shape[0])]
        roles = ["fill"] + ["barcode"] * (image.shape[0] - 1)
    fill = roles.index("fill") if "fill" in roles else 0
    barcodes = [i for i, r in enumerate(roles) if r == "barcode"][:2]
    labels = None
    if labels_path.exists():
        labels = zarr.open_array(str(labels_path), mode="r")
        if tuple(labels.shape) != tuple(image.shape[1:]):
            logger.warning("labels %s have shape %s, volume %s has %s; outlines not drawn",
                           labels_path, labels.shape, volume_path, image.shape[1:])
            labels = None

    shape = image.shape[1:]
    if len(synapses):
        mid = (synapses[["pre_z", "pre_y", "pre_x"]].to_numpy(float)
               + synapses[["post_z", "post_y", "post_x"]].to_numpy(float)) / 2.0
        center = np.clip(np.round(np.median(mid, axis=0)).astype(int), 0, np.array(shape) - 1)
    else:
        mid = np.empty((0, 3))
        center = np.array([s // 2 for s in shape])
    voxel = record.get("voxel_size") or [1.0, 1.0, 1.0]
    try:
        vz, vy, vx = (float(v) for v in voxel)
    except (TypeError, ValueError):
        vz = vy = vx = 1.0

    crops = [_crop(int(c), int(s)) for c, s in zip(center, shape)]
    views = []  # (title, region index, displayed axes (row, col), aspect)
    for axis, (title, rc, aspect) in enumerate((
        (f"z = {center[0]}", (1, 2), vy / vx),
        (f"y = {center[1]}", (0, 2), vz / vx),
        (f"x = {center[2]}", (0, 1), vz / vy),
    )):
        region = list(crops)
        region[axis] = int(center[axis])
        views.append((title, tuple(region), axis, rc, aspect))

    plt = _pyplot()
    # Panels share one height; each is as wide as its physical aspect ratio asks.
    sizes = [(len(range(*crops[rc[0]].indices(shape[rc[0]]))) * aspect,
              len(range(*crops[rc[1]].indices(shape[rc[1]]))))
             for _, _, _, rc, aspect in views]
    ratios = [max(w / h, 0.2) for h, w in sizes]
    fig, axes = plt.subplots(1, 3, figsize=(min(4.5 * sum(ratios) + 1.5, 20), 5.5),
                             gridspec_kw={"width_ratios": ratios})
    for ax, (title, region, axis, (row_ax, col_ax), aspect) in zip(axes, views):
        grey = _normalise(np.asarray(image[(fill,) + region]))
        rgb = np.repeat(0.6 * grey[..., None], 3, axis=-1)
        colours = ((1.0, 0.0, 1.0), (0.0, 1.0, 0.0))
        for index, colour in zip(barcodes, colours):
            plane = _normalise(np.asarray(image[(index,) + region]))
            rgb += plane[..., None] * np.asarray(colour, dtype=np.float32)
        rgb = np.clip(rgb, 0.0, 1.0)
        if labels is not None:
            edge = find_boundaries(np.asarray(labels[region]), mode="inner")
            rgb[edge] = 0.45 * rgb[edge] + 0.55 * np.array((1.0, 0.85, 0.0), dtype=np.float32)
            rgb = np.clip(rgb, 0.0, 1.0)
        offset_r = region[row_ax].start
        offset_c = region[col_ax].start
        extent = (offset_c - 0.5, offset_c + rgb.shape[1] - 0.5,
                  offset_r + rgb.shape[0] - 0.5, offset_r - 0.5)
        ax.imshow(rgb, aspect=aspect, interpolation="nearest", extent=extent)
        if len(mid):
            near = np.abs(mid[:, axis] - center[axis]) <= SYNAPSE_SLAB_VOXELS
            ax.scatter(mid[near, col_ax], mid[near, row_ax], s=36, facecolors="none",
                       edgecolors="cyan", linewidths=1.2)
            n_near = int(near.sum())
        else:
            n_near = 0
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        axis_names = "zyx"
        ax.set_title(f"{title}  ({n_near} synapses within {SYNAPSE_SLAB_VOXELS:g} voxels)", fontsize=10)
        ax.set_xlabel(f"{axis_names[col_ax]} (voxels)")
        ax.set_ylabel(f"{axis_names[row_ax]} (voxels)")
    fig.tight_layout()
    legend = [f"grey: {names[fill]}"]
    legend += [f"{c}: {names[i]}" for i, c in zip(barcodes, ("magenta", "green"))]
    legend += ["yellow: segmentation outline" if labels is not None else "no segmentation found",
               "cyan circles: synapse midpoints"]
    caption = ("Slices through the synapse median position (or the volume centre), level 0 of "
               f"{volume_path}. " + "; ".join(legend) + ".")
    return _img(_png(fig), "orthogonal slices") + f'<p class="caption">{_esc(caption)}</p>'


def _sizes_section(neurons: pd.DataFrame, record: dict) -> str:
    if neurons.empty:
        return _note("No neurons.")
    plt = _pyplot()
    sizes = neurons["size_voxels"].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    positive = sizes[sizes > 0]
    if len(positive) and positive.max() / max(positive.min(), 1) > 100:
        bins = np.logspace(np.log10(max(positive.min(), 1)), np.log10(positive.max() + 1), 30)
        ax.set_xscale("log")
    else:
        bins = min(30, max(5, len(sizes)))
    ax.hist(sizes, bins=bins, color="#4878a8", edgecolor="white")
    ax.set_xlabel("neuron size (voxels)")
    ax.set_ylabel("neurons")
    ax.set_title(f"Neuron sizes (n = {len(sizes)})")
    rows = [("neurons", _fmt(len(sizes))), ("min", _fmt(int(sizes.min()))),
            ("median", _fmt(float(np.median(sizes)))), ("max", _fmt(int(sizes.max())))]
    voxel = record.get("voxel_size")
    if voxel and len(voxel) == 3:
        volume_um3 = float(np.prod([float(v) for v in voxel]))
        rows.append((f"median volume ({record.get('unit', '')}^3)", _fmt(float(np.median(sizes)) * volume_um3)))
    return _img(_png(fig), "neuron size histogram") + _table(rows, header=("size", "voxels"), numeric_cols=(1,))


def _barcode_matrix(neurons: pd.DataFrame, channels: list[str]) -> tuple[np.ndarray, list[str], str]:
    """(n_neurons x n_channels on/off matrix, channel names, source description)."""
    codes = neurons["barcode"].astype("string").fillna("") if "barcode" in neurons else None
    if codes is not None and len(codes) and codes.str.fullmatch(r"[01]+").all():
        width = int(codes.str.len().max())
        if codes.str.len().eq(width).all() and (not channels or len(channels) == width):
            matrix = np.array([[ch == "1" for ch in code] for code in codes], dtype=bool)
            names = channels or [f"bit {i}" for i in range(width)]
            return matrix, names, "called barcode string"
    p_cols = [f"p_{c}" for c in channels if f"p_{c}" in neurons]
    if p_cols:
        matrix = neurons[p_cols].to_numpy(dtype=float) >= 0.5
        return matrix, [c[2:] for c in p_cols], "p_<channel> >= 0.5"
    return np.zeros((len(neurons), 0), dtype=bool), [], "none"


def _barcodes_section(neurons: pd.DataFrame, record: dict) -> str:
    if neurons.empty:
        return _note("No neurons.")
    channels = _channel_names(record, "barcode")
    matrix, names, source = _barcode_matrix(neurons, channels)
    if "barcode_shared" in neurons:
        shared = neurons["barcode_shared"].fillna(False).to_numpy(dtype=bool)
        shared_source = "barcode_shared column"
    elif "barcode" in neurons:
        codes = neurons["barcode"].astype("string").fillna("")
        shared = (codes.duplicated(keep=False) & codes.ne("")).to_numpy(dtype=bool)
        shared_source = "duplicate barcode strings"
    else:
        shared = np.zeros(len(neurons), dtype=bool)
        shared_source = "no barcode column"
    codes = neurons["barcode"].astype("string").fillna("") if "barcode" in neurons else None
    n_codes_shared = int(codes[shared].nunique()) if codes is not None else 0
    rows = [("neurons", _fmt(len(neurons))),
            ("distinct barcodes", _fmt(int(codes.nunique())) if codes is not None else "-"),
            ("neurons sharing a barcode", _fmt(int(shared.sum()))),
            ("shared barcodes (collisions)", _fmt(n_codes_shared))]
    if "barcode_confidence" in neurons:
        conf = neurons["barcode_confidence"].to_numpy(dtype=float)
        if np.isfinite(conf).any():
            rows.append(("median barcode confidence", _fmt(float(np.nanmedian(conf)))))
    table = _table(rows, header=("barcodes", "n"), numeric_cols=(1,))
    if matrix.shape[1] == 0:
        return table + _note("No barcode calls (no barcode string or p_<channel> columns).")

    plt = _pyplot()
    order = np.lexsort(matrix.T[::-1]) if matrix.size else np.arange(len(neurons))
    ids = neurons["neuron_id"].to_numpy()[order]
    shown = matrix[order].astype(float)
    n = len(ids)
    height = min(14.0, 1.5 + 0.18 * n) if n <= _MAX_TICK_NEURONS else 8.0
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 2.5), height))
    ax.imshow(shown, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90 if len(names) > 12 else 0)
    ax.set_xlabel("barcode channel")
    if n <= _MAX_TICK_NEURONS:
        ax.set_yticks(range(n))
        ax.set_yticklabels([str(i) for i in ids], fontsize=7)
        for tick, is_shared in zip(ax.get_yticklabels(), shared[order]):
            if is_shared:
                tick.set_color("red")
    ax.set_ylabel(f"neuron ({n}, sorted by barcode)")
    shared_rows = np.flatnonzero(shared[order])
    if len(shared_rows):
        ax.scatter(np.full(len(shared_rows), len(names) - 0.5 + 0.35), shared_rows, marker="<",
                   color="red", s=20, clip_on=False)
        ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_title("Barcode on/off (black = on; red = shared barcode)", fontsize=10)
    caption = f"On/off from the {source}; collisions from the {shared_source}."
    return (table + _img(_png(fig), "barcode on/off matrix")
            + f'<p class="caption">{_esc(caption)}</p>')


def _cell_types_section(neurons: pd.DataFrame) -> str:
    if neurons.empty:
        return _note("No neurons.")
    types = neurons["cell_type"].astype("object").where(neurons["cell_type"].notna(), "(none)")
    counts = types.astype(str).value_counts().sort_index()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(counts) + 2), 3.5))
    bars = ax.bar(counts.index.tolist(), counts.to_numpy(), color="#6a9f58")
    ax.bar_label(bars, labels=[str(v) for v in counts.to_numpy()], fontsize=8)
    ax.set_ylabel("neurons")
    ax.set_title("Cell-type composition")
    if len(counts) > 6:
        ax.tick_params(axis="x", rotation=45)
    ax.margins(y=0.15)
    rows = [(t, _fmt(int(n)), f"{100 * n / len(neurons):.1f} %") for t, n in counts.items()]
    if "cell_type_confidence" in neurons:
        conf = neurons.groupby(types.astype(str))["cell_type_confidence"].median()
        rows = [row + (_fmt(conf.get(row[0])),) for row in rows]
        header = ("cell type", "neurons", "share", "median confidence")
    else:
        header = ("cell type", "neurons", "share")
    return _img(_png(fig), "cell-type composition") + _table(rows, header=header, numeric_cols=(1, 2, 3))


def _connectivity_section(connectome) -> str:
    matrix = connectome.connectivity_by_type()
    if matrix.empty:
        return _note("No cell types assigned; no connectivity matrix.")
    if int(matrix.to_numpy().sum()) == 0:
        return _note("No synapses between typed neurons.")
    plt = _pyplot()
    values = matrix.to_numpy()
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * n + 2.5), max(3.5, 0.8 * n + 1.5)))
    im = ax.imshow(values, cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(n))
    ax.set_xticklabels([str(c) for c in matrix.columns], rotation=45, ha="right")
    ax.set_yticks(range(n))
    ax.set_yticklabels([str(i) for i in matrix.index])
    ax.set_xlabel("post-synaptic type")
    ax.set_ylabel("pre-synaptic type")
    top = values.max()
    if n <= 15:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(values[i, j]), ha="center", va="center", fontsize=9,
                        color="black" if values[i, j] > 0.6 * top else "white")
    fig.colorbar(im, ax=ax, label="synapses")
    ax.set_title("Synapses by cell type (pre x post)")
    return _img(_png(fig), "connectivity by cell type") + (
        f'<p class="caption">{int(values.sum())} synapses between typed neurons; '
        "neurons without a cell type are left out.</p>")


def _confidence_section(synapses: pd.DataFrame) -> str:
    if synapses.empty:
        return _note("No synapses.")
    conf = synapses["confidence"].to_numpy(dtype=float)
    finite = conf[np.isfinite(conf)]
    if not len(finite):
        return _note("No finite synapse confidences.")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(finite, bins=np.linspace(0, 1, 21), color="#c07030", edgecolor="white")
    ax.set_xlim(0, 1)
    ax.set_xlabel("synapse confidence")
    ax.set_ylabel("synapses")
    ax.set_title(f"Synapse confidence (n = {len(finite)})")
    rows = [("synapses", _fmt(len(conf))), ("median", _fmt(float(np.median(finite)))),
            ("confidence >= 0.5", _fmt(int((finite >= 0.5).sum())))]
    return _img(_png(fig), "synapse confidence histogram") + _table(rows, header=("synapses", ""),
                                                                    numeric_cols=(1,))


def _evaluation_section(run_dir: Path, truth: Path, metrics: dict | None = None) -> str:
    from workflows.evaluate import METRIC_KEYS, evaluate_run

    if metrics is None:
        metrics = evaluate_run(run_dir, truth)
    rows = []
    for key in list(METRIC_KEYS) + [k for k in metrics if k not in METRIC_KEYS]:
        if key not in metrics:
            continue
        value = metrics[key]
        text = f"{int(value):d}" if isinstance(value, (int, np.integer)) else (
            f"{float(value):.4f}" if math.isfinite(float(value)) else str(value))
        rows.append((key, text))
    return (f'<p>Against the ground truth of <code>{_esc(truth)}</code> '
            "(synapse matching radius 1 µm).</p>"
            + _table(rows, header=("metric", "value"), numeric_cols=(1,)))


# --------------------------------------------------------------------------- API


def write_report(run_dir, *, truth=None, output=None, metrics: dict | None = None) -> Path:
    """Write a self-contained HTML report of a run directory.

    Parameters
    ----------
    run_dir : str or Path
        Run directory written by ``connectome run`` (``docs/contracts.md``).
    truth : str or Path, optional
        Sample directory with ground truth; adds the "Evaluation" section
        (:func:`workflows.evaluate.evaluate_run`).
    output : str or Path, optional
        Where to write; default ``run_dir/report.html``. Parent folders are created.
    metrics : dict, optional
        The evaluation of ``run_dir`` against ``truth`` when the caller already
        has it (the run computes it once); otherwise it is computed here.

    Returns
    -------
    Path
        The written HTML file. Images are base64 PNGs, the CSS is inline; it
        references nothing outside itself.

    Raises
    ------
    workflows.evaluate.MissingOutputError
        (a ``FileNotFoundError``) if the run directory, ``run.json`` or a table is
        missing, or `truth` lacks a file the evaluation needs.
    InputError
        If ``run.json`` or a table is malformed.

    Notes
    -----
    The orthogonal slices read only three planes per channel shown (at most
    :data:`MAX_SLICE_SIDE` voxels a side) from level 0 of the input volume named in
    ``run.json`` ``input``; a relative path there is tried against the working
    directory, the run directory, the directory the run was started from (found by
    stripping the configured ``output`` off the run directory) and its parents. A
    volume that cannot be found is noted in the report instead of the slices.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    record = _load_run_json(run_dir)
    connectome = _load_connectome(run_dir)
    neurons = connectome.neuron_table
    synapses = connectome.synapse_table
    output = Path(output) if output is not None else run_dir / REPORT_FILE

    sections = [
        ("Run summary", _summary_section(record, run_dir)),
        ("Orthogonal slices", _slices_section(record, run_dir, synapses)),
        ("Neuron sizes", _sizes_section(neurons, record)),
        ("Barcodes", _barcodes_section(neurons, record)),
        ("Cell types", _cell_types_section(neurons)),
        ("Connectivity by cell type", _connectivity_section(connectome)),
        ("Synapse confidence", _confidence_section(synapses)),
    ]
    if truth is not None:
        sections.append(("Evaluation", _evaluation_section(run_dir, Path(truth), metrics)))

    title = f"Connectome run report: {record.get('name', run_dir.name)}"
    toc = "".join(f'<li><a href="#s{i}">{_esc(name)}</a></li>' for i, (name, _) in enumerate(sections))
    body = "\n".join(f'<section id="s{i}">\n<h2>{_esc(name)}</h2>\n{content}\n</section>'
                     for i, (name, content) in enumerate(sections))
    generated = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    document = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_esc(title)}</h1>\n<p class=\"caption\">Generated {_esc(generated)} from "
        f"<code>{_esc(run_dir)}</code>.</p>\n<ul>{toc}</ul>\n{body}\n</body>\n</html>\n"
    )
    try:
        write_text_atomic(output, document)
    except OSError as exc:
        raise PipelineError(f"cannot write report {output}: {exc.strerror or exc}") from None
    logger.info("wrote report %s (%.1f s, %d KiB)", output, time.perf_counter() - started,
                len(document) // 1024)
    return output


def _cmd_report(args) -> int:
    path = write_report(args.run_dir, truth=args.truth, output=args.output)
    print(f"wrote report to {path}")
    return 0


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``connectome report RUN_DIR [--truth SAMPLE] [--output report.html]``.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``report`` sub-parser; its ``func`` default runs :func:`write_report` and
        returns 0.
    """
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report (plots, slices, evaluation) of a run",
        description="Write one self-contained report.html for a run directory: run summary, "
                    "orthogonal slices with the segmentation and synapses, neuron sizes, barcodes, "
                    "cell types, cell-type connectivity, synapse confidence and, with --truth, "
                    "the evaluation. Opens offline in any browser.",
        epilog="example: connectome report runs/sample --truth sample_data/sample --output runs/sample/report.html",
    )
    p.add_argument("run_dir", type=Path, help="run directory written by 'connectome run'")
    p.add_argument("--truth", type=Path, default=None,
                   help="sample folder with truth/ and volume.zarr; adds the evaluation section")
    p.add_argument("--output", type=Path, default=None, help="HTML file to write (default RUN_DIR/report.html)")
    p.set_defaults(func=_cmd_report)
    return p
