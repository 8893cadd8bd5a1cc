//! The console keeps its promise on the receiving end (issue 12, step 4): killed with SIGKILL
//! while alarms happen, it comes back with its history, sees from the gateway's events and
//! retained status `seq` what it missed, repairs it with `cmd/replay`, and shows no gap; a gap
//! the gateway can no longer fill stays listed in `missing`; a duplicate is dropped.

mod common;

use std::time::Duration;

use common::console::{Console, Rig};
use common::*;
use serde_json::{json, Value};

const KEY: &str = "rack-01/cell_temp_max/cell-overtemp";
const SOON: Duration = Duration::from_secs(15);

fn alarm_topic() -> String {
    format!("{P}/alarms/room-1/{KEY}")
}

/// The seqs of gw-t's events the console holds, in the order it lists them.
async fn seqs(console: &Console) -> Vec<u64> {
    console
        .get("/api/events?gateway=gw-t&limit=10000")
        .await
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect()
}

impl Rig {
    /// Writes the cell temperature and waits for the event that follows.
    async fn temperature(&mut self, raw: u16, state: &str, severity: &str) -> Value {
        self.sim.write(116, raw).await;
        self.sub
            .expect_where(
                &alarm_topic(),
                |j| j["state"] == state && j["severity"] == severity,
                SOON,
            )
            .await
    }

    async fn ack_over_mqtt(&mut self) -> Value {
        let body = format!(r#"{{"alarm":"{KEY}"}}"#);
        publish(
            self.broker.port(),
            &format!("{P}/gateways/gw-t/cmd/ack"),
            body.as_bytes(),
            false,
        )
        .await;
        self.sub
            .expect_where(&alarm_topic(), |j| j["acked"] == true, SOON)
            .await
    }

    /// SIGKILLs the console if it is still running, and starts it again on its files.
    async fn restart_console(&mut self) {
        self.console.kill().await;
        let (dir, config, port) = (
            self.console.dir.clone(),
            self.console.config.clone(),
            self.console.port,
        );
        self.console = Console::start_config(&dir, &config, port).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_killed_with_sigkill_repairs_what_it_missed_and_shows_no_gap() {
    let mut rig = Rig::start(SOON).await;
    let first = rig.temperature(572, "active", "critical").await;
    let s1 = first["seq"].as_u64().expect("seq");
    rig.console
        .until("/api/gateways", |v| v[0]["received_through"] == s1, SOON)
        .await;

    rig.console.kill().await;
    rig.ack_over_mqtt().await;
    rig.temperature(672, "active", "emergency").await;
    let last = rig.temperature(250, "cleared", "emergency").await;
    let latest = last["seq"].as_u64().expect("seq");
    assert!(latest >= s1 + 3, "three events while the console was away");

    rig.restart_console().await;
    let gw = rig
        .console
        .until(
            "/api/gateways",
            |v| v[0]["received_through"] == latest && v[0]["missing"] == json!([]),
            SOON,
        )
        .await;
    assert_eq!(gw[0]["seq"], latest, "{gw}");
    assert_eq!(seqs(&rig.console).await, (1..=latest).collect::<Vec<_>>());
    assert!(
        rig.console
            .log()
            .contains("gw-t: asking for a replay from seq"),
        "{}",
        rig.console.log()
    );
    let alarms = rig.console.get("/api/alarms?state=all").await.json();
    assert_eq!(alarms[0]["seq"], latest, "the latest state wins: {alarms}");
    assert_eq!(alarms[0]["isa_state"], "cleared_unacknowledged");

    // A duplicate (at-least-once) is dropped by its event_id.
    publish(
        rig.broker.port(),
        &alarm_topic(),
        last.to_string().as_bytes(),
        false,
    )
    .await;
    let next = rig.temperature(572, "active", "critical").await;
    let n = next["seq"].as_u64().expect("seq");
    rig.console
        .until("/api/gateways", |v| v[0]["received_through"] == n, SOON)
        .await;
    assert_eq!(seqs(&rig.console).await, (1..=n).collect::<Vec<_>>());
    drop(rig.dir);
}

/// The gateway lost its journal (here: its outbox removed while it was stopped, as a disk
/// replacement would): the events the console missed cannot be replayed and are listed as
/// missing, for good, while everything after them is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_the_gateway_no_longer_holds_is_listed_as_missing() {
    let mut rig = Rig::start(SOON).await;
    let first = rig.temperature(572, "active", "critical").await;
    let s1 = first["seq"].as_u64().expect("seq");
    rig.console
        .until("/api/gateways", |v| v[0]["received_through"] == s1, SOON)
        .await;

    rig.console.kill().await;
    let acked = rig.ack_over_mqtt().await;
    let lost = acked["seq"].as_u64().expect("seq");
    rig.gateway.terminate().await;
    std::fs::remove_dir_all(rig.state.path().join("outbox")).expect("remove the outbox");
    rig.gateway = Daemon::start(&rig.gateway_config);
    rig.sub
        .expect_where(
            &format!("{P}/gateways/gw-t/status"),
            |j| j["state"] == "online",
            SOON,
        )
        .await;

    rig.restart_console().await;
    let after = rig.temperature(250, "cleared", "critical").await;
    let n = after["seq"].as_u64().expect("seq");
    assert_eq!(n, lost + 1, "state.json kept the numbering");
    let gw = rig
        .console
        .until(
            "/api/gateways",
            |v| v[0]["missing"] == json!([[lost, lost]]) && v[0]["received_through"] == n,
            SOON,
        )
        .await;
    assert_eq!(gw[0]["state"], "online");
    // It stays listed: no replay can fill it, and none is asked for again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gw = rig.console.get("/api/gateways").await.json();
    assert_eq!(gw[0]["missing"], json!([[lost, lost]]), "{gw}");
    let mut want: Vec<u64> = (1..=n).collect();
    want.retain(|&s| s != lost);
    assert_eq!(seqs(&rig.console).await, want);

    // ... and after a restart of the console too.
    rig.restart_console().await;
    let gw = rig.console.get("/api/gateways").await.json();
    assert_eq!(gw[0]["missing"], json!([[lost, lost]]), "{gw}");
}
