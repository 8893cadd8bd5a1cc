//! What the running console costs, end to end (issue 12's last measurements): the real
//! `emberwatch console` binary against a real mosquitto, fed by a rumqttc client playing the
//! gateways. Build the binary first, then run:
//!
//! ```text
//! cargo build --release && cargo bench --bench console_live
//! ```
//!
//! The bench runs `target/release/emberwatch` (or `EMBERWATCH_BIN`): it measures the binary
//! operators run, not the bench profile's build of the library.
//!
//! - SSE latency: one gateway's alarm events (SPEC's shape, consecutive `seq`, after a retained
//!   `online` status at seq 0 so the console sees no gap) published at 50/s for 20 s; each is
//!   timed from just before `publish` to its `event:` arriving on `GET /api/stream` (raw
//!   HTTP/1.0 over a TcpStream): p50/p99/max.
//! - RSS while watching 50 gateways: a fresh console; 50 gateways each publish a retained
//!   status, an alarm event and telemetry of 4 devices every second for 30 s. The console's
//!   peak RSS (VmHWM), its RSS at the end, and its CPU (utime+stime from /proc/PID/stat) over
//!   the 30 s.
//! - Gap repair of 1,000 missed events: a fresh console has seq 1..=10 of a gateway, then a
//!   retained status says seq 1010; the bench stands in for the gateway's journal (republishes
//!   what `cmd/replay` asks on its `reply_to`, then answers `cmd/result` as SPEC says), and times
//!   status -> replay asked -> `/api/gateways` listing nothing missing. The real gateway's
//!   journal read is not in this figure: benches/console_gap.rs measures that one.
//!
//! Figures are printed with the machine; nothing here asserts a time.

mod common;
use common::live::*;
use common::{machine, percentile};

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Reads `GET /api/stream` and sends (event_id, arrival) for every `event:` it carries.
async fn sse(http: u16, tx: tokio::sync::mpsc::UnboundedSender<(String, Instant)>) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .expect("connect to the console");
    s.write_all(b"GET /api/stream HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("request the stream");
    let mut lines = BufReader::new(s).lines();
    let mut name = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(n) = line.strip_prefix("event:") {
            name = n.trim().to_string();
        } else if let Some(d) = line.strip_prefix("data:") {
            if name == "event" {
                let at = Instant::now();
                if let Some(id) = serde_json::from_str::<Value>(d.trim())
                    .ok()
                    .and_then(|v| v.get("event_id").and_then(Value::as_str).map(String::from))
                {
                    let _ = tx.send((id, at));
                }
            }
        } else if line.is_empty() {
            name.clear();
        }
    }
}

async fn sse_latency(bin: &Path, mqtt: u16, base: &Path) {
    const RATE: u64 = 50;
    const SECS: u64 = 20;
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let (_console, http) = console(bin, dir.path(), mqtt).await;
    let c = client(mqtt, "bench-gw-latency");
    let gw = "gw-lat";
    status(&c, gw, 0).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(sse(http, tx));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    for seq in 1..=RATE * SECS {
        tick.tick().await;
        let (topic, body) = event(gw, seq, &format!("rack-{:02}", seq % 8));
        sent.insert(format!("{gw}-{seq}"), Instant::now());
        c.publish(topic, QoS::AtLeastOnce, false, body)
            .await
            .expect("publish event");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ms = Vec::new();
    while let Ok((id, at)) = rx.try_recv() {
        if let Some(t) = sent.get(&id) {
            ms.push(at.duration_since(*t).as_secs_f64() * 1000.0);
        }
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "sse latency (publish -> SSE event, {RATE}/s for {SECS} s): p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms ({} of {} events arrived)",
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN),
        ms.len(),
        sent.len()
    );
}

async fn fifty_gateways(bin: &Path, mqtt: u16, base: &Path) {
    const GATEWAYS: u64 = 50;
    const DEVICES: u64 = 4;
    const SECS: u64 = 30;
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let (console, http) = console(bin, dir.path(), mqtt).await;
    let pid = console.0.id();
    let (_, rss_idle, _) = proc_stat(pid);
    // Five connections of ten gateways each (a gateway has its own in production; the
    // console's side is the same one subscription either way).
    let clients: Vec<AsyncClient> = (0..5)
        .map(|i| client(mqtt, &format!("bench-gws-{i}")))
        .collect();
    let gws: Vec<String> = (0..GATEWAYS).map(|g| format!("gw-{g:02}")).collect();
    for (i, gw) in gws.iter().enumerate() {
        status(&clients[i % 5], gw, 0).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t0, _, _) = proc_stat(pid);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for seq in 1..=SECS {
        tick.tick().await;
        for (i, gw) in gws.iter().enumerate() {
            let c = &clients[i % 5];
            let (topic, body) = event(gw, seq, &format!("{gw}-rack-{}", seq % DEVICES));
            c.publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .expect("publish event");
            status(c, gw, seq).await;
            for d in 0..DEVICES {
                let body = json!({
                    "time": "2026-11-24T13:40:02.123Z",
                    "points": {"cell_temp_max": 25.0 + (seq % 7) as f64,
                               "cell_temp_min": 22.0, "soc": 81.5, "current": -12.4},
                    "quality": "good"
                })
                .to_string();
                c.publish(
                    format!("{PREFIX}/{SITE}/telemetry/{gw}-rack-{d}"),
                    QoS::AtMostOnce,
                    false,
                    body,
                )
                .await
                .expect("publish telemetry");
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let wall = started.elapsed().as_secs_f64();
    let (t1, rss, hwm) = proc_stat(pid);
    let cpu = (t1 - t0) as f64 / clock_ticks();
    // The figures mean something only if the console took the traffic in.
    let complete = get_json(http, "/api/gateways")
        .await
        .as_array()
        .map_or(0, |a| {
            a.iter()
                .filter(|g| g.get("received_through").and_then(Value::as_u64) == Some(SECS))
                .count()
        });
    println!(
        "50 gateways: the console received all {SECS} events of {complete} of {GATEWAYS} gateways"
    );
    println!(
        "50 gateways (each 1 status + 1 event + {DEVICES} telemetry per second, {SECS} s): \
         peak RSS (VmHWM) {:.1} MiB, RSS at end {:.1} MiB (idle before {:.1} MiB), \
         CPU {:.2} s in {:.1} s = {:.1} % of one core",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        cpu,
        wall,
        100.0 * cpu / wall
    );
}

/// Gap repair with the bench standing in for the gateway's journal: the console is told by a
/// retained status that it missed `MISSED` events and asks `cmd/replay`; the bench republishes
/// them on `reply_to` and answers `cmd/result` as a gateway does. Timed from the status to the
/// console's `/api/gateways` listing nothing missing.
async fn gap_repair(bin: &Path, mqtt: u16, base: &Path) {
    const LIVE: u64 = 10;
    const MISSED: u64 = 1000;
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let (_console, http) = console(bin, dir.path(), mqtt).await;
    let gw = "gw-gap";
    let mut o = MqttOptions::new("bench-gw-gap", "127.0.0.1", mqtt);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_inflight(1000);
    let (c, mut el) = AsyncClient::new(o, 10_000);
    let (asked_tx, mut asked_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = asked_tx.send((Instant::now(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    c.subscribe(
        format!("{PREFIX}/{SITE}/gateways/{gw}/cmd/replay"),
        QoS::AtLeastOnce,
    )
    .await
    .expect("subscribe");
    status(&c, gw, 0).await;
    for seq in 1..=LIVE {
        let (topic, body) = event(gw, seq, "rack-01");
        c.publish(topic, QoS::AtLeastOnce, false, body)
            .await
            .expect("publish event");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = LIVE + MISSED;
    let started = Instant::now();
    status(&c, gw, last).await;
    let Ok(Some((asked_at, body))) =
        tokio::time::timeout(Duration::from_secs(10), asked_rx.recv()).await
    else {
        println!("gap repair: the console asked for no replay within 10 s");
        return;
    };
    let ask: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let from = ask.get("from_seq").and_then(Value::as_u64).unwrap_or(0);
    let reply_to = ask
        .get("reply_to")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    for seq in from..=last {
        let (_, body) = event(gw, seq, "rack-01");
        c.publish(reply_to.clone(), QoS::AtLeastOnce, false, body)
            .await
            .expect("publish replayed event");
    }
    let result = json!({"command": "replay", "ok": true,
        "reason": format!("republished {} event(s), seq {from}..={last}, on {reply_to}", last + 1 - from)});
    c.publish(
        format!("{PREFIX}/{SITE}/gateways/{gw}/cmd/result"),
        QoS::AtLeastOnce,
        false,
        result.to_string(),
    )
    .await
    .expect("publish result");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let g = get_json(http, "/api/gateways").await;
        if repaired(&g, gw, last) {
            break;
        }
        if Instant::now() > deadline {
            println!("gap repair: not repaired within 30 s: {g}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = started.elapsed();
    println!(
        "gap repair of {MISSED} missed events (bench plays the gateway's journal): status -> \
         cmd/replay asked {:.0} ms (the console checks once a second), asked -> nothing missing \
         {:.0} ms, total {:.0} ms (replay from seq {from})",
        asked_at.duration_since(started).as_secs_f64() * 1000.0,
        total
            .saturating_sub(asked_at.duration_since(started))
            .as_secs_f64()
            * 1000.0,
        total.as_secs_f64() * 1000.0
    );
}

fn main() {
    let bin = binary();
    println!("machine: {}", machine());
    println!("binary: {}", bin.display());
    let _ = std::io::stdout().flush();
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let (_broker, mqtt) = mosquitto(broker_dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        sse_latency(&bin, mqtt, &base).await;
        fifty_gateways(&bin, mqtt, &base).await;
        gap_repair(&bin, mqtt, &base).await;
    });
}
