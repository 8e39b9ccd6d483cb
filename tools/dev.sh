#!/usr/bin/env bash
# Development entry point. Usage:
#   bash tools/dev.sh demo    # set up .venv (first run only) and run the dynamic-range demo
#   bash tools/dev.sh test    # set up .venv (first run only), lint, and run the test suite
#   bash tools/dev.sh bench   # set up .venv and run every benchmark
#   bash tools/dev.sh setup   # only set up .venv
#   bash tools/dev.sh host a1111   # build a real WebUI host for the live and browser tiers (tools/host.py; or: host forge)
#   bash tools/dev.sh screenshot   # regenerate docs/panel.png and docs/panel-open.png from the real page (starts the host if needed)
# `test` also runs the live and browser tiers against a real WebUI when VPRED_LIVE says so (default: on under CI=true
# or when ../shared/hosts exists; VPRED_LIVE=1 builds from GitHub; VPRED_LIVE=0 turns them off): it builds the host
# (first time only), starts it, runs pytest and stops it; then the same for Forge and for reForge, one at a time, with
# their own test files (both built in the background during the first phase; VPRED_FORGE=0 / VPRED_REFORGE=0 leave
# them out outside CI). Under CI a host that cannot be built or started fails the run.
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

live_enabled() {
  case "${VPRED_LIVE:-auto}" in
    0 | off | no | false) return 1 ;;
    1 | on | yes | true) return 0 ;;
  esac
  [ "${CI:-}" = "true" ] || [ -d ../shared/hosts ] || [ -n "${VPRED_HOST_SOURCES:-}" ]
}

ensure_chromium() {
  local chrome=${VPRED_CHROMIUM:-/usr/bin/chromium}
  [ -x "$chrome" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[dev] installing Debian's chromium for the browser tier" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
      || echo "[dev] apt-get install chromium failed" >&2
  fi
  [ -x "$chrome" ] || echo "[dev] no browser at $chrome: install Debian's chromium or set VPRED_CHROMIUM" >&2
}

HOSTS_STARTED=()
stop_hosts() {
  stop_prebuild
  for h in "${HOSTS_STARTED[@]}"; do "$VENV/bin/python" tools/host.py stop "$h" || true; done
}

PREBUILD_PID=""
PREBUILD_LOG=""
start_prebuild() {
  # Build the Forge and reForge hosts in the background (niced, one after the other) while the first phase runs:
  # their pip installs mostly wait on the disk and the first phase mostly on one core, so the builds' minutes hide
  # behind the tests. Best effort: patcher_tier builds again in the foreground (a no-op once built) and fails there.
  [ -n "${VPRED_FORGE_URL:-}${VPRED_REFORGE_URL:-}" ] && return 0
  live_enabled || return 0
  local hosts=()
  host_enabled forge && hosts+=(forge)
  host_enabled reforge && hosts+=(reforge)
  [ ${#hosts[@]} -gt 0 ] || return 0
  PREBUILD_LOG=$(mktemp "${TMPDIR:-/tmp}/vpred-prebuild.XXXXXX")
  echo "[dev] building ${hosts[*]} in the background (log: $PREBUILD_LOG)" >&2
  # its own process group (setsid), so that stop_prebuild can end the build and its pip children together
  # shellcheck disable=SC2016 # $0 and $@ are the inner shell's
  setsid bash -c 'for h in "$@"; do nice -n 10 "$0" tools/host.py build "$h" || exit 1; done' \
    "$VENV/bin/python" "${hosts[@]}" >"$PREBUILD_LOG" 2>&1 &
  PREBUILD_PID=$!
}

wait_prebuild() {
  [ -n "$PREBUILD_PID" ] || return 0
  local rc=0
  wait "$PREBUILD_PID" || rc=$?
  PREBUILD_PID=""
  grep -E "^\[host\] (built|building|removing)" "$PREBUILD_LOG" >&2 || true
  [ "$rc" = 0 ] || { echo "[dev] the background build failed (rc=$rc); building again in the foreground:" >&2; tail -n 20 "$PREBUILD_LOG" >&2; }
  rm -f "$PREBUILD_LOG"
}

stop_prebuild() {
  [ -n "$PREBUILD_PID" ] || return 0
  kill -- "-$PREBUILD_PID" 2>/dev/null || kill "$PREBUILD_PID" 2>/dev/null || true
  wait "$PREBUILD_PID" 2>/dev/null || true
  rm -f "$PREBUILD_LOG"
  PREBUILD_PID=""
}

start_live_tier() {
  if [ -n "${VPRED_WEBUI_URL:-}" ]; then
    echo "[dev] live tier: using the WebUI at $VPRED_WEBUI_URL" >&2
    export VPRED_REQUIRE_LIVE=1
    return 0
  fi
  if ! live_enabled; then
    echo "[dev] live and browser tiers off (no ../shared/hosts, CI unset): VPRED_LIVE=1 builds a real WebUI from GitHub" >&2
    return 0
  fi
  ensure_chromium
  "$VENV/bin/python" tools/host.py build a1111
  HOSTS_STARTED+=(a1111)
  A1111_STARTED=1
  VPRED_WEBUI_URL=$("$VENV/bin/python" tools/host.py start a1111)
  VPRED_WEBUI_LOG=$("$VENV/bin/python" tools/host.py log a1111)
  export VPRED_WEBUI_URL VPRED_WEBUI_LOG VPRED_REQUIRE_LIVE=1
}

host_var() {
  # the variable that can leave a host out: forge -> VPRED_FORGE
  echo "VPRED_$(echo "$1" | tr '[:lower:]' '[:upper:]')"
}

host_enabled() {
  # VPRED_FORGE=0 / VPRED_REFORGE=0 leave a host out outside CI; under CI every host runs
  local var
  var=$(host_var "$1")
  [ "${CI:-}" = "true" ] && return 0
  case "${!var:-auto}" in
    0 | off | no | false) return 1 ;;
  esac
  return 0
}

patcher_tier() {
  # Forge's and reForge's live and browser tiers, one host at a time (each holds a full-size SD1.5 model, about
  # 7 GB): build it (first time only), start it, run its test files, stop it. A URL given in the environment is used
  # instead of starting one.
  local key=$1 urlvar=$2 requirevar=$3
  shift 3
  if [ -n "${!urlvar:-}" ]; then
    echo "[dev] $key tier: using the host at ${!urlvar}" >&2
    env "$requirevar=1" VPRED_REQUIRE_LIVE=1 "$VENV/bin/python" -m pytest "$@"
    return 0
  fi
  live_enabled || return 0
  if ! host_enabled "$key"; then
    echo "[dev] $key tier off ($(host_var "$key")=0)" >&2
    return 0
  fi
  "$VENV/bin/python" tools/host.py build "$key"
  HOSTS_STARTED+=("$key")
  local url
  url=$("$VENV/bin/python" tools/host.py start "$key")
  env "$urlvar=$url" "$requirevar=1" VPRED_REQUIRE_LIVE=1 "$VENV/bin/python" -m pytest "$@"
  "$VENV/bin/python" tools/host.py stop "$key"
}

FORGE_FILES=(tests/webui/test_live_forge.py tests/webui/test_live_forge_native.py tests/browser/test_forge_browser.py)
REFORGE_FILES=(tests/webui/test_live_reforge.py tests/webui/test_live_reforge_native.py)
PATCHER_FILES=("${FORGE_FILES[@]}" "${REFORGE_FILES[@]}")

A1111_STARTED=0
stop_a1111() {
  # free the memory before the patcher hosts start (the trap still stops anything left)
  if [ "$A1111_STARTED" = 1 ]; then "$VENV/bin/python" tools/host.py stop a1111 || true; fi
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
    trap stop_hosts EXIT
    if [ $# -gt 0 ]; then
      start_live_tier
      "$VENV/bin/python" -m pytest "$@"
      stop_a1111
      echo "[dev] pytest arguments given: the Forge and reForge tiers are not run (run without arguments for all)" >&2
    else
      start_prebuild
      start_live_tier
      # the Forge and reForge files run below, each with its host
      "$VENV/bin/python" -m pytest "${PATCHER_FILES[@]/#/--ignore=}"
      stop_a1111
      wait_prebuild
      patcher_tier forge VPRED_FORGE_URL VPRED_REQUIRE_FORGE "${FORGE_FILES[@]}"
      patcher_tier reforge VPRED_REFORGE_URL VPRED_REQUIRE_REFORGE "${REFORGE_FILES[@]}"
    fi
    ;;
  host) setup; "$VENV/bin/python" tools/host.py build "${1:-a1111}" ;;
  screenshot)
    setup
    ensure_chromium
    if [ -z "${VPRED_WEBUI_URL:-}" ]; then
      "$VENV/bin/python" tools/host.py build a1111
      trap stop_hosts EXIT
      HOSTS_STARTED+=(a1111)
      VPRED_WEBUI_URL=$("$VENV/bin/python" tools/host.py start a1111)
    fi
    "$VENV/bin/python" tools/screenshot.py --url "$VPRED_WEBUI_URL" "$@"
    ;;
  bench)
    setup
    for b in bench/bench_*.py; do "$VENV/bin/python" "$b" "$@"; done
    ;;
  *) echo "usage: bash tools/dev.sh {demo|test|bench|setup|host HOST|screenshot}" >&2; exit 2 ;;
esac
