#!/usr/bin/env bash
# Installs pocusd as a system service: binary, models, systemd units, D-Bus policy and interface,
# sysusers and tmpfiles fragments, and a commented configuration file.
#   scripts/install.sh [--root DIR] [--uninstall] [--binary FILE]
# --root DIR installs into DIR (a staging tree or an image); without it, into / and then creates
# the user and folders and reloads systemd and D-Bus. The binary is target/release/pocusd (built
# when missing) unless --binary says otherwise. /etc/pocusd/pocusd.toml is never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=/
UNINSTALL=0
BINARY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=${2:?--root needs a folder}; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    --binary) BINARY=${2:?--binary needs a file}; shift 2 ;;
    -h|--help) sed -n 2,8p "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
ROOT=${ROOT%/}
R=${ROOT:-}

# destination : source : mode
FILES=(
  "/usr/bin/pocusd::0755"
  "/usr/share/pocusd/models/README.md:models/README.md:0644"
  "/usr/lib/systemd/system/pocusd.service:systemd/pocusd.service:0644"
  "/usr/lib/systemd/system/pocusd-train.service:systemd/pocusd-train.service:0644"
  "/usr/lib/systemd/system/pocusd-train.timer:systemd/pocusd-train.timer:0644"
  "/usr/share/dbus-1/system.d/org.pocusd.Daemon1.conf:systemd/org.pocusd.Daemon1.conf:0644"
  "/usr/share/dbus-1/interfaces/org.pocusd.Daemon1.xml:systemd/org.pocusd.Daemon1.xml:0644"
  "/usr/lib/sysusers.d/pocusd.conf:systemd/pocusd.sysusers:0644"
  "/usr/lib/tmpfiles.d/pocusd.conf:systemd/pocusd.tmpfiles:0644"
  "/usr/share/doc/pocusd/README.md:README.md:0644"
)
# Every shipped model (a list by hand once left fascicle.onnx out, which the demo runs).
for m in models/*.onnx; do
  FILES+=("/usr/share/pocusd/models/${m#models/}:$m:0644")
done
CONFIG=/etc/pocusd/pocusd.toml

if [ "$UNINSTALL" = 1 ]; then
  if [ -z "$R" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now pocusd.service pocusd-train.timer 2>/dev/null || true
  fi
  for f in "${FILES[@]}"; do
    rm -f "$R${f%%:*}"
  done
  rmdir "$R/usr/share/pocusd/models" "$R/usr/share/pocusd" "$R/usr/lib/pocusd" "$R/usr/share/doc/pocusd" 2>/dev/null || true
  echo "install.sh: removed pocusd from ${ROOT:-/} (kept $CONFIG and /var/lib/pocusd: your settings and data)"
  exit 0
fi

if [ -z "$BINARY" ]; then
  BINARY=target/release/pocusd
  if [ ! -x "$BINARY" ]; then
    echo "install.sh: building the release binary (cargo build --release; 15 to 20 minutes on 2 cores)"
    cargo build --release --locked
  fi
fi
[ -x "$BINARY" ] || { echo "install.sh: $BINARY is not an executable" >&2; exit 1; }

for f in "${FILES[@]}"; do
  IFS=: read -r dest src mode <<<"$f"
  [ -n "$src" ] || src=$BINARY
  install -D -m "$mode" "$src" "$R$dest"
done
if [ ! -e "$R$CONFIG" ]; then
  mkdir -p "$R/etc/pocusd"
  {
    echo "# pocusd system configuration: uncomment and change what you need."
    echo "# Every key, with its default and allowed values (pocusd config check prints the effective one):"
    echo "#"
    sed -e 's/^\([^#]\)/# \1/' config/default.toml
  } >"$R$CONFIG"
  chmod 0644 "$R$CONFIG"
fi
echo "install.sh: installed pocusd into ${ROOT:-/}"

if [ -z "$R" ]; then
  systemd-sysusers /usr/lib/sysusers.d/pocusd.conf
  systemd-tmpfiles --create /usr/lib/tmpfiles.d/pocusd.conf
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl reload dbus.service 2>/dev/null || true
    echo "install.sh: start it with: systemctl enable --now pocusd.service (nightly retraining: pocusd-train.timer)"
  fi
  echo "install.sh: add clinicians' accounts to group pocusd-operators to let them call methods (usermod -aG pocusd-operators USER)"
fi
