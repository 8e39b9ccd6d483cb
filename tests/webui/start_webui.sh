#!/usr/bin/env bash
# Start (or stop) a real A1111 WebUI v1.10.1, offline on CPU, for the live HTTP test tier.
#
#   tests/webui/start_webui.sh            # start; prints the base URL (e.g. http://127.0.0.1:7860) on stdout
#   tests/webui/start_webui.sh stop       # stop the instance started by this script (pid file)
#   tests/webui/start_webui.sh status     # "running <pid>" or "stopped"
#
#   export VPRED_WEBUI_URL=$(tests/webui/start_webui.sh) && .venv/bin/python -m pytest -m webui
#
# Environment (all optional):
#   WEBUI_DIR        WebUI v1.10.1 checkout with venv/ and repositories/   (default /work/webui)
#   MODELS_DIR       tiny checkpoints, passed as --ckpt-dir; generated with tiny_models.py if
#                    tiny-vpred.safetensors is missing                      (default $WEBUI_DIR/tiny-models)
#   WEBUI_PORT       port on 127.0.0.1                                      (default 7860)
#   WEBUI_TIMEOUT    seconds to wait for startup                            (default 300)
#   WEBUI_LOG        log file                                               (default $WEBUI_DIR/vpred-live.log)
#   VPRED_NO_EXTENSION=1   remove the extensions/sd-webui-vpred symlink instead of creating it (baseline runs)
#   WEBUI_EXTRA_ARGS extra launch.py arguments
# The WebUI is started with --do-not-download-clip and HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE: it never goes online.
# The startup checkpoint is tiny-eps; switch per request with
#   "override_settings": {"sd_model_checkpoint": "tiny-vpred"}   (or the full title from GET /sdapi/v1/sd-models).
# Setup from scratch: tests/webui/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WEBUI_DIR="$(cd "${WEBUI_DIR:-/work/webui}" && pwd)"
MODELS_DIR="${MODELS_DIR:-$WEBUI_DIR/tiny-models}"
PORT="${WEBUI_PORT:-7860}"
TIMEOUT="${WEBUI_TIMEOUT:-300}"
LOG="${WEBUI_LOG:-$WEBUI_DIR/vpred-live.log}"
PIDFILE="$WEBUI_DIR/vpred-live.pid"
PY="$WEBUI_DIR/venv/bin/python"
URL="http://127.0.0.1:$PORT"
EXT_LINK="$WEBUI_DIR/extensions/sd-webui-vpred"

log() { echo "[start_webui] $*" >&2; }

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$PIDFILE"
    return 0
  fi
  log "stopping pid $pid"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after 30 s, sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case "${1:-start}" in
  stop) stop; exit 0 ;;
  status)
    if pid="$(running_pid)"; then echo "running $pid"; else echo "stopped"; fi
    exit 0
    ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

[ -x "$PY" ] || { log "no venv at $WEBUI_DIR/venv (see tests/webui/README.md)"; exit 1; }
[ -f "$WEBUI_DIR/launch.py" ] || { log "$WEBUI_DIR is not a WebUI checkout"; exit 1; }
if pid="$(running_pid)"; then
  log "already running (pid $pid); '$0 stop' first"
  exit 1
fi
if curl -s -o /dev/null --max-time 2 "$URL/" 2>/dev/null; then
  log "something already listens on $URL"
  exit 1
fi

# 1. tiny checkpoints
if [ ! -f "$MODELS_DIR/tiny-vpred.safetensors" ] || [ ! -f "$MODELS_DIR/tiny-eps.safetensors" ]; then
  log "generating tiny checkpoints in $MODELS_DIR"
  "$PY" "$HERE/tiny_models.py" "$MODELS_DIR" --webui "$WEBUI_DIR" >&2
fi
MODELS_DIR="$(cd "$MODELS_DIR" && pwd)"

# 2. the extension (a symlink to this repository)
mkdir -p "$WEBUI_DIR/extensions"
if [ "${VPRED_NO_EXTENSION:-0}" = "1" ]; then
  if [ -L "$EXT_LINK" ]; then rm "$EXT_LINK"; fi
  log "VPRED_NO_EXTENSION=1: running without the extension"
elif [ -L "$EXT_LINK" ] || [ ! -e "$EXT_LINK" ]; then
  ln -sfn "$REPO" "$EXT_LINK"
else
  log "$EXT_LINK exists and is not a symlink; leaving it alone"
fi

# 3. launch in the background (launch.py runs the whole WebUI in this one process)
cd "$WEBUI_DIR"
: > "$LOG"
# shellcheck disable=SC2086
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DO_NOT_TRACK=1 GRADIO_ANALYTICS_ENABLED=False \
  COMMANDLINE_ARGS="" PYTHONUNBUFFERED=1 \
  nohup "$PY" launch.py \
  --skip-prepare-environment --skip-install --no-download-sd-model --do-not-download-clip \
  --use-cpu all --no-half --precision full --api --skip-torch-cuda-test --skip-version-check \
  --port "$PORT" --ckpt-dir "$MODELS_DIR" --ckpt "$MODELS_DIR/tiny-eps.safetensors" \
  ${WEBUI_EXTRA_ARGS:-} >"$LOG" 2>&1 </dev/null &
PID=$!
echo "$PID" >"$PIDFILE"
log "pid $PID, log $LOG"

# 4. wait: first the log (a request in the first seconds can crash startup with
#    "Cannot add middleware after an application has started"), then the API, then the model.
deadline=$(( $(date +%s) + TIMEOUT ))
fail() {
  log "$1"
  tail -n 40 "$LOG" >&2 || true
  stop
  exit 1
}
until grep -q "Startup time" "$LOG"; do
  kill -0 "$PID" 2>/dev/null || fail "WebUI exited during startup"
  [ "$(date +%s)" -lt "$deadline" ] || fail "no 'Startup time' in the log after ${TIMEOUT} s"
  sleep 2
done
until curl -sf --max-time 10 "$URL/sdapi/v1/sd-models" >/dev/null; do
  kill -0 "$PID" 2>/dev/null || fail "WebUI exited"
  [ "$(date +%s)" -lt "$deadline" ] || fail "GET /sdapi/v1/sd-models does not answer after ${TIMEOUT} s"
  sleep 2
done
until grep -q "Model loaded in" "$LOG"; do
  grep -q "Stable diffusion model failed to load" "$LOG" && fail "the model failed to load"
  kill -0 "$PID" 2>/dev/null || fail "WebUI exited"
  [ "$(date +%s)" -lt "$deadline" ] || fail "no 'Model loaded in' in the log after ${TIMEOUT} s"
  sleep 2
done
log "ready: $(grep -m1 'Startup time' "$LOG")"
echo "$URL"
