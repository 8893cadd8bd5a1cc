//! What durability costs: the outbox's throughput with fsync, and the latency it adds before an
//! alarm event counts as raised. Run with `cargo bench --bench outbox`.
//!
//! - latency: one alarm event per `append` (one fsync each), as a quiet site raises them;
//!   p50/p90/p99/max over 2000 appends.
//! - throughput: events per second with one fsync per event, and with group commit (batches of
//!   8, 32 and 128 events per fsync, as an alarm storm hands them over).
//! - delivery: reading back and acking (with a cursor commit per batch of 64) of everything
//!   appended, as a broker link does after a reconnect.
//! - lock: how long a broker link waits for the outbox lock while appends fsync, with the whole
//!   append under the lock and with the write and fsync outside it.
//! - memory: resident memory held for a full journal (events every broker confirmed, kept for
//!   `cmd/replay` up to `storage.journal_max`, default 16 MB), live and after a restart.
//!
//! `cargo bench --bench outbox -- memory` runs one section (latency, throughput, delivery,
//! memory, lock); no argument runs them all.
//!
//! The directory is `EMBERWATCH_BENCH_DIR` or a temporary directory under `target/`, which is on
//! the same file system as the project; tmpfs would measure nothing. Figures are printed with the
//! machine and file system; nothing here asserts a time.

mod common;
use common::{machine, percentile};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emberwatch::outbox::{Entry, Kind, Options, Outbox};

const BROKER: &str = "mqtt://127.0.0.1:1883";

fn main() {
    if let Some(dir) = std::env::var_os("EMBERWATCH_BENCH_OPEN") {
        open_and_measure(Path::new(&dir));
        return;
    }
    let base = std::env::var_os("EMBERWATCH_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    if let Err(e) = std::fs::create_dir_all(&base) {
        eprintln!("cannot create {}: {e}", base.display());
        std::process::exit(1);
    }
    println!("machine: {}", machine());
    println!("directory: {} ({})", base.display(), filesystem(&base));
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = which.is_empty();
    let wants = |s: &str| all || which.iter().any(|w| w == s);
    if wants("latency") {
        latency(&base, 2000);
    }
    if wants("throughput") {
        for batch in [1, 8, 32, 128] {
            throughput(&base, batch, Duration::from_secs(3));
        }
    }
    if wants("delivery") {
        delivery(&base, 20_000);
    }
    if wants("memory") {
        memory(&base);
    }
    if wants("lock") {
        lock_wait(&base, Duration::from_secs(3), false);
        lock_wait(&base, Duration::from_secs(3), true);
    }
}

/// How long a broker link waits for the outbox lock while the writer appends one event at a
/// time back to back: with the whole append under the lock (as before), and with only the
/// staging and the bookkeeping under it (write and fsync outside, as the daemon does now).
fn lock_wait(base: &Path, for_: Duration, staged: bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let (_dir, o) = fresh(base);
    let o = Arc::new(Mutex::new(o));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (o, stop) = (o.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let lock = || o.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if staged {
                    let st = lock().stage(vec![event(seq)], std::time::SystemTime::now());
                    if let Ok(Some(mut st)) = st {
                        let written = st.write();
                        let _ = lock().finish(st, written);
                    }
                } else {
                    let _ = lock().append(vec![event(seq)]);
                }
            }
            seq
        })
    };
    // The link: every millisecond, take the lock and look at what is new, as a feed does.
    let mut waits = Vec::new();
    let start = Instant::now();
    while start.elapsed() < for_ {
        let t = Instant::now();
        let g = o.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        waits.push(t.elapsed().as_secs_f64() * 1e3);
        let _ = g.next_pos();
        drop(g);
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let appends = writer.join().unwrap_or(0);
    waits.sort_by(f64::total_cmp);
    println!(
        "a link's wait for the outbox lock during back-to-back appends ({}; {appends} appends): \
         p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        if staged {
            "write + fsync outside the lock"
        } else {
            "whole append under the lock"
        },
        percentile(&waits, 50.0),
        percentile(&waits, 99.0),
        waits.last().copied().unwrap_or(0.0)
    );
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn memory(base: &Path) {
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let (dir, mut o) = fresh(base);
    let before = rss();
    // Events in batches of 32, each confirmed by the broker: the journal fills to its bound.
    let mut seq = 0u64;
    let mut payload = 0u64;
    while o.pressure().bytes < 15 << 20 {
        let entries: Vec<Entry> = (0..32).map(|i| event(seq + i + 1)).collect();
        seq += 32;
        let records = match o.append(entries) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
        for r in &records {
            payload += r.payload.len() as u64;
            let _ = o.ack(BROKER, r.pos);
        }
        if let Err(e) = o.commit() {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
    let live = rss().saturating_sub(before);
    let resident = o.resident_payload_bytes();
    let replayed = o.replay_from(1).map_or(0, |r| r.events.len());
    let disk = o.pressure().bytes;
    drop(o);
    // A restart, in a fresh process so that freed pages of this one do not hide the cost.
    let restart = std::process::Command::new(std::env::current_exe().unwrap_or_default())
        .env("EMBERWATCH_BENCH_OPEN", dir.path())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    println!(
        "memory for a full journal ({seq} confirmed events, {:.1} MB on disk, {:.1} MB of \
         payload, {:.1} MB of it resident; replay finds {replayed}): +{:.1} MB resident while \
         appending, +{} after opening it in a new process",
        mb(disk),
        mb(payload),
        mb(resident),
        mb(live),
        restart.map_or("?".to_string(), |b| format!("{:.1} MB", mb(b)))
    );
}

/// In the child process of [`memory`]: opens the outbox in `dir` and prints the resident
/// memory it added, in bytes.
fn open_and_measure(dir: &Path) {
    let before = rss();
    let opts = Options::new(256 << 20, 16 << 20, Duration::from_secs(7 * 24 * 3600));
    match Outbox::open(dir, opts, &[BROKER.to_string()]) {
        Ok(o) => {
            println!("{}", rss().saturating_sub(before));
            drop(o);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

fn fresh(base: &Path) -> (tempfile::TempDir, Outbox) {
    let dir = match tempfile::tempdir_in(base) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot create a directory in {}: {e}", base.display());
            std::process::exit(1);
        }
    };
    let opts = Options::new(256 << 20, 16 << 20, Duration::from_secs(7 * 24 * 3600));
    let outbox = match Outbox::open(dir.path(), opts, &[BROKER.to_string()]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    (dir, outbox)
}

/// An alarm event of realistic size (the SPEC example is about 480 bytes of JSON).
fn event(seq: u64) -> Entry {
    let payload = format!(
        "{{\"event_id\":\"gw-b1-{seq}\",\"seq\":{seq},\"site\":\"pangyo-a\",\"gateway\":\"gw-b1\",\
         \"alarm\":\"rack-01/cell_temp_max/cell-overtemp\",\"rule\":\"cell-overtemp\",\"zone\":\"room-1\",\
         \"device\":\"rack-01\",\"point\":\"cell_temp_max\",\"kind\":\"threshold\",\"severity\":\"critical\",\
         \"state\":\"active\",\"acked\":false,\"value\":57.2,\"threshold\":55.0,\"unit\":\"degC\",\
         \"message\":\"cell_temp_max 57.2 degC above critical 55.0\",\"time\":\"2026-11-24T13:40:02.123Z\",\
         \"since\":\"2026-11-24T13:40:01.900Z\"}}"
    );
    Entry {
        kind: Kind::Event,
        seq,
        topic: "emberwatch/pangyo-a/alarms/room-1/rack-01/cell_temp_max/cell-overtemp".into(),
        retain: false,
        payload: payload.into_bytes(),
    }
}

fn latency(base: &Path, n: u64) {
    let (_dir, mut o) = fresh(base);
    let mut samples = Vec::with_capacity(n as usize);
    for seq in 1..=n {
        let e = event(seq);
        let t = Instant::now();
        if let Err(e) = o.append(vec![e]) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "latency of a durable append (1 event, write + fdatasync), {n} appends: \
         p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
        samples.last().copied().unwrap_or(0.0)
    );
}

fn throughput(base: &Path, batch: u64, for_: Duration) {
    let (_dir, mut o) = fresh(base);
    let start = Instant::now();
    let mut seq = 0u64;
    while start.elapsed() < for_ {
        let entries: Vec<Entry> = (0..batch).map(|i| event(seq + i + 1)).collect();
        seq += batch;
        if let Err(e) = o.append(entries) {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "throughput, {batch:>3} event(s) per fsync: {:>9.0} events/s ({seq} events in {secs:.1} s, {} bytes on disk)",
        seq as f64 / secs,
        o.pressure().bytes
    );
}

fn delivery(base: &Path, n: u64) {
    let (_dir, mut o) = fresh(base);
    for chunk in (1..=n).collect::<Vec<_>>().chunks(128) {
        if let Err(e) = o.append(chunk.iter().map(|&s| event(s)).collect()) {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
    let start = Instant::now();
    let mut delivered = 0u64;
    while let Ok(next) = o.cursor(BROKER) {
        let batch = o.read_from(next, 64);
        if batch.is_empty() {
            break;
        }
        for r in &batch {
            let _ = o.ack(BROKER, r.pos);
        }
        if let Err(e) = o.commit() {
            eprintln!("{e}");
            std::process::exit(1);
        }
        delivered += batch.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "replay + ack with a cursor commit per 64: {:.0} events/s ({delivered} events in {secs:.2} s)",
        delivered as f64 / secs
    );
}

/// The file system type and device of `path`, from /proc/mounts (longest matching mount).
fn filesystem(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} on {}", f[2], f[0])))
        })
        .max_by_key(|(n, _)| *n)
        .map_or_else(|| "unknown file system".into(), |(_, s)| s)
}
