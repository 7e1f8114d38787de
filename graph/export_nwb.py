"""NWB export (pynwb): volumetric segmentation plus neuron, synapse and edge tables.

One HDF5 file (``OUT``, conventionally ``*.nwb``) laid out as::

    /general/devices/microscope                    Device
    /general/optophysiology/volume                 ImagingPlane (3-d grid, voxel size)
    /processing/ophys/ImageSegmentation/neurons    PlaneSegmentation, one ROI per neuron
                                                   (ROI id = neuron_id), ``voxel_mask``
                                                   (x, y, z, weight=1), plus columns
                                                   ``neuron_id``, ``cell_type``, ``barcode``
    /processing/connectome/neurons                 DynamicTable (id = neuron_id)
    /processing/connectome/synapses                DynamicTable (id = synapse_id)
    /processing/connectome/edges                   DynamicTable (one row per pre->post pair)

Segmentation encoding
---------------------
NWB's ``PlaneSegmentation`` offers ``image_mask`` (dense, ``n_rois x X x Y
[x Z]`` floats), ``pixel_mask`` (sparse 2-d) and ``voxel_mask`` (sparse 3-d,
ragged list of ``(x, y, z, weight)`` per ROI). Only ``voxel_mask`` is both 3-d
and sparse: a dense 3-d ``image_mask`` costs ``n_neurons x volume`` floats (for
the sample, hundreds of full volumes), while ``voxel_mask`` costs 16 bytes per
foreground voxel, and the label image is rebuilt exactly by writing each ROI's
id at its voxels (labels do not overlap, so every weight is 1). The label image
is scanned in z-slabs of ``slab`` planes, so peak memory is one slab plus the
foreground voxel list, never a dense per-neuron mask. Voxel indices follow
NWB's ``(x, y, z)`` order; label voxels whose id is not in the neurons table
are left out (and logged).

Units
-----
Voxel masks are voxel indices; the imaging plane's ``grid_spacing`` (x, y, z)
gives the voxel size with ``grid_spacing_unit="micrometers"``. Table columns
ending in ``_um`` are micrometres (voxel centre ``v`` at ``v * voxel_size``);
columns ``z``, ``y``, ``x``, ``pre_z`` ... are voxel coordinates. Every column's
description states its unit.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from graph.connectome import Connectome
from graph.export_common import (
    ExportError,
    label_image,
    resolve_connectome,
    voxel_size_um,
    write_output,
)

__all__ = ["write_nwb", "read_label_image", "VOXEL_MASK_DTYPE"]

logger = logging.getLogger(__name__)

#: Compound dtype of NWB's ``voxel_mask`` column.
VOXEL_MASK_DTYPE = np.dtype(
    [("x", "<u4"), ("y", "<u4"), ("z", "<u4"), ("weight", "<f4")]
)

_AXES = ("z", "y", "x")


def _voxel_masks(labels: Any, ids: np.ndarray, slab: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse voxel masks of ``ids`` (sorted) from a ``(z, y, x)`` label image.

    Returns the concatenated structured ``voxel_mask`` array, grouped by id in
    the order of ``ids``, and the end offsets (``VectorIndex`` data) per id.
    """
    shape = tuple(int(s) for s in labels.shape)
    coords: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    stray: set[int] = set()
    for z0 in range(0, shape[0], slab):
        block = np.asarray(labels[z0 : z0 + slab])
        zz, yy, xx = np.nonzero(block)
        if not len(zz):
            continue
        lab = block[zz, yy, xx].astype("uint64")
        known = np.isin(lab, ids)
        if not known.all():
            stray.update(np.unique(lab[~known]).tolist())
        coords.append(
            np.stack([xx[known], yy[known], zz[known] + z0], axis=1).astype("uint32")
        )
        owners.append(lab[known])
    if stray:
        logger.warning(
            "NWB export: %d label id(s) absent from the neurons table left out, e.g. %s",
            len(stray), sorted(stray)[:10],
        )
    if coords:
        xyz = np.concatenate(coords)
        lab = np.concatenate(owners)
    else:
        xyz = np.empty((0, 3), dtype="uint32")
        lab = np.empty(0, dtype="uint64")
    order = np.argsort(lab, kind="stable")
    xyz, lab = xyz[order], lab[order]
    mask = np.empty(len(xyz), dtype=VOXEL_MASK_DTYPE)
    mask["x"], mask["y"], mask["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    mask["weight"] = 1.0
    ends = np.searchsorted(lab, ids, side="right").astype("uint64")
    return mask, ends


def _text(values: Any) -> Any:
    """Strings with missing values as ``""`` (NWB text columns cannot hold nulls).

    An empty column becomes a typed empty array (hdmf cannot infer the dtype of ``[]``).
    """
    out = [v if isinstance(v, str) else "" for v in values]
    return out if out else np.array([], dtype="U1")


def _column(name: str, data: Any, description: str) -> Any:
    from hdmf.common import VectorData

    return VectorData(name=name, data=data, description=description)


def _describe(col: str) -> str:
    known = {
        "size_voxels": "number of voxels in the label image",
        "barcode": "binary barcode string ('0'/'1' per barcode channel, channel order)",
        "barcode_confidence": "barcode call confidence, 0..1",
        "cell_type": "cell type ('' when unknown)",
        "cell_type_confidence": "cell type call confidence, 0..1",
        "pre_neuron": "presynaptic neuron_id (0 = no neuron)",
        "post_neuron": "postsynaptic neuron_id (0 = no neuron)",
        "confidence": "synapse detection confidence, 0..1",
        "pre": "presynaptic neuron_id",
        "post": "postsynaptic neuron_id",
        "synapse_count": "number of synapses pre -> post",
        "confidence_sum": "sum of synapse confidences",
        "confidence_mean": "mean synapse confidence",
        "synapse_id": "synapse id",
        "neuron_id": "neuron id (label value in the segmentation)",
    }
    if col in known:
        return known[col]
    if col.endswith("_um"):
        return f"{col[:-3]} coordinate, unit: micrometers"
    if col in _AXES or col.split("_")[-1] in _AXES and col.startswith(("pre_", "post_")):
        return f"{col} coordinate, unit: voxels (z, y, x order of the label image)"
    if col.startswith("bbox_"):
        return f"{col}, unit: voxels (max exclusive)"
    if col.startswith("mean_"):
        return f"mean intensity of channel {col[5:]!r} over the neuron"
    return col


def _table_columns(df: pd.DataFrame, skip: tuple[str, ...] = ()) -> list[Any]:
    """VectorData columns for every column of ``df`` (strings/numbers only)."""
    out = []
    for col in df.columns:
        if col in skip:
            continue
        s = df[col]
        if pd.api.types.is_bool_dtype(s.dtype):
            data = s.to_numpy(dtype=bool)
        elif pd.api.types.is_numeric_dtype(s.dtype):
            data = s.to_numpy()
            if data.dtype.kind == "f":
                data = data.astype("float64")
        else:
            data = _text(s.tolist())
        out.append(_column(str(col), data, _describe(str(col))))
    return out


def _with_um(df: pd.DataFrame, vs: np.ndarray, prefixes: tuple[str, ...]) -> pd.DataFrame:
    """Add ``<prefix>z_um`` ... columns (physical) for each voxel-coordinate triple."""
    out = df.copy()
    for prefix in prefixes:
        for k, axis in enumerate(_AXES):
            col = f"{prefix}{axis}"
            if col in out.columns:
                out[f"{col}_um"] = out[col].to_numpy(dtype="float64") * vs[k]
    return out


def _start_time(meta: dict[str, Any]) -> _dt.datetime:
    started = meta.get("started")
    if isinstance(started, str):
        try:
            t = _dt.datetime.strptime(started, "%Y-%m-%dT%H:%M:%S%z")
            return t
        except ValueError:
            pass
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def write_nwb(
    connectome: Connectome | str | os.PathLike,
    output: str | os.PathLike,
    *,
    labels: Any = None,
    voxel_size: Any = None,
    segmentation: bool = True,
    slab: int = 16,
    overwrite: bool = False,
) -> Path:
    """Write an NWB file with the segmentation and the connectome tables.

    Parameters
    ----------
    connectome : Connectome or path
        The connectome, or a run directory.
    output : str or os.PathLike
        NWB file to create.
    labels : array-like or path, optional
        Label image ``(z, y, x)``; defaults to the run's ``labels.zarr/neurons``.
    voxel_size : sequence of 3 floats, optional
        ``(z, y, x)`` in µm; defaults to ``run.json``'s ``voxel_size``.
    segmentation : bool, default True
        Write the ``PlaneSegmentation``; False writes only the tables (no label
        image needed).
    slab : int, default 16
        z-planes of the label image read at a time.
    overwrite : bool, default False
        Replace an existing ``output``.

    Returns
    -------
    pathlib.Path
        The output file.

    Raises
    ------
    ExportError
        Missing voxel size or label image, or a bad ``slab``.

    Examples
    --------
    >>> write_nwb("runs/sample", "exports/sample.nwb")  # doctest: +SKIP
    >>> from pynwb import NWBHDF5IO
    >>> with NWBHDF5IO("exports/sample.nwb", "r") as io:  # doctest: +SKIP
    ...     nwb = io.read()
    ...     neurons = nwb.processing["connectome"]["neurons"].to_dataframe()
    """
    from hdmf.backends.hdf5 import H5DataIO
    from hdmf.common import DynamicTable, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import ImageSegmentation, OpticalChannel, PlaneSegmentation

    conn = resolve_connectome(connectome)
    vs = voxel_size_um(conn, voxel_size)
    if isinstance(slab, bool) or not isinstance(slab, (int, np.integer)) or slab < 1:
        raise ExportError(f"slab must be a positive integer, got {slab!r}")
    lab = label_image(conn, labels) if segmentation else None
    meta = conn.meta
    neurons = conn.neuron_table
    ids = neurons["neuron_id"].to_numpy(dtype="uint64")
    if len(ids) and int(ids.max()) >= 2**63:
        raise ExportError(f"neuron ids must be < 2**63 for NWB int64 ids, got max {ids.max()}")

    neu = _with_um(neurons, vs, ("",))
    syn = _with_um(conn.synapse_table, vs, ("pre_", "post_"))
    edges = conn.edge_table

    def write(tmp: Path) -> None:
        nwb = NWBFile(
            session_description=f"optical connectome {meta.get('name', '')}".strip(),
            identifier=str(uuid.uuid4()),
            session_start_time=_start_time(meta),
            source_script="graph.export_nwb.write_nwb",
            source_script_file_name="graph/export_nwb.py",
        )
        conn_mod = nwb.create_processing_module(
            name="connectome", description="connectome tables (neurons, synapses, edges)"
        )
        conn_mod.add(DynamicTable(
            name="neurons",
            description="one row per neuron; id = neuron_id; *_um in micrometers, "
                        "z/y/x and bbox_* in voxels",
            id=ids.astype("int64"),
            columns=_table_columns(neu),
        ))
        conn_mod.add(DynamicTable(
            name="synapses",
            description="one row per synapse; id = synapse_id; pre_*/post_* in voxels, "
                        "*_um in micrometers",
            id=syn["synapse_id"].to_numpy(dtype="int64"),
            columns=_table_columns(syn),
        ))
        conn_mod.add(DynamicTable(
            name="edges",
            description="neuron-to-neuron connections aggregated from synapses "
                        "(autapses and partner 0 excluded)",
            id=np.arange(len(edges), dtype="int64"),
            columns=_table_columns(edges),
        ))
        if lab is not None:
            shape = tuple(int(s) for s in lab.shape)
            device = nwb.create_device(name="microscope", description="optical microscope")
            channel = OpticalChannel(name="fill", description="neuron fill channel",
                                     emission_lambda=float("nan"))
            plane = nwb.create_imaging_plane(
                name="volume",
                optical_channel=channel,
                description=f"3-d volume, shape (z, y, x) = {shape}, voxel size (z, y, x) = "
                            f"{vs.tolist()} micrometers",
                device=device,
                excitation_lambda=float("nan"),
                indicator="unknown",
                location="unknown",
                grid_spacing=[float(vs[2]), float(vs[1]), float(vs[0])],
                grid_spacing_unit="micrometers",
                origin_coords=[0.0, 0.0, 0.0],
                origin_coords_unit="micrometers",
            )
            mask, ends = _voxel_masks(lab, ids, int(slab))
            from hdmf.common import VectorData

            vm = VectorData(
                name="voxel_mask",
                data=H5DataIO(mask, compression="gzip") if len(mask) else mask,
                description="voxel indices (x, y, z) of the neuron in the label image, weight 1",
            )
            vm_index = VectorIndex(name="voxel_mask_index", data=ends, target=vm)
            ps = PlaneSegmentation(
                name="neurons",
                description=f"neuron label image {shape} (z, y, x) as sparse voxel masks; "
                            "ROI id = neuron_id",
                imaging_plane=plane,
                id=ids.astype("int64"),
                columns=[
                    vm, vm_index,
                    _column("neuron_id", ids, _describe("neuron_id")),
                    _column("cell_type", _text(neurons["cell_type"].tolist()),
                            _describe("cell_type")),
                    _column("barcode", _text(neurons["barcode"].tolist()), _describe("barcode")),
                ],
            )
            seg = ImageSegmentation(name="ImageSegmentation")
            seg.add_plane_segmentation(ps)
            ophys = nwb.create_processing_module(name="ophys", description="segmentation")
            ophys.add(seg)
        # pynwb warns about names not ending in .nwb: write a .nwb sibling, then rename.
        staging = tmp.with_name(tmp.name + ".nwb")
        try:
            with NWBHDF5IO(str(staging), "w") as io:
                io.write(nwb)
            os.replace(staging, tmp)
        finally:
            staging.unlink(missing_ok=True)

    out = write_output(output, write, overwrite=overwrite)
    logger.info("wrote NWB %s (%d neurons, %d synapses)", out, len(neurons), len(syn))
    return out


def read_label_image(path: str | os.PathLike, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Rebuild the ``(z, y, x)`` uint64 label image from an NWB file written by :func:`write_nwb`.

    Parameters
    ----------
    path : str or os.PathLike
        The NWB file.
    shape : tuple of 3 int, optional
        Output shape; defaults to the bounding box of all voxels (plus one).

    Returns
    -------
    numpy.ndarray
        Label image with each ROI's id at its voxels, 0 elsewhere.
    """
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        ps = nwb.processing["ophys"]["ImageSegmentation"]["neurons"]
        ids = np.asarray(ps.id.data[:], dtype="uint64")
        mask = np.asarray(ps["voxel_mask"].target.data[:])
        ends = np.asarray(ps["voxel_mask_index"].data[:], dtype="int64")
    if shape is None:
        if len(mask):
            shape = (int(mask["z"].max()) + 1, int(mask["y"].max()) + 1, int(mask["x"].max()) + 1)
        else:
            shape = (0, 0, 0)
    out = np.zeros(shape, dtype="uint64")
    counts = np.diff(np.concatenate([[0], ends]))
    owner = np.repeat(ids, counts)
    out[mask["z"], mask["y"], mask["x"]] = owner
    return out
