#!/usr/bin/env bash
# Screens model candidates for the accuracy/speed frontier: each one trained by `pocusd train` for
# the same fixed number of epochs on the same block split of a data folder, its last checkpoint
# exported (nothing chosen on the validation blocks), scored by `pocusd eval` on those blocks, and
# timed on tract (`pocusd bench infer`) and onnxruntime at 1 and 2 threads. Prints a markdown
# table (also OUT/candidates.md); runs are resumable (run the same command again).
#   scripts/candidates.sh [--data DIR] [--out DIR] [--epochs N] NAME="TRAIN ARGS" ...
# Example: scripts/candidates.sh --epochs 15 "w8-128=--width 8" "w8-256x160=--width 8 --input 256x160"
# Defaults: --data ${POCUSD_DATA:-../shared/data}/dl_track, --out ~/.cache/pocusd/candidates,
# --epochs 15, task aponeurosis unless the args say --task. Group-out scores for the candidates
# worth it: scripts/groupout.sh with the same TRAIN ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/train-run.sh

DATA=${POCUSD_DATA:-../shared/data}/dl_track
OUT=${XDG_CACHE_HOME:-$HOME/.cache}/pocusd/candidates
EPOCHS=15
CANDS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --epochs) EPOCHS=${2:?}; shift 2 ;;
    -h|--help) sed -n 2,11p "$0"; exit 0 ;;
    *=*) CANDS+=("$1"); shift ;;
    *) echo "candidates.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
[ ${#CANDS[@]} -gt 0 ] || { echo "candidates.sh: name at least one candidate NAME=\"TRAIN ARGS\"" >&2; exit 2; }
BIN=${POCUSD_BIN:-target/release/pocusd}
[ -x "$BIN" ] || cargo build --release --locked
PY=.venv/bin/python
[ -x "$PY" ] || scripts/setup.sh >/dev/null
mkdir -p "$OUT"

ROWS="$OUT/rows.jsonl"
: >"$ROWS"
for c in "${CANDS[@]}"; do
  name=${c%%=*}
  read -r -a args <<<"${c#*=}"
  case " ${args[*]} " in *" --task "*) ;; *) args+=(--task aponeurosis) ;; esac
  run="$OUT/$name-e$EPOCHS"
  train_and_export "$BIN" "$run" "candidates: $name" --data "$DATA" --epochs "$EPOCHS" "${args[@]}"
  "$BIN" eval --model "$run/last.onnx" --data "$DATA" --val-fraction 0.15 --json >"$run/eval.json"
  t1=$("$BIN" bench infer --model "$run/last.onnx" --threads 1 --iters 100 --json)
  t2=$("$BIN" bench infer --model "$run/last.onnx" --threads 2 --iters 100 --json)
  o1=$("$PY" scripts/ort_run.py bench "$run/last.onnx" --threads 1 --iters 100)
  o2=$("$PY" scripts/ort_run.py bench "$run/last.onnx" --threads 2 --iters 100)
  "$PY" - "$name" "${c#*=}" "$run" "$t1" "$t2" "$o1" "$o2" >>"$ROWS" <<'EOF'
import json, sys
import onnx
from onnx import numpy_helper
name, args, run = sys.argv[1:4]
t1, t2, o1, o2 = (json.loads(a)["median_ms"] for a in sys.argv[4:8])
m = onnx.load(f"{run}/last.onnx")
params = sum(numpy_helper.to_array(t).size for t in m.graph.initializer)
meta = {p.key: p.value for p in m.metadata_props}
ev = json.load(open(f"{run}/eval.json"))
print(json.dumps({"name": name, "args": args, "input": meta.get("pocusd.input"), "params": int(params),
    "dice": ev["dice"], "median": ev["thickness_rel_err_median"], "within10": ev["thickness_within_10pct"],
    "failed": ev["failed"], "images": ev["images"], "tract_ms": [t1, t2], "ort_ms": [o1, o2]}))
EOF
done

"$PY" - "$ROWS" "$EPOCHS" <<'EOF' | tee "$OUT/candidates.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"Screening: {sys.argv[2]} epochs each, last checkpoint, scored on the dl_track validation blocks")
print("| candidate | train args | input | parameters | block Dice | median thickness error | within 10 % | without a thickness | tract ms 1/2 threads | onnxruntime ms 1/2 threads |")
print("|---|---|---|---|---|---|---|---|---|---|")
pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"
for r in rows:
    print(f"| {r['name']} | `{r['args']}` | {r['input']} | {r['params'] / 1e6:.2f} M | {r['dice']:.3f} | {pct(r['median'])} | {pct(r['within10'])} | {r['failed']} of {r['images']} | {r['tract_ms'][0]:.1f} / {r['tract_ms'][1]:.1f} | {r['ort_ms'][0]:.1f} / {r['ort_ms'][1]:.1f} |")
EOF
