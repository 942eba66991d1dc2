#!/usr/bin/env bash
# Training speed: pocusd (burn) against the seed's own stack, a plain Keras U-Net on TensorFlow
# CPU, same architecture (4 levels, base 16 unless --width), batch and input, with augmentation.
#
# usage: scripts/bench-train.sh [--input 128x128] [--batch 8] [--width 16] [--depth 4] [--steps 10]
#
# Builds pocusd in release mode, installs tensorflow-cpu into .venv-tf (first run only: about
# 600 MB from PyPI), prints one JSON line per side. Figures, never assertions.
set -euo pipefail
cd "$(dirname "$0")/.."
input=128x128 batch=8 width=16 depth=4 steps=10
while [ $# -gt 0 ]; do
  case "$1" in
    --input) input=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --width) width=$2; shift 2 ;;
    --depth) depth=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "usage: $0 [--input WxH] [--batch N] [--width N] [--depth N] [--steps N]" >&2; exit 2 ;;
  esac
done
scripts/setup.sh >/dev/null
cargo build --release --quiet
if [ ! -x .venv-tf/bin/python ]; then
  python3 -m venv .venv-tf
fi
if ! .venv-tf/bin/python -c "import tensorflow" 2>/dev/null; then
  .venv-tf/bin/python -m pip install -q --disable-pip-version-check "tensorflow-cpu==2.21.0"
fi
for backend in flex ndarray; do
  [ "$backend" = ndarray ] && [ "$steps" -gt 2 ] && s=2 || s=$steps   # ndarray is ~25 s a step
  printf 'pocusd-%s ' "$backend"
  target/release/pocusd bench train --input "$input" --batch "$batch" --width "$width" --depth "$depth" \
    --backend "$backend" --steps "$s" --json
done
printf 'keras-tensorflow '
.venv-tf/bin/python scripts/keras_unet_bench.py --input "$input" --batch "$batch" --width "$width" \
  --depth "$depth" --steps "$steps"
