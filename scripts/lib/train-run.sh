# Shared by scripts/groupout.sh and scripts/candidates.sh (sourced, not run).
# train_and_export BIN RUN WHAT TRAIN_ARGS...: makes RUN/last.onnx from the last checkpoint of a
# `pocusd train --out RUN TRAIN_ARGS...` run (training's own RUN/model.onnx is its best-Dice
# checkpoint, chosen on the validation data), or from its weight average when the recipe has
# `[train] swa_epochs` (nothing chosen on the validation data either); a run that stopped is
# resumed, a finished one kept. WHAT labels the progress lines.
# final_checkpoint RUN: prints swa or last, the checkpoint train_and_export exports.
final_checkpoint() {
  python3 -c 'import json,sys; print("swa" if json.load(open(sys.argv[1])).get("swa_file") else "last")' \
    "$1/checkpoints/last.json"
}
train_and_export() {
  local bin=$1 run=$2 what=$3
  shift 3
  [ -f "$run/last.onnx" ] && return 0
  if [ -f "$run/metrics.csv" ]; then
    echo "$what: resuming $run"
    "$bin" train --resume "$run"
  else
    rm -rf "$run"
    echo "$what: training $*"
    "$bin" train --out "$run" "$@"
  fi
  # export writes both files atomically, last.bpk (the unfolded network) before last.onnx, so a
  # last.onnx found above always has its copy.
  "$bin" export --run "$run" --checkpoint "$(final_checkpoint "$run")" --out "$run/last.onnx"
}
