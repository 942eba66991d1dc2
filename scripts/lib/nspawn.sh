# Shared by scripts/systemd-check.sh and scripts/package-check.sh (sourced, not run): boot a
# Debian root under systemd-nspawn, run commands inside it, wait for pocusd.service.
# The sourcing script defines say() and fail(); IN_ROOT_ENV (an array, may be empty) prefixes
# every command run inside (e.g. env -i PATH=...).

NSPAWN=""; LEADER=""
IN_ROOT_ENV=(${IN_ROOT_ENV[@]+"${IN_ROOT_ENV[@]}"})

# nspawn_boot ROOT LOG: boots ROOT in the background (private network: the daemon's ports stay
# inside; CAP_IPC_LOCK: without it nspawn's seccomp filter refuses mlock to everything in the
# container, which libgcrypt, loaded through libavformat, reports as "using insecure memory";
# see systemd/README.md) and waits until the system is running or degraded.
nspawn_boot() {
  local root=$1 log=$2
  systemd-nspawn -b -D "$root" --keep-unit --register=no --console=pipe --private-network -q \
    --capability=CAP_IPC_LOCK >"$log" 2>&1 &
  NSPAWN=$!
  # The container's init: nspawn's child whose name is systemd (a first child can be nspawn's
  # own short-lived intermediate process, gone a moment later).
  for _ in $(seq 100); do
    for p in $(pgrep -P "$NSPAWN" || true); do
      [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ] && LEADER=$p
    done
    [ -n "$LEADER" ] && break
    kill -0 "$NSPAWN" 2>/dev/null || { cat "$log"; fail "systemd-nspawn exited at start"; }
    sleep 0.1
  done
  [ -n "$LEADER" ] || fail "no init process in the container after 10 s"
  local st
  for _ in $(seq 100); do
    st=$(in_root systemctl is-system-running 2>/dev/null || true)
    case "$st" in running|degraded) break ;; esac
    sleep 0.3
  done
}

# nspawn_stop: powers the container off (kills nspawn after 10 s).
nspawn_stop() {
  if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
    [ -n "$LEADER" ] && nsenter -t "$LEADER" -a systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 50); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.2; done
    kill "$NSPAWN" 2>/dev/null || true
    wait "$NSPAWN" 2>/dev/null || true
  fi
}

in_root() { nsenter -t "$LEADER" -a ${IN_ROOT_ENV[@]+"${IN_ROOT_ENV[@]}"} "$@"; }
prop() { in_root systemctl show -P "$1" pocusd.service; }
journal() { in_root journalctl -b -u pocusd --no-pager | tail -30; }

# wait_active SECONDS [MAINPID]: pocusd.service active (running) with a status text (and a MainPID
# other than MAINPID); returns 1 after SECONDS.
wait_active() {
  local end=$(( $(date +%s) + $1 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    if [ "$(prop ActiveState)" = active ] && [ "$(prop SubState)" = running ] \
       && [ -n "$(prop StatusText)" ] && [ "$(prop MainPID)" != "${2:-}" ] && [ "$(prop MainPID)" != 0 ]; then
      return 0
    fi
    sleep 0.5
  done
  return 1
}

# wait_status TEXT SECONDS WHAT: the unit's status text contains TEXT, or fail saying WHAT.
wait_status() {
  local end=$(( $(date +%s) + $2 ))
  until prop StatusText | grep "$1" >/dev/null; do
    [ "$(date +%s)" -lt "$end" ] || fail "$3 (status: $(prop StatusText))"
    sleep 0.3
  done
}
