//! A console database filled as a big site's would be: alarm events of 1,000 racks in 200
//! zones (SPEC's event JSON, unique event_ids), written through the console's one writer as
//! the subscriber writes them. The ingest bench times the filling; the page bench starts the
//! console on what it leaves.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use emberwatch::console::store::{open_writer, Write, Writer};
use serde_json::json;

/// Racks, one alarm each (`rack-NNN/cell_temp_max/cell-overtemp`).
pub const RACKS: u64 = 1000;
/// Zones; rack r is in `room-{r % ZONES}`.
pub const ZONES: u64 = 200;
/// The gateway every event comes from.
pub const GATEWAY: &str = "gw-b1";
pub const SITE: &str = "pangyo-a";

/// Event `seq` of [`GATEWAY`]: rack `seq % RACKS` going to `state` ("active" or "cleared").
pub fn event(seq: u64, state: &str) -> serde_json::Value {
    let rack = seq % RACKS;
    let zone = rack % ZONES;
    let active = state == "active";
    json!({
        "event_id": format!("{GATEWAY}-{seq}"), "seq": seq, "site": SITE, "gateway": GATEWAY,
        "alarm": format!("rack-{rack:03}/cell_temp_max/cell-overtemp"), "rule": "cell-overtemp",
        "zone": format!("room-{zone}"), "device": format!("rack-{rack:03}"), "point": "cell_temp_max",
        "kind": "threshold", "severity": "critical",
        "state": state, "acked": false,
        "value": 57.2, "threshold": 55.0, "unit": "degC",
        "message": "cell_temp_max 57.2 degC above critical 55.0",
        "time": "2026-11-24T13:40:02.123Z", "since": "2026-11-24T13:40:01.900Z",
        "isa_state": if active { "active_unacknowledged" } else { "cleared_unacknowledged" },
        "shelved_until": null, "out_of_service": false, "chattering": false,
        "transitions_last_minute": 1
    })
}

/// Events 1..=n, the state of each from `state_of(seq)`.
pub fn events(n: u64, state_of: impl Fn(u64) -> &'static str) -> Vec<serde_json::Value> {
    (1..=n).map(|seq| event(seq, state_of(seq))).collect()
}

/// Writes `events` into the database at `db` through the console's writer; returns once the
/// last is committed.
pub fn fill(db: &Path, events: Vec<serde_json::Value>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let conn = open_writer(db).expect("open the console database");
    let (writer, thread) = Writer::spawn(conn, Duration::from_secs(10 * 365 * 24 * 3600));
    rt.block_on(async {
        for event in events {
            writer
                .tx
                .send(Write::Event {
                    event,
                    received_ms: 1_795_000_000_000,
                })
                .await
                .expect("writer running");
        }
    });
    assert!(writer.health.ok(), "{:?}", writer.health.why());
    drop(writer);
    thread.join().expect("writer thread");
}
