#!/usr/bin/env bash
# OpenIGTLink cost and delivery: the release daemon on the demo (30 fps, screen furniture, both
# shipped models) with [igtl] on, first with no client, then with READERS reading clients and one
# that never reads (scripts/igtl_bench.py). Prints the daemon's fps, dropped frames and latency
# p99 in each phase, and per reader frames per second, bytes per frame and age on arrival.
# Usage: scripts/bench-igtl.sh [SECONDS] [READERS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release --quiet
exec dbus-run-session -- .venv/bin/python scripts/igtl_bench.py "$PWD/target/release/pocusd" "${1:-20}" "${2:-2}"
