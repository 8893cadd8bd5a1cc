//! A split brain, end to end (issue 13, step 4): two gateways watching one room, each reaching
//! only its own broker, A and B. The brokers are bridged twice: the drain topics directly (the
//! drain agent, on A, hears both gateways), everything else (the gateways' statuses, alarms,
//! commands) through a TCP relay this test cuts, so the gateways cannot see each other and both
//! publish. The real `emberwatch run` twice, the real drain agent, the real console on A, two
//! real mosquittos and the simulator.
//!
//! The two are a redundant pair (`[redundancy]`): apart, each is active; together again, gw-b2
//! steps down by priority.
//!
//! What must hold: both gateways request a drain of the room, each under its own `drain_id`,
//! and the agent drains the room once; once the bridge is back the console holds both
//! gateways' events, tracks their gaps apart, and shows one alarm per key; back to normal, the
//! traffic is restored once, after both have cancelled.

mod common;

use std::path::Path;
use std::time::Duration;

use common::agent::{hook, runs, wait_runs, Agent};
use common::console::Console;
use common::relay::Relay;
use common::*;
use serde_json::Value;

const REQUEST: &str = "emberwatch/test-site/drain/room-1/request";
const STATUS: &str = "emberwatch/test-site/drain/room-1/status";
const ACK: &str = "emberwatch/test-site/drain/room-1/ack/lb-1";
const KEY: &str = "rack-01/cell_temp_max/cell-overtemp";
const SOON: Duration = Duration::from_secs(20);

/// The harness's gateway as `name`, on broker `mqtt_port`, draining room-1 through lb-1.
fn gateway(name: &str, mqtt_port: u16, sim_port: u16, dir: &Path) -> String {
    let (peer, priority) = if name == "gw-b1" {
        ("gw-b2", 1)
    } else {
        ("gw-b1", 2)
    };
    let extra = format!(
        "\n[drain]\ntrigger = \"critical\"\ndeadline = \"60s\"\nagents = [\"lb-1\"]\n\
         \n[redundancy]\npeer = \"{peer}\"\npriority = {priority}\n"
    );
    gateway_config(mqtt_port, sim_port, dir, &extra)
        .replace("gateway = \"gw-t\"", &format!("gateway = \"{name}\""))
}

/// Broker A: the drain topics bridged both ways to broker B on `b_port`, the rest of the
/// site's topics through the relay on `relay_port`.
fn bridged(port: u16, b_port: u16, relay_port: u16) -> String {
    format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n\
         connection drain\naddress 127.0.0.1:{b_port}\ntopic {P}/drain/# both 1\n\
         cleansession true\nrestart_timeout 1 2\n\
         connection rest\naddress 127.0.0.1:{relay_port}\ntopic {P}/gateways/# both 1\n\
         topic {P}/alarms/# both 1\ntopic {P}/zones/# both 1\ntopic {P}/power/# both 1\n\
         cleansession true\nrestart_timeout 1 2\n"
    )
}

fn drain_runs(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.starts_with("drain ")).collect()
}

fn restore_runs(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.starts_with("restore ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_brain_drains_the_room_once_and_the_console_merges_both_gateways() {
    let broker_b = Mosquitto::start().await;
    let bridge = Relay::start(broker_b.port()).await;
    bridge.cut();
    let broker_a = Mosquitto::start_custom(|p| bridged(p, broker_b.port(), bridge.port())).await;
    let sim = Sim::start("normal", 1).await;
    let mut sub_a = Subscriber::connect(broker_a.port(), "emberwatch/#").await;
    let mut sub_b = Subscriber::connect(broker_b.port(), "emberwatch/#").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("gw-b1"), dir.path().join("gw-b2"));
    std::fs::create_dir_all(&d1).expect("mkdir");
    std::fs::create_dir_all(&d2).expect("mkdir");
    let _b1 = Daemon::start(&gateway("gw-b1", broker_a.port(), sim.port(), &d1));
    let _b2 = Daemon::start(&gateway("gw-b2", broker_b.port(), sim.port(), &d2));
    let log = dir.path().join("lb-1.runs");
    let _agent = Agent::start(
        broker_a.port(),
        dir.path(),
        "lb-1",
        &hook(&log, "true"),
        &hook(&log, "true"),
    );
    let console_dir = tempfile::tempdir().expect("tempdir");
    let console = Console::start(broker_a.port(), console_dir.path(), &["test-site"]).await;
    let online = |gw: &str| {
        let topic = format!("{P}/gateways/{gw}/status");
        // Neither sees the other: both are active.
        move |t: &str, j: &Value| t == topic && j["state"] == "online" && j["role"] == "active"
    };
    sub_a
        .next_matching(online("gw-b1"), SOON)
        .await
        .expect("gw-b1 online on A");
    sub_b
        .next_matching(online("gw-b2"), SOON)
        .await
        .expect("gw-b2 online on B");
    for sub in [&mut sub_a, &mut sub_b] {
        sub.expect_where(
            &format!("{P}/drain/agents/lb-1"),
            |j| j["state"] == "online",
            SOON,
        )
        .await;
    }

    // Fire: each gateway asks for a drain of room-1, each on its own broker.
    sim.write(116, 600).await;
    let r1 = sub_a
        .expect_where(REQUEST, |j| j["gateway"] == "gw-b1", SOON)
        .await;
    let r2 = sub_b
        .expect_where(REQUEST, |j| j["gateway"] == "gw-b2", SOON)
        .await;
    let (id1, id2) = (
        r1["drain_id"].as_str().unwrap_or("").to_string(),
        r2["drain_id"].as_str().unwrap_or("").to_string(),
    );
    // Both coordinators hear their drain confirmed, and give clearance.
    sub_a
        .expect_where(
            STATUS,
            |j| j["drain_id"] == id1.as_str() && j["state"] == "drained",
            SOON,
        )
        .await;
    sub_b
        .expect_where(
            STATUS,
            |j| j["drain_id"] == id2.as_str() && j["state"] == "drained",
            SOON,
        )
        .await;
    let lines = runs(&log);
    assert_eq!(
        drain_runs(&lines).len(),
        1,
        "one drain of the room: {lines:?}"
    );
    if id1 != id2 {
        let joined = sub_a
            .expect_where(
                ACK,
                |j| {
                    j["state"] == "done"
                        && j["detail"]
                            .as_str()
                            .is_some_and(|d| d.starts_with("joined drain"))
                },
                SOON,
            )
            .await;
        assert_ne!(joined["drain_id"], Value::Null);
    }

    // The bridge is back: the console on A hears gw-b2 too and fills its gap from gw-b2's
    // journal; the two gateways' seqs are tracked apart, one alarm per key is shown.
    bridge.restore();
    // The two see each other again: one steps down, by priority.
    let down = sub_a
        .expect_where(
            &format!("{P}/gateways/gw-b2/status"),
            |j| j["role"] == "standby",
            SOON,
        )
        .await;
    assert_eq!(down["role_reason"], "both active: gw-b1 wins by priority 1");
    let gws = console
        .until(
            "/api/gateways",
            |v| {
                v.as_array().is_some_and(|l| {
                    ["gw-b1", "gw-b2"].iter().all(|gw| {
                        l.iter().any(|g| {
                            g["gateway"] == *gw
                                && g["received_through"].as_u64().unwrap_or(0) >= 1
                                && g["missing"] == serde_json::json!([])
                        })
                    })
                })
            },
            Duration::from_secs(40),
        )
        .await;
    assert_eq!(gws.as_array().map(Vec::len), Some(2), "{gws:#}");
    let alarms = console.get("/api/alarms?state=all").await.json();
    let rows: Vec<&Value> = alarms
        .as_array()
        .map(|l| l.iter().filter(|a| a["alarm"] == KEY).collect())
        .unwrap_or_default();
    assert_eq!(rows.len(), 1, "one row per alarm key: {alarms:#}");
    assert_eq!(rows[0]["state"], "active");
    let events = console.get("/api/events?limit=1000").await.json();
    for gw in ["gw-b1", "gw-b2"] {
        assert!(
            events
                .as_array()
                .is_some_and(|l| l.iter().any(|e| e["gateway"] == gw && e["alarm"] == KEY)),
            "the console holds {gw}'s event: {events:#}"
        );
    }

    // Back to normal: both cancel; the room's traffic comes back once.
    sim.write(116, 250).await;
    wait_runs(&log, 2, SOON).await;
    sub_a
        .expect_where(
            ACK,
            |j| j["action"] == "restore" && j["state"] == "done",
            SOON,
        )
        .await;
    console
        .until(
            "/api/alarms?state=all",
            |v| {
                v.as_array().is_some_and(|l| {
                    l.iter()
                        .any(|a| a["alarm"] == KEY && a["state"] == "cleared")
                })
            },
            SOON,
        )
        .await;
    let lines_now = runs(&log);
    assert_eq!(drain_runs(&lines_now).len(), 1, "{lines_now:?}");
    assert_eq!(restore_runs(&lines_now).len(), 1, "{lines_now:?}");
}
