//! The systemd units an operator installs: hardened to a `systemd-analyze security` exposure of
//! 1.3 or less (issues 7 and 15), while still reaching serial ports and the state directory.

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
    assert!(score <= 1.3, "exposure {score} > 1.3");
    let text = std::fs::read_to_string(unit).expect("unit file");
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=emberwatch",
        "SupplementaryGroups=dialout",
        "DeviceAllow=char-ttyUSB rw",
        "PrivateMounts=yes",
        "UMask=0077",
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
    assert!(score <= 1.3, "exposure {score} > 1.3");
}

#[test]
fn console_unit_is_hardened_and_waits_for_its_configuration() {
    if !has_systemd_analyze() {
        panic!("systemd-analyze is missing: scripts/test.sh installs systemd");
    }
    let unit = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/emberwatch-console.service"
    );
    let score = exposure(unit);
    assert!(score <= 1.3, "exposure {score} > 1.3");
    let text = std::fs::read_to_string(unit).expect("unit file");
    for line in [
        "ConditionPathExists=/etc/emberwatch/console.toml",
        "ExecStart=/usr/bin/emberwatch console --config /etc/emberwatch/console.toml",
        "EMBERWATCH__CONSOLE__DATABASE=/var/lib/emberwatch/console.db",
        "StateDirectory=emberwatch",
        "PrivateDevices=yes",
        "UMask=0077",
    ] {
        assert!(text.contains(line), "{unit} lacks {line}");
    }
}

mod common;

/// systemd's side of `Type=notify` and `WatchdogSec=`: a datagram socket the daemon writes to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_ready_after_the_first_poll_and_pings_the_watchdog() {
    use common::*;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let state = tempfile::tempdir().expect("tempdir");
    let config = gateway_config(broker.port(), sim.port(), state.path(), "");
    let sock_env = sock_path.display().to_string();
    let _daemon = Daemon::start_with_env(
        &config,
        &[("NOTIFY_SOCKET", &sock_env), ("WATCHDOG_USEC", "4000000")],
    );
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut buf = [0u8; 512];
    while !(got.iter().any(|m: &String| m.contains("READY=1"))
        && got.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => got.push(String::from_utf8_lossy(&buf[..n]).to_string()),
            _ => panic!("no READY=1 and WATCHDOG=1 within 15 s; got {got:?}"),
        }
    }
    let ready = got.iter().position(|m| m.contains("READY=1"));
    assert_eq!(ready, Some(0), "READY comes first: {got:?}");
}

/// The next notification datagram within `within`.
async fn next(sock: &tokio::net::UnixDatagram, within: std::time::Duration) -> Option<String> {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(within, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).to_string()),
        _ => None,
    }
}

/// The drain agent under `Type=notify` + `WatchdogSec=`: ready, then pinged, and still pinged
/// while a hook runs longer than the watchdog interval (a hook is bounded by its own timeout;
/// systemd must not kill an agent in the middle of draining a load balancer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_agent_keeps_pinging_the_watchdog_while_a_hook_runs() {
    use common::*;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let broker = Mosquitto::start().await;
    let config = dir.path().join("agent.toml");
    let marker = dir.path().join("hook-started");
    std::fs::write(
        &config,
        format!(
            r#"[site]
id = "test-site"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
keep_alive = "5s"
[storage]
dir = '{dir}'
[agent]
id = "lb-1"
zones = ["room-1"]
drain = ["sh", "-c", "touch '{marker}'; sleep 6"]
restore = ["true"]
timeout = "30s"
"#,
            port = broker.port(),
            dir = dir.path().display(),
            marker = marker.display(),
        ),
    )
    .expect("write agent config");
    let mut acks = Subscriber::connect(broker.port(), "emberwatch/test-site/drain/#").await;
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_emberwatch"))
        .args(["drain-agent", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("EMBERWATCH__MQTT__URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn drain-agent");
    assert_eq!(
        next(&sock, Duration::from_secs(15))
            .await
            .as_deref()
            .map(str::trim_end),
        Some("READY=1")
    );
    acks.expect_where(
        "emberwatch/test-site/drain/agents/lb-1",
        |j| j["state"] == "online",
        Duration::from_secs(10),
    )
    .await;
    publish(
        broker.port(),
        "emberwatch/test-site/drain/room-1/request",
        br#"{"drain_id":"d-1","zone":"room-1","severity":"critical","reason":["x"],"requested_at":"2026-11-25T00:00:00Z","deadline":"2026-11-25T01:00:00Z"}"#,
        true,
    )
    .await;
    acks.expect_where(
        "emberwatch/test-site/drain/room-1/ack/lb-1",
        |j| j["state"] == "started",
        Duration::from_secs(10),
    )
    .await;
    // `started` is acked as the hook is spawned; its first command follows shortly.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the hook never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The hook sleeps 6 s; count pings in the next 4 s, all while it runs.
    let until = Instant::now() + Duration::from_secs(4);
    let mut pings = 0;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if let Some(m) = next(&sock, left).await {
            pings += usize::from(m.contains("WATCHDOG=1"));
        }
    }
    assert!(pings >= 2, "{pings} watchdog pings while the hook ran");
    acks.expect_where(
        "emberwatch/test-site/drain/room-1/ack/lb-1",
        |j| j["state"] == "done",
        Duration::from_secs(15),
    )
    .await;
    let _ = agent.kill().await;
}
