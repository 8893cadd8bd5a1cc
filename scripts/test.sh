#!/usr/bin/env bash
# Runs emberwatch's whole test suite on a fresh Debian/Ubuntu machine: installs the tools the
# integration tests drive (mosquitto, the broker they start on free ports; socat and mbpoll, for
# serial and Modbus checks; haproxy and curl, for the drain hooks in deploy/hooks/; systemd-analyze,
# for the units in deploy/; prometheus-alertmanager, which the console pages through; chromium and
# chromium-driver, the real browser the console page is tested in) and pysunspec2 (PyPI, for the
# SunSpec cross-check) when any is missing, then `cargo test --locked` (library, binary and
# integration tests; benches are built by clippy in CI but not run here). Exits with cargo's status.
#
# No mosquitto service needs to be running: every test starts its own broker.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

have() { command -v "$1" >/dev/null 2>&1; }

if ! have cargo; then
    echo "scripts/test.sh: cargo not found; install Rust first (https://rustup.rs)" >&2
    exit 1
fi

# What the tests drive, as "command package" pairs: a missing command installs its package.
needs=(
    "/usr/sbin/mosquitto mosquitto"
    "mosquitto_sub mosquitto-clients"
    "socat socat"
    "mbpoll mbpoll"
    "systemd-analyze systemd"
    "/usr/sbin/haproxy haproxy"
    "curl curl"
    "ss iproute2"
    "openssl openssl"
    "/usr/bin/prometheus-alertmanager prometheus-alertmanager"
    "/usr/bin/chromium chromium"
    "/usr/bin/chromedriver chromium-driver"
)
missing=()
for pair in "${needs[@]}"; do
    read -r cmd pkg <<<"$pair"
    if ! { [ -x "$cmd" ] || have "$cmd"; }; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    if ! have apt-get; then
        echo "scripts/test.sh: missing ${missing[*]}; install them with your package manager" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    echo "scripts/test.sh: installing ${missing[*]}" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

# pysunspec2, the SunSpec Alliance's own client, cross-checks `emberwatch sim --sunspec` in
# tests/sunspec.rs (through tests/sunspec_client.py). Pinned; a Debian python3 that refuses pip
# outside a virtual environment (PEP 668) gets --break-system-packages for this one package.
PYSUNSPEC2="pysunspec2==1.3.7"
if have python3 && ! python3 -c 'import sunspec2' >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1 && have apt-get; then
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then
            sudo="sudo"
        fi
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-pip
    fi
    echo "scripts/test.sh: installing $PYSUNSPEC2" >&2
    python3 -m pip install --quiet "$PYSUNSPEC2" 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages "$PYSUNSPEC2" ||
        echo "scripts/test.sh: could not install $PYSUNSPEC2: tests/sunspec.rs will say SKIPPED" >&2
fi

# A system broker (started by the package) is harmless to the tests, which use free ports, but it
# holds 127.0.0.1:1883, the port `emberwatch demo` and `url = "embedded"` want.
if have ss && ss -ltn 2>/dev/null | grep -q '127.0.0.1:1883 \|\*:1883 \|0.0.0.0:1883 '; then
    echo "scripts/test.sh: note: something (a system mosquitto?) listens on port 1883;" \
        "the tests do not need it, but 'emberwatch demo' does need the port free" >&2
fi

status=0
cargo test --locked --no-fail-fast "$@" || status=$?

# The Debian package, installed and started on this machine (root only: it installs a package,
# then purges it), then installed on a fresh Debian booted with systemd in a container and run as
# a service (root only: debootstrap, systemd-nspawn). Skipped when arguments narrow the run.
if [ "$#" -eq 0 ] && [ "$(id -u)" -eq 0 ] && have apt-get; then
    if ! command -v cargo-deb >/dev/null 2>&1; then
        cargo install cargo-deb --locked --version "^3" >&2
    fi
    # One build of the package for both: cargo deb repacks it every time it runs.
    deb=$(cargo deb 2>/dev/null | tail -n 1) || true
    if [ -f "$deb" ]; then
        export EMBERWATCH_DEB
        EMBERWATCH_DEB=$(realpath "$deb")
    fi
    bash scripts/package-test.sh || status=$?
    bash scripts/install-test.sh || status=$?
fi
exit "$status"
