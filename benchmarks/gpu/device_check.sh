#!/usr/bin/env bash
# The one script to run on a lent GPU machine (see BENCHMARKS.md, "GPU"):
#   device run, carry [".whl"], command: "bash benchmarks/gpu/device_check.sh"
# It installs the wheels from prepare_wheels.sh, prints the GPU, runs the tests marked `gpu`
# (they compare the CuPy path with the NumPy path on the same blocks), prints their summary, then
# times the block kernels on CPU and GPU (benchmarks/gpu/block_bench.py) and prints the table.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())"
# Only the files holding gpu tests: the others import exporters (cloud-volume, pynwb...) not carried.
files=$(grep -l "mark.gpu" tests/test_*.py)
python3 -m pytest -q -m gpu -p no:cacheprovider $files 2>&1 | tee "${OUT:-/tmp}/gpu_tests.log"
# The block kernels, CPU (NumPy) vs GPU (CuPy) on the same synthetic block: the table for BENCHMARKS.md.
python3 -m benchmarks.gpu.block_bench --shape 128,256,256 --repeats 3 2>&1 | tee "${OUT:-/tmp}/gpu_block_bench.txt"
