#!/usr/bin/env bash
# One-shot GPU suite: everything a short GPU window has to confirm, in <= 8 minutes.
#
#   bench/gpu_suite.sh OUT_DIR            on a CUDA machine (cupy-cuda12x or cupy-cuda13x,
#                                         torch and nvidia-ml-py already installed)
#   bench/gpu_suite.sh --dry-run OUT_DIR  the same control flow on the CPU, toy sizes
#
# Parts, each under its own time limit (a part that runs over is stopped, recorded
# as "timeout", and the suite goes on):
#   env              GPU, driver, CUDA and CuPy versions (nvidia-smi, CuPy)        20 s
#   pytest_gpu       pytest -m gpu (kernels vs NumPy, graph step, pool vs plan)   140 s
#   profile          planned vs CuPy pool peak vs NVML: 3 models x 4 opts x 2      80 s
#   autobatch        auto batch under a hard pool cap vs brute-force bisection     50 s
#   throughput       memtrain (graph on/off) vs PyTorch, GEMM rate, peak memory   110 s
#   throughput_tf32  the same for 4096x4 with TF32 on (reported separately)        40 s
#   trials           trial arrays of the course model, K = 1, 4, 16, ... up to the  30 s
#                    largest that fits (or the time allows): optimizer update one
#                    launch per group vs one per trial, launches per array step
#   report           OUT_DIR/summary.json + summary.md, printed                    10 s
# 480 s in all at most. Nothing is installed: the machine's own CuPy is used
# (installing the test extra there would add cupy-cuda12x beside cupy-cuda13x).
set -uo pipefail

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ $# -ne 1 ]; then
    echo "usage: bench/gpu_suite.sh [--dry-run] OUT_DIR" >&2
    exit 2
fi
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || command -v python3 )}
mkdir -p "$OUT" || { echo "gpu_suite: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
: > "$OUT/parts.jsonl"
DRYFLAG=()
[ $DRY = 1 ] && DRYFLAG=(--dry-run)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# run_part NAME LIMIT_SECONDS CMD...: output to OUT/NAME.log, status and time to parts.jsonl
run_part() {
    local name=$1 limit=$2; shift 2
    local start end rc note=""
    start=$(date +%s%N)
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    end=$(date +%s%N)
    if [ $rc = 124 ] || [ $rc = 137 ]; then note="timeout after ${limit}s"; fi
    tail -n 3 "$OUT/$name.log" | sed 's/^/   /'
    local ms=$(( (end - start) / 1000000 ))
    printf '{"part": "%s", "rc": %d, "seconds": %d.%03d, "limit": %d, "note": "%s"}\n' \
        "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$limit" "$note" >> "$OUT/parts.jsonl"
}

env_part() {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c "import sys; sys.path.insert(0, '$HERE'); import gpu_common, json; \
print(json.dumps(gpu_common.versions(gpu_common.backend_for($DRY == 1))))"
}

cd "$ROOT"
export -f env_part
export PY HERE DRY
run_part env 20 bash -c env_part
# The same command in both modes, so the dry run collects exactly what the GPU run will (there the
# gpu tests skip, with the reason). Only the modules whose text marks a test `mark.gpu` are collected
# (tests/conftest.py makes a gpu mark given any other way an error); one of them that cannot import
# without an extra (the service's uvicorn) must skip itself, not stop the collection.
mapfile -t GPU_FILES < <(grep -l "mark\.gpu" tests/test_*.py)
run_part pytest_gpu 140 "$PY" -m pytest -q -m gpu -p no:cacheprovider "${GPU_FILES[@]}" --junitxml "$OUT/pytest_gpu.xml"
run_part profile 80 "$PY" "$HERE/gpu_profile.py" --out "$OUT/profile.json" --time-limit 75 "${DRYFLAG[@]}"
run_part autobatch 50 "$PY" "$HERE/gpu_autobatch.py" --out "$OUT/autobatch.json" --time-limit 45 "${DRYFLAG[@]}"
run_part throughput 110 "$PY" "$HERE/gpu_throughput.py" --out "$OUT/throughput.json" --time-limit 105 "${DRYFLAG[@]}"
run_part throughput_tf32 40 "$PY" "$HERE/gpu_throughput.py" --out "$OUT/throughput_tf32.json" --time-limit 35 \
    --models 4096x4 --tf32 "${DRYFLAG[@]}"
run_part trials 30 "$PY" "$HERE/gpu_trials.py" --out "$OUT/trials.json" --time-limit 25 "${DRYFLAG[@]}"
"$PY" "$HERE/gpu_report.py" "$OUT"
