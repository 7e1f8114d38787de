"""Kill and resume: a run SIGKILLed anywhere resumes to byte-identical outputs.

The workflow runs in a subprocess (``python -m workflows.cli run wf.yaml``) with
``CONNECTOME_CRASH_AT=N``: the process SIGKILLs itself at its N-th crash point
(see :func:`pipeline.storage.crash_point`: before/after every atomic rename,
between a block's outputs and its done-marker, after the marker, at every
workflow step). An uninterrupted run with ``CONNECTOME_CRASH_LOG`` lists the
crash points; kill points are drawn from them with a fixed seed, stratified so
that every phase is hit (segmentation blocks, relabelling, puncta, measure,
table and run.json writing). After each kill the same command is rerun and
the label image (every chunk file, byte for byte) and the three Parquet
tables (byte for byte) must equal the uninterrupted run's.

``test_kill_resume_three_points`` (~15-20 s) kills one run three times in
a row, resuming in between; ``test_kill_resume_many_points`` kills independent
runs at one point drawn in every phase (six runs, ~2 min on the 2-core CI
machine), or at ``CONNECTOME_KILL_POINTS_PER_PHASE`` points per phase (2: twelve
runs, as every ``make test`` did until session 15).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from sample_data import SampleConfig, write_sample
from workflows.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = {"shape": [32, 96, 96], "n_neurons": 6, "seed": 3, "chunks_zyx": [16, 48, 48]}
TABLES = ("neurons.parquet", "synapses.parquet", "edges.parquet")
PHASES = {
    "segment blocks": ("block:segment_evidence", "block:segment_fragments", "block:segment_edges"),
    "relabel": ("block:segment_relabel",),
    "puncta": ("block:puncta_pre", "block:puncta_post"),
    "measure": ("block:measure",),
    "tables": ("write:neurons.parquet", "write:synapses.parquet", "write:edges.parquet"),
    "metadata": ("write:run.json", "write:codebook.json", "write:segment_summary.json",
                 "write:labels.fingerprint", "write:_params.json", "step:"),
}


def _write_workflow(tmp_path: Path, sample: Path, run: Path) -> Path:
    text = f"""
name: tiny
input:
  sample: {{path: {sample}, config: {json.dumps(TINY)}}}
output: {run}
compute: {{scheduler: synchronous, block_shape: [16, 48, 48], device: cpu}}
"""
    path = tmp_path / f"{run.name}.yaml"
    path.write_text(text)
    return path


def _cli(workflow: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CONNECTOME_CRASH_AT", None)
    env.pop("CONNECTOME_CRASH_LOG", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "workflows.cli", "-q", "run", str(workflow)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _outputs(run: Path) -> dict:
    """Every output that must be identical: label chunk files, the label array, the tables."""
    found = {}
    labels = run / "labels.zarr" / "neurons" / "0"
    for chunk in sorted((labels / "c").rglob("*")):
        if chunk.is_file():
            found[str(chunk.relative_to(run))] = chunk.read_bytes()
    found["labels array"] = zarr.open_array(str(labels), mode="r")[:].tobytes()
    for name in TABLES:
        found[name] = (run / name).read_bytes()
    return found


def _assert_identical(run: Path, reference: dict, context: str) -> None:
    got = _outputs(run)
    assert sorted(got) == sorted(reference), f"{context}: different output files"
    different = [k for k in reference if got[k] != reference[k]]
    assert not different, f"{context}: outputs differ from the uninterrupted run: {different}"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete", context
    assert not list(run.glob(".*.tmp")), f"{context}: temporary files left behind"
    assert not (run / "run.lock").exists(), f"{context}: lock left behind"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sample (made once, never under a kill) and an uninterrupted run with its crash-point log."""
    tmp = tmp_path_factory.mktemp("resume")
    sample = tmp / "sample"
    write_sample(sample, SampleConfig(**TINY))
    run = tmp / "reference"
    workflow = _write_workflow(tmp, sample, run)
    log_file = tmp / "crash.log"
    os.environ["CONNECTOME_CRASH_LOG"] = str(log_file)
    try:
        assert main(["-q", "run", str(workflow)]) == 0
    finally:
        del os.environ["CONNECTOME_CRASH_LOG"]
        import pipeline.storage

        pipeline.storage._crash_count = 0
    points = [line.split(" ", 1)[1] for line in log_file.read_text().splitlines()]
    return {"tmp": tmp, "sample": sample, "points": points, "outputs": _outputs(run)}


def _phase(tag: str) -> str:
    for phase, prefixes in PHASES.items():
        if tag.startswith(prefixes):
            return phase
    return "metadata"


def _draw(points: list[str], per_phase: int, seed: int) -> list[int]:
    """Kill points (1-based crash-point numbers), ``per_phase`` drawn at random in every phase."""
    rng = random.Random(seed)
    chosen = []
    for phase in PHASES:
        numbers = [i + 1 for i, tag in enumerate(points) if _phase(tag) == phase]
        chosen += rng.sample(numbers, min(per_phase, len(numbers)))
    return sorted(chosen)


def test_crash_points_cover_every_phase(reference):
    points = reference["points"]
    assert len(points) > 100
    assert {_phase(t) for t in points} == set(PHASES)
    # Within a block, a kill can land between the outputs and the done-marker.
    assert any(t.endswith(":written") for t in points) and any(t.endswith(":tmp") for t in points)


def _kill_then_resume(reference, name: str, kill_points: list[int]) -> list[str]:
    """Run, kill at each point in turn (counted afresh in each resumed process), then finish."""
    run = reference["tmp"] / name
    workflow = _write_workflow(reference["tmp"], reference["sample"], run)
    killed_at = []
    for n in kill_points:
        result = _cli(workflow, {"CONNECTOME_CRASH_AT": str(n)})
        assert result.returncode == -signal.SIGKILL, (n, result.returncode, result.stderr[-2000:])
        killed_at.append(n)
    # Resume: the same command, run in this process (saves an interpreter start-up).
    assert main(["-q", "run", str(workflow)]) == 0
    _assert_identical(run, reference["outputs"], f"{name} killed at {killed_at}")
    return killed_at


def test_kill_resume_three_points(reference):
    """One run killed three times in a row (mid segmentation, mid puncta/measure, mid tables)."""
    points = reference["points"]
    rng = random.Random(8)
    first = rng.choice([i + 1 for i, t in enumerate(points) if _phase(t) == "segment blocks"])
    # Each resumed process skips finished work, so its crash points are renumbered:
    # kill it early again (its first few points lie in the next unfinished phase).
    _kill_then_resume(reference, "chain", [first, rng.randint(5, 30), rng.randint(2, 10)])


@pytest.mark.slow
def test_kill_resume_many_points(reference):
    """Independent runs, each SIGKILLed at one point drawn with a fixed seed (every phase hit), then resumed."""
    per_phase = int(os.environ.get("CONNECTOME_KILL_POINTS_PER_PHASE", "1"))
    kill_points = _draw(reference["points"], per_phase=per_phase, seed=2024)
    phases = {_phase(reference["points"][n - 1]) for n in kill_points}
    assert phases == set(PHASES)
    for n in kill_points:
        _kill_then_resume(reference, f"kill{n}", [n])


def test_resume_recomputes_a_damaged_done_marker(reference, tmp_path):
    """A truncated marker (damage from outside) is recomputed, not trusted or fatal."""
    import shutil

    src = reference["tmp"] / "reference"
    run = tmp_path / "reference"
    shutil.copytree(src, run)
    marker = run / "work" / "measure" / "3.pkl"
    marker.write_bytes(marker.read_bytes()[:10])
    params = run / "work" / "puncta_pre" / "_params.json"
    params.write_text("{not json")
    for name in TABLES:
        (run / name).unlink()
    workflow = _write_workflow(tmp_path, reference["sample"], run)
    assert main(["-q", "run", str(workflow)]) == 0
    _assert_identical(run, reference["outputs"], "damaged marker")
    assert np.frombuffer(marker.read_bytes()[:2], dtype=np.uint8)[0] == 0x80  # a whole pickle again
