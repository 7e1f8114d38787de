"""The walking skeleton end to end on a tiny sample: run, evaluate, rerun resumes, bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import zarr

from workflows.cli import main

TINY = {"shape": [32, 96, 96], "n_neurons": 6, "seed": 3, "chunks_zyx": [16, 48, 48]}
METRIC_KEYS = (
    "voi_split voi_merge arand synapse_precision synapse_recall synapse_f1 edge_precision "
    "edge_recall edge_f1 cell_type_accuracy barcode_accuracy n_neurons_pred n_neurons_true"
).split()


def _workflow(tmp_path, run_name="run", block_shape=(16, 48, 48), scheduler="synchronous"):
    sample = tmp_path / "sample"
    text = f"""
name: tiny
input:
  sample: {{path: {sample}, config: {json.dumps(TINY)}}}
  truth: {sample}
output: {tmp_path / run_name}
compute: {{scheduler: {scheduler}, block_shape: {list(block_shape)}, device: cpu}}
cell_types:
  rules:
    - {{type: pv, require: {{vgat: high, pv: high}}}}
    - {{type: inhibitory, require: {{vgat: high}}}}
    - {{type: excitatory, require: {{vglut: high}}}}
"""
    path = tmp_path / f"{run_name}.yaml"
    path.write_text(text)
    return path


def _labels(run_dir):
    return zarr.open_array(str(run_dir / "labels.zarr" / "neurons" / "0"), mode="r")[:]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("e2e")
    assert main(["-q", "run", str(_workflow(tmp_path))]) == 0
    return tmp_path


def test_run_writes_every_output(finished_run):
    run = finished_run / "run"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete"
    assert set(record["timings_s"]) >= {"segment", "puncta", "synapses", "measure", "annotate", "connectome"}
    if record["peak_rss_mib"]:                            # Linux: each pass's own peak RSS, none above the run's
        by_pass = record["peak_rss_mib_by_pass"]
        assert {"segment_evidence", "segment_relabel", "measure"} <= set(by_pass), sorted(by_pass)
        assert max(by_pass.values()) <= max(record["peak_rss_mib"].values()) + 0.1
        spans = record["rss_mib_by_pass"]
        assert set(spans) == set(by_pass)
        for name, span in spans.items():
            assert span["peak"] == by_pass[name] and max(span["start"], span["end"]) <= span["peak"] + 1.0, (name, span)
    labels = _labels(run)
    assert labels.dtype == np.uint64 and labels.max() > 0
    neurons = pd.read_parquet(run / "neurons.parquet")
    assert sorted(neurons.neuron_id) == sorted(np.unique(labels[labels > 0]))
    for name in ("synapses.parquet", "edges.parquet"):
        assert (run / name).exists()
    assert set(METRIC_KEYS) <= set(record["evaluation"]["metrics"]), "evaluated once, kept in run.json"
    report = (run / "report.html").read_text()
    assert "Evaluation" in report and report.count("<img") >= 5
    sample = finished_run / "sample"
    assert sorted(p.name for p in (sample / "raw").glob("*.tif"))[0] == "00_fill.tif", "the sample is ingested from TIFFs"


def test_evaluate_json(finished_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(finished_run / "run"), "--truth", str(finished_run / "sample"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(METRIC_KEYS) <= set(metrics)
    assert metrics["n_neurons_true"] == TINY["n_neurons"]
    assert 0 <= metrics["arand"] <= 1


def test_rerun_resumes_and_is_identical(finished_run):
    run = finished_run / "run"
    before = _labels(run)
    tables = {n: pd.read_parquet(run / n) for n in ("neurons.parquet", "synapses.parquet", "edges.parquet")}
    markers = sorted(p.name for p in (run / "work").rglob("*.pkl"))
    mtimes = {p: p.stat().st_mtime_ns for p in (run / "work").rglob("*.pkl")}
    assert markers, "blockwise steps leave done-markers"
    assert main(["-q", "run", str(finished_run / "run.yaml")]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items()), "finished blocks were recomputed"
    np.testing.assert_array_equal(_labels(run), before)
    for name, table in tables.items():
        pd.testing.assert_frame_equal(pd.read_parquet(run / name), table)


def test_killed_run_resumes_to_identical_outputs(finished_run, tmp_path):
    """Remove half the done-markers and the tables (as a kill would leave them) and rerun."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    markers = sorted((run / "work").rglob("*.pkl"))
    for marker in markers[::2]:
        marker.unlink()
    for name in ("neurons.parquet", "synapses.parquet", "edges.parquet"):
        (run / name).unlink()
    workflow = _workflow(finished_run, run_name="run")
    text = workflow.read_text().replace(str(finished_run / "run"), str(run))
    (tmp_path / "wf.yaml").write_text(text)
    assert main(["-q", "run", str(tmp_path / "wf.yaml")]) == 0
    np.testing.assert_array_equal(_labels(run), _labels(finished_run / "run"))
    for name in ("neurons.parquet", "synapses.parquet", "edges.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(run / name), pd.read_parquet(finished_run / "run" / name))


def test_graphml_export(finished_run, tmp_path):
    import networkx as nx

    out = tmp_path / "c.graphml"
    assert main(["export", str(finished_run / "run"), "--format", "graphml", "--output", str(out)]) == 0
    graph = nx.read_graphml(out, node_type=int)
    neurons = pd.read_parquet(finished_run / "run" / "neurons.parquet")
    assert graph.number_of_nodes() == len(neurons)


def test_missing_workflow_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no such workflow file" in err and "Traceback" not in err


def test_unknown_key_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("input: {volume: v.zarr}\nsegment: {sigmaa: 2}\n")
    assert main(["run", str(path)]) == 2
    assert "segment.sigmaa: unknown key" in capsys.readouterr().err


def test_missing_input_volume(tmp_path, capsys):
    path = tmp_path / "wf.yaml"
    path.write_text(f"input: {{volume: {tmp_path / 'nope.zarr'}}}\noutput: {tmp_path / 'r'}\n"
                    "compute: {scheduler: synchronous}\n")
    assert main(["run", str(path)]) == 2
    assert "nope.zarr: no such volume" in capsys.readouterr().err


def test_volume_without_a_needed_role(tmp_path, capsys):
    from pipeline import Channel, Volume

    Volume.create(tmp_path / "v.zarr", shape_zyx=(8, 32, 32), channels=[Channel("bc00", "barcode")],
                  chunks_zyx=(8, 32, 32))
    path = tmp_path / "wf.yaml"
    path.write_text(f"input: {{volume: {tmp_path / 'v.zarr'}}}\noutput: {tmp_path / 'r'}\n"
                    "compute: {scheduler: synchronous, block_shape: [8, 32, 32]}\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "role 'fill'" in err and "Traceback" not in err


def test_evaluate_missing_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "norun"), "--truth", str(tmp_path)]) == 2
    assert "norun" in capsys.readouterr().err


def test_changed_segmentation_recomputes_downstream_blocks(finished_run, tmp_path):
    """Puncta and measurement markers belong to one segmentation; a new one recomputes them."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    text = _workflow(finished_run).read_text().replace(str(finished_run / "run"), str(run))
    text += "segment: {min_neuron_size: 400}\n"
    (tmp_path / "wf.yaml").write_text(text)
    before = {p: p.stat().st_mtime_ns for p in (run / "work" / "measure").glob("*.pkl")}
    assert main(["-q", "run", str(tmp_path / "wf.yaml")]) == 0
    after = {p: p.stat().st_mtime_ns for p in (run / "work" / "measure").glob("*.pkl")}
    assert before and all(after[p] != t for p, t in before.items())
    neurons = pd.read_parquet(run / "neurons.parquet")
    labels = _labels(run)
    assert sorted(neurons.neuron_id) == sorted(np.unique(labels[labels > 0]))


def test_workflow_ingest_step_gives_the_same_connectome(finished_run, tmp_path):
    """input.ingest: the sample's TIFFs ingested by the workflow itself end in the same result."""
    import yaml

    raw = finished_run / "sample" / "raw"
    spec = yaml.safe_load((raw / "channels.yaml").read_text())
    spec["chunks"] = TINY["chunks_zyx"]
    (raw / "channels_e2e.yaml").write_text(yaml.safe_dump(spec))
    text = _workflow(finished_run).read_text()
    start = text.index("  sample:")
    end = text.index("  truth:")
    text = (text[:start] + f"  ingest: {{channels: {raw / 'channels_e2e.yaml'}, out: {tmp_path / 'v.zarr'}}}\n"
            + text[end:]).replace(str(finished_run / "run"), str(tmp_path / "run"))
    (tmp_path / "wf.yaml").write_text(text)
    assert main(["-q", "run", str(tmp_path / "wf.yaml")]) == 0
    np.testing.assert_array_equal(_labels(tmp_path / "run"), _labels(finished_run / "run"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "run" / "edges.parquet"),
                                  pd.read_parquet(finished_run / "run" / "edges.parquet"))
