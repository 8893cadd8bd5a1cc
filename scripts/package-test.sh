#!/usr/bin/env bash
# Builds the Debian package with cargo-deb, installs it on this machine, checks what an operator
# gets (binary, units, conffile, hooks, system user in dialout, state directory), starts the
# service's own command line as its user against a local broker and simulator, and purges the
# package again. Needs root (it installs a package); scripts/test.sh runs it when it is root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "package-test: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || { say "needs root (installs a package); skipped"; exit 0; }
if dpkg -s emberwatch >/dev/null 2>&1; then
    fail "an emberwatch package is already installed; refusing to replace it"
fi
if ! command -v cargo-deb >/dev/null 2>&1; then
    say "installing cargo-deb from crates.io"
    cargo install cargo-deb --locked --version "^3" >&2
fi

# scripts/test.sh builds the package once for both install tests (EMBERWATCH_DEB).
deb=${EMBERWATCH_DEB:-$(cargo deb 2>/dev/null | tail -n 1)}
[ -f "$deb" ] || fail "cargo deb produced no package ($deb)"
say "built $deb"

cleanup() {
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
    [ -n "${sim:-}" ] && kill "$sim" 2>/dev/null || true
    [ -n "${broker:-}" ] && kill "$broker" 2>/dev/null || true
    DEBIAN_FRONTEND=noninteractive dpkg --purge emberwatch >/dev/null 2>&1 || true
    rm -rf "${work:-/nonexistent}"
}
trap cleanup EXIT

DEBIAN_FRONTEND=noninteractive apt-get install -y "$(realpath "$deb")" >/dev/null
say "installed"

for f in /usr/bin/emberwatch /etc/emberwatch/emberwatch.toml \
    /lib/systemd/system/emberwatch.service /lib/systemd/system/emberwatch-drain-agent.service \
    /usr/lib/emberwatch/hooks/haproxy-drain /usr/lib/emberwatch/hooks/k8s-drain \
    /usr/lib/emberwatch/hooks/webhook /usr/share/doc/emberwatch/README.md; do
    [ -e "$f" ] || fail "$f missing"
done
dpkg-query -W -f='${Conffiles}\n' emberwatch | grep -q /etc/emberwatch/emberwatch.toml \
    || fail "/etc/emberwatch/emberwatch.toml is not a conffile"
id emberwatch >/dev/null || fail "no emberwatch user"
id -nG emberwatch | grep -qw dialout || fail "emberwatch is not in dialout"
[ "$(stat -c %U /var/lib/emberwatch)" = emberwatch ] || fail "/var/lib/emberwatch not owned by emberwatch"
/usr/bin/emberwatch --version >/dev/null || fail "the installed binary does not run"
runuser -u emberwatch -- /usr/bin/emberwatch check-config --config /etc/emberwatch/emberwatch.toml >/dev/null \
    || fail "the shipped configuration is refused"
if command -v systemd-analyze >/dev/null; then
    score=$(systemd-analyze security --offline=true /lib/systemd/system/emberwatch.service 2>/dev/null \
        | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
    say "installed unit exposure: $score"
fi

# Start the service's command line as its user, as systemd would, against a local broker and a
# simulated rack on the shipped configuration's address.
work=$(mktemp -d)
port=""
for _ in $(seq 20); do
    candidate=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; break; fi
done
[ -n "$port" ] || fail "no free port"

printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$work/m.conf"
chmod 755 "$work"; chmod 644 "$work/m.conf"
/usr/sbin/mosquitto -c "$work/m.conf" >/dev/null 2>&1 & broker=$!
/usr/bin/emberwatch sim --listen 127.0.0.1:5020 >/dev/null 2>&1 & sim=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
runuser -u emberwatch -- env EMBERWATCH__STORAGE__DIR=/var/lib/emberwatch \
    EMBERWATCH__MQTT__URL="mqtt://127.0.0.1:$port" \
    /usr/bin/emberwatch run --config /etc/emberwatch/emberwatch.toml >"$work/daemon.log" 2>&1 & daemon=$!
status=$(timeout 15 mosquitto_sub -h 127.0.0.1 -p "$port" -C 1 -t 'emberwatch/+/gateways/+/status' || true)
echo "$status" | grep -q '"online"' || { cat "$work/daemon.log" >&2; fail "the service did not come online (status: $status)"; }
[ -f /var/lib/emberwatch/state.json ] || [ -d /var/lib/emberwatch ] || fail "no state directory"
# SIGTERM to the daemon itself (as systemd's KillMode would), not to runuser.
pkill -TERM -u emberwatch -f '/usr/bin/emberwatch run' || fail "no daemon process of user emberwatch"
code=0; wait "$daemon" || code=$?
daemon=""
[ "$code" -eq 0 ] || { cat "$work/daemon.log" >&2; fail "the daemon exited $code on SIGTERM"; }
say "the installed service ran as user emberwatch and came online"
echo "package-test: 1 passed, 0 failed"
