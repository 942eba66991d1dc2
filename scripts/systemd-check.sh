#!/usr/bin/env bash
# Checks the installed units under a real systemd: boots a Debian 12 root (debootstrap, cached
# outside the repository) with systemd-nspawn, installs pocusd into it by unpacking the package
# scripts/package.sh makes (scripts/package-check.sh tests apt and the maintainer scripts), and checks from inside the booted root:
#   - pocusd.service reaches active (running) at boot, with the daemon's status text;
#   - the system-bus policy refuses a method call from an unprivileged user and lets an operator
#     (group pocusd-operators) call it; everyone may read properties;
#   - the main process stopped with SIGSTOP is killed by the watchdog and the unit restarts;
#   - `systemctl stop pocusd` exits 0 and the unit ends with Result=success;
#   - pocusd-train.timer is listed; `systemd-analyze security` scores every unit (target <= 2.0);
#   - nothing in the service's journal or `pocusd status` says "using insecure memory".
# Usage: scripts/systemd-check.sh [--binary FILE]   (default target/debug/pocusd, built if missing)
# Environment: POCUSD_NSPAWN_ROOT (the cached root; default ~/.cache/pocusd/nspawn-bookworm).
# Prints each step with its time; exits non-zero on the first failed check.
set -euo pipefail
# Pipelines into grep never use grep -q: with pipefail, grep quitting at the first match can
# kill the writer with SIGPIPE and fail the pipeline although the line was there.
cd "$(dirname "$0")/.."

BINARY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BINARY=${2:?--binary needs a file}; shift 2 ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "systemd-check: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done

T0=$(date +%s.%N)
say() { printf 'systemd-check: [%6.1f s] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*"; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || { echo "systemd-check: needs root (systemd-nspawn, debootstrap)" >&2; exit 1; }
need=()
for p in systemd-container debootstrap bc procps binutils util-linux; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "systemd-check: installing apt packages: ${need[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# The root: Debian 12, systemd as init, the system bus, gdbus, and the libraries pocusd links.
# The stamp names the package list: a changed list builds a new root.
ROOT=${POCUSD_NSPAWN_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/pocusd/nspawn-bookworm}
PACKAGES=systemd,systemd-sysv,dbus,dbus-bin,libglib2.0-bin,libavutil57,libavformat59,libavdevice59,libswscale6,libavcodec59
MIRROR=${POCUSD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ "$(cat "$ROOT/.pocusd-stamp" 2>/dev/null)" != "$PACKAGES" ]; then
  say "making the Debian 12 root in $ROOT (debootstrap, once; about a minute)"
  rm -rf "$ROOT.partial"
  mkdir -p "$(dirname "$ROOT")"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOT.partial" "$MIRROR" \
    >"$ROOT.debootstrap.log" 2>&1 || { tail -20 "$ROOT.debootstrap.log"; fail "debootstrap (log: $ROOT.debootstrap.log)"; }
  echo "$PACKAGES" >"$ROOT.partial/.pocusd-stamp"
  rm -rf "$ROOT"
  mv "$ROOT.partial" "$ROOT"
fi
say "root ready: $ROOT"

if [ -z "$BINARY" ]; then
  BINARY=target/debug/pocusd
  [ -x "$BINARY" ] || cargo build --all-features --locked
fi
PKG=$(mktemp -d /tmp/pocusd-check-deb.XXXXXX)
. scripts/lib/nspawn.sh
cleanup() {
  nspawn_stop
  rm -rf "$PKG"
}
trap cleanup EXIT

# A fresh install every run: units, policy, models, binary; state and config from the last run go.
# The package's files (its binary stripped), unpacked.
rm -rf "$ROOT/var/lib/pocusd" "$ROOT/etc/pocusd"
scripts/package.sh --binary "$BINARY" --out "$PKG" --version 0.0.0+systemdcheck --compression none >/dev/null
dpkg-deb -x "$PKG"/pocusd_0.0.0+systemdcheck_amd64.deb "$ROOT"
# Install what the package's postinst would do on a real system: enable the service and the timer.
systemctl --root="$ROOT" enable pocusd.service pocusd-train.timer >/dev/null 2>&1
# Two callers for the policy check: an operator and a plain user (created at first boot by
# sysusers like the service's own user; the group comes from pocusd's sysusers fragment).
cat >"$ROOT/usr/lib/sysusers.d/pocusd-check.conf" <<'EOF'
u checkop - "pocusd-check operator"
u checkuser - "pocusd-check plain user"
m checkop pocusd-operators
EOF
say "installed the package's files ($(basename "$BINARY"), stripped) into the root"

LOG=$(mktemp /tmp/pocusd-nspawn.XXXXXX.log)
nspawn_boot "$ROOT" "$LOG"
say "booted: system $(in_root systemctl is-system-running 2>/dev/null || true) (init pid $LEADER on the host)"
failed=$(in_root systemctl --failed --plain --no-legend --no-pager 2>/dev/null || true)
[ -z "$failed" ] || say "failed units in the root (not pocusd's): $failed"

# 1. Started at boot, active (running) with its status text (READY=1 and STATUS= over sd_notify).
wait_active 90 || { journal; fail "pocusd.service not active (running) 90 s after boot"; }
PID1=$(prop MainPID)
say "pocusd.service active (running), MainPID $PID1, status: \"$(prop StatusText)\""
# Wait for frames: the status text says streaming once measurements flow.
wait_status streaming 60 "no 'streaming' status text within 60 s"
say "streaming: \"$(prop StatusText)\""

# 2. The system-bus policy.
DEST=(--system --dest org.pocusd.Daemon1 --object-path /org/pocusd/Daemon1)
as() { local u=$1; shift; in_root runuser -u "$u" -- "$@"; }
out=$(as checkuser gdbus call "${DEST[@]}" --method org.pocusd.Daemon1.Pause true 2>&1) \
  && fail "an unprivileged user was allowed to call Pause: $out"
echo "$out" | grep AccessDenied >/dev/null || fail "the unprivileged call failed for another reason: $out"
say "unprivileged Pause(true) refused: $(echo "$out" | grep -o 'org.freedesktop.DBus.Error.AccessDenied' | head -1)"
state=$(as checkuser gdbus call "${DEST[@]}" --method org.freedesktop.DBus.Properties.Get org.pocusd.Daemon1 State 2>&1) \
  || fail "an unprivileged user could not read State: $state"
say "unprivileged read of State allowed: $state"
as checkop gdbus call "${DEST[@]}" --method org.pocusd.Daemon1.Pause true >/dev/null \
  || fail "the operator was refused Pause(true)"
wait_status paused 20 "Pause(true) by the operator did not pause"
as checkop gdbus call "${DEST[@]}" --method org.pocusd.Daemon1.Pause false >/dev/null \
  || fail "the operator was refused Pause(false)"
wait_status streaming 20 "Pause(false) by the operator did not resume"
say "operator Pause(true)/Pause(false) allowed (status went \"paused\" and back to \"streaming\")"
status_err=$(as checkuser /usr/bin/pocusd status 2>&1 >/dev/null || true)
if echo "$status_err" | grep -i 'insecure memory' >/dev/null; then fail "pocusd status printed: $status_err"; fi
say "pocusd status as a plain user: $(as checkuser /usr/bin/pocusd status 2>/dev/null | head -1)"

# 3. The watchdog: a stopped main process is killed and the unit restarts.
restarts0=$(prop NRestarts)
in_root systemctl kill --kill-whom=main --signal=SIGSTOP pocusd.service
t_stop=$(date +%s.%N)
say "SIGSTOP sent to MainPID $PID1 (WatchdogSec=$(prop WatchdogUSec))"
wait_active 90 "$PID1" || { journal; fail "the unit did not restart within 90 s of SIGSTOP"; }
t_back=$(date +%s.%N)
restarts1=$(prop NRestarts)
[ "$restarts1" -gt "$restarts0" ] || fail "NRestarts did not grow ($restarts0 -> $restarts1)"
in_root journalctl -b -u pocusd --no-pager | grep -i 'watchdog timeout' >/dev/null \
  || fail "the journal does not say the watchdog fired"
say "watchdog killed $PID1 and the unit restarted as MainPID $(prop MainPID) after $(printf '%.1f' "$(echo "$t_back - $t_stop" | bc)") s (NRestarts $restarts0 -> $restarts1)"

# 4. systemctl stop: exits 0, the daemon exits 0.
t0=$(date +%s.%N)
in_root systemctl stop pocusd.service || fail "systemctl stop pocusd exited $?"
t1=$(date +%s.%N)
[ "$(prop Result)" = success ] || fail "after stop: Result=$(prop Result)"
[ "$(prop ExecMainStatus)" = 0 ] || fail "after stop: ExecMainStatus=$(prop ExecMainStatus)"
say "systemctl stop: exit 0 in $(printf '%.2f' "$(echo "$t1 - $t0" | bc)") s, Result=success, ExecMainStatus=0"

# 5. The nightly timer, the security scores, the journal.
in_root systemctl list-timers --all --no-pager | grep pocusd-train.timer >/dev/null || fail "pocusd-train.timer is not listed"
say "timer: $(in_root systemctl list-timers --all --no-pager | grep pocusd-train.timer | sed 's/  */ /g')"
# The training unit runs `pocusd loop nightly` under its sandbox: with no accepted labels it
# records why in the history and exits 0.
in_root rm -f /var/lib/pocusd/models/history.jsonl
in_root systemctl start pocusd-train.service || fail "pocusd-train.service failed: $(in_root journalctl -u pocusd-train --no-pager -q | tail -5)"
grep -q 'too few site images' "$ROOT/var/lib/pocusd/models/history.jsonl" 2>/dev/null \
  || fail "pocusd-train.service left no 'too few site images' record in /var/lib/pocusd/models/history.jsonl"
say "pocusd-train.service: exit 0, history: $(tail -n 1 "$ROOT/var/lib/pocusd/models/history.jsonl" | cut -c1-160)"
for u in pocusd.service pocusd-train.service; do
  score=$(in_root systemd-analyze security --no-pager "$u" 2>/dev/null \
    | awk -F: '/Overall exposure level/ { split($2, w, " "); print w[1] }')
  say "systemd-analyze security $u: ${score:-?} (target <= 2.0)"
  awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.0) }' || fail "$u scores ${score:-?}"
done
if in_root journalctl -b -u pocusd --no-pager | grep -i 'insecure memory' >/dev/null; then
  fail "the service's journal says 'using insecure memory'"
fi
say "journal of pocusd.service: $(in_root journalctl -b -u pocusd --no-pager -q | wc -l) lines, no 'insecure memory'"
# The check can see the warning: with no lockable memory it comes back.
out=$(in_root systemd-run --wait --pipe -q -p User=pocusd -p LimitMEMLOCK=0 /usr/bin/pocusd --version 2>&1 || true)
echo "$out" | grep -i 'insecure memory' >/dev/null || fail "with LimitMEMLOCK=0 the libgcrypt warning did not appear: $out"
out=$(in_root systemd-run --wait --pipe -q -p User=pocusd -p LimitMEMLOCK=64K /usr/bin/pocusd --version 2>&1 || true)
echo "$out" | grep -i 'insecure memory' >/dev/null && fail "with LimitMEMLOCK=64K the libgcrypt warning appeared: $out"
say "libgcrypt's warning: present with LimitMEMLOCK=0, absent with the units' LimitMEMLOCK=64K"
say "all checks passed"
