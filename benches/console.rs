//! What the console's database costs: events ingested per second through the one writer
//! (batched transactions, WAL), and how long the API's queries take with a large history.
//! Run with `cargo bench --bench console`.
//!
//! - ingest: 100,000 alarm events of 200 zones (realistic JSON, unique event_ids) sent to the
//!   writer as the subscriber does, timed until the last one is committed; events per second.
//! - queries: with those 100,000 events stored, `/api/alarms` (active alarms, every zone) and
//!   `/api/events` (1,000 of one gateway, in seq order) as the reader runs them: p50/p99/max
//!   over 50 runs each.
//!
//! The database is in `EMBERWATCH_BENCH_DIR` or a temporary directory under `target/` (a real
//! disk, not tmpfs). Figures are printed with the machine; nothing here asserts a time.

mod common;
use common::{machine, percentile};

use std::path::PathBuf;
use std::time::Instant;

use common::console_db::{events, fill, ZONES};
use emberwatch::console::store::{EventQuery, Reader};

const EVENTS: u64 = 100_000;

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} runs)",
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN),
        ms.len()
    );
}

fn main() {
    let base = std::env::var_os("EMBERWATCH_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    let db = dir.path().join("console.db");
    println!("machine: {}", machine());

    let events = events(
        EVENTS,
        |seq| if seq % 3 == 0 { "cleared" } else { "active" },
    );
    let started = Instant::now();
    fill(&db, events);
    let took = started.elapsed().as_secs_f64();
    println!(
        "ingest: {EVENTS} events in {took:.2} s: {:.0} events/s (one writer, batched, WAL)",
        EVENTS as f64 / took
    );

    let reader = Reader::open(&db).expect("reader");
    let mut alarms = Vec::new();
    let mut listed = 0;
    for _ in 0..50 {
        let t = Instant::now();
        listed = reader.alarms(None, None, true).expect("alarms").len();
        alarms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    summary(
        &format!("/api/alarms ({listed} active alarms, {ZONES} zones)"),
        alarms,
    );
    let mut evs = Vec::new();
    for i in 0..50u64 {
        let q = EventQuery {
            gateway: Some("gw-b1".into()),
            from_seq: Some(1 + i * 1000),
            limit: 1000,
            ..Default::default()
        };
        let t = Instant::now();
        let n = reader.events(&q).expect("events").len();
        assert_eq!(n, 1000);
        evs.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    summary("/api/events (1,000 of 100,000, seq order)", evs);
}
