#!/usr/bin/env bash
# Set-up command 2: install what is needed, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check src tests benchmarks scripts hubconf.py   # lint first: seconds, and a clear failure
exec .venv/bin/python -m pytest -q "$@"
