#!/usr/bin/env bash
# The product's main job on its embedded default, until the daemon lands: generate a synthetic
# B-mode phantom (with the scanner's screen around it), enhance every frame with CLAHE, and time it.
# Usage: scripts/demo.sh [OUT_DIR]   (default: /tmp/pocusd-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/pocusd-demo}"
scripts/setup.sh
cargo build --release --quiet
BIN="$PWD/target/release/pocusd"

"$BIN" synth --out "$OUT/phantom" --count 8 --furniture --seed 1
mkdir -p "$OUT/enhanced"
for img in "$OUT"/phantom/images/*.png; do
  "$BIN" clahe "$img" "$OUT/enhanced/$(basename "$img")" --clip-limit 2.0 --tiles 8x8
done
echo "enhanced $(ls "$OUT/enhanced" | wc -l) frames into $OUT/enhanced (ground truth: $OUT/phantom/truth.csv)"
"$BIN" bench clahe --image "$OUT/phantom/images/synth_00000.png" --iters 200
