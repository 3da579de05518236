#!/usr/bin/env bash
# Set up from scratch, lint, and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
source scripts/python.sh
PY=$(splitnn_python)   # .venv where setup.sh made one (PEP 668), else PYTHON/python3
$PY -m ruff check .
$PY -m ruff format --check .
(cd protos && ../.tools/node_modules/.bin/buf lint)   # buf's STANDARD rules (protos/buf.yaml)
bash scripts/typecheck.sh                               # mypy over the seams
$PY -m pytest -q -p no:cacheprovider "$@"
