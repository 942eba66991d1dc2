#!/usr/bin/env bash
# Every test, as CI runs it: set-up, a check without optional features, then the whole suite with
# all features (including the comparisons against live OpenCV and, when ../shared/data exists, real
# ultrasound images). One profile (dev, with optimised dependencies) for everything.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

export POCUSD_PYTHON="$PWD/.venv/bin/python"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo check --no-default-features"
cargo check --no-default-features --all-targets

echo "== cargo test (all features, every test including those needing external tools)"
cargo test --all-features -- --include-ignored

echo "== the units under a real systemd (systemd-nspawn; about 90 s with a new root, 20 s cached)"
scripts/systemd-check.sh --binary target/debug/pocusd

echo "== the Debian package: lintian, apt install in a fresh minimal root, upgrade, remove, purge (about 2 min)"
scripts/package-check.sh --binary target/debug/pocusd

echo "== all tests passed"
