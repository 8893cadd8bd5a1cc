//! The number this project is judged by: in the `thermal-runaway` scenario at `--speed 1`, how
//! long from the first off-gas alarm until the drain is confirmed and the power-cut clearance
//! given. The target is 15 s, long before the first smoke stage (scenario t+50 s).
//!
//! Real processes end to end: mosquitto, `emberwatch sim`, `emberwatch run` polling every second
//! with the off-gas rule of config/emberwatch.toml (warning 20 ppm, critical 50 ppm, 2 s on-delay),
//! and one `emberwatch drain-agent` whose hook is `true`, so the time measured is emberwatch's
//! own (a real hook adds its own drain time on top). The timeline is printed; run with
//! `cargo test --test drain_timeline -- --nocapture` to see it.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::process::Command;
use tokio::time::Instant;

/// The issue's target.
const TARGET: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thermal_runaway_is_drained_and_cleared_within_15s_of_the_first_offgas_alarm() {
    let broker = Mosquitto::start().await;
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let state = tempfile::tempdir().expect("tempdir");
    let dir = state.path().display().to_string();
    let port = broker.port();

    let agent_cfg = state.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            r#"[site]
id = "test-site"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
[storage]
dir = '{dir}'
[agent]
id = "lb-1"
zones = ["room-1"]
drain = ["true"]
restore = ["true"]
timeout = "10s"
"#
        ),
    )
    .expect("write agent config");
    let _agent = Command::new(env!("CARGO_BIN_EXE_emberwatch"))
        .arg("drain-agent")
        .arg("--config")
        .arg(&agent_cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agent");
    sub.expect_where(
        "emberwatch/test-site/drain/agents/lb-1",
        |v| v["state"] == "online",
        Duration::from_secs(10),
    )
    .await;

    // The scenario clock starts with the simulator.
    let sim = Sim::start("thermal-runaway", 1).await;
    let t_sim = Instant::now();
    let config = format!(
        r#"[site]
id = "test-site"
gateway = "gw-t"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
[storage]
dir = '{dir}'
[[devices]]
id = "offgas-01"
zone = "room-1"
transport = "modbus-tcp"
address = "127.0.0.1:{sim}"
poll_interval = "1s"
timeout = "500ms"
  [[devices.points]]
  id = "offgas"
  kind = "offgas"
  address = 121
  type = "u16"
  unit = "ppm"
[[rules]]
id = "offgas"
points = ["*/offgas"]
above = {{ warning = 20.0, critical = 50.0, emergency = 150.0 }}
deadband = 5.0
on_delay = "2s"
off_delay = "60s"
[drain]
trigger = "critical"
deadline = "120s"
agents = ["lb-1"]
"#,
        sim = sim.port()
    );
    let _daemon = Daemon::start(&config);

    let within = Duration::from_secs(60);
    let m = |t: &str| format!("emberwatch/test-site/{t}");
    let offgas = sub
        .expect_where(
            &m("alarms/room-1/offgas-01/offgas/offgas"),
            |v| v["state"] == "active",
            within,
        )
        .await;
    let t_offgas = Instant::now();
    let req = sub
        .expect_where(
            &m("drain/room-1/request"),
            |v| v["drain_id"].is_string(),
            within,
        )
        .await;
    let t_request = Instant::now();
    sub.expect_where(
        &m("drain/room-1/ack/lb-1"),
        |v| v["state"] == "done",
        within,
    )
    .await;
    let t_done = Instant::now();
    let clearance = sub
        .expect_where(&m("power/room-1/clearance"), |v| v["clear"] == true, within)
        .await;
    let t_clear = Instant::now();

    let s = |t: Instant| (t - t_sim).as_secs_f64();
    println!("thermal-runaway at --speed 1, poll 1 s, off-gas rule of config/emberwatch.toml:");
    println!(
        "  scenario t+{:5.2} s  first off-gas alarm: {} {}",
        s(t_offgas),
        offgas["severity"],
        offgas["message"]
    );
    println!(
        "  scenario t+{:5.2} s  drain requested ({} at {})",
        s(t_request),
        req["drain_id"],
        req["severity"]
    );
    println!("  scenario t+{:5.2} s  agent lb-1 done", s(t_done));
    println!(
        "  scenario t+{:5.2} s  power-cut clearance: {}",
        s(t_clear),
        clearance["reason"]
    );
    println!(
        "  off-gas onset (scenario t+10 s) -> clearance: {:.2} s",
        s(t_clear) - 10.0
    );
    let lead = t_clear - t_offgas;
    println!(
        "  first off-gas alarm -> clearance: {:.2} s (target <= {} s); first smoke stage is at t+50 s",
        lead.as_secs_f64(),
        TARGET.as_secs()
    );
    assert!(
        lead <= TARGET,
        "clearance {lead:?} after the first off-gas alarm"
    );
    assert!(s(t_clear) < 50.0, "clearance after the first smoke stage");
}
