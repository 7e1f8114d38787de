#!/usr/bin/env bash
# The one script to run on a lent GPU machine (see BENCHMARKS.md, "GPU"):
#   device run, carry [".whl"], command: "bash benchmarks/gpu/device_check.sh"
# It installs the wheels from prepare_wheels.sh and prints the GPU and CPU, then, each step bounded
# by a timeout so one failure cannot eat the lease:
#   1. the tests marked `gpu` (CuPy path vs NumPy path: filters, flood, kernels, deconvolution,
#      puncta, the contact pass; the whole tiny run comes last, in the full check only);
#   2. the per-block chain on CPU and GPU side by side (benchmarks/gpu/block_bench.py), then a
#      bigger block on the GPU alone (data on the device, the end-to-end Gvox/s);
#   3. the sample workflow on CPU and on GPU (benchmarks/gpu/workflow_bench.py): stage times,
#      evaluation, and how far the GPU labels are from the CPU labels; then the GPU run again
#      in-process under cProfile (where its time goes). `device_check.sh quick`, for a lease with
#      less than 10 minutes left, runs the workflow on the GPU only and skips the profile;
#      `device_check.sh unmix` checks and times the contact pass's CUDA kernels alone (see below).
# Logs go to $OUT (the device tool brings them back).
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $(nproc)"
python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())"

step() {  # step SECONDS LOGNAME COMMAND...: run with a timeout, keep the log, report the exit status
  local limit=$1 name=$2; shift 2
  echo "=== $name ($*)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]}"
}

# Only the files holding gpu tests: the others import exporters (cloud-volume, pynwb...) not carried.
files=$(grep -l "mark.gpu" tests/test_*.py)
# `device_check.sh unmix` (about 4 minutes): the contact pass's fused CUDA kernels. The gpu tests but
# the whole tiny run (its CPU side has no numba here: minutes), then a 16.8 Mvox block on the GPU with
# the pass fused (the default) and as array operations, side by side in one process, and the parts of
# one contact round timed one by one.
if [ "${1:-full}" = unmix ]; then
  step 120 gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider -rs -k "not whole_run" $files
  step 110 block_bench_unmix python3 -m benchmarks.gpu.block_bench --shape 64,256,256 --tile 2,2,1 --gpu-only \
    --repeats 1 --unmix-engines auto,xp --breakdown
  exit 0
fi
# The quick check (one call of a 15-minute lease, machine start included) keeps every step shorter.
quick=0; [ "${1:-full}" = quick ] && quick=1
# The whole tiny run's CPU side has neither numba nor OpenCV here: its three-round contact pass takes
# minutes (session 12: past a 160 s limit), so it runs last, in the full check only.
step $((quick ? 140 : 160)) gpu_tests python3 -m pytest -q -m gpu -p no:cacheprovider -rs -k "not whole_run" $files
# The unmixing contact pass is left out of the side-by-side run: without numba and OpenCV (not on
# the device) its CPU side alone would take minutes. The big GPU-only run below times it.
step $((quick ? 70 : 120)) block_bench python3 -m benchmarks.gpu.block_bench --shape 64,256,256 --repeats 3 --skip "unmix contacts"
# The default contact pass is 3 rounds x 60 unmixing iterations: on 67 Mvox an estimated 20-40 s per
# chain on the GPU (not yet measured), hence 2 repeats.
step $((quick ? 160 : 240)) block_bench_big python3 -m benchmarks.gpu.block_bench --shape 64,256,256 --tile 4,2,2 --gpu-only \
  --repeats $((quick ? 1 : 2)) --profile 40
# The CPU run has neither numba nor OpenCV on the device: its three-round unmixing contact pass
# takes minutes there, so the quick check runs the sample workflow on the GPU only (the gpu tests
# above compare the pass with the CPU's).
if [ $quick = 1 ]; then
  step 150 workflow_bench python3 -m benchmarks.gpu.workflow_bench --out /tmp/gpu_workflow --devices gpu
  exit 0
fi
step 300 workflow_bench python3 -m benchmarks.gpu.workflow_bench --out /tmp/gpu_workflow
# Where the GPU run's time goes: in-process (synchronous scheduler), the functions with the most own time.
step 150 workflow_profile python3 -m benchmarks.gpu.workflow_bench --out /tmp/gpu_workflow --devices gpu --profile 30
step 240 gpu_whole_run python3 -m pytest -q -m gpu -p no:cacheprovider -rs -k whole_run tests/test_gpu_parity.py
