"""Smoke test of ``python -m benchmarks``: it runs on a tiny volume and reports every section.

Structure only: no timing is asserted (a slow machine must never fail a test).
"""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_script_runs_and_reports_structure(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "benchmarks", "--shape", "16,64,64", "--block-shape", "32,128,128",
           "--repeats", "1", "--stages", "pipeline,skimage,cc3d,zarr,rss", "--rss-shapes", "16,64,64", "20,64,64",
           "--json", str(out), "--tmpdir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pipeline (full)" in proc.stdout
    assert "peak RSS" in proc.stdout
    report = json.loads(out.read_text())
    assert report["shape"] == [16, 64, 64]
    assert set(report["pipeline"]["stages_s"]) >= {"segment", "puncta", "measure", "synapses"}
    assert len(report["pipeline"]["runs_s"]) == 1
    assert {"seeds", "watershed_masked", "watershed_dense", "chain_masked", "watershed_ours"} <= set(report["skimage"])
    assert report["cc3d"]["agree_6"] is True and report["cc3d"]["agree_26"] is True
    assert {"read", "write"} <= set(report["zarr"])
    assert len(report["rss"]["runs"]) == 2 and "peak_ratio" in report["rss"]
    assert report["machine"]["nproc"] >= 1
    # the temporary sample and runs are removed
    assert not list(tmp_path.glob("oc-bench-*"))


def test_benchmark_rejects_unknown_stage():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--stages", "nonsense"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "nonsense" in proc.stderr


def test_gpu_block_benchmark_runs_on_the_cpu_and_prints_its_table():
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu.block_bench", "--shape", "16,64,64", "--repeats", "1",
                          "--cpu"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("block 16x64x64")
    steps = [line.split("|")[1].strip() for line in lines if line.startswith("| ") and not line.startswith("| step")]
    assert steps == ["normalise", "deconvolve", "evidence", "codebook labels", "flood specks", "unmix contacts",
                     "connected pieces",
                     "puncta (1 channel)", "per-label sums", "per-label histograms", "whole chain"]
    assert "GPU: not measured" in out.stdout


def test_histogram_cost_script_reports_both_kernels(tmp_path, caplog):
    import numpy as np
    import zarr

    from benchmarks.histogram_cost import main

    rng = np.random.default_rng(0)
    volume = zarr.create_array(str(tmp_path / "v"), shape=(3, 4, 16, 16), chunks=(3, 4, 16, 16), dtype="uint16")
    volume[:] = rng.integers(0, 3000, volume.shape).astype(np.uint16)
    labels = zarr.create_array(str(tmp_path / "l"), shape=(4, 16, 16), chunks=(4, 16, 16), dtype="uint64")
    labels[:] = rng.integers(0, 5, labels.shape).astype(np.uint64)
    with caplog.at_level("INFO", logger="benchmarks.histogram_cost"):
        main(["--volume", str(tmp_path / "v"), "--labels", str(tmp_path / "l"), "--z", "4", "--repeats", "1"])
    assert "| label_sums |" in caplog.text and "| label_histograms |" in caplog.text
    assert "histograms / sums" in caplog.text


def test_contact_cost_script_times_each_variant():
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "benchmarks.contact_cost", "--shape", "16,64,64", "--block-shape",
                          "16,64,64", "--repeats", "1"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith(("| cosine", "| unmix"))]
    assert len(rows) == 6 and rows[0].split("|")[5].strip() == "1.00"
    assert [r.split("|")[1].strip() for r in rows] == ["cosine", "unmix", "unmix, early rounds in full",
                                                       "unmix, matched back projector", "unmix, full halo",
                                                       "unmix, session 8"]


def test_contact_cost_script_times_the_variants_asked_for():
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "benchmarks.contact_cost", "--shape", "16,64,64", "--block-shape",
                          "16,64,64", "--repeats", "1", "--variants", "unmix, session 8"], cwd=repo,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|")[1].strip() for line in out.stdout.splitlines() if line.startswith(("| cosine", "| unmix"))]
    assert rows == ["cosine", "unmix, session 8"]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_heap_cost_script_runs_each_mode_in_fresh_processes(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "benchmarks.heap_cost", "--shape", "16,64,64", "--block-shape",
                          "16,64,64", "--repeats", "1", "--modes", "lean,kept-top", "--contact-method", "cosine",
                          "--tmpdir", str(tmp_path)],
                         cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "contact_method cosine" in out.stdout
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.startswith(("lean", "kept-top"))}
    assert set(rows) == {"lean", "kept-top"}
    assert rows["lean"][-2:] == ["1.000", "1.000"]                          # ratios to the first mode
    assert float(rows["kept-top"][1]) > 0 and float(rows["kept-top"][5]) > 0  # wall seconds, peak MiB


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_heap_cost_script_compares_worker_settings_on_a_local_cluster(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "benchmarks.heap_cost", "--shape", "16,64,64", "--block-shape", "16,64,64",
               "--repeats", "1", "--modes", "nanny,kept-top", "--contact-method", "cosine", "--tmpdir", str(tmp_path)]
    refused = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "give --workers N" in refused.stderr
    out = subprocess.run(command + ["--workers", "1"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "local cluster of 1 workers" in out.stdout
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.startswith(("nanny", "kept-top"))}
    assert set(rows) == {"nanny", "kept-top"}
    assert float(rows["kept-top"][2]) > 0 and float(rows["kept-top"][4]) > 0  # CPU seconds and faults of the workers


def test_ab_script_runs_each_checkout_from_its_own_code(tmp_path):
    import shutil

    baseline = tmp_path / "baseline"                   # a copy of this checkout's packages stands in for a worktree
    for package in ("benchmarks", "graph", "ingest", "pipeline", "sample_data", "segment", "workflows"):
        shutil.copytree(ROOT / package, baseline / package, ignore=shutil.ignore_patterns("__pycache__"))
    refused = subprocess.run([sys.executable, "-m", "benchmarks.ab", str(tmp_path)], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "not a checkout" in refused.stderr
    out = subprocess.run([sys.executable, "-m", "benchmarks.ab", str(baseline), "--shape", "16,64,64", "--block-shape",
                          "16,64,64", "--repeats", "1", "--contact-method", "cosine", "--tmpdir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"baseline: {baseline.resolve()}" in out.stdout and f"this:     {ROOT}" in out.stdout
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.startswith(("baseline ", "this "))}
    assert set(rows) == {"baseline", "this"} and rows["baseline"][-1] == "1.000"
    assert "same labels: yes" in out.stdout           # the same code on both sides writes the same bits


def test_scratch_dir_creates_a_missing_tmpdir_and_refuses_a_file(tmp_path):
    from benchmarks.suite import scratch_dir

    made = scratch_dir("oc-test-", str(tmp_path / "not" / "yet"))
    assert made.is_dir() and made.parent == tmp_path / "not" / "yet"
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="not a folder"):
        scratch_dir("oc-test-", str(tmp_path / "file"))


def test_codec_benchmark_compares_every_codec_on_the_same_bytes(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.codecs", "--shape", "16,64,64", "--repeats", "1",
                          "--tmpdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| codec")]
    names = ["zarr default (zstd 3)", "pipeline (blosc zstd 3 shuffle)", "blosc zstd 5 bitshuffle", "blosc lz4 5 shuffle"]
    assert [row.split("|")[1].strip() for row in rows] == names * 2          # the image, then the truth labels
    assert rows[0].rstrip(" |").endswith("×1.00 | ×1.00") and rows[4].rstrip(" |").endswith("×1.00 | ×1.00")
    assert "labels 'truth'" in out.stdout
    assert not list(tmp_path.glob("oc-codecs-*"))
