//! How many Modbus RTU requests per second one bus owner gets through, against the limit the wire
//! itself sets.
//!
//! A pty moves bytes instantly whatever baud rate it is told, so measuring over a bare socat pair
//! would only time our software. Here the bytes cross a "cable" that delivers them at the baud
//! rate: two socat pty pairs with a relay task in the middle that holds each burst for its wire
//! time, one direction at a time (RS-485 is half duplex). The far end is the simulator served by
//! tokio-modbus's RTU server; the near end is emberwatch's bus owner polling one device as fast as
//! it can. The theoretical limit per request is request + reply frame time plus two 3.5-character
//! silences (8N1: 10 bits a character; 1.75 ms silences above 19200 baud).
//!
//! Run: `cargo bench --bench serial` (needs socat). Prints a table; takes about 20 s.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use emberwatch::config::{Config, Role};
use emberwatch::fieldbus::bus::{Bus, BusDevice, Endpoint};
use emberwatch::fieldbus::frame::{char_time, inter_frame};
use emberwatch::fieldbus::Counters;
use emberwatch::sim::{self, Parity, RtuPort, SimBus, SimOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long each configuration is measured.
const RUN: Duration = Duration::from_secs(3);

fn main() {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("serial bench: no runtime: {e}");
            return;
        }
    };
    rt.block_on(bench());
}

async fn bench() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("serial bench: no temp dir: {e}");
            return;
        }
    };
    let d = dir.path();
    let (Some(_near), Some(_far)) = (
        socat_pair(&d.join("bus"), &d.join("relay-near")).await,
        socat_pair(&d.join("relay-far"), &d.join("slave")).await,
    ) else {
        eprintln!("serial bench: needs socat (apt-get install socat)");
        return;
    };
    let cancel = CancellationToken::new();
    let sim = sim::start_with(
        SimOptions {
            listen: "127.0.0.1:0".parse().expect("address"),
            ..SimOptions::default()
        },
        SimBus {
            also_units: vec![],
            sunspec: false,
            rtu: Some(RtuPort {
                path: d.join("slave"),
                baud: 19200,
                parity: Parity::None,
            }),
        },
        cancel.clone(),
    )
    .await;
    let sim = match sim {
        Ok(s) => s,
        Err(e) => {
            eprintln!("serial bench: simulator: {e}");
            return;
        }
    };

    println!("\n== Modbus RTU: requests per second on one bus (one device, polled back to back)");
    println!(
        "{:>7} {:>9} {:>12} {:>12} {:>8} {:>12}",
        "baud", "registers", "limit req/s", "measured", "of limit", "mean latency"
    );
    for baud in [19200u32, 115200] {
        for registers in [1u16, 33] {
            let wire = Wire::new(baud);
            let relay = tokio::spawn(relay(
                d.join("relay-near"),
                d.join("relay-far"),
                wire.clone(),
                cancel.child_token(),
            ));
            let (count, elapsed) = poll_flat_out(&d.join("bus"), baud, registers).await;
            relay.abort();
            let _ = relay.await;
            let limit = theoretical(baud, registers);
            let rate = count as f64 / elapsed.as_secs_f64();
            println!(
                "{baud:>7} {registers:>9} {limit:>12.1} {rate:>12.1} {:>7.0}% {:>12?}",
                100.0 * rate / limit,
                elapsed / count.max(1) as u32
            );
        }
    }
    println!(
        "(limit: (8 + reply bytes) × 10 bits / baud + 2 × t3.5; reply = 5 + 2 × registers bytes)"
    );
    cancel.cancel();
    sim.stopped().await;
}

/// Requests per second the wire allows for a read of `registers` registers at `baud`, 8N1.
fn theoretical(baud: u32, registers: u16) -> f64 {
    let c = char_time(baud, 8, false, 1);
    let chars = 8 + 5 + 2 * u32::from(registers);
    let per = c * chars + 2 * inter_frame(baud, c);
    1.0 / per.as_secs_f64()
}

/// Polls one device as fast as the bus owner allows for [`RUN`]; returns (polls, time taken).
async fn poll_flat_out(port: &Path, baud: u32, registers: u16) -> (u64, Duration) {
    let mut points = String::new();
    for i in 0..registers {
        points += &format!("[[devices.points]]\nid = \"r{i}\"\naddress = {}\n", 100 + i);
    }
    let text = format!(
        "[site]\nid = \"b\"\ngateway = \"b\"\n[[devices]]\nid = \"rack\"\nzone = \"z\"\n\
         transport = \"modbus-rtu\"\nport = '{}'\nbaud = {baud}\nparity = \"none\"\n\
         timeout = \"500ms\"\n{points}",
        port.display()
    );
    let cfg = match Config::from_toml(&text, Role::Gateway) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("serial bench: config: {e:?}");
            return (0, RUN);
        }
    };
    let Some(endpoint) = Endpoint::of(&cfg.devices[0].transport) else {
        return (0, RUN);
    };
    let device = BusDevice::new(cfg.devices[0].clone());
    let counters = Counters::new(1);
    let mut bus = Bus::new(endpoint, counters.clone());
    // One poll to open the port and settle.
    let _ = bus.poll(0, &device).await;
    let start = Instant::now();
    let mut ok = 0u64;
    while start.elapsed() < RUN {
        if bus.poll(0, &device).await.outcome.is_ok() {
            ok += 1;
        }
    }
    let elapsed = start.elapsed();
    bus.close().await;
    let s = counters.stats(0);
    if s.requests != ok + 1 {
        eprintln!("  ({baud} baud, {registers} registers: {s})");
    }
    (ok, elapsed)
}

/// The cable's timing: when the half-duplex wire is free again.
#[derive(Clone)]
struct Wire {
    char_time: Duration,
    free_at: Arc<Mutex<Instant>>,
}

impl Wire {
    fn new(baud: u32) -> Wire {
        Wire {
            char_time: char_time(baud, 8, false, 1),
            free_at: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// When `n` bytes sent now have fully arrived at the other end.
    async fn carry(&self, n: usize) -> Instant {
        let mut free = self.free_at.lock().await;
        let start = (*free).max(Instant::now());
        let done = start + self.char_time * n as u32;
        *free = done;
        done
    }
}

/// Relays bytes between the two inner pty ends, each burst delayed by its wire time.
async fn relay(near: PathBuf, far: PathBuf, wire: Wire, cancel: CancellationToken) {
    let open = |p: &Path| {
        tokio_serial::SerialStream::open(
            &tokio_serial::new(p.display().to_string(), 115200).parity(tokio_serial::Parity::None),
        )
    };
    let (Ok(near), Ok(far)) = (open(&near), open(&far)) else {
        eprintln!("serial bench: cannot open the relay ends");
        return;
    };
    let (mut near_rx, mut near_tx) = tokio::io::split(near);
    let (mut far_rx, mut far_tx) = tokio::io::split(far);
    let w2 = wire.clone();
    let there = async move {
        let mut buf = [0u8; 512];
        while let Ok(n) = near_rx.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tokio::time::sleep_until(wire.carry(n).await).await;
            if far_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let back = async move {
        let mut buf = [0u8; 512];
        while let Ok(n) = far_rx.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tokio::time::sleep_until(w2.carry(n).await).await;
            if near_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = there => {}
        _ = back => {}
    }
}

/// A socat pty pair; killed when dropped.
async fn socat_pair(a: &Path, b: &Path) -> Option<Child> {
    let child = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(a.exists() && b.exists()) {
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(child)
}
