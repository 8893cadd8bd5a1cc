//! Alarm management as an operator at the console lives it: acknowledging, shelving, being told
//! no, and the sensor faults that must never pass for "normal". Each test runs its own
//! mosquitto, `emberwatch sim` and `emberwatch run` on free ports.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const ALARM: &str = "emberwatch/test-site/alarms/room-1/rack-01/cell_temp_max/cell-overtemp";
const KEY: &str = "rack-01/cell_temp_max/cell-overtemp";
const ZONE: &str = "emberwatch/test-site/zones/room-1/status";
const RESULT: &str = "emberwatch/test-site/gateways/gw-t/cmd/result";
const CMD: &str = "emberwatch/test-site/gateways/gw-t/cmd";
const SOON: Duration = Duration::from_secs(10);

struct Rig {
    sub: Subscriber,
    _daemon: Daemon,
    _state: tempfile::TempDir,
    sim: Sim,
    broker: Mosquitto,
}

impl Rig {
    async fn start(scenario: &str, speed: u32, edit: impl FnOnce(String) -> String) -> Rig {
        let broker = Mosquitto::start().await;
        let sim = Sim::start(scenario, speed).await;
        let state = tempfile::tempdir().expect("tempdir");
        let sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
        let config = edit(gateway_config(broker.port(), sim.port(), state.path(), ""));
        let daemon = Daemon::start(&config);
        let mut rig = Rig {
            sub,
            _daemon: daemon,
            _state: state,
            sim,
            broker,
        };
        rig.sub
            .expect_where(
                &format!("{P}/gateways/gw-t/status"),
                |j| j["state"] == "online",
                SOON,
            )
            .await;
        rig
    }

    async fn command(&mut self, name: &str, body: &str) -> Value {
        publish(
            self.broker.port(),
            &format!("{CMD}/{name}"),
            body.as_bytes(),
            false,
        )
        .await;
        self.sub
            .expect_where(RESULT, |j| j["command"] == name, SOON)
            .await
    }

    async fn hot(&mut self) -> Value {
        self.sim.write(116, 572).await;
        self.sub
            .expect_where(ALARM, |j| j["state"] == "active", SOON)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_acknowledges_an_alarm() {
    let mut rig = Rig::start("normal", 1, |c| c).await;
    let raised = rig.hot().await;
    assert_eq!(raised["acked"], false);
    assert_eq!(raised["isa_state"], "active_unacknowledged");

    let result = rig.command("ack", &format!(r#"{{"alarm":"{KEY}"}}"#)).await;
    assert_eq!(result["ok"], true, "{result}");
    let acked = rig
        .sub
        .expect_where(ALARM, |j| j["acked"] == true, SOON)
        .await;
    assert_eq!(acked["state"], "active");
    assert_eq!(acked["isa_state"], "active_acknowledged");
    assert_eq!(acked["seq"].as_u64(), raised["seq"].as_u64().map(|s| s + 1));

    rig.sim.write(116, 250).await;
    let cleared = rig
        .sub
        .expect_where(ALARM, |j| j["state"] == "cleared", SOON)
        .await;
    assert_eq!(cleared["isa_state"], "normal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shelved_alarm_leaves_the_zone_level_and_emergencies_cannot_be_shelved() {
    let mut rig = Rig::start("normal", 1, |c| c).await;
    rig.hot().await;
    rig.sub
        .expect_where(ZONE, |j| j["level"] == "critical", SOON)
        .await;

    let result = rig
        .command(
            "shelve",
            &format!(r#"{{"alarm":"{KEY}","for":"30m","reason":"detector being replaced"}}"#),
        )
        .await;
    assert_eq!(result["ok"], true, "{result}");
    let ev = rig
        .sub
        .expect_where(ALARM, |j| j["isa_state"] == "shelved", SOON)
        .await;
    assert!(ev["shelved_until"].is_string(), "{ev}");
    let zone = rig
        .sub
        .expect_where(
            ZONE,
            |j| j["level"] == "normal" && j["shelved"].as_array().is_some_and(|a| !a.is_empty()),
            SOON,
        )
        .await;
    assert_eq!(zone["shelved"], serde_json::json!([KEY]));
    assert_eq!(zone["active"], serde_json::json!([]));

    // Escalation to emergency lifts the shelf: never hide an emergency.
    rig.sim.write(116, 700).await;
    let ev = rig
        .sub
        .expect_where(ALARM, |j| j["severity"] == "emergency", SOON)
        .await;
    assert_eq!(ev["isa_state"], "active_unacknowledged", "{ev}");
    rig.sub
        .expect_where(ZONE, |j| j["level"] == "emergency", SOON)
        .await;
    let result = rig
        .command(
            "shelve",
            &format!(r#"{{"alarm":"{KEY}","for":"30m","reason":"annoying"}}"#),
        )
        .await;
    assert_eq!(result["ok"], false);
    assert!(
        result["reason"]
            .as_str()
            .is_some_and(|r| r.contains("emergency alarms cannot be shelved")),
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_a_reason_on_cmd_result() {
    let mut rig = Rig::start("normal", 1, |c| c).await;
    let cases = [
        ("ack", "this is not json", "not valid JSON"),
        ("ack", r#"{"alarm":"rack-99/nothing/here"}"#, "no alarm"),
        (
            "shelve",
            r#"{"alarm":"rack-01/cell_temp_max/cell-overtemp","reason":"x"}"#,
            "\"for\" is required",
        ),
        ("launch", "{}", "unknown command"),
    ];
    for (name, body, want) in cases {
        let r = rig.command(name, body).await;
        assert_eq!(r["ok"], false, "{name} {body}: {r}");
        assert!(
            r["reason"].as_str().is_some_and(|s| s.contains(want)),
            "{name} {body}: {r}"
        );
    }
    // Nothing changed: no alarm event was published.
    assert!(
        rig.sub
            .next_matching(
                |t, _| t.starts_with(&format!("{P}/alarms/")),
                Duration::from_millis(500)
            )
            .await
            .is_none(),
        "a refused command published an alarm event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_sensor_is_a_stuck_fault() {
    // `stuck` freezes every register; 1 s is the shortest stuck_after worth testing.
    let mut rig = Rig::start("stuck", 1, |c| {
        c.replace(
            "  unit = \"degC\"\n",
            "  unit = \"degC\"\n  stuck_after = \"1s\"\n",
        )
    })
    .await;
    let ev = rig
        .sub
        .expect(
            &format!("{P}/alarms/room-1/rack-01/cell_temp_max/stuck"),
            SOON,
        )
        .await;
    assert_eq!(ev["kind"], "fault");
    assert_eq!(ev["state"], "active");
    let zone = rig
        .sub
        .expect_where(ZONE, |j| j["faults"].as_u64() >= Some(1), SOON)
        .await;
    assert!(zone["active"]
        .as_array()
        .is_some_and(|a| a.iter().any(|k| k == "rack-01/cell_temp_max/stuck")));
    // A write unfreezes the register: the fault clears.
    rig.sim.write(116, 251).await;
    rig.sub
        .expect_where(
            &format!("{P}/alarms/room-1/rack-01/cell_temp_max/stuck"),
            |j| j["state"] == "cleared",
            SOON,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comm_loss_scenario_raises_and_clears_the_link_fault() {
    // At speed 10 the simulator goes silent from 0.5 s to 2 s after start.
    let mut rig = Rig::start("comm-loss", 10, |c| c).await;
    let topic = format!("{P}/alarms/room-1/rack-01/_link/comm-loss");
    let raised = rig
        .sub
        .expect_where(&topic, |j| j["state"] == "active", SOON)
        .await;
    assert_eq!(raised["kind"], "fault");
    assert!(raised["message"]
        .as_str()
        .is_some_and(|m| m.contains("not answering")));
    rig.sub
        .expect_where(&topic, |j| j["state"] == "cleared", SOON)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_temperature_is_counted_as_chattering_but_no_event_is_dropped() {
    // No deadband or delay: the rule chatters around 45 °C, and every transition is an event.
    let mut rig = Rig::start("flapping", 4, |c| {
        c.replace("deadband = 1.0", "deadband = 0.0")
    })
    .await;
    let mut states = Vec::new();
    let mut chattering = false;
    while states.len() < 14 && !chattering {
        let ev = rig.sub.expect(ALARM, SOON).await;
        states.push(ev["state"].as_str().unwrap_or("?").to_string());
        chattering = ev["chattering"] == true;
    }
    assert!(chattering, "never reported as chattering after {states:?}");
    // Events alternate: none was suppressed.
    for w in states.windows(2) {
        assert_ne!(w[0], w[1], "two {} events in a row: {states:?}", w[0]);
    }
}

/// The console sends `"by"` with an acknowledgement: the gateway puts the name in the event
/// (`acked_by`) and keeps it in state.json, so the event after a restart still names who it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_name_is_in_the_ack_event_and_survives_a_restart() {
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let config = gateway_config(broker.port(), sim.port(), state.path(), "");
    let mut daemon = Daemon::start(&config);
    let status = format!("{P}/gateways/gw-t/status");
    sub.expect_where(&status, |j| j["state"] == "online", SOON)
        .await;
    sim.write(116, 572).await;
    let raised = sub
        .expect_where(ALARM, |j| j["state"] == "active", SOON)
        .await;
    assert!(raised.get("acked_by").is_none(), "{raised}");

    let body = format!(r#"{{"alarm":"{KEY}","by":"Kim Ji-woo"}}"#);
    publish(broker.port(), &format!("{CMD}/ack"), body.as_bytes(), false).await;
    let result = sub
        .expect_where(RESULT, |j| j["command"] == "ack", SOON)
        .await;
    assert_eq!(result["ok"], true, "{result}");
    let acked = sub.expect_where(ALARM, |j| j["acked"] == true, SOON).await;
    assert_eq!(acked["acked_by"], "Kim Ji-woo", "{acked}");
    assert_eq!(
        acked["message"],
        format!("{KEY} acknowledged by Kim Ji-woo")
    );

    daemon.terminate().await;
    let _daemon = Daemon::start(&config);
    sub.expect_where(&status, |j| j["state"] == "online", SOON)
        .await;
    sim.write(116, 250).await;
    let cleared = sub
        .expect_where(ALARM, |j| j["state"] == "cleared", SOON)
        .await;
    assert_eq!(
        (&cleared["acked"], &cleared["acked_by"]),
        (&Value::Bool(true), &Value::from("Kim Ji-woo")),
        "{cleared}"
    );

    // A name that is not a name is refused, and nothing is acknowledged.
    let bad = format!(r#"{{"alarm":"{KEY}","by":"{}"}}"#, "x".repeat(65));
    publish(broker.port(), &format!("{CMD}/ack"), bad.as_bytes(), false).await;
    let refused = sub
        .expect_where(RESULT, |j| j["command"] == "ack", SOON)
        .await;
    assert_eq!(refused["ok"], false);
    assert_eq!(
        refused["reason"],
        "cmd/ack: \"by\" (the operator's name) is over 64 characters"
    );
}
