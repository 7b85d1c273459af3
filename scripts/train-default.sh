#!/usr/bin/env bash
# Set-up command 1: install what is needed, then train AlexNet on Fashion-MNIST and evaluate it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/alexnet train --out runs/fashion-mnist "$@"
.venv/bin/alexnet evaluate --checkpoint runs/fashion-mnist/best.pt
