#!/usr/bin/env bash
# CLAHE speed: pocusd against OpenCV (pinned by scripts/setup.sh) on the same phantom images at
# 640x480, 1024x768 and 1920x1080, clip 2.0 on an 8x8 grid, timed in-process on both sides.
# Prints a table; ratio = OpenCV time / pocusd time (above 1: pocusd is faster).
# Usage: scripts/bench-clahe.sh [ITERS]
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS="${1:-500}"
scripts/setup.sh >/dev/null
cargo build --release --quiet
BIN=target/release/pocusd
PY=.venv/bin/python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for size in 640x480 1024x768 1920x1080; do
  w=${size%x*}; h=${size#*x}
  "$BIN" synth --out "$tmp/$size" --count 1 --width "$w" --height "$h" --furniture >/dev/null
  img="$tmp/$size/images/synth_00000.png"
  "$BIN" bench clahe --image "$img" --iters "$ITERS" --threads 1 --json >>"$tmp/ours.jsonl"
  "$BIN" bench clahe --image "$img" --iters "$ITERS" --threads 2 --json >>"$tmp/ours.jsonl"
  "$PY" scripts/clahe_opencv.py bench "$img" --iters "$ITERS" >>"$tmp/opencv.jsonl"
done

"$PY" - "$tmp/ours.jsonl" "$tmp/opencv.jsonl" <<'PYEOF'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1])]
cv = [json.loads(l) for l in open(sys.argv[2])]
def pick(rows, size, threads):
    for r in rows:
        if (r["width"], r["height"]) == size and r["threads"] == threads:
            return r
sizes = []
for r in ours:
    s = (r["width"], r["height"])
    if s not in sizes:
        sizes.append(s)
print(f"{'size':<10} {'pocusd 1T':>10} {'OpenCV 1T':>10} {'ratio':>6}   {'pocusd 2T':>10} {'OpenCV nT':>10} {'n':>2} {'ratio':>6}   (median ms; p99 in brackets)")
for s in sizes:
    o1, o2 = pick(ours, s, 1), pick(ours, s, 2)
    c1 = pick(cv, s, 1)
    cn = [r for r in cv if (r["width"], r["height"]) == s and r is not c1][0]
    print(f"{s[0]}x{s[1]:<5} {o1['median_ms']:>10.3f} {c1['median_ms']:>10.3f} {c1['median_ms']/o1['median_ms']:>6.2f}   "
          f"{o2['median_ms']:>10.3f} {cn['median_ms']:>10.3f} {cn['threads']:>2} {cn['median_ms']/o2['median_ms']:>6.2f}")
    print(f"{'':<10} {'['+format(o1['p99_ms'],'.3f')+']':>10} {'['+format(c1['p99_ms'],'.3f')+']':>10} {'':>6}   "
          f"{'['+format(o2['p99_ms'],'.3f')+']':>10} {'['+format(cn['p99_ms'],'.3f')+']':>10}    (pocusd 2T used {o2.get('threads_used', 2)} thread(s))")
PYEOF
