"""The CuPy path against the NumPy path: deconvolution, puncta, and a whole run (tiny sample).

Every test here is marked ``gpu`` and skips without CuPy and a CUDA device.
Tolerances are the documented ones (README "GPU and CPU give the same
answer"): deconvolution within 1e-3 of the channel maximum (float32 sums in a
different order), the same puncta within 0.05 voxel, and a whole run whose
neurons agree on >= 98 % of the voxels (watershed ties, see
``test_flood.py``) with the same number of neurons and synapses within 5 %.
"""

import json

import numpy as np
import pandas as pd
import pytest
import zarr

from benchmarks.gpu.workflow_bench import label_agreement
from segment import SegmentConfig, kernels
from segment.puncta import PunctaConfig, detect_puncta
from segment.synthetic import random_objects, render

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:  # noqa: BLE001 - CUDA raises its own error types without a driver
        pytest.skip("no CUDA device")
    return cupy


@pytest.fixture(scope="module")
def scene():
    shape = (24, 64, 64)
    objects = random_objects(shape, 6, n_barcodes=6, seed=2)
    image = render(shape, objects, seed=2).image.astype(np.float32)
    return image / np.float32(np.percentile(image, 99.5))


def test_deconvolution_on_the_gpu_matches_the_cpu(cp, scene):
    config = SegmentConfig()
    barcodes = scene[1:7]
    cpu = kernels.deconvolve(barcodes, config.psf_sigma, config.deconvolution_iterations,
                             method=config.deconvolution_method)
    gpu = kernels.deconvolve(cp.asarray(barcodes), config.psf_sigma, config.deconvolution_iterations,
                             method=config.deconvolution_method)
    assert isinstance(gpu, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(gpu), cpu, atol=1e-3 * float(cpu.max()))


def test_puncta_on_the_gpu_match_the_cpu(cp):
    import scipy.ndimage as ndi

    rng = np.random.default_rng(4)
    image = np.zeros((24, 64, 64), np.float32)
    image[tuple(rng.integers(2, (22, 62, 62), size=(40, 3)).T)] = 50.0
    image = ndi.gaussian_filter(image, (0.7, 1.2, 1.2)) + rng.normal(0, 0.05, image.shape).astype(np.float32)
    cpu = detect_puncta(image, PunctaConfig(), noise=0.05)
    gpu = detect_puncta(cp.asarray(image), PunctaConfig(), noise=0.05)
    assert len(cpu) > 0 and len(gpu) == len(cpu)
    np.testing.assert_array_equal(gpu[["iz", "iy", "ix"]].to_numpy(), cpu[["iz", "iy", "ix"]].to_numpy())
    np.testing.assert_allclose(gpu[["z", "y", "x"]].to_numpy(), cpu[["z", "y", "x"]].to_numpy(), atol=0.05)


def _run(tmp_path, device):
    from workflows.cli import main

    tiny = {"shape": [32, 96, 96], "n_neurons": 6, "seed": 3, "chunks_zyx": [16, 48, 48]}
    sample = tmp_path / "sample"
    workflow = tmp_path / f"{device}.yaml"
    workflow.write_text(f"""
name: tiny-{device}
input:
  sample: {{path: {sample}, config: {json.dumps(tiny)}}}
  truth: {sample}
output: {tmp_path / device}
compute: {{scheduler: synchronous, block_shape: [16, 48, 48], device: {device}}}
""")
    assert main(["-q", "run", str(workflow)]) == 0
    return tmp_path / device


def test_a_whole_run_on_the_gpu_matches_the_cpu(cp, tmp_path):
    cpu_run, gpu_run = _run(tmp_path, "cpu"), _run(tmp_path, "gpu")
    assert json.loads((gpu_run / "run.json").read_text())["device"] == "gpu"
    labels = {run: zarr.open_array(str(run / "labels.zarr" / "neurons" / "0"), mode="r")[:]
              for run in (cpu_run, gpu_run)}
    agreement = label_agreement(labels[gpu_run], labels[cpu_run])
    assert agreement["same_voxels"] >= 0.98, agreement
    n_neurons = {run: len(pd.read_parquet(run / "neurons.parquet")) for run in (cpu_run, gpu_run)}
    assert n_neurons[gpu_run] == n_neurons[cpu_run]
    n_synapses = {run: len(pd.read_parquet(run / "synapses.parquet")) for run in (cpu_run, gpu_run)}
    assert abs(n_synapses[gpu_run] - n_synapses[cpu_run]) <= max(1, 0.05 * n_synapses[cpu_run]), n_synapses


def test_label_sums_on_the_gpu_match_the_cpu(cp):
    from graph.measure import label_sums

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 40, (24, 64, 64)).astype(np.uint32)
    channels = (rng.random((4, 24, 64, 64)) * 1000).astype(np.float32)
    gpu = label_sums(cp.asarray(labels), cp.asarray(channels), offset=(1, 2, 3))
    cpu = label_sums(labels, channels, offset=(1, 2, 3))
    for column in cpu.columns:
        np.testing.assert_allclose(gpu[column].to_numpy(np.float64), cpu[column].to_numpy(np.float64),
                                   rtol=1e-7, err_msg=column)


def test_label_histograms_on_the_gpu_match_the_cpu(cp):
    from graph.histograms import IntensityBins, label_histograms

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 40, (16, 48, 48)).astype(np.uint32)
    for channels in (rng.integers(0, 5000, (3, 16, 48, 48)).astype(np.uint16),
                     (rng.random((2, 16, 48, 48)) * 1000).astype(np.float32)):
        bins = IntensityBins.for_dtype(channels.dtype)
        gpu = label_histograms(cp.asarray(labels), cp.asarray(channels), bins)
        cpu = label_histograms(labels, channels, bins)
        pd.testing.assert_frame_equal(gpu, cpu)
