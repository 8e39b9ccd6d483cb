#!/usr/bin/env bash
# Development entry point. Usage:
#   bash tools/dev.sh demo    # set up .venv (first run only) and run the dynamic-range demo
#   bash tools/dev.sh test    # set up .venv (first run only), lint, and run the test suite
#   bash tools/dev.sh bench   # set up .venv and run every benchmark
#   bash tools/dev.sh setup   # only set up .venv
# The environment is re-created when requirements-*.txt change (requirements-lock.txt pins every transitive package).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
STAMP="$VENV/.requirements.sha256"
want=$(cat requirements-test.txt requirements-kdiffusion.txt requirements-lock.txt | sha256sum | cut -d' ' -f1)

pip_install() {
  # pip's own errors still fail the script (pipefail); only the local-index notices of some machines are dropped.
  "$VENV/bin/python" -m pip install --quiet "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

setup() {
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    return 0
  fi
  echo "[dev] creating $VENV with pinned requirements (first run takes a few minutes)" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  pip_install --upgrade pip
  pip_install -r requirements-test.txt -c requirements-lock.txt
  pip_install --no-deps -r requirements-kdiffusion.txt -c requirements-lock.txt
  "$VENV/bin/python" -c "import k_diffusion, diffusers, torch; print('[dev] torch', torch.__version__)" >&2
  echo "$want" > "$STAMP"
}

cmd=${1:-test}
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$VENV/bin/python" bench/demo.py "$@" ;;
  test)
    setup
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  bench)
    setup
    for b in bench/bench_*.py; do "$VENV/bin/python" "$b" "$@"; done
    ;;
  *) echo "usage: bash tools/dev.sh {demo|test|bench|setup}" >&2; exit 2 ;;
esac
