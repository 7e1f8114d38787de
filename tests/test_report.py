"""Tests of the HTML run report (workflows.report) on tiny synthetic run directories."""

from __future__ import annotations

import argparse
import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from graph.connectome import edges_from_synapses
from pipeline.volume import Channel, Volume, create_label_image
from workflows.evaluate import MissingOutputError
from workflows.report import SECTION_TITLES, add_report_parser, write_report

SHAPE = (6, 24, 24)
VOXEL = (0.4, 0.1, 0.1)
CHANNELS = ("fill", "bc00", "bc01", "bc02", "pre", "post", "vglut")
ROLES = ("fill", "barcode", "barcode", "barcode", "pre", "post", "marker")
N_IMAGES_FULL = 7  # timings, slices, sizes, barcodes, cell types, connectivity, confidence


def _labels() -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint64)
    labels[:, 2:10, 2:10] = 1
    labels[:, 2:10, 12:22] = 2
    labels[:, 14:22, 4:20] = 3
    return labels


def _neurons(labels: np.ndarray, names: tuple[str, ...]) -> pd.DataFrame:
    ids = np.unique(labels[labels > 0])
    rows = []
    # <script> in a cell type checks that text is escaped.
    types = ["excitatory", "<script>x</script>", "excitatory"]
    codes = ["110", "011", "110"]  # neurons 1 and 3 collide
    for i, nid in enumerate(ids):
        zz, yy, xx = np.nonzero(labels == nid)
        row = {"neuron_id": np.uint64(nid), "size_voxels": len(zz), "z": zz.mean(), "y": yy.mean(),
               "x": xx.mean(), "barcode": codes[i], "barcode_confidence": 0.9,
               "barcode_shared": codes.count(codes[i]) > 1, "cell_type": types[i],
               "cell_type_confidence": 0.8}
        for j, name in enumerate(names):
            row[f"p_{name}"] = float(codes[i][j])
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["neuron_id"] = frame["neuron_id"].astype("uint64")
    return frame


def _synapses() -> pd.DataFrame:
    pre = np.array([1, 1, 2, 3], dtype=np.uint64)
    post = np.array([2, 3, 3, 1], dtype=np.uint64)
    frame = pd.DataFrame({
        "synapse_id": np.arange(4, dtype=np.int64), "pre_neuron": pre, "post_neuron": post,
        "pre_z": [3.0, 3.0, 2.0, 4.0], "pre_y": [9.0, 9.0, 9.0, 14.0], "pre_x": [6.0, 9.0, 15.0, 6.0],
        "post_z": [3.0, 3.0, 2.0, 4.0], "post_y": [9.0, 13.0, 14.0, 9.0], "post_x": [12.0, 9.0, 15.0, 6.0],
        "confidence": [0.9, 0.4, 0.7, 0.2],
    })
    return frame


def _empty_synapses() -> pd.DataFrame:
    return _synapses().iloc[:0].reset_index(drop=True)


def _write_run(tmp_path, *, neurons=None, synapses=None, empty_labels=False):
    """A fake run directory with run.json pointing at a tiny OME-Zarr volume."""
    volume_path = tmp_path / "sample" / "volume.zarr"
    volume = Volume.create(volume_path, shape_zyx=SHAPE, voxel_size=VOXEL, chunks_zyx=(3, 12, 12),
                           channels=[Channel(n, r) for n, r in zip(CHANNELS, ROLES)])
    labels = np.zeros(SHAPE, dtype=np.uint64) if empty_labels else _labels()
    rng = np.random.default_rng(0)
    data = rng.integers(90, 110, size=(len(CHANNELS),) + SHAPE).astype(np.uint16)
    data[0][labels > 0] += 1000
    volume.write((slice(None),) * 3, data)

    run_dir = tmp_path / "run"
    label_array = create_label_image(run_dir / "labels.zarr", "neurons", shape_zyx=SHAPE,
                                     voxel_size=VOXEL, chunks_zyx=(3, 12, 12))
    label_array[...] = labels
    if neurons is None:
        neurons = _neurons(labels, CHANNELS[1:4])
    if synapses is None:
        synapses = _synapses()
    neurons.to_parquet(run_dir / "neurons.parquet")
    synapses.to_parquet(run_dir / "synapses.parquet")
    edges_from_synapses(synapses).to_parquet(run_dir / "edges.parquet")
    record = {
        "format_version": 1, "status": "complete", "name": "tiny <run>",
        "input": str(volume_path), "shape": list(SHAPE),
        "channels": [{"name": n, "role": r} for n, r in zip(CHANNELS, ROLES)],
        "voxel_size": list(VOXEL), "unit": "micrometer", "device": "cpu",
        "block_shape": [6, 12, 12], "n_blocks": 4,
        "timings_s": {"input": 0.01, "segment": 1.5, "puncta": 0.4},
        "total_s": 1.91, "counts": {"neurons": len(neurons), "synapses": len(synapses)},
    }
    (run_dir / "run.json").write_text(json.dumps(record))

    # Ground truth: the same labels and tables, laid out as a sample directory.
    truth_labels = volume.create_labels("truth", chunks_zyx=(3, 12, 12))
    truth_labels[...] = labels
    (tmp_path / "sample" / "truth").mkdir()
    neurons[["neuron_id", "cell_type", "barcode", "z", "y", "x"]].rename(
        columns={"z": "soma_z", "y": "soma_y", "x": "soma_x"}
    ).to_parquet(tmp_path / "sample" / "truth" / "neurons.parquet")
    synapses.drop(columns=["confidence"]).to_parquet(tmp_path / "sample" / "truth" / "synapses.parquet")
    return run_dir, tmp_path / "sample"


def _headings(text: str) -> list[str]:
    return re.findall(r"<h2>([^<]*)</h2>", text)


def _check_self_contained(text: str) -> None:
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE)
    assert "<script" not in text  # no scripts, and inserted text is escaped
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', text):
        assert base64.b64decode(data).startswith(b"\x89PNG")


def test_report_full_with_truth(tmp_path):
    run_dir, truth = _write_run(tmp_path)
    out = write_report(run_dir, truth=truth, output=tmp_path / "out" / "report.html")
    assert out == tmp_path / "out" / "report.html" and out.is_file()
    text = out.read_text(encoding="utf-8")
    _check_self_contained(text)
    assert _headings(text) == list(SECTION_TITLES)
    assert text.count("<img ") == N_IMAGES_FULL
    assert "&lt;script&gt;x&lt;/script&gt;" in text
    assert "tiny &lt;run&gt;" in text
    # barcode collision count: neurons 1 and 3 share "110"
    assert re.search(r"neurons sharing a barcode</td><td[^>]*>2<", text)
    assert re.search(r"shared barcodes \(collisions\)</td><td[^>]*>1<", text)
    # evaluation of a run against itself
    assert re.search(r"synapse_f1</td><td[^>]*>1\.0000<", text)
    # summary content
    for needle in ("6 x 24 x 24", "segment", "bc00", "barcode", "cpu"):
        assert needle in text


def test_report_without_truth_default_output(tmp_path):
    run_dir, _ = _write_run(tmp_path)
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    text = out.read_text(encoding="utf-8")
    _check_self_contained(text)
    assert _headings(text) == list(SECTION_TITLES[:-1])
    assert "Evaluation" not in text
    assert text.count("<img ") == N_IMAGES_FULL


def test_report_empty_connectome(tmp_path):
    neurons = _neurons(_labels(), CHANNELS[1:4]).iloc[:0].reset_index(drop=True)
    run_dir, truth = _write_run(tmp_path, neurons=neurons, synapses=_empty_synapses(), empty_labels=True)
    text = write_report(run_dir, truth=truth).read_text(encoding="utf-8")
    _check_self_contained(text)
    assert _headings(text) == list(SECTION_TITLES)
    # only the timing chart and the slices remain; the rest are notes
    assert text.count("<img ") == 2
    assert "No neurons." in text and "No synapses." in text


def test_report_synapses_without_types_and_missing_volume(tmp_path):
    run_dir, _ = _write_run(tmp_path)
    neurons = pd.read_parquet(run_dir / "neurons.parquet")
    neurons["cell_type"] = None
    neurons.to_parquet(run_dir / "neurons.parquet")
    record = json.loads((run_dir / "run.json").read_text())
    record["input"] = "nowhere/volume.zarr"
    del record["timings_s"]
    (run_dir / "run.json").write_text(json.dumps(record))
    text = write_report(run_dir).read_text(encoding="utf-8")
    _check_self_contained(text)
    assert "not found; no slices shown" in text
    assert "No cell types assigned" in text
    # sizes, barcodes, cell-type composition ("(none)"), confidence
    assert text.count("<img ") == 4


def test_report_missing_run(tmp_path):
    with pytest.raises(MissingOutputError, match="does not exist"):
        write_report(tmp_path / "absent")
    (tmp_path / "run").mkdir()
    with pytest.raises(MissingOutputError, match="run.json"):
        write_report(tmp_path / "run")


def test_report_parser(tmp_path, capsys):
    run_dir, truth = _write_run(tmp_path)
    parser = argparse.ArgumentParser(prog="connectome")
    sub = parser.add_subparsers(dest="command", required=True)
    add_report_parser(sub)
    assert "example: connectome report" in sub.choices["report"].format_help()
    args = parser.parse_args(["report", str(run_dir), "--truth", str(truth),
                              "--output", str(tmp_path / "r.html")])
    assert args.func(args) == 0
    assert (tmp_path / "r.html").is_file()
    assert "r.html" in capsys.readouterr().out
