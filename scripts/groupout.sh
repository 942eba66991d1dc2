#!/usr/bin/env bash
# Group-out validation: how a training recipe does on a scanner it has never seen. The images of a
# data folder are grouped by image size (a proxy for the scanner and its screen layout: in
# ../shared/data/dl_track 512x512, 660x556 and 800x652 hold 188, 175 and 75 images); for each
# group, `pocusd train` learns on all the other groups and `pocusd eval` scores the group left
# out with the run's last checkpoint, or its weight average with `[train] swa_epochs` (no
# checkpoint is chosen on the held-out group). Prints one
# row per group and the means; writes OUT/groupout.json.
#   scripts/groupout.sh [--data DIR] [--out DIR] [--epochs N] [--min-group N] [-- TRAIN ARGS...]
# Defaults: --data ${POCUSD_DATA:-../shared/data}/dl_track, --out ~/.cache/pocusd/groupout,
# (for fascicle models: --data ../shared/data/dl_track_fascicles -- --task fascicle ...; the
# fascicle rows give the orientation error, fragment recall and, with the shipped aponeurosis
# model, pennation and length errors against the reference fragments),
# --epochs 10, groups under --min-group 20 images join no split. TRAIN ARGS go to `pocusd train`
# (the recipe: --width, --depth, --input, --loss, --task ...; default task aponeurosis). Each run
# is resumable: run the script again with the same --out and it continues where it stopped.
# The split folders hold symbolic links to the data, never copies.
# --adapt: then, per group, adaptation without labels: the left-out group's images are
# halved by a stable hash of the name (the loop's site split, FNV-1a + splitmix64); the fold's
# model re-estimates its batch-norm statistics on half A's images (`pocusd models adapt
# last.onnx --frames A --batch 8`, what `pocusd loop nightly` does; the
# masks of half A are never read) and base and adapted model are both scored on half B. Prints
# both, and what the nightly promotion rule would choose from half B's gate evidence alone
# (more images ok leaving out the model's confidence beyond chance, frame by frame: gained - lost
# >= 1.645 x sqrt(gained + lost); or as many and a mean mirrored difference under 0.9x). --adapt --self-training: the nightly default, the statistics and then
# self-training (`models adapt --self-training --epochs ${SELF_TRAINING_EPOCHS:-4}`, the images of
# half A the gate marks ok with the model's own masks); kept apart from the statistics alone
# (adapted-st.* beside adapted.*).
# --pretrain DIR[:DIR...]: each fold's model starts from self-supervised pretraining
# (`pocusd train --loss reconstruct`, --pretrain-epochs N, default 10, the recipe's --width/--depth/
# --input/--task/--seed) on the images of those folders (their images/, masks never read) whose
# size is not the left-out group's: the group left out stays unseen, in the pretraining too. The
# fold's run then gets --init OUT/pretrain-GROUP/run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/train-run.sh

DATA=${POCUSD_DATA:-../shared/data}/dl_track
OUT=${XDG_CACHE_HOME:-$HOME/.cache}/pocusd/groupout
EPOCHS=10
MIN_GROUP=20
ADAPT=0
SELF_TRAINING=0
SELF_TRAINING_EPOCHS=${SELF_TRAINING_EPOCHS:-4}
PRETRAIN=
PRETRAIN_EPOCHS=10
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --epochs) EPOCHS=${2:?}; shift 2 ;;
    --min-group) MIN_GROUP=${2:?}; shift 2 ;;
    --adapt)
      ADAPT=1; shift ;;
    --self-training) SELF_TRAINING=1; shift ;;
    --pretrain) PRETRAIN=${2:?}; shift 2 ;;
    --pretrain-epochs) PRETRAIN_EPOCHS=${2:?}; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n 2,32p "$0"; exit 0 ;;
    *) echo "groupout.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
TRAIN_ARGS=("$@")
case " ${TRAIN_ARGS[*]:-} " in *" --task "*) ;; *) TRAIN_ARGS+=(--task aponeurosis) ;; esac
[ -d "$DATA/images" ] && [ -d "$DATA/masks" ] \
  || { echo "groupout.sh: $DATA has no images/ and masks/ (set --data or POCUSD_DATA)" >&2; exit 1; }
BIN=${POCUSD_BIN:-target/release/pocusd}
[ -x "$BIN" ] || cargo build --release --locked
DATA=$(cd "$DATA" && pwd)
mkdir -p "$OUT"

# Group names by PNG/JPEG size: "WxH NAME" lines (stdlib only).
python3 - "$DATA" >"$OUT/groups.txt" <<'EOF'
import os, struct, sys
root = sys.argv[1]
masks = set(os.listdir(os.path.join(root, "masks")))
for name in sorted(os.listdir(os.path.join(root, "images"))):
    if name not in masks:
        continue
    with open(os.path.join(root, "images", name), "rb") as f:
        head = f.read(64 * 1024)
    size = None
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        size = struct.unpack(">II", head[16:24])
    elif head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                break
            marker, length = head[i + 1], struct.unpack(">H", head[i + 2:i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                h, w = struct.unpack(">HH", head[i + 5:i + 9])
                size = (w, h)
                break
            i += 2 + length
    if size:
        print(f"{size[0]}x{size[1]} {name}")
EOF
mapfile -t SIZE_GROUPS < <(awk '{print $1}' "$OUT/groups.txt" | sort | uniq -c | sort -rn \
  | awk -v m="$MIN_GROUP" '$1 >= m {print $2}')
echo "groupout: $(wc -l <"$OUT/groups.txt") pairs in $DATA; groups of >= $MIN_GROUP images:"
for g in "${SIZE_GROUPS[@]}"; do echo "  $g: $(awk -v g="$g" '$1 == g' "$OUT/groups.txt" | wc -l) images"; done
[ ${#SIZE_GROUPS[@]} -ge 2 ] || { echo "groupout.sh: fewer than two groups; nothing to leave out" >&2; exit 1; }

link_split() { # $1 split dir, $2 group left out
  local dir=$1 out=$2
  rm -rf "$dir"
  mkdir -p "$dir/train/images" "$dir/train/masks" "$dir/val/images" "$dir/val/masks"
  while read -r size name; do
    local to=train
    [ "$size" = "$out" ] && to=val
    # Groups under the minimum join neither side.
    printf '%s\n' "${SIZE_GROUPS[@]}" | grep -qx "$size" || continue
    ln -s "$DATA/images/$name" "$dir/$to/images/$name"
    ln -s "$DATA/masks/$name" "$dir/$to/masks/$name"
  done <"$OUT/groups.txt"
}

# Pretraining images for the fold leaving out $2 (size WxH): links in $1/images to every image of
# the --pretrain folders of another size (stdlib only; names prefixed by their folder).
link_pretrain() {
  rm -rf "$1"
  mkdir -p "$1/images"
  python3 - "$1/images" "$2" "$PRETRAIN" <<'PY'
import os, struct, sys
out, left_out, dirs = sys.argv[1], sys.argv[2], sys.argv[3].split(":")
def size(path):
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "%dx%d" % struct.unpack(">II", head[16:24])
    i = 2
    while head[:2] == b"\xff\xd8" and i + 9 < len(head) and head[i] == 0xFF:
        marker, length = head[i + 1], struct.unpack(">H", head[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            h, w = struct.unpack(">HH", head[i + 5:i + 9])
            return f"{w}x{h}"
        i += 2 + length
    return None
n = skipped = 0
for d in dirs:
    d = os.path.abspath(d)
    src = os.path.join(d, "images") if os.path.isdir(os.path.join(d, "images")) else d
    for name in sorted(os.listdir(src)):
        if not name.lower().endswith((".png", ".jpg", ".jpeg")):
            continue
        if size(os.path.join(src, name)) == left_out:
            skipped += 1
            continue
        os.symlink(os.path.join(src, name), os.path.join(out, f"{os.path.basename(d)}-{name}"))
        n += 1
print(f"groupout: pretraining images for {left_out} left out: {n} ({skipped} of that size left out)")
PY
}
# The recipe's arguments that pretraining shares (architecture, input, task, seed).
PRETRAIN_ARGS=()
set -- "${TRAIN_ARGS[@]}"
while [ $# -gt 0 ]; do
  case "$1" in
    --width|--depth|--input|--task|--seed|--config) PRETRAIN_ARGS+=("$1" "${2:?}"); shift 2 ;;
    *) shift ;;
  esac
done

echo "[" >"$OUT/groupout.json.part"
first=1
for g in "${SIZE_GROUPS[@]}"; do
  split="$OUT/split-$g" run="$OUT/run-$g"
  [ -d "$split/val/images" ] || link_split "$split" "$g"
  INIT_ARGS=()
  if [ -n "$PRETRAIN" ]; then
    pre="$OUT/pretrain-$g"
    if [ ! -f "$pre/done" ]; then
      [ -d "$pre/images" ] || link_pretrain "$pre" "$g"
      if [ -f "$pre/run/checkpoints/last.json" ]; then
        "$BIN" train --resume "$pre/run"
      else
        rm -rf "$pre/run"
        "$BIN" train --out "$pre/run" --data "$pre" --loss reconstruct --epochs "$PRETRAIN_EPOCHS" \
          --val-fraction 0.05 "${PRETRAIN_ARGS[@]}"
      fi
      touch "$pre/done"
    fi
    INIT_ARGS=(--init "$pre/run")
  fi
  train_and_export "$BIN" "$run" "groupout: $g left out ($(ls "$split/train/images" | wc -l) training images)" \
    --data "$split/train" --val "$split/val" --epochs "$EPOCHS" "${INIT_ARGS[@]}" "${TRAIN_ARGS[@]}"
  "$BIN" eval --model "$run/last.onnx" --data "$split/val" --json >"$run/eval.json"
  [ $first = 1 ] || echo "," >>"$OUT/groupout.json.part"
  first=0
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({"group": sys.argv[2], **{k: r.get(k) for k in ("task","images","failed","dice","thickness_rel_err_median","thickness_within_10pct","orientation_err_deg_median","fragment_recall","pennation_err_deg_median","fascicle_length_rel_err_median","coverage","precision_10pct","doubtful_precision_10pct","precision_3deg","doubt_counts")}, "gate": [[not p["doubt"], p.get("thickness_px"), p.get("reference_thickness_px")] for p in r["per_image"]]}))' \
    "$run/eval.json" "$g" >>"$OUT/groupout.json.part"
done
echo "]" >>"$OUT/groupout.json.part"
mv "$OUT/groupout.json.part" "$OUT/groupout.json"

python3 - "$OUT/groupout.json" "$EPOCHS" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
print(f"\ngroup-out ({sys.argv[2]} epochs, last checkpoint), each group scored by a model that never saw it:")
pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"
deg = lambda v: "-" if v is None else f"{v:.2f}"
if rows and rows[0].get("task") == "fascicle":
    print(f"{'left out':<10} {'images':>6} {'Dice':>6} {'orient err':>10} {'recall':>7} {'pennation err':>13} {'length err':>10}")
    for r in rows:
        print(f"{r['group']:<10} {r['images']:>6} {r['dice']:>6.3f} {deg(r['orientation_err_deg_median']):>10} {r['fragment_recall'] or 0:>7.3f} {deg(r['pennation_err_deg_median']):>13} {pct(r['fascicle_length_rel_err_median']):>10}")
    o = [r["orientation_err_deg_median"] for r in rows if r["orientation_err_deg_median"] is not None]
    if o:
        print(f"mean orientation error over groups {sum(o) / len(o):.2f} deg")
else:
    print(f"{'left out':<10} {'images':>6} {'Dice':>6} {'median err':>10} {'within 10%':>10} {'no thickness':>12} {'coverage':>9} {'ok within 10%':>13} {'doubtful within 10%':>19}")
    for r in rows:
        print(f"{r['group']:<10} {r['images']:>6} {r['dice']:>6.3f} {pct(r['thickness_rel_err_median']):>10} {pct(r['thickness_within_10pct']):>10} {r['failed']:>12} {pct(r.get('coverage')):>9} {pct(r.get('precision_10pct')):>13} {pct(r.get('doubtful_precision_10pct')):>19}")
    # The gate pooled over every group but the first (the groups it was not tuned on, when the
    # first is the tuning fold: see models/README.md).
    pool = [g for r in rows[1:] for g in r.get("gate", []) if g[2] is not None]
    ok = [g for g in pool if g[0] and g[1] is not None]
    if pool:
        within = sum(1 for g in ok if abs(g[1] - g[2]) / g[2] <= 0.10)
        print(f"gate pooled over the groups after the first: coverage {pct(len(ok) / len(pool))}, ok within 10 % {pct(within / len(ok) if ok else None)} ({len(ok)} of {len(pool)} images ok)")
    for r in rows:
        if r.get("doubt_counts"):
            print(f"doubt reasons, {r['group']} left out: " + ", ".join(f"{k} {v}" for k, v in r["doubt_counts"].items()))
n = sum(r["images"] for r in rows)
mean = sum(r["dice"] for r in rows) / len(rows)
weighted = sum(r["dice"] * r["images"] for r in rows) / n
print(f"mean Dice over groups {mean:.3f}; over images {weighted:.3f} ({n} images)")
EOF

[ "$ADAPT" -gt 0 ] || exit 0
if [ "$SELF_TRAINING" = 1 ]; then
  METHOD="then self-training on the images the gate marks ok, $SELF_TRAINING_EPOCHS epochs"
  ADAPTED=adapted-st ADAPT_ARGS=(--self-training --epochs "$SELF_TRAINING_EPOCHS")
else
  METHOD="batch-norm statistics" ADAPTED=adapted ADAPT_ARGS=()
fi

# Adaptation without labels, per group (see the header).
# The loop's stable split by name (versions::in_validation: FNV-1a 64, splitmix64's finaliser).
half_of() {
  python3 - "$1" <<'PY'
import sys
m = 0xFFFFFFFFFFFFFFFF
h = 0xcbf29ce484222325
for b in sys.argv[1].encode():
    h = ((h ^ b) * 0x100000001b3) & m
h ^= h >> 30; h = (h * 0xbf58476d1ce4e5b9) & m
h ^= h >> 27; h = (h * 0x94d049bb133111eb) & m
h ^= h >> 31
print("b" if h % 1000 < 500 else "a")
PY
}
for g in "${SIZE_GROUPS[@]}"; do
  split="$OUT/split-$g" run="$OUT/run-$g" ad="$OUT/adapt-$g"
  # A run exported before the unfolded network was kept: export it again.
  [ -f "$run/last.bpk" ] || "$BIN" export --run "$run" --checkpoint "$(final_checkpoint "$run")" --out "$run/last.onnx"
  if [ ! -d "$ad/b/images" ]; then
    rm -rf "$ad"
    mkdir -p "$ad/a/images" "$ad/a/masks" "$ad/b/images" "$ad/b/masks"
    for f in "$split/val/images"/*; do
      name=$(basename "$f")
      half=$(half_of "$name")
      ln -s "$(readlink -f "$f")" "$ad/$half/images/$name"
      ln -s "$(readlink -f "$split/val/masks/$name")" "$ad/$half/masks/$name"
    done
  fi
  if [ ! -f "$ad/$ADAPTED.onnx" ]; then
    echo "groupout: $g adapting ($METHOD) on $(ls "$ad/a/images" | wc -l) images (half A), scoring on $(ls "$ad/b/images" | wc -l) (half B)"
    "$BIN" models adapt "$run/last.onnx" --frames "$ad/a/images" --out "$ad/$ADAPTED.onnx" \
      --batch 8 "${ADAPT_ARGS[@]}" >"$ad/$ADAPTED.log" 2>&1 || { tail -5 "$ad/$ADAPTED.log"; exit 1; }
  fi
  "$BIN" eval --model "$run/last.onnx" --data "$ad/b" --json >"$ad/base.json"
  "$BIN" eval --model "$ad/$ADAPTED.onnx" --data "$ad/b" --json >"$ad/$ADAPTED.json"
done
python3 - "$OUT" "$ADAPT" "$ADAPTED" "$METHOD" "${SIZE_GROUPS[@]}" <<'PY'
import json, sys
out, epochs, adapted, method, groups = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
print(f"\nadaptation without labels ({method}; batch-norm statistics re-estimated on half A), scored on half B:")
print(f"{'left out':<10} {'images':>6} {'Dice base':>9} {'adapted':>8} {'within 10% base':>15} {'adapted':>8} {'ok base':>7} {'adapted':>7} {'rule':>7}")
pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"
tot = {"base": [0, 0], "adapted": [0, 0], "rule": [0, 0]}
dice = {"base": [], "adapted": [], "rule": []}

def ok_frames(r):
    """Image -> ok leaving out the model's own confidence."""
    return {p["image"]: all(d in ("low_confidence", "jump") for d in p["doubt"]) for p in r["per_image"]}

def mirror_mean(r):
    m = [p["evidence"]["mirror_diff"] for p in r["per_image"]
         if p["evidence"].get("mirror_diff") is not None and p["evidence"]["mirror_diff"] < 1]
    return sum(m) / len(m) if m else None

for g in groups:
    r = {k: json.load(open(f"{out}/adapt-{g}/{f}.json")) for k, f in (("base", "base"), ("adapted", adapted))}
    fb, fa = ok_frames(r["base"]), ok_frames(r["adapted"])
    ob, oa = sum(fb.values()), sum(fa.values())
    mb, ma = mirror_mean(r["base"]), mirror_mean(r["adapted"])
    # The nightly rule (versions::EvidenceScore::improves_on).
    gained = sum(1 for k in fa if fa[k] and not fb.get(k, True))
    lost = sum(1 for k in fa if fb.get(k, False) and not fa[k])
    promote = (gained > lost and gained - lost >= 1.645 * (gained + lost) ** 0.5) or (
        oa == ob and ma is not None and mb is not None and ma < 0.9 * mb)
    r["rule"] = r["adapted"] if promote else r["base"]
    row = []
    for k in ("base", "adapted", "rule"):
        dice[k].append(r[k]["dice"])
        # Within 10 % of the reference thickness, over every image with a reference (an image
        # the model gives no thickness for counts as a miss).
        refs = [(p.get("thickness_px"), p["reference_thickness_px"]) for p in r[k]["per_image"]
                if p.get("reference_thickness_px")]
        hits = sum(1 for t, ref in refs if t is not None and abs(t - ref) / ref <= 0.10)
        tot[k][0] += hits
        tot[k][1] += len(refs)
        row.append((r[k]["dice"], hits / len(refs) if refs else None))
    print(f"{g:<10} {r['base']['images']:>6} {row[0][0]:>9.3f} {row[1][0]:>8.3f} {pct(row[0][1]):>15} {pct(row[1][1]):>8} {ob:>7} {oa:>7} {'adapted' if promote else 'base':>7}")
for k in ("base", "adapted", "rule"):
    n, d = tot[k][1], tot[k][0]
    share = f"{100 * d / n:.1f} %" if n else "-"
    name = {"base": "base", "adapted": "adapted", "rule": "as the rule chose"}[k]
    print(f"{name}: mean Dice over groups {sum(dice[k]) / len(dice[k]):.3f}; within 10 % pooled {share} ({d} of {n})")
PY
