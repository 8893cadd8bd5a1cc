//! Issue 14 item 4: how the gateway's memory and CPU grow with the number of devices, all from
//! one profile, behind Modbus TCP gateway addresses of 100 unit ids each (an MGate fronting an
//! RS-485 bus of racks), through the real release binary and a real mosquitto.
//!
//! Run with `cargo bench --bench scale [-- SIZE ...]`, where a SIZE is a device count (default
//! `10 100 1000 5000`) or `own100` (100 devices, each on its own connection to a simulator of its
//! own: the baseline layout). Environment: `SCALE_WINDOW` (seconds measured, default 60),
//! `SCALE_WARMUP` (seconds before, default 15), `SCALE_REPS` (runs per size, default 3; the table
//! gives medians), `EMBERWATCH_BIN` (the gateway binary to measure, e.g. an older build for a
//! before/after on one machine; the simulators are always this build's, for `--units`).
//!
//! Each size N is N devices × 20 points (the simulator's 16 module temperatures, hottest cell,
//! smoke, off-gas, hydrogen: one read of 23 registers) at poll_interval 1 s, all `profile =
//! "rack-20"`, a threshold and a rate-of-rise rule on every `cell_temp_max`, one zone per 100
//! devices. Devices sit at ceil(N/100) addresses, each an `emberwatch sim --units 1-100`
//! process of its own (its CPU is its own, never the gateway's). Per run it reports, for the
//! gateway process only:
//!
//! - peak RSS (VmHWM at the end) and steady RSS (median of VmRSS sampled each second over the
//!   window), in MiB, and the anonymous part of the steady RSS (RssAnon: the gateway's own heap
//!   and stacks, without the binary's code pages). The binary is dropped from the page cache
//!   before each run (`dd iflag=nocache`): how many of its code pages a run maps depends on
//!   whether they are cached (the kernel maps cached neighbours of a faulting page), which moved
//!   the peak by 1.5 MiB between otherwise identical runs;
//! - CPU: utime+stime from /proc/PID/stat over the window, as % of one core;
//! - telemetry: messages per device counted by a subscriber on mosquitto over the window, and
//!   how many devices sent at least window-1 (every device at 1 Hz: all of them);
//! - TCP connections from the gateway to the simulators (`ss -tn state established`), and the
//!   gateway's threads.
//!
//! Nothing here asserts a figure; results and the machine are printed, the table in
//! benches/README.md.

#[path = "common/mod.rs"]
mod common;
#[allow(dead_code)] // the pipeline benches use the rest of it
#[path = "pipeline/rig.rs"]
mod rig;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::live::{clock_ticks, proc_stat, status_field};
use common::{machine, percentile};
use rig::Broker;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Devices per gateway address (unit ids 1..=100 on one simulator).
const PER_GATEWAY: usize = 100;

/// One layout to measure.
#[derive(Clone, Copy)]
struct Layout {
    devices: usize,
    /// Every device at an address (and a simulator) of its own, instead of 100 per address.
    own: bool,
}

impl Layout {
    fn name(self) -> String {
        if self.own {
            format!("{} own", self.devices)
        } else {
            format!("{}", self.devices)
        }
    }
}

/// What one run measured.
#[derive(Clone)]
struct Run {
    peak_mib: f64,
    steady_mib: f64,
    /// Median RssAnon over the window.
    anon_mib: f64,
    cpu_pct: f64,
    /// Devices that sent at least window-1 telemetry messages in the window.
    at_rate: usize,
    min_msgs: u64,
    median_msgs: u64,
    connections: usize,
    threads: u64,
}

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let layouts: Vec<Layout> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .filter_map(|a| match a.strip_prefix("own") {
            Some(n) => n.parse().ok().map(|devices| Layout { devices, own: true }),
            None => a.parse().ok().map(|devices| Layout {
                devices,
                own: false,
            }),
        })
        .collect();
    let layouts = if layouts.is_empty() {
        [10, 100, 1000, 5000]
            .into_iter()
            .map(|devices| Layout {
                devices,
                own: false,
            })
            .collect()
    } else {
        layouts
    };
    let window = Duration::from_secs(env_secs("SCALE_WINDOW", 60));
    let warmup = Duration::from_secs(env_secs("SCALE_WARMUP", 15));
    let reps = env_secs("SCALE_REPS", 3).max(1) as usize;
    let gateway_bin = std::env::var("EMBERWATCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_emberwatch").to_string());
    println!("machine: {}", machine());
    println!("gateway binary: {gateway_bin}");
    println!(
        "window {} s after {} s warm-up, {reps} run(s) per size",
        window.as_secs(),
        warmup.as_secs()
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut table = Vec::new();
    for layout in layouts {
        let mut runs = Vec::new();
        for rep in 1..=reps {
            let run = rt.block_on(measure(layout, &gateway_bin, warmup, window));
            println!(
                "{} devices, run {rep}/{reps}: peak RSS {:.1} MiB, steady RSS {:.1} MiB (anonymous {:.1}), CPU {:.2} % of one core, \
                 telemetry {}/{} devices at 1 Hz (min {}, median {} messages in {} s), \
                 {} TCP connections, {} threads",
                layout.name(),
                run.peak_mib,
                run.steady_mib,
                run.anon_mib,
                run.cpu_pct,
                run.at_rate,
                layout.devices,
                run.min_msgs,
                run.median_msgs,
                window.as_secs(),
                run.connections,
                run.threads,
            );
            runs.push(run);
        }
        table.push((layout, runs));
    }
    println!("\nmedians of {reps} run(s):\n");
    println!("| devices | peak RSS MiB | steady RSS MiB | anonymous MiB | CPU % of one core | devices at 1 Hz | TCP connections | threads |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (layout, runs) in table {
        let med = |f: &dyn Fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            percentile(&v, 50.0)
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0}/{} | {:.0} | {:.0} |",
            layout.name(),
            med(&|r| r.peak_mib),
            med(&|r| r.steady_mib),
            med(&|r| r.anon_mib),
            med(&|r| r.cpu_pct),
            med(&|r| r.at_rate as f64),
            layout.devices,
            med(&|r| r.connections as f64),
            med(&|r| r.threads as f64),
        );
    }
}

/// A simulator process; killed on drop.
struct Sim {
    child: Child,
    port: u16,
}

impl Sim {
    /// `emberwatch sim --units 1-UNITS` on a free port, read from its banner.
    fn start(units: usize) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_emberwatch"))
            .args(["sim", "--listen", "127.0.0.1:0", "--units"])
            .arg(format!("1-{units}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start emberwatch sim");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("sim stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("sim banner");
        // "emberwatch sim: listening on 127.0.0.1:PORT (...)"
        let port = line
            .split_whitespace()
            .nth(4)
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in the sim banner {line:?}"));
        Sim { child, port }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway under test; killed on drop.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The profile every device uses: the simulator's 20 sensors of one rack.
fn profile() -> String {
    let mut s = String::from("[[profiles]]\nid = \"rack-20\"\n");
    let mut point = |id: &str, kind: &str, address: u16, ty: &str, scale: f64, unit: &str| {
        let _ = write!(
            s,
            "  [[profiles.points]]\n  id = \"{id}\"\n  kind = \"{kind}\"\n  address = {address}\n  \
             type = \"{ty}\"\n  scale = {scale:?}\n  unit = \"{unit}\"\n"
        );
    };
    for m in 0..16u16 {
        point(
            &format!("module_{}", m + 1),
            "temperature",
            100 + m,
            "i16",
            0.1,
            "degC",
        );
    }
    point("cell_temp_max", "temperature", 116, "i16", 0.1, "degC");
    point("smoke", "smoke", 120, "u16", 1.0, "");
    point("offgas", "offgas", 121, "u16", 1.0, "ppm");
    point("hydrogen", "hydrogen", 122, "u16", 0.1, "%LEL");
    s
}

/// The gateway's configuration: `ports` are the simulators', one per address.
fn config(layout: Layout, ports: &[u16], broker: u16, storage: &std::path::Path) -> String {
    let mut s = format!(
        "[site]\nid = \"bench\"\ngateway = \"gw-bench\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{broker}\"\n\
         [storage]\ndir = \"{}\"\n\n[[rules]]\nid = \"overtemp\"\npoints = [\"*/cell_temp_max\"]\n\
         above = {{ warning = 45.0, critical = 55.0 }}\n\n[[rules]]\nid = \"temp-rise\"\n\
         points = [\"*/cell_temp_max\"]\nrate_of_rise = {{ per_minute = 10.0, window = \"30s\" }}\n\n{}",
        storage.display(),
        profile()
    );
    for i in 0..layout.devices {
        let (port, unit) = if layout.own {
            (ports[i], 1)
        } else {
            (ports[i / PER_GATEWAY], i % PER_GATEWAY + 1)
        };
        let _ = write!(
            s,
            "\n[[devices]]\nid = \"rack-{i:04}\"\nzone = \"room-{}\"\nprofile = \"rack-20\"\n\
             address = \"127.0.0.1:{port}\"\nunit = {unit}\npoll_interval = \"1s\"\ntimeout = \"500ms\"\n",
            i / PER_GATEWAY
        );
    }
    s
}

/// Telemetry messages received, by device.
type Counts = Arc<Mutex<HashMap<String, u64>>>;

/// Subscribes to every device's telemetry and counts it until the returned task is aborted.
async fn count_telemetry(port: u16) -> (Counts, tokio::task::JoinHandle<()>) {
    let mut opts = MqttOptions::new(
        format!("bench-scale-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(opts, 64);
    client
        .subscribe("emberwatch/bench/telemetry/+", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = ev.poll().await {
            break;
        }
    }
    let counts: Counts = Arc::default();
    let c = Arc::clone(&counts);
    let task = tokio::spawn(async move {
        let _client = client; // dropping it would end the event loop
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let device = p.topic.rsplit('/').next().unwrap_or("").to_string();
                    if let Ok(mut m) = c.lock() {
                        *m.entry(device).or_default() += 1;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("subscriber: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    (counts, task)
}

/// Established TCP connections whose peer is one of the simulators (the gateway's side).
fn connections_to(ports: &HashSet<u16>) -> usize {
    let out = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .output()
        .expect("ss (Debian package iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .last()
                .and_then(|peer| peer.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| ports.contains(&p))
        })
        .count()
}

async fn measure(layout: Layout, bin: &str, warmup: Duration, window: Duration) -> Run {
    let broker = Broker::start().await;
    let sims: Vec<Sim> = if layout.own {
        (0..layout.devices).map(|_| Sim::start(1)).collect()
    } else {
        (0..layout.devices.div_ceil(PER_GATEWAY))
            .map(|g| Sim::start(PER_GATEWAY.min(layout.devices - g * PER_GATEWAY)))
            .collect()
    };
    let ports: Vec<u16> = sims.iter().map(|s| s.port).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("scale.toml");
    std::fs::write(
        &cfg,
        config(layout, &ports, broker.port, &dir.path().join("state")),
    )
    .expect("write config");
    let (counts, subscriber) = count_telemetry(broker.port).await;
    // Evict the binary's pages so every run starts from the same page-cache state (see the top).
    let _ = Command::new("dd")
        .arg(format!("if={bin}"))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status();
    let gateway = Gateway(
        Command::new(bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start emberwatch run"),
    );
    let pid = gateway.0.id();
    tokio::time::sleep(warmup).await;
    let before: HashMap<String, u64> = counts.lock().map(|m| m.clone()).unwrap_or_default();
    let (t0, _, _) = proc_stat(pid);
    let start = Instant::now();
    let mut rss = Vec::new();
    let mut anon = Vec::new();
    let mut conns = Vec::new();
    let port_set: HashSet<u16> = ports.iter().copied().collect();
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.push(proc_stat(pid).1 as f64 / 1024.0);
        anon.push(status_field(pid, "RssAnon:") as f64 / 1024.0);
        if conns.len() < 5 {
            conns.push(connections_to(&port_set));
        }
    }
    let (t1, _, hwm) = proc_stat(pid);
    let threads = status_field(pid, "Threads:");
    let elapsed = start.elapsed().as_secs_f64();
    let after: HashMap<String, u64> = counts.lock().map(|m| m.clone()).unwrap_or_default();
    subscriber.abort();
    drop(gateway);
    drop(sims);
    drop(broker);
    let mut per_device: Vec<u64> = (0..layout.devices)
        .map(|i| {
            let id = format!("rack-{i:04}");
            after.get(&id).copied().unwrap_or(0) - before.get(&id).copied().unwrap_or(0)
        })
        .collect();
    per_device.sort_unstable();
    let least = window.as_secs().saturating_sub(1);
    rss.sort_by(|a, b| a.total_cmp(b));
    anon.sort_by(|a, b| a.total_cmp(b));
    conns.sort_unstable();
    Run {
        peak_mib: hwm as f64 / 1024.0,
        steady_mib: percentile(&rss, 50.0),
        anon_mib: percentile(&anon, 50.0),
        cpu_pct: (t1 - t0) as f64 / clock_ticks() / elapsed * 100.0,
        at_rate: per_device.iter().filter(|&&n| n >= least).count(),
        min_msgs: per_device.first().copied().unwrap_or(0),
        median_msgs: per_device.get(per_device.len() / 2).copied().unwrap_or(0),
        connections: conns.get(conns.len() / 2).copied().unwrap_or(0),
        threads,
    }
}
