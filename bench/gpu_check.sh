#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py) on a fresh GPU machine that reaches no package registry.
#
#   bench/gpu_check.sh --wheels .gpu_wheels --out_dir runs/gpu_check    # tables: runs/gpu_check/gpu_check.txt
#   (--work_dir DIR: where the data, caches, models and logs go; default OUT_DIR/work)
#   bench/gpu_check.sh --cpu_smoke true --out_dir /tmp/gpu_check        # CPU dry run (needs no wheels here)
#
# pyod, soundfile (and soundfile's cffi + pycparser) and librosa (the baseline autoencoder's features, with its
# dependencies) are missing on that machine; fill the wheels folder
# beforehand on a machine that reaches PyPI, for the GPU machine's Python (3.12, x86-64):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .gpu_wheels "pyod>=3.6.3" "soundfile>=0.12" cffi pycparser "librosa>=0.10" numba llvmlite soxr \
#     audioread lazy_loader pooch msgpack decorator platformdirs
# They are installed into a temporary folder on PYTHONPATH (nothing else on the machine changes).
# Every other option goes to bench/gpu_check.py (see --help there). PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
wheels=""
if [ "${1:-}" = "--wheels" ]; then
  wheels=${2:?--wheels needs a folder}
  shift 2
fi
if ! "$PYTHON" -c "import pyod, soundfile, librosa" 2>/dev/null; then
  if [ -z "$wheels" ] || ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "gpu_check: pyod, soundfile or librosa is missing and no wheels folder with .whl files was given (--wheels DIR)" >&2
    exit 2
  fi
  site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  "$PYTHON" -c "import pyod, soundfile, librosa" || { echo "gpu_check: pyod/soundfile/librosa still do not import" >&2; exit 2; }
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu_check.py "$@"
