#!/usr/bin/env bash
# Set-up command 2: install what is needed, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check src tests benchmarks scripts hubconf.py   # lint first: seconds, and a clear failure
# Two test processes (pytest-xdist): a test mostly waits on one core (subprocesses starting, small
# tensors), so the suite used about 1.1 of 2 cores one process at a time. ALEXNET_TEST_WORKERS=0 runs
# it in this process (for -s or --pdb); a later -n in "$@" wins.
exec .venv/bin/python -m pytest -q -n "${ALEXNET_TEST_WORKERS:-2}" "$@"
