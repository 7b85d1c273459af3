#!/usr/bin/env bash
# The GPU check (issue 12): on a machine with a CUDA device, run every benchmark with --device cuda
# (the training step with its ablations and profiler tables) and then the test suite, the tests
# marked `cuda` first; print the RESULT lines at the end. torch is expected installed there already:
# the package itself goes in with `pip install --no-deps -e .` (no download).
#
# Benchmarks come first and every step is logged to $OUT as it ends, because a borrowed GPU comes
# with minutes, not hours: with BUDGET_S set, no step starts after the budget is spent, a running
# step is stopped at it, and the summary is printed all the same.
#
# Usage: scripts/gpu-check.sh [PYTEST ARGS...]
# Environment:
#   PYTHON   the interpreter (default: .venv/bin/python if present, else python3)
#   DEVICE   cuda (default), or cpu: a dry run of this script's steps on a machine without a GPU
#   PARTS    the parts and their order (default "bench tests")
#   BENCH    the benchmarks to run (default "lrn train_step train_step_compiled inference data_pipeline
#            end_to_end allreduce"; those without their data or GPUs are skipped with the reason;
#            also known: train_step_graphs, the step compiled in mode reduce-overhead: CUDA graphs)
#   BUDGET_S seconds for the whole check (default 0: no limit)
#   DATA     an image folder with train/ and val/ of JPEGs (default: $ALEXNET_SHARED/data/imagewoof-mini,
#            else ../shared/data/imagewoof-mini, else .gpu-data/imagewoof-mini: a git-ignored copy
#            inside the checkout, which a GPU machine that receives only the checkout can be given)
#   ALEXNET_SHARED  where the tests find ../shared (default: ../shared, else .gpu-data)
#   QUICK=1  the benchmarks in their --quick settings (checks they run; figures mean nothing)
#   INSTALL=0  no `pip install -e .` into $PYTHON's environment (PYTHONPATH=src alone): the tests'
#            dry runs, whose interpreter may serve other checkouts too
#   OUT      folder for the logs (default: ${TMPDIR:-/tmp}/alexnet-gpu-check)
# Exit status: 2 without a visible CUDA device (DEVICE=cuda), pytest's status if tests fail, 1 if a
# benchmark failed, pytest is missing (the benchmarks still run) or the budget ran out before every
# step ran, 0 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEVICE=${DEVICE:-cuda}
case "$DEVICE" in
    cuda)
        if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
            echo "gpu-check.sh: error: no CUDA device is visible to $PY (torch.cuda.is_available() is False, or torch is missing); run it on a GPU machine" >&2
            exit 2
        fi ;;
    cpu) echo "gpu-check.sh: DEVICE=cpu: a dry run of the steps on the CPU (no GPU figures)" ;;
    *) echo "gpu-check.sh: error: DEVICE must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac
PARTS=${PARTS:-bench tests}
BENCH=${BENCH:-lrn train_step train_step_compiled inference data_pipeline end_to_end allreduce}
for part in $PARTS; do  # a typo must not cost a borrowed GPU's minutes: checked before anything runs
    case "$part" in bench|tests) ;; *) echo "gpu-check.sh: error: unknown part '$part' in PARTS (bench, tests)" >&2; exit 2 ;; esac
done
KNOWN="lrn train_step train_step_compiled train_step_graphs inference data_pipeline end_to_end allreduce"  # run_bench's cases
for name in $BENCH; do
    if [[ " $KNOWN " != *" $name "* ]]; then
        echo "gpu-check.sh: error: unknown benchmark '$name' in BENCH (${KNOWN// /, })" >&2
        exit 2
    fi
done
BUDGET=${BUDGET_S:-0}
if ! [[ "$BUDGET" =~ ^[0-9]+$ ]]; then
    echo "gpu-check.sh: error: BUDGET_S must be a whole number of seconds, got '$BUDGET'" >&2
    exit 2
fi
NOPYTEST=""  # without pytest the benchmarks still run (an offline GPU machine cannot install it)
if [[ " $PARTS " == *" tests "* ]] && ! "$PY" -c 'import pytest' >/dev/null 2>&1; then
    if [[ " $PARTS " != *" bench "* ]]; then
        echo "gpu-check.sh: error: pytest is not installed for $PY, and PARTS has nothing else to run" >&2
        exit 2
    fi
    NOPYTEST="pytest is not installed for $PY"
    echo "gpu-check.sh: note: $NOPYTEST: the benchmarks run, the tests do not"
    PARTS=${PARTS//tests/}
fi

OUT=${OUT:-${TMPDIR:-/tmp}/alexnet-gpu-check}
mkdir -p "$OUT"
rm -f "$OUT"/bench-*.log "$OUT"/pytest-*.log  # an earlier run's results are not this run's
# A model trained for the inference benchmark (hundreds of MB of checkpoints) is kept apart from the
# logs, which are what a borrowed machine sends back; it goes with the script's exit.
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/alexnet-gpu-check-runs.XXXXXX")
trap 'rm -rf "$RUNS"' EXIT
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # also works where the editable install cannot
if [ "${INSTALL:-1}" != 1 ]; then
    echo "gpu-check.sh: note: INSTALL=$INSTALL: $PY's packages left as they are; using PYTHONPATH=src"
elif ! "$PY" -m pip install --no-deps --no-build-isolation -q -e . >"$OUT/pip.log" 2>&1; then
    echo "gpu-check.sh: note: pip install --no-deps -e . failed (see $OUT/pip.log); using PYTHONPATH=src"
fi
"$PY" - <<'EOF'
import os, torch
gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s){': ' + gpus if gpus else ''}; "
      f"{os.cpu_count()} CPUs")
EOF

if [ -z "${ALEXNET_SHARED:-}" ] && [ ! -d ../shared ] && [ -d .gpu-data ]; then
    export ALEXNET_SHARED="$PWD/.gpu-data"
fi
DATA=${DATA:-${ALEXNET_SHARED:-../shared}/data/imagewoof-mini}
QUICKFLAG=()
[ "${QUICK:-0}" = "1" ] && QUICKFLAG=(--quick)
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
FAILED=()
UNRUN=()
TESTS=0

left() {  # seconds of the budget left (a large number without a budget)
    if [ "$BUDGET" -eq 0 ]; then echo 1000000; else echo $((BUDGET - (SECONDS - START))); fi
}

step() {  # step LOG COMMAND...: run it logged, stopped when the budget runs out; its status
    local log=$1 t
    shift
    t=$(left)
    if [ "$t" -le 0 ]; then
        echo "== skipped (budget of ${BUDGET} s spent): $* ==" | tee "$log"
        UNRUN+=("${log##*/}")
        return 124
    fi
    timeout "$t" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && UNRUN+=("${log##*/} (stopped at the budget)")
    return "$rc"
}

bench() {  # bench NAME SCRIPT ARGS...: one benchmark, its output logged, a failure remembered
    local name=$1
    shift
    echo "== benchmark $name: $* =="
    step "$OUT/bench-$name.log" "$PY" "$@" "${QUICKFLAG[@]}"
    local rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || FAILED+=("$name")
}

run_bench() {  # run_bench NAME: the benchmark NAME with its GPU settings, or why it is skipped
    case "$1" in
        lrn) bench lrn benchmarks/lrn.py --device "$DEVICE" ;;
        train_step) bench train_step benchmarks/train_step.py --device "$DEVICE" --amp bf16 --batch-size 256 --ablate --profile ;;
        train_step_compiled)
            bench train_step_compiled benchmarks/train_step.py --device "$DEVICE" --amp bf16 --batch-size 256 --compile ;;
        train_step_graphs)
            bench train_step_graphs benchmarks/train_step.py --device "$DEVICE" --amp bf16 --batch-size 256 --compile reduce-overhead ;;
        inference)
            if [ -d "$DATA/val" ]; then
                # Agreement needs trained weights (random ones have tiny margins) and torchvision's cannot
                # be fetched there: a model of ours trained here on $DATA, measured on its val photos.
                # QUICK: one epoch of 7 steps, whose 3.5-step warm-up to lr 0.01 diverges on imagewoof-mini
                # (loss 7.6): at lr 0.001 the dry run reaches the agreement check it is there to try.
                local ckpt=() epochs=(--epochs 15)
                [ "${QUICK:-0}" = "1" ] && epochs=(--epochs 1 --lr 0.001)
                echo "== training alexnet_owt on $DATA for the inference benchmark's agreement with torchvision's alexnet (${epochs[*]}) =="
                if [ -d "$DATA/train" ] && step "$OUT/train-for-inference.log" "$PY" -m alexnet train --data "$DATA" \
                        --model alexnet_owt --device "$DEVICE" "${epochs[@]}" --seed 0 --out "$RUNS/inference-model" --force; then
                    ckpt=(--checkpoint "$RUNS/inference-model/last.pt" --ckpt-data "$DATA")
                else echo "== (no trained model: the inference benchmark reports no agreement) =="; fi
                bench inference benchmarks/inference.py --device "$DEVICE" --data "$DATA/val" --batch-size 256 --time-images 1024 \
                    --compile "${ckpt[@]}"
            else echo "== benchmark inference: skipped: no $DATA/val (set DATA) =="; fi ;;
        data_pipeline)
            if [ -d "$DATA/train" ]; then bench data_pipeline benchmarks/data_pipeline.py --device "$DEVICE" --data "$DATA/train"
            else echo "== benchmark data_pipeline: skipped: no $DATA/train (set DATA) =="; fi ;;
        end_to_end)
            if [ -d "$DATA/train" ]; then
                bench end_to_end benchmarks/end_to_end.py --device "$DEVICE" --data "$DATA" --amp bf16 --batch-size 256
            else echo "== benchmark end_to_end: skipped: no $DATA/train (set DATA) =="; fi ;;
        allreduce)
            if [ "$GPUS" -ge 2 ]; then bench allreduce benchmarks/allreduce.py --device "$DEVICE" --nproc "$GPUS"
            else echo "== benchmark allreduce: skipped: $GPUS GPU(s) (NCCL all-reduce needs two or more) =="; fi ;;
    esac
}

run_tests() {  # the cuda-marked tests, then the rest; pytest's 5 (nothing selected) is no failure,
    # and tests stopped by the budget (124) are reported as not finished, not as failed
    local rc
    echo "== tests marked cuda =="
    step "$OUT/pytest-cuda.log" "$PY" -m pytest -q -ra -m cuda "$@"
    rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || [ "$rc" -eq 124 ] || TESTS=$rc
    echo "== the other tests =="
    step "$OUT/pytest-rest.log" "$PY" -m pytest -q -ra -m "not cuda" "$@"
    rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || [ "$rc" -eq 124 ] || TESTS=$rc
}

for part in $PARTS; do
    if [ "$part" = bench ]; then
        for name in $BENCH; do run_bench "$name"; done
    else
        run_tests "$@"
    fi
done

echo "== RESULT lines =="
for log in "$OUT"/bench-*.log; do
    [ -e "$log" ] || { echo "(none)"; break; }
    name=${log##*/bench-}
    echo "# ${name%.log}"
    grep '^RESULT ' "$log" || echo "(no RESULT lines: see $log)"
done
for log in "$OUT"/pytest-*.log; do
    [ -e "$log" ] || continue
    summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected)' "$log" | tail -1)
    echo "# ${log##*/}: ${summary:-(no pytest summary: did not finish)}"
done
echo "gpu-check.sh: $((SECONDS - START)) s"
if [ "$TESTS" -ne 0 ]; then
    echo "gpu-check.sh: error: the test suite failed (pytest exit status $TESTS; logs: $OUT/pytest-*.log)" >&2
    exit "$TESTS"
fi
if [ "${#FAILED[@]}" -ne 0 ]; then
    echo "gpu-check.sh: error: benchmark(s) failed: ${FAILED[*]} (logs in $OUT)" >&2
    exit 1
fi
if [ -n "$NOPYTEST" ]; then
    echo "gpu-check.sh: error: the tests did not run: $NOPYTEST" >&2
    exit 1
fi
if [ "${#UNRUN[@]}" -ne 0 ]; then
    echo "gpu-check.sh: error: the budget of ${BUDGET} s ran out: ${UNRUN[*]} did not finish (logs in $OUT)" >&2
    exit 1
fi
echo "gpu-check.sh: tests passed; benchmarks ran (logs in $OUT)"
