"""Neuroglancer precomputed export, read back with cloud-volume, tensorstore and
neuroglancer's AnnotationReader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graph import Connectome
from graph.export import export
from graph.export_precomputed import write_precomputed
from test_export_fixtures import VOXEL_SIZE, make_connectome, make_labels, make_run_dir

cloudvolume = pytest.importorskip("cloudvolume")
ts = pytest.importorskip("tensorstore")

RES = np.array(VOXEL_SIZE[::-1]) * 1000  # x, y, z nm


def _check_segment_properties(info, n_ids):
    """Mirror of Neuroglancer's parseInlinePropertyMap validation."""
    assert info["@type"] == "neuroglancer_segment_properties"
    inline = info["inline"]
    ids = inline["ids"]
    assert all(isinstance(i, str) and i.isdigit() for i in ids) and len(ids) == n_ids
    out = {}
    for prop in inline["properties"]:
        assert prop["type"] in {"label", "description", "string", "tags", "number"}
        assert len(prop["values"]) == len(ids)
        if prop["type"] == "tags":
            assert len(prop.get("tag_descriptions", prop["tags"])) == len(prop["tags"])
            assert all(0 <= i < len(prop["tags"]) for v in prop["values"] for i in v)
            out[prop["id"]] = [[prop["tags"][i] for i in v] for v in prop["values"]]
        elif prop["type"] == "number":
            assert prop["data_type"] in {"uint8", "int8", "uint16", "int16", "uint32", "int32",
                                         "float32"}
            out[prop["id"]] = prop["values"]
        else:
            assert all(isinstance(v, str) for v in prop["values"])
            out[prop["id"]] = prop["values"]
    return dict(zip(ids, [dict(zip(out, vals)) for vals in zip(*out.values())]))


def test_precomputed_roundtrip(tmp_path):
    run = make_run_dir(tmp_path / "run")
    out = export(run, "precomputed", tmp_path / "ng", chunk_size=(16, 16, 8))
    labels = make_labels()
    seg = out / "segmentation"

    # Segmentation: cloud-volume and tensorstore read the same voxels.
    vol = cloudvolume.CloudVolume(f"file://{seg}", progress=False)
    assert vol.info["scales"][0]["encoding"] == "raw"
    assert list(vol.resolution) == pytest.approx(RES)
    np.testing.assert_array_equal(np.asarray(vol[:, :, :])[..., 0].transpose(2, 1, 0), labels)
    store = ts.open({"driver": "neuroglancer_precomputed",
                     "kvstore": {"driver": "file", "path": str(seg)}}).result()
    data = store.read().result()  # x, y, z, channel
    np.testing.assert_array_equal(np.asarray(data)[..., 0].transpose(2, 1, 0), labels)
    assert not list(seg.rglob("*.gz"))

    # Segment properties: cell type (label + tags) and barcode per neuron.
    props = _check_segment_properties(
        json.loads((seg / "segment_properties" / "info").read_text()), 4)
    assert props["1"]["label"] == "exc" and props["1"]["cell_type"] == ["exc"]
    assert props["2"]["barcode"] == "1100" and props["4"]["cell_type"] == []
    assert props["3"]["size_voxels"] == 1080

    # Meshes (nm): cover each rod's voxel box [i, i + 1) * resolution.
    for nid in (1, 2, 3):
        mesh = vol.mesh.get(nid)
        zz, yy, xx = np.nonzero(labels == nid)
        lo = np.array([xx.min(), yy.min(), zz.min()]) * RES
        hi = (np.array([xx.max(), yy.max(), zz.max()]) + 1) * RES
        assert mesh.vertices.min(axis=0) == pytest.approx(lo, abs=1e-3)
        assert mesh.vertices.max(axis=0) == pytest.approx(hi, abs=1e-3)
        assert len(mesh.faces) > 0

        skel = vol.skeleton.get(nid)
        assert len(skel.vertices) >= 2 and len(skel.edges) >= 1
        assert np.all(skel.vertices >= lo - 1e-3) and np.all(skel.vertices <= hi + 1e-3)
        # A rod's skeleton runs along its long axis.
        extent = skel.vertices.max(axis=0) - skel.vertices.min(axis=0)
        assert np.argmax(extent) == np.argmax(hi - lo)


def test_synapse_annotations_read_by_neuroglancer(tmp_path):
    ng_reader = pytest.importorskip("neuroglancer.read_precomputed_annotations")
    conn = make_connectome()
    out = write_precomputed(conn, tmp_path / "ng", labels=make_labels(), meshes=False,
                            skeletons=False)
    ann = out / "synapses"
    info = json.loads((ann / "info").read_text())
    assert info["annotation_type"] == "LINE"
    assert [r["id"] for r in info["relationships"]] == ["pre_segment", "post_segment"]

    reader = ng_reader.AnnotationReader(f"file://{ann}/")
    assert reader.annotation_type == "line"
    assert [p.id for p in reader.properties] == ["confidence"]
    assert list(reader.coordinate_space.names) == ["x", "y", "z"]
    assert list(reader.coordinate_space.units) == ["m", "m", "m"]
    syn = conn.synapse_table
    for row in syn.itertuples():
        a = reader.by_id[int(row.synapse_id)]
        pre = (np.array([row.pre_x, row.pre_y, row.pre_z]) + 0.5) * RES
        post = (np.array([row.post_x, row.post_y, row.post_z]) + 0.5) * RES
        np.testing.assert_allclose(a.point_a, pre, rtol=1e-6)
        np.testing.assert_allclose(a.point_b, post, rtol=1e-6)
        assert a.props[0] == pytest.approx(row.confidence, rel=1e-6)
        want_pre = [int(row.pre_neuron)] if row.pre_neuron else []
        want_post = [int(row.post_neuron)] if row.post_neuron else []
        assert [list(map(int, s)) for s in a.segments] == [want_pre, want_post]
    by_pre = reader.relationships["pre_segment"][1]
    assert sorted(int(a.id) for a in by_pre) == [10, 11, 13]
    by_post = reader.relationships["post_segment"][3]
    assert sorted(int(a.id) for a in by_post) == [12, 13]
    spatial = sorted(int(a.id) for a in reader.get_within_spatial_bounds())
    assert spatial == syn["synapse_id"].tolist()


def test_empty_connectome_and_empty_volume(tmp_path):
    conn = make_connectome()
    empty = Connectome(conn.neuron_table.iloc[:0], conn.synapse_table.iloc[:0],
                       meta={"voxel_size": list(VOXEL_SIZE)})
    out = write_precomputed(empty, tmp_path / "ng", labels=np.zeros((4, 8, 8), "uint64"))
    vol = cloudvolume.CloudVolume(f"file://{out / 'segmentation'}", progress=False)
    assert not np.asarray(vol[:, :, :]).any()
    info = json.loads((out / "segmentation" / "segment_properties" / "info").read_text())
    assert info["inline"]["ids"] == []
    ng_reader = pytest.importorskip("neuroglancer.read_precomputed_annotations")
    reader = ng_reader.AnnotationReader(f"file://{out / 'synapses'}/")
    assert reader.annotation_type == "line"


def test_precomputed_needs_a_label_image(tmp_path):
    with pytest.raises(ValueError, match="label image"):
        write_precomputed(make_connectome(), tmp_path / "ng")
    with pytest.raises(ValueError, match="3-d integer"):
        write_precomputed(make_connectome(), tmp_path / "ng", labels=np.zeros((4, 4)))
    assert not (tmp_path / "ng").exists()
