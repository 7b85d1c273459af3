#!/usr/bin/env bash
# Set-up command 1: install what is needed, then train AlexNet on Fashion-MNIST and evaluate it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# --force: running this script again replaces its own earlier run (a run folder holds one run).
.venv/bin/alexnet train --out runs/fashion-mnist --force "$@"
# The evaluation computes on the same number of threads as the training (--threads N among "$@").
threads=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --threads) threads=(--threads "${args[i + 1]:-}") ;;
        --threads=*) threads=("${args[i]}") ;;
    esac
done
.venv/bin/alexnet evaluate --checkpoint runs/fashion-mnist/best.pt ${threads[@]+"${threads[@]}"}
