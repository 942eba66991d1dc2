#!/usr/bin/env bash
# Inference speed: tract (pocusd bench infer) against onnxruntime (pinned by scripts/setup.sh) on
# the same ONNX file at 1 and 2 threads, with the ratio. Without MODEL: every shipped model in
# models/, and a U-Net of the default architecture (4 levels, base 16, 128x128, ConvTranspose
# upsampling) with random weights plus its Resize-upsampling twin for comparison.
# Usage: scripts/bench-infer.sh [MODEL.onnx ...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release --quiet
BIN=target/release/pocusd
PY=.venv/bin/python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  "$BIN" unet --out "$tmp/unet-transpose.onnx" --upsample transpose >/dev/null
  "$BIN" unet --out "$tmp/unet-resize.onnx" --upsample resize >/dev/null
  models=(models/*.onnx "$tmp/unet-transpose.onnx" "$tmp/unet-resize.onnx")
fi
printf '%-28s %8s %12s %12s %8s\n' model threads tract_ms ort_ms ratio
for m in "${models[@]}"; do
  for t in 1 2; do
    ours=$("$BIN" bench infer --model "$m" --threads "$t" --iters 200 --json)
    ort=$("$PY" scripts/ort_run.py bench "$m" --threads "$t" --iters 200)
    "$PY" - "$m" "$t" "$ours" "$ort" <<'PYEOF'
import json, os, sys
m, t, a, b = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
print(f"{os.path.basename(m):<28} {t:>8} {a['median_ms']:>12.2f} {b['median_ms']:>12.2f} {a['median_ms']/b['median_ms']:>8.2f}")
PYEOF
  done
done
echo "(median ms over 200 runs; ratio = tract / onnxruntime, below 1: tract is faster)"
