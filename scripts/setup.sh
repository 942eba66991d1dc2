#!/usr/bin/env bash
# Installs what pocusd needs to build and test on Debian: apt packages (only the missing ones) and a
# Python virtualenv (.venv) with the pinned reference libraries. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavdevice-dev libavfilter-dev libswresample-dev
  ffmpeg dbus dbus-daemon dbus-bin dbus-system-bus-common libglib2.0-bin
  systemd util-linux passwd chromium dpkg-dev binutils
  python3 python3-venv
  dicom3tools dcmtk orthanc libpixelmed-java default-jre-headless
)
# Pinned reference versions: the comparison tests must never drift with PyPI.
PY_PACKAGES=(
  "opencv-python-headless==4.12.0.88"
  "numpy==2.2.6"
  "onnxruntime==1.31.1"
  "onnx==1.23.2"
  "tensorboard==2.21.0"
  "pyigtl==0.3.4"
  "crcmod==1.7"
  "pydicom==3.0.2"
  "highdicom==0.28.2"
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing apt packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust 1.95 or newer (https://rustup.rs) and run again" >&2
  exit 1
fi

PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
want=$(printf '%s\n' "${PY_PACKAGES[@]}" | sort)
have=$(.venv/bin/python -m pip freeze 2>/dev/null | sort)
if [ -n "$(comm -23 <(echo "$want") <(echo "$have"))" ]; then
  echo "setup: installing Python packages: ${PY_PACKAGES[*]}"
  .venv/bin/python -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
fi
