#!/usr/bin/env bash
# The GPU check, in one run on a machine with an NVIDIA GPU and numba-cuda, CuPy and torch
# installed (no network needed): versions, the GPU tests against real arrays, and the GPU
# benchmark. Logs, Markdown and JSON go to $OUT (default: gpu-check/).
#
#   OUT=gpu-check bash benchmarks/gpu_check.sh
#
# Narrower runs: TESTS (pytest paths), ALGORITHMS, SIZES, DTYPES, PRECISIONS (state
# precisions, e.g. full,bf16,8bit), MANY= (no many-tensor rows), TEST_SECONDS, BENCH_SECONDS.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

$PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
    || { tail -5 "$OUT/install.log"; export PYTHONPATH=$PWD; }  # (runs from the tree anyway)

$PY - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import importlib.metadata as md
import subprocess

from numba import cuda

device = cuda.get_current_device()
print("device:", device.name.decode() if isinstance(device.name, bytes) else device.name,
      "compute capability", device.compute_capability)
smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total",
                      "--format=csv,noheader"], capture_output=True, text=True)
print("driver, memory:", smi.stdout.strip() or smi.stderr.strip())
for package in ("numba", "numba-cuda", "llvmlite", "numpy", "cupy-cuda13x", "cupy-cuda12x",
                "torch"):
    try:
        print(f"{package}: {md.version(package)}")
    except md.PackageNotFoundError:
        pass
EOF

echo "== pytest tests/gpu (real arrays: Numba, CuPy, torch)"
timeout "${TEST_SECONDS:-300}" $PY -m pytest ${TESTS:-tests/gpu} -q -p no:cacheprovider -rfE \
    --durations=10 2>&1 | tee "$OUT/tests.log"
tests=${PIPESTATUS[0]}

echo "== fastgd bench --device cuda"
timeout "${BENCH_SECONDS:-240}" $PY -m fastgd.cli bench --device cuda \
    ${ALGORITHMS:+--algorithms "$ALGORITHMS"} --state-precision "${PRECISIONS:-full}" \
    --sizes "${SIZES:-2**20,2**26}" --dtypes "${DTYPES:-float32,float64}" ${MANY---many} \
    --repeat 9 --quiet \
    --json "$OUT/bench.json" --markdown "$OUT/bench.md" 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}

echo "tests exit $tests, bench exit $bench"
exit $(( tests || bench ))
