//! Gap repair against a real gateway's journal (issue 12: "gap repair time for 1,000 missed
//! events"): the released `emberwatch run` polling a simulated rack, and the released
//! `emberwatch console`, both on a real mosquitto. Build the binary first:
//!
//! ```text
//! cargo build --release && cargo bench --bench console_gap
//! ```
//!
//! The gateway watches `DEVICES` racks (one simulator, one shared Modbus connection) of 17
//! temperature points each, every point under one critical threshold. Each trial:
//! the console is killed (SIGKILL); every temperature register of the simulator is written
//! above the threshold (or back below it, in turn), so the gateway raises (or clears)
//! `DEVICES × 17` alarms, journals them and publishes them to nobody; once the gateway's
//! retained status says it is done, the console is started again. Timed from the console's
//! spawn to `/api/gateways` listing every event through the gateway's `seq` and nothing
//! missing, with the moment the console asked `cmd/replay` (the bench listens on that topic)
//! and the moment its `/healthz` first said 200. p50/p90/max over `TRIALS` trials.
//!
//! `EMBERWATCH_BIN` runs another binary. Figures are printed with the machine; nothing here
//! asserts a time.

mod common;
use common::live::*;
use common::{machine, percentile};

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use emberwatch::sim::{self, Scenario, SimOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const GATEWAY: &str = "gw-gap";
/// Racks; with 17 points each, 59 make 1,003 alarms.
const DEVICES: u64 = 59;
/// The simulator's module temperatures 1..16 and the hottest cell (0.1 °C).
const REGISTERS: std::ops::RangeInclusive<u16> = 100..=116;
const TRIALS: usize = 7;

fn gateway_toml(mqtt: u16, sim: SocketAddr, storage: &Path) -> String {
    let mut s = format!(
        "[site]\nid = \"{SITE}\"\ngateway = \"{GATEWAY}\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt}\"\n\
         topic_prefix = \"{PREFIX}\"\nkeep_alive = \"5s\"\nheartbeat = \"1s\"\n\n[storage]\ndir = '{}'\n\n\
         [alarms]\nchatter_per_minute = 10000\n\n",
        storage.display()
    );
    let mut points = vec!["\"*/cell_temp_max\"".to_string()];
    for d in 0..DEVICES {
        s.push_str(&format!(
            "[[devices]]\nid = \"rack-{d:02}\"\nzone = \"room-{}\"\naddress = \"{sim}\"\n\
             poll_interval = \"1s\"\ntimeout = \"1s\"\n",
            d % 4
        ));
        for m in 1..=16u16 {
            s.push_str(&format!(
                "  [[devices.points]]\n  id = \"module_{m}\"\n  kind = \"temperature\"\n  \
                 address = {}\n  type = \"i16\"\n  scale = 0.1\n  unit = \"degC\"\n",
                99 + m
            ));
        }
        s.push_str(
            "  [[devices.points]]\n  id = \"cell_temp_max\"\n  kind = \"temperature\"\n  \
             address = 116\n  type = \"i16\"\n  scale = 0.1\n  unit = \"degC\"\n",
        );
    }
    for m in 1..=16 {
        points.push(format!("\"*/module_{m}\""));
    }
    s.push_str(&format!(
        "\n[[rules]]\nid = \"overtemp\"\npoints = [{}]\nabove = {{ critical = 50.0 }}\n",
        points.join(", ")
    ));
    s
}

/// Follows the gateway's retained status `seq` and the console's `cmd/replay` asks.
async fn watch_gateway(mqtt: u16) -> (watch::Receiver<u64>, watch::Receiver<Option<Instant>>) {
    let mut o = MqttOptions::new("bench-gap-watch", "127.0.0.1", mqtt);
    o.set_keep_alive(Duration::from_secs(5));
    let (c, mut el) = AsyncClient::new(o, 100);
    let gw = format!("{PREFIX}/{SITE}/gateways/{GATEWAY}");
    c.subscribe(format!("{gw}/status"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    c.subscribe(format!("{gw}/cmd/replay"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (seq_tx, seq_rx) = watch::channel(0);
    let (ask_tx, ask_rx) = watch::channel(None);
    tokio::spawn(async move {
        let _client = c;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/cmd/replay") => {
                    let _ = ask_tx.send(Some(Instant::now()));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    // Republished every heartbeat: only a new seq is a change.
                    if let Some(seq) = v.get("seq").and_then(Value::as_u64) {
                        seq_tx.send_if_modified(|v| std::mem::replace(v, seq) != seq);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (seq_rx, ask_rx)
}

/// Waits until the gateway's status `seq` has reached `at_least` and stayed put for 2 s.
async fn settled(seq: &mut watch::Receiver<u64>, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = *seq.borrow_and_update();
        if now >= at_least
            && tokio::time::timeout(Duration::from_secs(2), seq.changed())
                .await
                .is_err()
        {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway's status seq is {now}, not yet {at_least}, after 120 s"
        );
        let _ = tokio::time::timeout(Duration::from_millis(500), seq.changed()).await;
    }
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name}: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms ({} trials)",
        percentile(&ms, 50.0),
        percentile(&ms, 90.0),
        ms.last().copied().unwrap_or(f64::NAN),
        ms.len()
    );
}

fn main() {
    let bin = binary();
    println!("machine: {}", machine());
    println!("binary: {}", bin.display());
    let _ = std::io::stdout().flush();
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    let (_broker, mqtt) = mosquitto(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cancel = CancellationToken::new();
        let sim = sim::start(
            SimOptions {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                unit: 1,
                scenario: Scenario::Normal,
                speed: 1.0,
            },
            cancel.clone(),
        )
        .await
        .expect("sim");
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            gateway_toml(mqtt, sim.local_addr, &dir.path().join("state")),
        )
        .expect("write gateway.toml");
        let _gateway = Proc(
            Command::new(&bin)
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start emberwatch run"),
        );
        let (mut seq, asked) = watch_gateway(mqtt).await;
        let console_dir = dir.path().join("console");
        std::fs::create_dir_all(&console_dir).expect("console dir");
        let http = free_port();
        // The console meets the gateway while it is quiet, so what follows is missed, not new.
        let mut last = settled(&mut seq, 0).await;
        let mut console = Some(console_on(&bin, &console_dir, mqtt, http).0);
        healthy(http).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !repaired(&get_json(http, "/api/gateways").await, GATEWAY, last) {
            assert!(Instant::now() < deadline, "the console never saw {GATEWAY}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (mut total, mut to_healthy, mut to_ask) = (Vec::new(), Vec::new(), Vec::new());
        for trial in 0..TRIALS {
            drop(console.take()); // SIGKILL
            let raw: u16 = if trial % 2 == 0 { 600 } else { 250 };
            for r in REGISTERS {
                sim.write(r, raw);
            }
            let before = last;
            last = settled(&mut seq, before + DEVICES * 17).await;
            let started = Instant::now();
            console = Some(console_on(&bin, &console_dir, mqtt, http).0);
            healthy(http).await;
            let healthy_at = started.elapsed();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !repaired(&get_json(http, "/api/gateways").await, GATEWAY, last) {
                assert!(
                    Instant::now() < deadline,
                    "not repaired in 60 s: {}",
                    get_json(http, "/api/gateways").await
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let took = started.elapsed();
            let ask = asked
                .borrow()
                .filter(|t| *t >= started)
                .map(|t| t.duration_since(started));
            println!(
                "trial {trial}: {} events missed (seq {}..={last}): healthy {:.0} ms, \
                 cmd/replay asked {}, nothing missing {:.0} ms",
                last - before,
                before + 1,
                healthy_at.as_secs_f64() * 1000.0,
                ask.map_or("never".into(), |a| format!("{:.0} ms", a.as_secs_f64() * 1000.0)),
                took.as_secs_f64() * 1000.0
            );
            total.push(took.as_secs_f64() * 1000.0);
            to_healthy.push(healthy_at.as_secs_f64() * 1000.0);
            if let Some(a) = ask {
                to_ask.push(a.as_secs_f64() * 1000.0);
            }
        }
        summary("console start -> /healthz 200", to_healthy);
        summary("console start -> cmd/replay asked", to_ask);
        summary(
            &format!(
                "gap repair of ~{} events from a real gateway's journal, console start -> nothing missing",
                DEVICES * 17
            ),
            total,
        );
        drop(console);
        cancel.cancel();
    });
}
