# Sourced by setup.sh and test.sh: which Python splitnn is installed into.
# PYTHON (default python3) as it is, unless it refuses installs into itself
# (PEP 668: current Debian and Ubuntu) and no venv is active: then .venv, which
# setup.sh makes.
SPLITNN_VENV=.venv

externally_managed() {
  "$1" - <<'PYEOF'
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(marker) else 1)
PYEOF
}

splitnn_python() {
  local py=${PYTHON:-python3}
  if [[ -z "${VIRTUAL_ENV:-}" ]] && externally_managed "$py"; then
    echo "$SPLITNN_VENV/bin/python"
  else
    echo "$py"
  fi
}
