#!/usr/bin/env bash
# Installs the Debian package on a fresh Debian 12 (bookworm) made by debootstrap and booted with
# systemd as PID 1 in a container (systemd-nspawn, private network), then checks what an operator
# sees when following the README: `apt-get install ./emberwatch_*.deb`, `systemctl enable --now
# emberwatch` returning once the daemon said READY, the gateway's retained status online on the
# distribution's mosquitto, the watchdog restarting a frozen daemon, `systemctl stop` exiting 0
# with the status offline, the journal, and a purge. Needs root; scripts/test.sh runs it when it
# is root. Installs debootstrap and systemd-container on this machine when missing.
#
# Everything lives in target/install-test/: the root (made afresh each run from a tarball of a
# debootstrap kept for a week; delete the directory to force a new debootstrap) and the
# container's console log. The container is stopped and nothing stays mounted, even on failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "install-test: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { say "needs root (debootstrap, containers); skipped"; exit 0; }

suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
include=systemd,systemd-sysv,dbus,mosquitto,mosquitto-clients
machine=emberwatch-install-test
dir=$(pwd)/target/install-test
root=$dir/root
base=$dir/$suite-$(echo "$suite $mirror $include" | sha1sum | cut -c1-12).tar
topic=emberwatch/pangyo-a/gateways/gw-b1/status # the shipped configuration's site and gateway
passed=0
nspawn=""
leader=""

now() { date +%s; }
step_start=$(now)
step() { say "$1 ($(($(now) - step_start)) s)"; step_start=$(now); }

# Runs a command inside the booted container (all of its namespaces, its root).
inside() { nsenter -t "$leader" -a "$@"; }
# Whether the service's journal has a line containing $1. journald may write a line a moment
# after systemd acted on it, so checks poll this with until_ok. (grep reads to the end: with
# -q it would quit at the first match, journalctl would die of SIGPIPE, and pipefail would
# call that a failure.)
in_journal() { inside journalctl -u emberwatch --no-pager | grep -F "$1" >/dev/null; }

fail() {
    say "FAILED: $*"
    if [ -n "$leader" ] && kill -0 "$leader" 2>/dev/null; then
        say "journal of emberwatch.service in the container:"
        inside journalctl -u emberwatch --no-pager -n 60 >&2 || true
        inside systemctl --no-pager status emberwatch >&2 || true
    fi
    [ -f "$dir/console.log" ] && { say "container console (tail):"; tail -n 30 "$dir/console.log" >&2; }
    exit 1
}
ok() { passed=$((passed + 1)); say "ok: $*"; }
# The machine, not the package, cannot do this (no mirror, no container): say so loudly and
# skip, rather than fail every other test's submission on an outage of the Debian mirror.
# Everything the package itself does is a failure.
skip_env() {
    say "SKIPPED: $* — this machine cannot run the install test; scripts/package-test.sh"
    say "SKIPPED:   still covered the package on the machine itself"
    [ -f "$dir/console.log" ] && tail -n 20 "$dir/console.log" >&2
    exit 0
}

# Polls "$@" until it succeeds, for at most $1 seconds.
until_ok() {
    local deadline=$(($(now) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(now)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

unmount_root() {
    # Whatever is still mounted under the root (the container's own mounts live in its mount
    # namespace and go with it; these would be leftovers), deepest first.
    local m
    for m in $(findmnt -rn -o TARGET | grep -F "$root" | sort -r); do
        umount -l "$m" || true
    done
}

cleanup() {
    local code=$?
    if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
        kill -TERM "$nspawn" 2>/dev/null || true # systemd-nspawn halts the container
        if ! until_ok 30 bash -c "! kill -0 $nspawn"; then
            say "the container did not halt in 30 s; killing it"
            kill -KILL "$nspawn" 2>/dev/null || true
            [ -n "$leader" ] && kill -KILL "$leader" 2>/dev/null || true
        fi
        wait "$nspawn" 2>/dev/null || true
    fi
    unmount_root
    if findmnt -rn -o TARGET | grep -F "$root" >/dev/null; then
        say "still mounted under $root; left in place"
    else
        rm -rf "$root"
    fi
    # systemd-nspawn's own leftover on a host without systemd (an empty directory).
    rmdir "/run/systemd/nspawn/propagate/$machine" 2>/dev/null || true
    exit "$code"
}
trap cleanup EXIT

# Tools: debootstrap and systemd-nspawn on this machine, cargo-deb to build the package.
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null || skip_env "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null \
        || skip_env "cannot install ${missing[*]}"
fi
if ! command -v cargo-deb >/dev/null 2>&1; then
    say "installing cargo-deb from crates.io"
    cargo install cargo-deb --locked --version "^3" >&2
fi
step "tools ready"

# scripts/test.sh builds the package once for both install tests (EMBERWATCH_DEB).
deb=${EMBERWATCH_DEB:-$(cargo deb 2>/dev/null | tail -n 1)}
[ -f "$deb" ] || fail "cargo deb produced no package ($deb)"
deb=$(realpath "$deb")
step "built $deb"

# A fresh root: unpacked from the tarball of a debootstrap at most a week old, else a new one.
mkdir -p "$dir"
unmount_root
rm -rf "$root"
if [ -z "$(find "$base" -mtime -7 2>/dev/null)" ]; then
    rm -f "$dir"/*.tar
    say "debootstrap $suite from $mirror (--variant=minbase --include=$include)"
    debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" \
        >"$dir/debootstrap.log" 2>&1 || { tail -n 20 "$dir/debootstrap.log" >&2; skip_env "debootstrap from $mirror failed"; }
    tar -C "$root" -cf "$base.tmp" . && mv "$base.tmp" "$base"
    step "debootstrap done"
else
    mkdir -p "$root"
    tar -C "$root" -xf "$base"
    step "root unpacked from $(basename "$base")"
fi

# Boot it: systemd as PID 1, its own network namespace (loopback only, so its mosquitto and
# simulators on 1883/5020/5021 meet nothing of this machine's), the package's directory read-only.
# --register=no --keep-unit: no machined or system bus needed on this side.
systemd-nspawn -D "$root" -M "$machine" -b --register=no --keep-unit --private-network \
    --bind-ro="$(dirname "$deb")":/mnt/pkg --console=read-only </dev/null >"$dir/console.log" 2>&1 &
nspawn=$!
until_ok 20 pgrep -P "$nspawn" || skip_env "systemd-nspawn started no container"
leader=$(pgrep -P "$nspawn")
booted() {
    case $(inside systemctl is-system-running 2>/dev/null) in running | degraded) return 0 ;; esac
    return 1
}
until_ok 90 booted || skip_env "the container's systemd did not finish booting in 90 s"
state=$(inside systemctl is-system-running || true)
[ "$(inside cat /proc/1/comm)" = systemd ] || skip_env "PID 1 in the container is not systemd"
if [ "$state" != running ]; then
    say "note: the container booted $state:"
    inside systemctl --failed --no-pager >&2 || true
fi
inside systemctl is-active --quiet mosquitto || fail "the distribution's mosquitto is not running"
ok "booted Debian $(inside cat /etc/debian_version) with systemd as PID 1 ($state)"
step "boot done"

# Install as the README says; the container has no network, so every dependency must already be
# part of a minimal Debian.
inside env DEBIAN_FRONTEND=noninteractive apt-get install -y "/mnt/pkg/$(basename "$deb")" \
    >"$dir/apt.log" 2>&1 || { cat "$dir/apt.log" >&2; fail "apt-get install of the package failed"; }
grep -i 'warning' "$dir/apt.log" | grep -iv 'apt does not have a stable CLI' >&2 \
    && fail "installing the package printed warnings (above)"
inside systemctl cat emberwatch.service >/dev/null || fail "systemd does not know emberwatch.service after install"
[ "$(inside systemctl is-active emberwatch)" = inactive ] || fail "the package started the service before the operator configured it"
ok "installed; the unit is known to systemd and not started"

# The shipped configuration polls 127.0.0.1:5020 (rack-01, the UPS, the detectors) and :5021
# (rack-02): a simulator on each, so that every device answers.
for port in 5020 5021; do
    inside systemd-run --quiet --unit="sim-$port" -p Type=exec \
        /usr/bin/emberwatch sim --listen "127.0.0.1:$port" || fail "cannot start the simulator on $port"
done

t0=$(now)
inside systemctl enable --now emberwatch || fail "systemctl enable --now emberwatch failed"
took=$(($(now) - t0))
show() { inside systemctl show -p "$1" --value emberwatch; }
[ "$(inside systemctl is-enabled emberwatch)" = enabled ] || fail "not enabled"
[ "$(show ActiveState)/$(show SubState)" = active/running ] \
    || fail "not active/running after start: $(show ActiveState)/$(show SubState)"
[ "$(show Type)" = notify ] || fail "Type=$(show Type)"
[ "$(show NRestarts)" = 0 ] || fail "NRestarts=$(show NRestarts)"
[ "$(show WatchdogUSec)" = 30s ] || fail "WatchdogUSec=$(show WatchdogUSec)"
# READY came from the daemon once every device answered, not from its 30 s fallback.
until_ok 10 in_journal 'every device answered: ready' \
    || fail "no 'every device answered: ready' in the journal (start took $took s)"
ok "systemctl enable --now returned in $took s: active/running, Type=notify, NRestarts=0, WatchdogUSec=30s"

status() { inside timeout 5 mosquitto_sub -h 127.0.0.1 -C 1 --retained-only -t "$topic" 2>/dev/null || true; }
first=$(status)
echo "$first" | grep -q '"state":"online"' || fail "retained status is not online: $first"
ok "retained $topic: $first"

user=$(inside stat -c %U "/proc/$(show MainPID)")
[ "$user" = emberwatch ] || fail "the daemon runs as $user, not emberwatch"
ok "the daemon runs as user emberwatch"
step "install and start done"

# The console: installed but inactive until configured; configured as the README says (the
# example file, one user, the users file given to the service user), it serves /healthz and
# lists the running gateway.
[ "$(inside systemctl is-active emberwatch-console)" = inactive ] \
    || fail "the console started before the operator configured it"
inside cp /usr/share/doc/emberwatch/examples/console.toml /etc/emberwatch/console.toml
echo 'night-shift-pw' | inside /usr/bin/emberwatch console-user --users /etc/emberwatch/console.users kim \
    >/dev/null 2>&1 || fail "console-user could not add a user"
inside chown emberwatch:emberwatch /etc/emberwatch/console.users
inside systemctl enable --now emberwatch-console || fail "systemctl enable --now emberwatch-console failed"
http_get() {
    inside bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 || exit 1
        printf "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" "$1" >&3; cat <&3' _ "$1" 2>/dev/null
}
console_up() { http_get /healthz | head -n 1 | grep -q ' 200'; }
until_ok 30 console_up || fail "the console's /healthz is not 200: $(http_get /healthz | head -n 1)"
lists_gateway() { http_get /api/gateways | grep -q '"gw-b1"'; }
until_ok 20 lists_gateway || fail "the console does not list gw-b1: $(http_get /api/gateways | tail -n 1)"
cuser=$(inside stat -c %U "/proc/$(inside systemctl show -p MainPID --value emberwatch-console)")
[ "$cuser" = emberwatch ] || fail "the console runs as $cuser, not emberwatch"
ok "the console, configured from the example, runs as emberwatch, answers /healthz 200 and lists gw-b1"
step "console done"

# The watchdog: pings arrive while the daemon works...
wd=$(show WatchdogTimestampMonotonic)
[ "$wd" != 0 ] || fail "no watchdog ping received"
pinged() { [ "$(show WatchdogTimestampMonotonic)" != "$wd" ]; }
until_ok 10 pinged || fail "watchdog pings stopped arriving"
ok "watchdog pings arrive"
# ...and a frozen daemon is killed by systemd after WatchdogSec=30s and restarted, going offline
# on the broker meanwhile (its last will) and back online after.
inside systemctl kill --kill-whom=main -s SIGSTOP emberwatch
offline() { status | grep -q '"state":"offline"'; }
until_ok 20 offline || fail "a frozen gateway's status did not go offline (last will): $(status)"
restarted() { [ "$(show NRestarts)" = 1 ]; }
until_ok 60 restarted || fail "the watchdog did not restart the frozen daemon (NRestarts=$(show NRestarts))"
until_ok 10 in_journal 'Watchdog timeout' || fail "no 'Watchdog timeout' in the journal"
back() { [ "$(show ActiveState)" = active ] && status | grep -q '"state":"online"' && [ "$(status)" != "$first" ]; }
until_ok 30 back || fail "not back online after the watchdog restart: $(show ActiveState) $(status)"
ok "a frozen daemon went offline, was restarted by the watchdog (NRestarts=1) and came back online"
step "watchdog done"

# A clean stop: exit 0, and the retained status says offline at once.
inside systemctl stop emberwatch || fail "systemctl stop exited $?"
[ "$(show Result)" = success ] || fail "Result=$(show Result) after stop"
after=$(status)
echo "$after" | grep -q '"state":"offline"' || fail "retained status after stop is not offline: $after"
ok "systemctl stop exited 0 (Result=success); retained status: $after"

for line in 'configuration OK: site pangyo-a, gateway gw-b1' 'emberwatch running site=pangyo-a' \
    'Started emberwatch.service' 'disconnected cleanly' 'Stopped emberwatch.service'; do
    until_ok 10 in_journal "$line" || fail "no '$line' in the journal"
done
ok "the journal has the config check, the daemon's start, its clean disconnect and systemd's lines"

# Purge while running: prerm stops it (offline), postrm removes its state.
inside systemctl start emberwatch || fail "restart before purge failed"
inside env DEBIAN_FRONTEND=noninteractive apt-get purge -y emberwatch >"$dir/apt.log" 2>&1 \
    || { cat "$dir/apt.log" >&2; fail "apt-get purge failed"; }
[ "$(show ActiveState)" = inactive ] || fail "the service is $(show ActiveState) after purge"
[ "$(inside systemctl is-active emberwatch-console)" != active ] || fail "the console still runs after purge"
offline || fail "status after purge is not offline: $(status)"
inside test ! -e /var/lib/emberwatch || fail "/var/lib/emberwatch is left after purge"
ok "purged while running: stopped, offline, state removed"
step "stop and purge done"

echo "install-test: $passed passed, 0 failed"
