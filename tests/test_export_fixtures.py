"""Small synthetic connectome + label image shared by the tests/test_export_*.py files.

Holds no tests; imported as ``test_export_fixtures`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from graph import Connectome

__all__ = ["VOXEL_SIZE", "make_labels", "make_connectome", "make_run_dir"]

VOXEL_SIZE = (0.4, 0.1, 0.1)  # z, y, x in µm
U64 = "uint64"


def make_labels() -> np.ndarray:
    """Three rods in a (16, 40, 48) uint64 volume; neuron 4 of the table is absent."""
    lab = np.zeros((16, 40, 48), dtype=U64)
    lab[3:9, 4:10, 2:44] = 1  # along x
    lab[3:9, 16:22, 2:44] = 2  # along x, parallel to 1
    lab[9:14, 2:38, 30:36] = 3  # along y, above 1 and 2
    return lab


def make_connectome(with_meta: bool = True) -> Connectome:
    """Neurons 1-4 (4 has no voxels) and 7 synapses (one with post 0, one autapse)."""
    neurons = pd.DataFrame(
        {
            "neuron_id": np.array([1, 2, 3, 4], dtype=U64),
            "size_voxels": np.array([1512, 1512, 1080, 0], dtype="int64"),
            "z": [5.5, 5.5, 11.0, 0.0],
            "y": [6.5, 18.5, 19.5, 0.0],
            "x": [22.5, 22.5, 32.5, 0.0],
            "barcode": ["0101", "1100", "0011", "1111"],
            "barcode_confidence": [0.9, 0.8, 0.7, 0.6],
            "cell_type": pd.array(["exc", "inh", "exc", None], dtype="string"),
            "cell_type_confidence": [0.95, 0.85, 0.75, 0.1],
        }
    )
    rows = [
        # id, pre, post, pre zyx, post zyx, conf
        (10, 1, 2, (5.0, 9.0, 10.0), (5.0, 16.0, 10.0), 0.9),
        (11, 1, 2, (6.0, 9.0, 20.0), (6.0, 16.0, 20.0), 0.4),
        (12, 2, 3, (8.0, 19.0, 32.0), (9.0, 19.0, 32.0), 0.7),
        (13, 1, 3, (8.0, 6.0, 33.0), (9.0, 6.0, 33.0), 0.6),
        (14, 3, 1, (9.0, 7.0, 34.0), (8.0, 7.0, 34.0), 0.55),
        (15, 2, 0, (4.0, 20.0, 5.0), (4.0, 24.0, 5.0), 0.8),
        (16, 2, 2, (4.0, 18.0, 40.0), (4.0, 19.0, 40.0), 0.3),
    ]
    sid, pre, post, pz, qz, conf = zip(*rows)
    pre_xyz = np.array(pz, dtype="float64")
    post_xyz = np.array(qz, dtype="float64")
    synapses = pd.DataFrame(
        {
            "synapse_id": np.array(sid, dtype="int64"),
            "pre_neuron": np.array(pre, dtype=U64),
            "post_neuron": np.array(post, dtype=U64),
            "pre_z": pre_xyz[:, 0],
            "pre_y": pre_xyz[:, 1],
            "pre_x": pre_xyz[:, 2],
            "post_z": post_xyz[:, 0],
            "post_y": post_xyz[:, 1],
            "post_x": post_xyz[:, 2],
            "confidence": np.array(conf, dtype="float64"),
        }
    )
    meta = {"voxel_size": list(VOXEL_SIZE), "name": "synthetic"} if with_meta else None
    return Connectome(neurons, synapses, meta=meta)


def make_run_dir(root: Path) -> Path:
    """A run directory: tables, run.json and labels.zarr/neurons/0."""
    import zarr

    conn = make_connectome()
    run = Path(root)
    conn.save(run)
    (run / "run.json").write_text(json.dumps({"voxel_size": list(VOXEL_SIZE), "name": "synthetic"}))
    lab = make_labels()
    arr = zarr.open_array(
        str(run / "labels.zarr" / "neurons" / "0"), mode="w", shape=lab.shape,
        chunks=(8, 20, 24), dtype=U64, fill_value=0,
    )
    arr[...] = lab
    return run
