#!/usr/bin/env bash
# The product's main job on its embedded demo source: set up, build, and run the daemon
# (`pocusd run`) on the moving phantom, drawn inside a scanner's screen (furniture=1: the real path,
# region of interest found automatically and millimetres read from the depth ruler), with the
# shipped aponeurosis model and, beside it, the shipped fascicle model, on a private session bus,
# with the live viewer at http://127.0.0.1:8080/ (override: POCUSD__HTTP__LISTEN), printing
# `pocusd status` every few seconds. Ctrl-C stops it cleanly.
# Usage: scripts/demo.sh [SECONDS]   (default: until Ctrl-C)
# State (measurement log, snapshots) goes to /tmp/pocusd-demo/state.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-0}"
scripts/setup.sh
cargo build --release --quiet
export POCUSD_DEMO_BIN="$PWD/target/release/pocusd"
export POCUSD__STORAGE__DIR=/tmp/pocusd-demo/state
export POCUSD_DEMO_SECONDS="$SECONDS_TO_RUN"
# The OpenIGTLink server on loopback, for 3D Slicer (OpenIGTLinkIF, client to 127.0.0.1:18944);
# frames are cut for it only while a client is connected. POCUSD__IGTL__ENABLED=false turns it off.
export POCUSD__IGTL__ENABLED="${POCUSD__IGTL__ENABLED:-true}"
# A session bus of its own, so the demo needs neither root nor an installed policy
# (an installed daemon serves the system bus: see systemd/README.md).
exec dbus-run-session -- bash -c '
  extra=()
  [ -f models/fascicle.onnx ] && extra=(--extra-model models/fascicle.onnx)
  "$POCUSD_DEMO_BIN" run --session-bus --source "demo?fps=30&furniture=1" "${extra[@]}" &
  pid=$!
  trap "kill -TERM $pid 2>/dev/null; wait $pid" INT TERM EXIT
  start=$(date +%s)
  sleep 3
  while kill -0 "$pid" 2>/dev/null; do
    "$POCUSD_DEMO_BIN" status --session-bus || true
    echo "(live viewer: http://${POCUSD__HTTP__LISTEN:-127.0.0.1:8080}/ ; OpenIGTLink for 3D Slicer: ${POCUSD__IGTL__LISTEN:-127.0.0.1:18944} ; measurement log: $POCUSD__STORAGE__DIR/log; Ctrl-C stops)"
    sleep 5
    if [ "$POCUSD_DEMO_SECONDS" != 0 ] && [ $(( $(date +%s) - start )) -ge "$POCUSD_DEMO_SECONDS" ]; then
      break
    fi
  done
'
