#!/usr/bin/env bash
# Checks the Debian package the way a cart gets it: builds two .debs of one binary (the second
# with a higher version), runs lintian on the first, then in a fresh minimal Debian 12 root
# (debootstrap minbase with only systemd, man-db and bash-completion added; never the systemd
# check's root, which already holds FFmpeg and so could not prove Depends) booted with
# systemd-nspawn:
#   - `apt-get install ./pocusd_A.deb` resolves its Depends from Debian and leaves pocusd.service
#     active (running) with its status text, streaming the demo source, and the timer listed;
#   - a member of pocusd-operators gets an answer from `pocusd status` and may take a snapshot;
#   - `man pocusd` and `man pocusd-run` render; bash completes `pocusd ru` to `run`;
#   - an edited /etc/pocusd/pocusd.toml, the measurement log, a snapshot and the model versions in
#     models_dir (current.onnx the current one) survive `apt-get install ./pocusd_B.deb`, which
#     restarts the daemon on current.onnx with the edit in effect;
#   - `apt-get remove` stops the service and keeps configuration and data; `apt-get purge`
#     removes /etc/pocusd and /var/lib/pocusd.
# Usage: scripts/package-check.sh [--binary FILE]   (default target/debug/pocusd, built if missing)
# Environment: POCUSD_NSPAWN_MINROOT (the cached pristine root; default
# ~/.cache/pocusd/nspawn-bookworm-minimal), POCUSD_DEBIAN_MIRROR. Needs root and the Debian mirror
# (the container downloads the package's dependencies). Exits non-zero on the first failed check.
set -euo pipefail
# Pipelines into grep never use grep -q (see systemd-check.sh: SIGPIPE under pipefail).
cd "$(dirname "$0")/.."

BINARY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BINARY=${2:?--binary needs a file}; shift 2 ;;
    -h|--help) sed -n 2,20p "$0"; exit 0 ;;
    *) echo "package-check: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done

T0=$(date +%s.%N)
say() { printf 'package-check: [%6.1f s] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*"; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || { echo "package-check: needs root (systemd-nspawn, debootstrap)" >&2; exit 1; }
need=()
for p in systemd-container debootstrap bc procps util-linux dpkg-dev binutils lintian; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "package-check: installing apt packages: ${need[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if [ -z "$BINARY" ]; then
  BINARY=target/debug/pocusd
  [ -x "$BINARY" ] || cargo build --all-features --locked
fi

WORK=$(mktemp -d /tmp/pocusd-package-check.XXXXXX)
ROOT=""
# Commands inside the root get a clean environment (apt must not see the host's).
IN_ROOT_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8)
. scripts/lib/nspawn.sh
cleanup() {
  nspawn_stop
  [ -n "$ROOT" ] && rm -rf "$ROOT"
  rm -rf "$WORK"
}
trap cleanup EXIT

# 1. Two packages of one binary; the second is the "newer build".
BASE=$("$BINARY" --version | awk '{print $2}')
VA="$BASE+check1"; VB="$BASE+check2"
scripts/package.sh --binary "$BINARY" --out "$WORK" --version "$VA" | sed 's/^/  /'
scripts/package.sh --binary "$BINARY" --out "$WORK" --version "$VB" --compression gzip >/dev/null
DEB_A="$WORK/pocusd_${VA}_amd64.deb"; DEB_B="$WORK/pocusd_${VB}_amd64.deb"
[ -f "$DEB_A" ] && [ -f "$DEB_B" ] || fail "package.sh wrote no .deb"
say "packaged $VA ($(du -k "$DEB_A" | cut -f1) KiB, xz) and $VB"

# 2. lintian: no error; the rest listed.
lintian --display-level '>=pedantic' -E -I "$DEB_A" >"$WORK/lintian.txt" 2>/dev/null || true
errors=$(grep -c '^E:' "$WORK/lintian.txt" || true)
warnings=$(grep -c '^W:' "$WORK/lintian.txt" || true)
sed 's/^/  lintian: /' "$WORK/lintian.txt"
[ "$errors" = 0 ] || fail "lintian reports $errors errors"
say "lintian: 0 errors, $warnings warnings, $(grep -c '^[IPX]:' "$WORK/lintian.txt" || true) info/pedantic/experimental tags"

# 3. A fresh minimal root: the cached pristine one, copied.
PRISTINE=${POCUSD_NSPAWN_MINROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/pocusd/nspawn-bookworm-minimal}
PACKAGES=systemd,systemd-sysv,man-db,bash-completion
MIRROR=${POCUSD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ "$(cat "$PRISTINE/.pocusd-stamp" 2>/dev/null)" != "$PACKAGES" ]; then
  say "making the minimal Debian 12 root in $PRISTINE (debootstrap, once; about a minute)"
  rm -rf "$PRISTINE.partial"
  mkdir -p "$(dirname "$PRISTINE")"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$PRISTINE.partial" "$MIRROR" \
    >"$PRISTINE.debootstrap.log" 2>&1 || { tail -20 "$PRISTINE.debootstrap.log"; fail "debootstrap (log: $PRISTINE.debootstrap.log)"; }
  chroot "$PRISTINE.partial" apt-get clean
  echo "$PACKAGES" >"$PRISTINE.partial/.pocusd-stamp"
  rm -rf "$PRISTINE"
  mv "$PRISTINE.partial" "$PRISTINE"
fi
ROOT="$PRISTINE.run.$$"
rm -rf "$ROOT"
cp -a "$PRISTINE" "$ROOT"
for lib in libavcodec59 libavformat59 dbus; do
  if chroot "$ROOT" dpkg-query -W -f='${Status}' "$lib" 2>/dev/null | grep "install ok installed" >/dev/null; then
    fail "the fresh root already holds $lib: it could not prove Depends"
  fi
done
cp "$DEB_A" "$DEB_B" "$ROOT/root/"
say "fresh root: $ROOT (no FFmpeg libraries, no dbus)"

# The dependencies are resolved and fetched from Debian before boot (the booted root has a
# private network, so the daemon's ports stay inside it); the install itself runs booted.
cached=$(ls "$ROOT"/var/cache/apt/archives/ | grep -c '\.deb$' || true)
systemd-nspawn -q -D "$ROOT" --register=no --keep-unit --pipe "${IN_ROOT_ENV[@]}" sh -c \
  "apt-get update -q && apt-get install -y -q --download-only /root/$(basename "$DEB_A")" \
  >"$WORK/download.log" 2>&1 || { tail -20 "$WORK/download.log"; fail "apt-get could not resolve or fetch the Depends"; }
say "apt resolved the Depends and fetched $(( $(ls "$ROOT"/var/cache/apt/archives/ | grep -c '\.deb$' || true) - cached )) packages from $MIRROR"

nspawn_boot "$ROOT" "$WORK/nspawn.log"
say "booted: system $(in_root systemctl is-system-running 2>/dev/null || true)"

# 4. The first install.
in_root apt-get install -y -q "/root/$(basename "$DEB_A")" >"$WORK/install.log" 2>&1 \
  || { tail -30 "$WORK/install.log"; fail "apt-get install ./$(basename "$DEB_A") failed"; }
grep -i 'could not start\|could not restart' "$WORK/install.log" && fail "the postinst could not start a unit"
say "apt-get install ./$(basename "$DEB_A"): $(grep -E '^[0-9]+ upgraded, [0-9]+ newly installed' "$WORK/install.log")"
wait_active 90 || { journal; fail "pocusd.service not active (running) 90 s after install"; }
wait_status streaming 60 "no 'streaming' status text within 60 s of install"
PID_A=$(prop MainPID)
say "pocusd.service active (running), enabled: $(in_root systemctl is-enabled pocusd.service), status: \"$(prop StatusText)\""
in_root systemctl list-timers --all --no-pager | grep pocusd-train.timer >/dev/null || fail "pocusd-train.timer is not listed"
say "timer: $(in_root systemctl list-timers --all --no-pager | grep pocusd-train.timer | sed 's/  */ /g')"

# 5. An operator: status and a snapshot.
in_root useradd -m -G pocusd-operators cartop
as_op() { in_root runuser -u cartop -- "$@"; }
st=$(as_op pocusd status 2>&1) || fail "pocusd status as an operator: $st"
echo "$st" | grep 'pocusd - streaming' >/dev/null || fail "pocusd status as an operator does not say streaming: $st"
say "pocusd status as a member of pocusd-operators: $(echo "$st" | head -1)"
snap=$(as_op dbus-send --system --print-reply --dest=org.pocusd.Daemon1 /org/pocusd/Daemon1 \
  org.pocusd.Daemon1.Snapshot 2>&1) || fail "Snapshot as an operator: $snap"
SNAP=$(echo "$snap" | sed -n 's/.*string "\(.*\)"/\1/p')
[ -n "$SNAP" ] && in_root test -d "$SNAP" || fail "Snapshot returned no folder: $snap"
say "snapshot by the operator: $SNAP ($(in_root ls "$SNAP" | wc -l) files)"

# 6. Manual pages and completion.
for page in pocusd pocusd-run; do
  out=$(in_root env MANPAGER=cat MANWIDTH=100 man "$page" 2>&1) || fail "man $page: $out"
  echo "$out" | grep SYNOPSIS >/dev/null || fail "man $page has no SYNOPSIS: $(echo "$out" | head -5)"
  say "man $page renders ($(echo "$out" | wc -l) lines): $(echo "$out" | sed -n '/^NAME/{n;p}' | sed 's/^ *//')"
done
echo "$(in_root env MANPAGER=cat man pocusd-run)" | grep -- '--extra-model' >/dev/null || fail "man pocusd-run lacks --extra-model"
comp=$(in_root bash -c 'source /usr/share/bash-completion/bash_completion
  _completion_loader pocusd
  f=$(complete -p pocusd | sed "s/.*-F \([^ ]*\) .*/\1/")
  COMP_WORDS=(pocusd ru); COMP_CWORD=1; COMP_LINE="pocusd ru"; COMP_POINT=${#COMP_LINE}
  "$f" pocusd ru pocusd
  echo "${COMPREPLY[*]}"' 2>&1) || fail "bash completion: $comp"
[ "$comp" = run ] || fail "bash completes 'pocusd ru' to '$comp', not 'run'"
say "bash completes 'pocusd ru' to '$comp'"

# 7. State an upgrade must keep: an edited config, the log, the snapshot, model versions.
in_root sh -c 'printf "\n# edited on this cart\n[dbus]\nmeasurement_hz = 7\n" >>/etc/pocusd/pocusd.toml'
in_root systemctl stop pocusd.service
M=/var/lib/pocusd/models
in_root install -d -o pocusd -g pocusd -m 0750 "$M"
in_root pocusd unet --out /root/site.onnx >/dev/null 2>&1 || fail "pocusd unet"
sha0=$(in_root sha256sum /usr/share/pocusd/models/aponeurosis.onnx | cut -c1-64)
sha1=$(in_root sha256sum /root/site.onnx | cut -c1-64)
in_root install -o pocusd -g pocusd -m 0640 /usr/share/pocusd/models/aponeurosis.onnx "$M/0000-${sha0:0:8}.onnx"
in_root install -o pocusd -g pocusd -m 0640 /root/site.onnx "$M/0001-${sha1:0:8}.onnx"
in_root install -o pocusd -g pocusd -m 0640 /root/site.onnx "$M/current.onnx"
in_root sh -c "cat >$M/history.jsonl <<EOF
{\"time\":\"2026-12-01T02:00:00Z\",\"kind\":\"base\",\"promoted\":true,\"reason\":\"the model the cart ran before its first promotion\",\"version\":0,\"sha256\":\"$sha0\",\"model\":\"$M/0000-${sha0:0:8}.onnx\",\"parent\":null}
{\"time\":\"2026-12-02T02:00:00Z\",\"kind\":\"nightly\",\"promoted\":true,\"reason\":\"site model (made by the package check)\",\"version\":1,\"sha256\":\"$sha1\",\"model\":\"$M/0001-${sha1:0:8}.onnx\",\"parent\":0}
EOF
chown pocusd:pocusd $M/history.jsonl"
in_root systemctl start pocusd.service
wait_active 60 || { journal; fail "pocusd.service did not start on the site model"; }
wait_status streaming 60 "no 'streaming' on the site model"
PID_A=$(prop MainPID)
in_root runuser -u cartop -- pocusd status | grep "Model: $M/current.onnx" >/dev/null \
  || fail "the daemon does not run $M/current.onnx: $(as_op pocusd status | grep Model)"
fingerprint() { # every file of config and state with its checksum (the log grows: sizes only)
  in_root sh -c 'sha256sum /etc/pocusd/pocusd.toml /var/lib/pocusd/models/* '"$SNAP"'/* | sort'
}
BEFORE=$(fingerprint)
LOG_BEFORE=$(in_root sh -c 'cat /var/lib/pocusd/log/* | wc -l')
[ "$LOG_BEFORE" -gt 0 ] || fail "the measurement log is empty before the upgrade"
say "before the upgrade: config edited, $LOG_BEFORE log lines, versions 0 and 1 (current), snapshot kept"

# 8. The upgrade.
in_root apt-get install -y -q "/root/$(basename "$DEB_B")" >"$WORK/upgrade.log" 2>&1 \
  || { tail -30 "$WORK/upgrade.log"; fail "apt-get install ./$(basename "$DEB_B") failed"; }
grep 'Configuration file' "$WORK/upgrade.log" && fail "the upgrade asked about the conffile"
v=$(in_root dpkg-query -W -f='${Version}' pocusd)
[ "$v" = "$VB" ] || fail "after the upgrade dpkg has version $v"
wait_active 60 "$PID_A" || { journal; fail "pocusd.service not active (running) after the upgrade"; }
wait_status streaming 60 "no 'streaming' after the upgrade"
PID_B=$(prop MainPID)
AFTER=$(fingerprint)
[ "$BEFORE" = "$AFTER" ] || fail "the upgrade changed configuration or state:$(diff <(echo "$BEFORE") <(echo "$AFTER"))"
LOG_AFTER=$(in_root sh -c 'cat /var/lib/pocusd/log/* | wc -l')
[ "$LOG_AFTER" -ge "$LOG_BEFORE" ] || fail "the measurement log shrank: $LOG_BEFORE -> $LOG_AFTER lines"
as_op pocusd status | grep "Model: $M/current.onnx" >/dev/null || fail "after the upgrade the daemon does not run current.onnx"
in_root pocusd config check | grep -E '^measurement_hz = 7(\.0)?$' >/dev/null || fail "the edited key is not in effect after the upgrade"
as_op pocusd models list >"$WORK/models.txt" 2>&1 || fail "pocusd models list: $(cat "$WORK/models.txt")"
say "upgraded to $v: restarted (MainPID $PID_A -> $PID_B), config ($(echo "$AFTER" | wc -l) files checked) byte-identical, measurement_hz = 7 in effect, log $LOG_BEFORE -> $LOG_AFTER lines, current.onnx (version 1) running"

# 9. Remove keeps configuration and data; purge removes them.
in_root apt-get remove -y -q pocusd >"$WORK/remove.log" 2>&1 || { tail -20 "$WORK/remove.log"; fail "apt-get remove"; }
state=$(in_root systemctl show -P ActiveState pocusd.service)
[ "$state" = inactive ] || fail "after remove pocusd.service is $state"
left=$(in_root sh -c 'grep -lx pocusd /proc/[0-9]*/comm 2>/dev/null || true')
[ -z "$left" ] || fail "a pocusd process survived remove: $left"
in_root test ! -e /usr/bin/pocusd || fail "/usr/bin/pocusd survived remove"
[ "$(fingerprint)" = "$AFTER" ] || fail "remove changed configuration or state"
say "apt-get remove: service $state, no pocusd process, binary gone, config and state unchanged"
in_root apt-get purge -y -q pocusd >"$WORK/purge.log" 2>&1 || { tail -20 "$WORK/purge.log"; fail "apt-get purge"; }
in_root test ! -e /etc/pocusd || fail "/etc/pocusd survived purge"
in_root test ! -e /var/lib/pocusd || fail "/var/lib/pocusd survived purge"
st=$(in_root dpkg-query -W -f='${Status}' pocusd 2>&1 || true)
case "$st" in *"not-installed"*|*"no packages found"*) ;; *) fail "after purge dpkg says: $st" ;; esac
say "apt-get purge: /etc/pocusd and /var/lib/pocusd removed, dpkg: ${st:-unknown}"
say "all checks passed"
