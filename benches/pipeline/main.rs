//! Benchmarks of the whole pipeline (issues 2 and 15), run with
//! `cargo bench --bench pipeline [-- latency|throughput|footprint|flapping|silence|replay|flood]`.
//! One module per measurement; `rig` is what they share (broker, simulators, daemon, /proc).
//!
//! - latency: a register written over Modbus TCP → the alarm event at an MQTT subscriber, through
//!   the real `emberwatch run` binary and a real broker (mosquitto when installed), at
//!   poll_interval 100 ms; 200+ trials, median and percentiles. Target: p99 ≤ poll + 20 ms.
//! - throughput: decode + rule evaluation on one core, points per second.
//! - footprint: the daemon's RSS and CPU while polling 100 simulated devices × 20 points at 1 Hz.
//!   Targets: RSS ≤ 20 MB, CPU ≤ 2 % of one core.
//! - replay: a storm of 500 `cmd/replay` requests (1000-character `reply_to`) against an 8000-event
//!   journal: the daemon's peak RSS, and the latency of a live critical alarm raised meanwhile.
//! - flood: 1,000 mixed valid and invalid `cmd/ack`, `cmd/shelve` and `cmd/service` per second for
//!   10 s: the daemon's peak RSS, the share of commands answered on `cmd/result` (busy answers
//!   count), and a live critical alarm's latency during the flood against idle.
//!
//! Figures are printed with the machine they were measured on; nothing here asserts a time.

#[path = "../common/mod.rs"]
mod common;
mod flood;
mod measures;
mod replay;
mod rig;

use common::machine;
use std::time::Duration;

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let all = which.is_empty();
    println!("machine: {}", machine());
    if all || which.iter().any(|w| w == "throughput") {
        measures::throughput();
    }
    if all || which.iter().any(|w| w == "flapping") {
        measures::flapping();
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if all || which.iter().any(|w| w == "latency") {
        rt.block_on(measures::latency(200));
    }
    if all || which.iter().any(|w| w == "silence") {
        rt.block_on(measures::silence(20));
    }
    if all || which.iter().any(|w| w == "footprint") {
        rt.block_on(measures::footprint(100, 20, Duration::from_secs(30)));
    }
    if all || which.iter().any(|w| w == "replay") {
        rt.block_on(replay::replay_storm(500, 8000, 3));
    }
    if all || which.iter().any(|w| w == "flood") {
        rt.block_on(flood::command_flood(1000, Duration::from_secs(10)));
    }
}
