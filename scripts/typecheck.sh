#!/usr/bin/env bash
# mypy over the seams (pyproject's [tool.mypy]). services/ and orchestrator/ install
# as splitnn.services and splitnn.orchestrator, a mapping mypy cannot follow in the
# source tree: check a plain install of the package in a scratch folder instead, and
# report paths as they are in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
PY=$(splitnn_python)
export PIP_ROOT_USER_ACTION=ignore
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
$PY -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  --target "$site" . >/dev/null
rm -rf build
SEAMS=(
  splitnn.wire splitnn.transport splitnn.training splitnn.errors
  splitnn.services.local_client splitnn.services.ops splitnn.services.replay
  splitnn.orchestrator.config splitnn.orchestrator.checkpoint
)
args=()
for module in "${SEAMS[@]}"; do args+=(-p "$module"); done
status=0
(cd "$site" && $PY -m mypy --config-file "$OLDPWD/pyproject.toml" "${args[@]}") \
  | sed -e 's#^splitnn/services/#services/#' -e 's#^splitnn/orchestrator/#orchestrator/#' \
  || status=$?
exit $status
