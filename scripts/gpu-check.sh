#!/usr/bin/env bash
# The GPU check (issue 12): on a machine with a CUDA device, run the whole test suite (the tests
# marked `cuda` included) and then every benchmark with --device cuda; print the RESULT lines at
# the end. torch is expected installed there already: the package itself goes in with
# `pip install --no-deps -e .` (no download).
#
# Usage: scripts/gpu-check.sh [PYTEST ARGS...]
# Environment:
#   PYTHON   the interpreter (default: .venv/bin/python if present, else python3)
#   DATA     an image folder with train/ and val/ of JPEGs (default: $ALEXNET_SHARED/data/imagewoof-mini,
#            else ../shared/data/imagewoof-mini, else .gpu-data/imagewoof-mini: a git-ignored copy
#            inside the checkout, which a GPU machine that receives only the checkout can be given)
#   ALEXNET_SHARED  where the tests find ../shared (default: ../shared, else .gpu-data)
#   QUICK=1  the benchmarks in their --quick settings (checks they run; figures mean nothing)
#   OUT      folder for the logs (default: ${TMPDIR:-/tmp}/alexnet-gpu-check)
# Exit status: 2 without a visible CUDA device, pytest's status if tests fail, 1 if a benchmark
# failed, 0 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "gpu-check.sh: error: no CUDA device is visible to $PY (torch.cuda.is_available() is False, or torch is missing); run it on a GPU machine" >&2
    exit 2
fi
if ! "$PY" -c 'import pytest' >/dev/null 2>&1; then
    echo "gpu-check.sh: error: pytest is not installed for $PY (pip install pytest)" >&2
    exit 2
fi

OUT=${OUT:-${TMPDIR:-/tmp}/alexnet-gpu-check}
mkdir -p "$OUT"
rm -f "$OUT"/bench-*.log  # an earlier run's results are not this run's
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # also works where the editable install cannot
if ! "$PY" -m pip install --no-deps --no-build-isolation -q -e . >"$OUT/pip.log" 2>&1; then
    echo "gpu-check.sh: note: pip install --no-deps -e . failed (see $OUT/pip.log); using PYTHONPATH=src"
fi
"$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s): "
      + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
EOF

if [ -z "${ALEXNET_SHARED:-}" ] && [ ! -d ../shared ] && [ -d .gpu-data ]; then
    export ALEXNET_SHARED="$PWD/.gpu-data"
fi

echo "== tests =="
"$PY" -m pytest -q -ra "$@" 2>&1 | tee "$OUT/pytest.log"
TESTS=${PIPESTATUS[0]}

DATA=${DATA:-${ALEXNET_SHARED:-../shared}/data/imagewoof-mini}
QUICKFLAG=()
[ "${QUICK:-0}" = "1" ] && QUICKFLAG=(--quick)
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
FAILED=()

bench() {  # bench NAME SCRIPT ARGS...: one benchmark, its output logged, a failure remembered
    local name=$1
    shift
    echo "== benchmark $name: $* =="
    timeout 1800 "$PY" "$@" "${QUICKFLAG[@]}" 2>&1 | tee "$OUT/bench-$name.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || FAILED+=("$name")
}

bench lrn benchmarks/lrn.py --device cuda
bench train_step benchmarks/train_step.py --device cuda --amp bf16 --batch-size 256
bench train_step_compiled benchmarks/train_step.py --device cuda --amp bf16 --batch-size 256 --compile
if [ -d "$DATA/val" ]; then
    bench inference benchmarks/inference.py --device cuda --data "$DATA/val" --batch-size 256 --time-images 1024 --compile
else
    echo "== benchmark inference: skipped: no $DATA/val (set DATA) =="
fi
if [ -d "$DATA/train" ]; then
    bench data_pipeline benchmarks/data_pipeline.py --device cuda --data "$DATA/train"
else
    echo "== benchmark data_pipeline: skipped: no $DATA/train (set DATA) =="
fi
if [ -d "$DATA/train" ]; then
    bench end_to_end benchmarks/end_to_end.py --device cuda --data "$DATA" --amp bf16 --batch-size 256
else
    echo "== benchmark end_to_end: skipped: no $DATA/train (set DATA) =="
fi
if [ "$GPUS" -ge 2 ]; then
    bench allreduce benchmarks/allreduce.py --device cuda --nproc "$GPUS"
else
    echo "== benchmark allreduce: skipped: one GPU (NCCL all-reduce needs two or more) =="
fi

echo "== RESULT lines =="
for log in "$OUT"/bench-*.log; do
    [ -e "$log" ] || { echo "(none)"; break; }
    name=${log##*/bench-}
    echo "# ${name%.log}"
    grep '^RESULT ' "$log" || echo "(no RESULT lines: see $log)"
done
if [ "$TESTS" -ne 0 ]; then
    echo "gpu-check.sh: error: the test suite failed (pytest exit status $TESTS; log: $OUT/pytest.log)" >&2
    exit "$TESTS"
fi
if [ "${#FAILED[@]}" -ne 0 ]; then
    echo "gpu-check.sh: error: benchmark(s) failed: ${FAILED[*]} (logs in $OUT)" >&2
    exit 1
fi
echo "gpu-check.sh: tests passed; benchmarks ran (logs in $OUT)"
