# Shared by scripts/groupout.sh and scripts/candidates.sh (sourced, not run).
# train_and_export BIN RUN WHAT TRAIN_ARGS...: makes RUN/last.onnx from the last checkpoint of a
# `pocusd train --out RUN TRAIN_ARGS...` run (training's own RUN/model.onnx is its best-Dice
# checkpoint, chosen on the validation data); a run that stopped is resumed, a finished one kept.
# WHAT labels the progress lines.
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
  "$bin" export --run "$run" --checkpoint last --out "$run/last.onnx"
}
