//! The first slice, end to end, as an operator watching MQTT sees it: a simulated rack is polled
//! over Modbus TCP, a threshold rule raises and clears alarms, and the gateway announces itself
//! and its death.
//!
//! Each test runs its own mosquitto, `emberwatch sim` (scenario `normal`) and `emberwatch run` on
//! free ports, and drives the rack by writing registers over Modbus, as a commissioning engineer
//! with mbpoll would.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const ALARM: &str = "emberwatch/test-site/alarms/room-1/rack-01/cell_temp_max/cell-overtemp";
const ALARM_KEY: &str = "rack-01/cell_temp_max/cell-overtemp";
const COMM_LOSS: &str = "emberwatch/test-site/alarms/room-1/rack-01/_link/comm-loss";
const ZONE: &str = "emberwatch/test-site/zones/room-1/status";
const TELEMETRY: &str = "emberwatch/test-site/telemetry/rack-01";
const STATUS: &str = "emberwatch/test-site/gateways/gw-t/status";

/// Register 116 of the simulator: max cell temperature, i16, 0.1 degC.
const CELL_TEMP_MAX: u16 = 116;

/// Generous for a 100 ms poll; a test waits this long only when something is wrong.
const SOON: Duration = Duration::from_secs(10);

/// A broker, a simulated rack, a storage dir, a running daemon and a subscriber to everything
/// under `emberwatch/`.
struct Rig {
    sub: Subscriber,
    daemon: Daemon,
    state: tempfile::TempDir,
    sim: Sim,
    broker: Mosquitto,
}

impl Rig {
    async fn start() -> Rig {
        Rig::start_with(|c| c).await
    }

    /// As [`Rig::start`], with the test's edit of the configuration text. Returns once the daemon
    /// publishes good telemetry, i.e. it is polling.
    async fn start_with(edit: impl FnOnce(String) -> String) -> Rig {
        let broker = Mosquitto::start().await;
        let sim = Sim::start("normal", 1).await;
        let state = tempfile::tempdir().expect("tempdir");
        let sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
        let config = edit(gateway_config(broker.port(), sim.port(), state.path(), ""));
        let daemon = Daemon::start(&config);
        let mut rig = Rig {
            sub,
            daemon,
            state,
            sim,
            broker,
        };
        // Fail fast, with the daemon's own words, if it refuses to run.
        tokio::select! {
            exited = rig.daemon.exited(SOON) => match exited {
                Some(status) => panic!(
                    "emberwatch run exited ({status}) instead of polling; its output follows"
                ),
                None => panic!("no good telemetry on {TELEMETRY} within {SOON:?}"),
            },
            _ = rig.sub.expect_where(TELEMETRY, |j| j["quality"] == "good", SOON) => {}
        }
        rig
    }

    fn config(&self) -> String {
        gateway_config(self.broker.port(), self.sim.port(), self.state.path(), "")
    }

    /// Writes degrees Celsius into the rack's max cell temperature register.
    async fn set_cell_temp(&self, celsius: f64) {
        let raw = (celsius * 10.0).round() as i16;
        self.sim.write(CELL_TEMP_MAX, raw as u16).await;
    }

    /// The next alarm event on the cell-overtemp topic in `state` (and `severity`, if given).
    async fn overtemp_event(&mut self, state: &str, severity: Option<&str>) -> Value {
        self.sub
            .expect_where(
                ALARM,
                |j| j["state"] == state && severity.is_none_or(|s| j["severity"] == s),
                SOON,
            )
            .await
    }
}

fn f64_of(j: &Value, key: &str) -> f64 {
    j[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {j}"))
}

fn seq_of(j: &Value) -> u64 {
    j["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("seq is not an unsigned integer in {j}"))
}

fn assert_close(got: f64, want: f64, tolerance: f64, what: &str) {
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: {got}, expected {want} ± {tolerance}"
    );
}

/// `time`-like fields are RFC 3339 timestamps.
fn assert_timestamp(j: &Value, key: &str) {
    let s = j[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing or not a string in {j}"));
    assert!(
        humantime::parse_rfc3339_weak(s).is_ok(),
        "{key} {s:?} is not an RFC 3339 timestamp in {j}"
    );
}

/// A client connecting now gets `topic`'s retained message (retain flag set) within the deadline.
async fn retained(port: u16, topic: &str) -> Value {
    let mut late = Subscriber::connect(port, topic).await;
    match late.next_matching(|t, _| t == topic, SOON).await {
        Some(m) => {
            assert!(
                m.retain,
                "{topic} was delivered but not as a retained message"
            );
            m.json()
        }
        None => panic!("no retained message on {topic}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_announces_itself_online_retained() {
    let mut rig = Rig::start().await;
    let live = rig
        .sub
        .expect_where(STATUS, |j| j["state"] == "online", SOON)
        .await;
    assert_eq!(live["version"], emberwatch::VERSION, "{live}");
    assert_timestamp(&live, "started_at");

    // A dashboard that connects later still learns the gateway is up.
    let late = retained(rig.broker.port(), STATUS).await;
    assert_eq!(late["state"], "online", "{late}");
    assert_eq!(late["version"], emberwatch::VERSION, "{late}");
    assert_eq!(late["started_at"], live["started_at"], "{late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_alarm_reaches_subscriber() {
    let mut rig = Rig::start().await;
    rig.set_cell_temp(57.2).await;

    let ev = rig.overtemp_event("active", None).await;
    assert_eq!(ev["severity"], "critical", "{ev}");
    assert_close(f64_of(&ev, "value"), 57.2, 0.05, "value");
    assert_close(f64_of(&ev, "threshold"), 55.0, 1e-9, "threshold");
    assert_eq!(ev["kind"], "threshold", "{ev}");
    assert_eq!(ev["unit"], "degC", "{ev}");
    assert_eq!(ev["alarm"], ALARM_KEY, "{ev}");
    assert_eq!(ev["zone"], "room-1", "{ev}");
    assert_eq!(ev["device"], "rack-01", "{ev}");
    assert_eq!(ev["point"], "cell_temp_max", "{ev}");
    assert_eq!(ev["rule"], "cell-overtemp", "{ev}");
    assert_eq!(ev["site"], "test-site", "{ev}");
    assert_eq!(ev["gateway"], "gw-t", "{ev}");
    assert_eq!(ev["acked"], false, "{ev}");
    let seq = seq_of(&ev);
    assert_eq!(ev["event_id"], format!("gw-t-{seq}"), "{ev}");
    assert!(
        ev["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message missing in {ev}"
    );
    assert_timestamp(&ev, "time");
    assert_timestamp(&ev, "since");

    let zone = rig
        .sub
        .expect_where(ZONE, |j| j["level"] == "critical", SOON)
        .await;
    assert_eq!(zone["zone"], "room-1", "{zone}");
    assert_eq!(zone["active"], serde_json::json!([ALARM_KEY]), "{zone}");
    assert_eq!(zone["faults"], 0, "{zone}");
    assert_timestamp(&zone, "time");
    // The zone status is retained: a panel that starts now shows the room as critical.
    let late = retained(rig.broker.port(), ZONE).await;
    assert_eq!(late["level"], "critical", "{late}");

    // The older "normal" statuses must not satisfy the wait for the room to be normal again.
    rig.sub.forget();
    rig.set_cell_temp(25.0).await;
    let cleared = rig.overtemp_event("cleared", None).await;
    assert_eq!(cleared["alarm"], ALARM_KEY, "{cleared}");
    assert_eq!(cleared["kind"], "threshold", "{cleared}");
    assert_close(f64_of(&cleared, "value"), 25.0, 0.05, "value when cleared");
    assert_eq!(seq_of(&cleared), seq + 1, "{cleared}");
    assert_eq!(
        cleared["event_id"],
        format!("gw-t-{}", seq + 1),
        "{cleared}"
    );
    let zone = rig
        .sub
        .expect_where(ZONE, |j| j["level"] == "normal", SOON)
        .await;
    assert_eq!(zone["active"], serde_json::json!([]), "{zone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn severity_escalates_and_seq_grows_by_one() {
    let mut rig = Rig::start().await;
    let mut seqs = Vec::new();
    for (celsius, severity, threshold) in [
        (46.0, "warning", 45.0),
        (60.0, "critical", 55.0),
        (70.0, "emergency", 65.0),
    ] {
        rig.set_cell_temp(celsius).await;
        let ev = rig.overtemp_event("active", Some(severity)).await;
        assert_close(f64_of(&ev, "value"), celsius, 0.05, "value");
        assert_close(f64_of(&ev, "threshold"), threshold, 1e-9, "threshold");
        seqs.push(seq_of(&ev));
    }
    assert_eq!(
        seqs,
        vec![seqs[0], seqs[0] + 1, seqs[0] + 2],
        "one event per change, numbered consecutively"
    );
    rig.sub
        .expect_where(ZONE, |j| j["level"] == "emergency", SOON)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadband_holds_alarm_until_past_it() {
    let mut rig = Rig::start().await;
    rig.set_cell_temp(45.5).await;
    let raised = rig.overtemp_event("active", Some("warning")).await;

    // 44.5 is below the 45.0 threshold but inside the 1.0 deadband: the alarm must hold. Bound
    // "nothing happens" by polls the daemon demonstrably made at 44.5, not by a sleep.
    rig.sub.forget();
    rig.set_cell_temp(44.5).await;
    for poll in 0..5 {
        let m = rig
            .sub
            .next_matching(
                |t, j| {
                    t == ALARM
                        || (t == TELEMETRY
                            && j["points"]["cell_temp_max"]
                                .as_f64()
                                .is_some_and(|v| (v - 44.5).abs() < 0.05))
                },
                SOON,
            )
            .await
            .unwrap_or_else(|| panic!("telemetry #{poll} at 44.5 never came"));
        assert_ne!(
            m.topic,
            ALARM,
            "alarm changed inside the deadband: {}",
            m.text()
        );
    }

    rig.set_cell_temp(43.9).await;
    let cleared = rig.overtemp_event("cleared", None).await;
    assert_close(f64_of(&cleared, "value"), 43.9, 0.05, "value when cleared");
    assert_eq!(seq_of(&cleared), seq_of(&raised) + 1, "{cleared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_carries_decoded_values() {
    let mut rig = Rig::start().await;
    let t = rig
        .sub
        .expect_where(TELEMETRY, |j| j["quality"] == "good", SOON)
        .await;
    // The normal scenario idles at 25.0 degC with small noise.
    assert_close(
        t["points"]["cell_temp_max"].as_f64().unwrap_or(f64::NAN),
        25.0,
        1.0,
        "cell_temp_max",
    );
    assert_eq!(t["points"]["smoke"], 0.0, "{t}");
    assert_timestamp(&t, "time");

    // Signed registers and scales survive the trip: -5.0 degC (raw 0xFFCE) and 12.3 %LEL.
    rig.set_cell_temp(-5.0).await;
    rig.sim.write(122, 123).await;
    let t = rig
        .sub
        .expect_where(
            TELEMETRY,
            |j| {
                j["points"]["hydrogen"]
                    .as_f64()
                    .is_some_and(|v| (v - 12.3).abs() < 0.005)
                    && j["points"]["cell_temp_max"]
                        .as_f64()
                        .is_some_and(|v| (v + 5.0).abs() < 0.005)
            },
            SOON,
        )
        .await;
    assert_eq!(t["quality"], "good", "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_marks_gateway_offline() {
    let mut rig = Rig::start_with(|c| {
        assert!(c.contains("keep_alive = \"5s\""));
        c.replace("keep_alive = \"5s\"", "keep_alive = \"1s\"")
    })
    .await;
    rig.sub
        .expect_where(STATUS, |j| j["state"] == "online", SOON)
        .await;

    rig.daemon.kill().await;
    // The broker publishes the will once it notices (at the latest 1.5 x keep_alive).
    rig.sub
        .expect_where(STATUS, |j| j["state"] == "offline", SOON)
        .await;
    let late = retained(rig.broker.port(), STATUS).await;
    assert_eq!(
        late["state"], "offline",
        "the will must be retained: {late}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stop_marks_gateway_offline() {
    let mut rig = Rig::start().await;
    rig.sub
        .expect_where(STATUS, |j| j["state"] == "online", SOON)
        .await;

    let status = rig.daemon.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    rig.sub
        .expect_where(STATUS, |j| j["state"] == "offline", SOON)
        .await;
    let late = retained(rig.broker.port(), STATUS).await;
    assert_eq!(late["state"], "offline", "{late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_survives_restart() {
    let mut rig = Rig::start().await;
    rig.set_cell_temp(57.2).await;
    let before = seq_of(&rig.overtemp_event("active", Some("critical")).await);

    let status = rig.daemon.terminate().await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    rig.sub.forget();
    // Same storage dir: the new daemon continues where the old one stopped.
    rig.daemon = Daemon::start(&rig.config());
    rig.sub
        .expect_where(STATUS, |j| j["state"] == "online", SOON)
        .await;

    rig.set_cell_temp(70.0).await;
    let after = rig.overtemp_event("active", Some("emergency")).await;
    assert!(
        seq_of(&after) > before,
        "seq went from {before} back to {} after a restart: {after}",
        seq_of(&after)
    );
    assert_eq!(after["event_id"], format!("gw-t-{}", seq_of(&after)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_does_not_repeat_active_alarms() {
    let mut rig = Rig::start().await;
    rig.set_cell_temp(57.2).await;
    rig.overtemp_event("active", Some("critical")).await;

    let status = rig.daemon.terminate().await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    rig.sub.forget();
    rig.daemon = Daemon::start(&rig.config());

    // Three polls of the new daemon at 57.2, and no second "active" for an alarm already raised.
    for poll in 0..3 {
        let m = rig
            .sub
            .next_matching(
                |t, j| {
                    t == ALARM
                        || (t == TELEMETRY
                            && j["points"]["cell_temp_max"]
                                .as_f64()
                                .is_some_and(|v| (v - 57.2).abs() < 0.05))
                },
                SOON,
            )
            .await
            .unwrap_or_else(|| panic!("telemetry #{poll} from the restarted daemon never came"));
        assert_ne!(
            m.topic,
            ALARM,
            "an alarm active before the restart was raised again: {}",
            m.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_silence_is_a_fault() {
    let mut rig = Rig::start().await;
    rig.sim.kill().await;

    let ev = rig
        .sub
        .expect_where(COMM_LOSS, |j| j["state"] == "active", SOON)
        .await;
    assert_eq!(ev["kind"], "fault", "{ev}");
    assert_eq!(ev["alarm"], "rack-01/_link/comm-loss", "{ev}");
    assert_eq!(ev["device"], "rack-01", "{ev}");
    assert_eq!(ev["point"], "_link", "{ev}");
    assert_eq!(ev["rule"], "comm-loss", "{ev}");
    assert_eq!(ev["zone"], "room-1", "{ev}");
    assert_eq!(ev["event_id"], format!("gw-t-{}", seq_of(&ev)), "{ev}");
    let zone = rig
        .sub
        .expect_where(ZONE, |j| j["faults"].as_u64().is_some_and(|n| n >= 1), SOON)
        .await;
    assert_eq!(zone["zone"], "room-1", "{zone}");

    // From now on the rack's telemetry, if any is published, must not claim to be good.
    rig.sub.forget();
    if let Some(m) = rig
        .sub
        .next_matching(|t, _| t == TELEMETRY, Duration::from_secs(2))
        .await
    {
        assert_ne!(
            m.json()["quality"],
            "good",
            "telemetry of a silent device: {}",
            m.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_comes_back_is_reconnected() {
    let mut rig = Rig::start().await;
    let addr = rig.sim.addr().to_string();
    rig.sim.kill().await;
    rig.sub
        .expect_where(COMM_LOSS, |j| j["state"] == "active", SOON)
        .await;

    // The rack is back on the same address: the daemon reconnects by itself.
    rig.sim = Sim::start_at(&addr, "normal", 1).await;
    rig.sub
        .expect_where(COMM_LOSS, |j| j["state"] == "cleared", SOON)
        .await;
    rig.sub
        .expect_where(TELEMETRY, |j| j["quality"] == "good", SOON)
        .await;
}
