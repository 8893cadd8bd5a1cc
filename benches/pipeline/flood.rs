//! A flood of operator commands (issue 15 item 4): 1,000 `cmd/ack`, `cmd/shelve` and
//! `cmd/service` a second, valid and invalid mixed, at the real daemon over a real broker. What it
//! costs: the daemon's peak RSS, whether every command got its `cmd/result` (a "busy" refusal is
//! an answer), and how late a live critical alarm arrives during the flood compared with idle.
//!
//! The flood's valid commands act on zone `room-2` (a second rack held at a critical temperature,
//! so shelves and services have an alarm to act on); the live alarm is raised and cleared in
//! `room-1`, so no flooded command touches it and its latency is the pipeline's alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_modbus::client::Writer;
use tokio_util::sync::CancellationToken;

use crate::common::percentile;
use crate::rig::*;

const GATEWAY: &str = "emberwatch/bench/gateways/gw-bench";
const HOT_KEY: &str = "rack-02/cell_temp_max/overtemp";

/// Ten bodies, cycled: five that succeed, five refused for five different reasons.
fn commands() -> Vec<(&'static str, String)> {
    vec![
        ("ack", r#"{"alarm":"*","zone":"room-2"}"#.to_string()),
        ("ack", r#"{"alarm":"nope/x/y"}"#.to_string()),
        (
            "shelve",
            format!(r#"{{"alarm":"{HOT_KEY}","for":"5s","reason":"bench"}}"#),
        ),
        (
            "shelve",
            format!(r#"{{"alarm":"{HOT_KEY}","for":"forever","reason":"bench"}}"#),
        ),
        (
            "service",
            format!(r#"{{"alarm":"{HOT_KEY}","in_service":false,"reason":"bench"}}"#),
        ),
        (
            "service",
            format!(r#"{{"alarm":"{HOT_KEY}","in_service":true}}"#),
        ),
        ("ack", r#"{"alarm":"#.to_string()),
        ("ack", r#"{"alarm":"*","zone":"room-2","x":1}"#.to_string()),
        ("shelve", format!(r#"{{"alarm":"{HOT_KEY}","for":"5s"}}"#)),
        ("ack", r#"{"alarm":"*","zone":"nope"}"#.to_string()),
    ]
}

/// Answers seen on `cmd/result`.
#[derive(Default)]
struct Answers {
    all: AtomicU64,
    ok: AtomicU64,
    busy: AtomicU64,
}

/// Counts every `cmd/result` until `cancel`.
async fn count_answers(port: u16, answers: Arc<Answers>, cancel: CancellationToken) {
    let mut opts = MqttOptions::new(
        format!("bench-results-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(opts, 1024);
    client
        .subscribe(format!("{GATEWAY}/cmd/result"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            e = ev.poll() => match e {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    answers.all.fetch_add(1, Ordering::Relaxed);
                    if v["ok"] == true {
                        answers.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    if v["reason"].as_str().is_some_and(|r| r.contains("busy")) {
                        answers.busy.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("result subscriber: {e}"),
            },
        }
    }
}

/// Raises (572 = 57.2 degC, critical) or clears (250) the live alarm on rack-01 at a random phase
/// of its 100 ms poll, and returns how long its event took to reach the subscriber.
async fn live_alarm(
    modbus: &mut tokio_modbus::client::Context,
    ev: &mut rumqttc::EventLoop,
    raise: bool,
) -> f64 {
    let (value, state) = if raise {
        (572u16, "active")
    } else {
        (250, "cleared")
    };
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 100)).await;
    let t = Instant::now();
    modbus
        .write_single_register(116, value)
        .await
        .expect("write")
        .expect("no exception");
    let arrived = tokio::time::timeout(Duration::from_secs(30), next_alarm(ev, state))
        .await
        .expect("the live alarm within 30 s");
    arrived.duration_since(t).as_secs_f64() * 1000.0
}

fn summary(samples: &mut [f64]) -> String {
    samples.sort_by(|a, b| a.total_cmp(b));
    format!(
        "p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms ({} transitions)",
        percentile(samples, 50.0),
        percentile(samples, 90.0),
        samples.last().copied().unwrap_or(f64::NAN),
        samples.len()
    )
}

pub(crate) async fn command_flood(rate: usize, window: Duration) {
    println!(
        "\n== flood: {rate} commands/s for {} s (ack, shelve, service; half of them refused), a live critical alarm meanwhile",
        window.as_secs()
    );
    let broker = Broker::start().await;
    let cancel = CancellationToken::new();
    let live = normal_sim(&cancel).await;
    let hot = normal_sim(&cancel).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bench.toml");
    let devices = format!(
        "{}{}",
        device_toml("rack-01", live.local_addr, "100ms", 1),
        device_toml("rack-02", hot.local_addr, "100ms", 1).replace("room-1", "room-2"),
    );
    std::fs::write(
        &cfg,
        gateway_toml(broker.port, &dir.path().join("state"), &devices),
    )
    .expect("config");
    let answers = Arc::new(Answers::default());
    tokio::spawn(count_answers(broker.port, answers.clone(), cancel.clone()));
    let (_client, mut ev) = subscriber(broker.port, "emberwatch/bench/alarms/room-1/#").await;
    let daemon = Daemon::start(&cfg);
    let pid = daemon.0.id();
    let connect = |addr| async move {
        tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(1))
            .await
            .expect("modbus client")
    };
    let mut modbus = connect(live.local_addr).await;
    let mut hot_modbus = connect(hot.local_addr).await;
    hot_modbus
        .write_single_register(116, 600)
        .await
        .expect("write")
        .expect("no exception");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = proc_stat(pid).1 as f64 / 1024.0;

    let trials = window.as_secs().max(2) as usize;
    let mut idle = Vec::new();
    for i in 0..trials {
        idle.push(live_alarm(&mut modbus, &mut ev, i % 2 == 0).await);
    }
    let answered_before = answers.all.load(Ordering::Relaxed);

    let mut opts = MqttOptions::new(
        format!("bench-flood-{}", std::process::id()),
        "127.0.0.1",
        broker.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(1000);
    let (flooder, mut fev) = AsyncClient::new(opts, rate * 2);
    tokio::spawn(async move { while fev.poll().await.is_ok() {} });
    let bodies = commands();
    let flood = async {
        let mut sent = 0usize;
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while start.elapsed() < window {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * rate as f64) as usize;
            while sent < due.min(rate * window.as_secs() as usize) {
                let (name, body) = &bodies[sent % bodies.len()];
                flooder
                    .publish(
                        format!("{GATEWAY}/cmd/{name}"),
                        QoS::AtLeastOnce,
                        false,
                        body.clone(),
                    )
                    .await
                    .expect("publish");
                sent += 1;
            }
        }
        (sent, start.elapsed())
    };
    let peak = async {
        let mut peak = idle_rss;
        let until = Instant::now() + window + Duration::from_secs(5);
        while Instant::now() < until {
            peak = peak.max(proc_stat(pid).1 as f64 / 1024.0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    };
    let during = async {
        let mut during = Vec::new();
        let start = Instant::now();
        let mut raise = true;
        while start.elapsed() < window {
            during.push(live_alarm(&mut modbus, &mut ev, raise).await);
            raise = !raise;
        }
        // Leave the alarm cleared.
        if !raise {
            live_alarm(&mut modbus, &mut ev, false).await;
        }
        during
    };
    let ((sent, took), peak, mut during) = tokio::join!(flood, peak, during);
    // Answers still on their way: wait for all of them, or until they stop coming.
    let mut last = (answers.all.load(Ordering::Relaxed), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = answers.all.load(Ordering::Relaxed);
        if now - answered_before >= sent as u64 || last.1.elapsed() > Duration::from_secs(10) {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let answered = answers.all.load(Ordering::Relaxed) - answered_before;
    println!(
        "sent {sent} commands in {:.1} s ({:.0}/s); answered {answered} ({:.2} %), of which ok {}, busy {}",
        took.as_secs_f64(),
        sent as f64 / took.as_secs_f64(),
        answered as f64 * 100.0 / sent.max(1) as f64,
        answers.ok.load(Ordering::Relaxed),
        answers.busy.load(Ordering::Relaxed),
    );
    println!("RSS idle {idle_rss:.1} MB, peak during the flood {peak:.1} MB");
    let idle_s = summary(&mut idle);
    let during_s = summary(&mut during);
    println!("live critical alarm latency (register write → subscriber, poll 100 ms): idle {idle_s}; during the flood {during_s}");
    println!(
        "ratio flood/idle: p50 {:.2}, max {:.2}",
        percentile(&during, 50.0) / percentile(&idle, 50.0),
        during.last().copied().unwrap_or(f64::NAN) / idle.last().copied().unwrap_or(f64::NAN)
    );
    drop(daemon);
    cancel.cancel();
}
