#!/usr/bin/env bash
# Download the pure-Python / manylinux wheels the GPU device machine lacks into .whl/
# (Python 3.12, x86-64). The device has CuPy, NumPy, SciPy, scikit-image and networkx,
# but no zarr, dask or distributed. Run from the repository root:
#   bash benchmarks/gpu/prepare_wheels.sh
# then, in the device call, carry ".whl" and start the command with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# Keep one version of each; the list covers the CPU-path imports of pipeline/segment/graph.
WHEELS=(
  "zarr==3.1.6" "numcodecs==0.16.6" "donfig==0.8.1.post1" "crc32c" "google-crc32c" "typing_extensions"
  "dask==2026.8.0" "distributed==2026.8.0" "cloudpickle" "fsspec" "partd" "locket" "toolz"
  "tblib" "zict" "sortedcontainers" "msgpack" "psutil" "tornado" "click" "importlib_metadata" "zipp"
  "pydantic==2.12.5" "pydantic_core==2.41.5" "annotated_types" "typing_inspection"
  "pyyaml" "tqdm" "fastremap" "connected-components-3d" "edt" "jinja2" "markupsafe"
  "pytest" "pluggy" "iniconfig" "packaging" "pygments"
  "pandas==3.1.1" "python-dateutil" "six" "tzdata"   # pyarrow (40 MB) left out: GPU checks write no Parquet
)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
du -sh .whl
