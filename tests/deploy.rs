//! The systemd units an operator installs: hardened to a `systemd-analyze security` exposure of
//! 2.0 or less (issue 7), while still reaching serial ports and the state directory.

use std::process::Command;

/// The exposure score systemd prints for a unit file, e.g. 1.6.
fn exposure(unit: &str) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", unit])
        .output()
        .expect("systemd-analyze runs (Debian package systemd)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line for {unit}: {text}"));
    line.split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"))
}

fn has_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
}

#[test]
fn gateway_unit_is_hardened_and_reaches_serial_ports() {
    if !has_systemd_analyze() {
        panic!("systemd-analyze is missing: scripts/test.sh installs systemd");
    }
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/emberwatch.service");
    let score = exposure(unit);
    assert!(score <= 2.0, "exposure {score} > 2.0");
    let text = std::fs::read_to_string(unit).expect("unit file");
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=emberwatch",
        "SupplementaryGroups=dialout",
        "DeviceAllow=char-ttyUSB rw",
    ] {
        assert!(text.contains(line), "{unit} lacks {line}");
    }
}

#[test]
fn drain_agent_unit_is_hardened() {
    if !has_systemd_analyze() {
        panic!("systemd-analyze is missing: scripts/test.sh installs systemd");
    }
    let unit = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/emberwatch-drain-agent.service"
    );
    let score = exposure(unit);
    assert!(score <= 2.0, "exposure {score} > 2.0");
}
