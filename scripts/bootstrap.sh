#!/usr/bin/env bash
# Make .venv with torch, torchvision and this package (editable), and Debian's Fashion-MNIST.
# Idempotent: a second run only checks. TORCH_SPEC overrides the torch requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# pip install, without its notes on this machine's absent local indexes; pip's errors and exit
# status are kept (pipefail).
pip_install() { .venv/bin/pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "bootstrap: installing torch and torchvision (a few minutes)" >&2
  # The CUDA build of torch takes about 6 GB; say so up front rather than leave pip's
  # "No space left on device" to explain a half-made venv.
  free_mb=$(df -Pm .venv | awk 'NR==2 {print $4}')
  if [ "${free_mb:-0}" -lt 6500 ]; then
    echo "bootstrap: warning: torch needs about 6 GB in $(pwd)/.venv; ${free_mb} MB free there" >&2
  fi
  # Pinned to the release that this project is tested with; any torch>=2.4 works.
  pip_install ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
fi
# Cheap when everything is already there; picks up dependencies added since the last run.
pip_install -e ".[test]"
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  echo "bootstrap: installing Debian's dataset-fashion-mnist" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null
fi
