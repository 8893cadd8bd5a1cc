//! Hostile MQTT peers that are slow rather than absent (issue 15): a broker that trickles, then
//! stalls with its connections open and never answers a CONNECT, and a subscriber that takes
//! everything at QoS 1 and never reads its socket.
//!
//! What an operator must see: the gateway keeps polling and raising alarms, says the broker is
//! unreachable (log and `/metrics`), keeps what it could not send in the outbox on disk, and
//! delivers all of it once the broker answers again; and a subscriber that stopped reading
//! costs the other subscribers nothing. Every wait has a deadline; nothing asserts a speed.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use common::slow::{Mode, SlowRelay};
use common::*;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, Instant};

const STATUS: &str = "emberwatch/test-site/gateways/gw-t/status";
const ALARM: &str = "emberwatch/test-site/alarms/room-1/rack-01/cell_temp_max/cell-overtemp";

/// The harness configuration with a short keep-alive and heartbeat, and `/metrics`.
fn config(mqtt_port: u16, sim_port: u16, storage: &Path, metrics_port: u16) -> String {
    gateway_config(
        mqtt_port,
        sim_port,
        storage,
        &format!("\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    )
    .replace(
        "keep_alive = \"5s\"",
        "keep_alive = \"2s\"\nheartbeat = \"500ms\"",
    )
}

/// GET /metrics; the samples by series (name plus labels), or `None` if it did not answer.
async fn scrape(port: u16) -> Option<HashMap<String, f64>> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    let (_, text) = body.split_once("\r\n\r\n")?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect(),
    )
}

/// Scrapes until `pred` holds on the samples (30 s at most); panics with the last scrape.
async fn metrics_until(
    port: u16,
    what: &str,
    pred: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        if let Some(s) = scrape(port).await {
            if pred(&s) {
                return s;
            }
            last = Some(s);
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what}: {last:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

fn sample(s: &HashMap<String, f64>, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(f64::NAN)
}

/// Waits (30 s at most) until the gateway's log contains `text`.
async fn logged(daemon: &Daemon, text: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.stderr().contains(text) {
        assert!(
            Instant::now() < deadline,
            "never logged: {what} ({text:?})\n{}",
            daemon.stderr()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// One raise and one clear of `cell-overtemp`, each held until the gateway logged the event:
/// proof that it polls and evaluates, whatever the broker does. `seq` advances by two.
async fn alarm_cycle(sim: &Sim, daemon: &Daemon, seq: &mut u64) {
    for value in [600, 250] {
        sim.write(116, value).await;
        *seq += 1;
        logged(
            daemon,
            &format!(" seq={seq} "),
            &format!("event {seq} raised"),
        )
        .await;
    }
}

/// Resident memory of `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Collects event seqs from the subscriber until `1..=latest` are all seen (deadline
/// `within`); panics naming the missing ones.
async fn all_events(sub: &mut Subscriber, latest: u64, within: Duration) -> BTreeSet<u64> {
    let deadline = Instant::now() + within;
    let mut seen = BTreeSet::new();
    while (1..=latest).any(|s| !seen.contains(&s)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = sub
            .next_matching(|t, _| t.starts_with("emberwatch/test-site/alarms/"), left)
            .await
        else {
            let missing: Vec<u64> = (1..=latest).filter(|s| !seen.contains(s)).collect();
            panic!(
                "events {missing:?} never arrived within {within:?}; seen:\n{}",
                sub.seen_list()
            );
        };
        if let Some(seq) = m.json()["seq"].as_u64() {
            seen.insert(seq);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_trickles_then_stalls_costs_no_alarm() {
    let broker = Mosquitto::start().await;
    let relay = SlowRelay::start(broker.port()).await;
    let sim = Sim::start("normal", 1).await;
    let storage = tempfile::tempdir().expect("tempdir");
    let metrics = free_port();
    let daemon = Daemon::start(&config(relay.port(), sim.port(), storage.path(), metrics));
    let pid = daemon.pid().expect("daemon running");
    // On the broker's side of the relay: it sees what the broker gets.
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/test-site/#").await;
    sub.expect_where(STATUS, |j| j["state"] == "online", Duration::from_secs(15))
        .await;
    let url = format!("mqtt://127.0.0.1:{}", relay.port());
    let mut latest = 0;
    alarm_cycle(&sim, &daemon, &mut latest).await;

    // A broker that answers a byte at a time: the gateway goes on polling and raising.
    relay.set(Mode::Trickle(Duration::from_millis(5)));
    alarm_cycle(&sim, &daemon, &mut latest).await;

    // A broker that says nothing at all, its connections open: the gateway notices on its
    // own (keep-alive), says so, and goes on.
    relay.set(Mode::Stall);
    let stalled_at = relay.accepted();
    let rss_before = rss_kib(pid);
    alarm_cycle(&sim, &daemon, &mut latest).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon
        .stderr()
        .lines()
        .any(|l| l.contains(&format!("mqtt broker {url}: ")) && l.contains("retrying in"))
    {
        assert!(
            Instant::now() < deadline,
            "the stalled broker was never reported in the log:\n{}",
            daemon.stderr()
        );
        sleep(Duration::from_millis(50)).await;
    }
    let down = metrics_until(metrics, "the broker down and events waiting", |s| {
        sample(s, "emberwatch_broker_connected") == 0.0
            && sample(s, "emberwatch_outbox_undelivered") >= 2.0
    })
    .await;
    assert_eq!(
        sample(
            &down,
            &format!("emberwatch_broker_link_connected{{broker=\"{url}\"}}")
        ),
        0.0,
        "{down:?}"
    );
    // Reconnects that hear no CONNACK are given up and tried again, not waited on forever.
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.accepted() < stalled_at + 2 {
        assert!(
            Instant::now() < deadline,
            "the gateway waits forever on a CONNECT the broker never answers: {} connection(s) \
             since the stall\n{}",
            relay.accepted() - stalled_at,
            daemon.stderr()
        );
        sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        alarm_cycle(&sim, &daemon, &mut latest).await;
    }
    // What the broker did not take is on disk, and memory did not follow it.
    let held = metrics_until(metrics, "every stalled event held in the outbox", |s| {
        sample(s, "emberwatch_outbox_undelivered") >= 8.0
    })
    .await;
    assert!(sample(&held, "emberwatch_outbox_bytes") > 0.0, "{held:?}");
    let rss_stalled = rss_kib(pid);
    eprintln!(
        "stalled broker: RSS {rss_before} KiB before, {rss_stalled} KiB after {} events and {} \
         connection attempts",
        latest,
        relay.accepted() - stalled_at
    );
    assert!(
        rss_stalled < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_stalled} KiB while the broker stalled"
    );

    // The broker answers again: everything arrives, and the gateway says it is online.
    relay.set(Mode::Pass);
    let seen = all_events(&mut sub, latest, Duration::from_secs(60)).await;
    assert_eq!(seen.iter().next_back(), Some(&latest));
    sub.expect_where(
        STATUS,
        |j: &Value| j["state"] == "online" && j["seq"] == latest,
        Duration::from_secs(30),
    )
    .await;
    metrics_until(metrics, "the broker back and nothing waiting", |s| {
        sample(s, "emberwatch_broker_connected") == 1.0
            && sample(s, "emberwatch_outbox_undelivered") == 0.0
    })
    .await;
}

/// A raw MQTT 3.1.1 client: CONNECT (clean session, no keep-alive, so the broker never drops
/// it for silence), SUBSCRIBE `#` at QoS 1, wait for both acks, and from then on read nothing.
async fn subscribe_and_stop_reading(port: u16) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to mosquitto");
    let id = b"hostile-never-reads";
    let mut connect = vec![0x10, (10 + 2 + id.len()) as u8];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0]);
    connect.extend_from_slice(&[0, id.len() as u8]);
    connect.extend_from_slice(id);
    s.write_all(&connect).await.expect("CONNECT");
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK refused");
    s.write_all(&[0x82, 6, 0, 1, 0, 1, b'#', 1])
        .await
        .expect("SUBSCRIBE");
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).await.expect("SUBACK");
    assert_eq!(suback, [0x90, 3, 0, 1, 1], "SUBACK for # at QoS 1");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_delays_no_live_alarm() {
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let storage = tempfile::tempdir().expect("tempdir");
    let metrics = free_port();
    let daemon = Daemon::start(&config(broker.port(), sim.port(), storage.path(), metrics));
    let mut healthy = Subscriber::connect(broker.port(), "emberwatch/test-site/#").await;
    healthy
        .expect_where(STATUS, |j| j["state"] == "online", Duration::from_secs(15))
        .await;
    let hostile = subscribe_and_stop_reading(broker.port()).await;

    // Bury the hostile subscriber: 16 MB of QoS 1 traffic it will never read, far past its
    // socket buffers and the broker's queue for it.
    let mut opts = MqttOptions::new("hostile-flood", "127.0.0.1", broker.port());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (flood, mut eventloop) = AsyncClient::new(opts, 64);
    let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let blob = vec![b'x'; 8 * 1024];
    for i in 0..2000 {
        flood
            .publish(format!("noise/{i}"), QoS::AtLeastOnce, false, blob.clone())
            .await
            .expect("queue a flood publish");
    }

    // Live alarms reach the healthy subscriber as ever: raised, then cleared.
    healthy.forget();
    sim.write(116, 600).await;
    let raised = healthy
        .expect_where(
            ALARM,
            |j| j["state"] == "active" && j["severity"] == "critical",
            Duration::from_secs(10),
        )
        .await;
    sim.write(116, 250).await;
    let cleared = healthy
        .expect_where(ALARM, |j| j["state"] == "cleared", Duration::from_secs(10))
        .await;
    assert_eq!(
        cleared["seq"].as_u64(),
        raised["seq"].as_u64().map(|s| s + 1),
        "raised {raised}, cleared {cleared}"
    );
    // The gateway stayed connected and nothing waits in its outbox.
    metrics_until(metrics, "the broker connected and nothing waiting", |s| {
        sample(s, "emberwatch_broker_connected") == 1.0
            && sample(s, "emberwatch_outbox_undelivered") == 0.0
    })
    .await;
    assert!(
        !daemon.stderr().contains("retrying in"),
        "the gateway's link was disturbed:\n{}",
        daemon.stderr()
    );
    // And the hostile subscriber really is stuck: bytes wait unread on its socket.
    let mut peek = [0u8; 1];
    let waiting = tokio::time::timeout(Duration::from_secs(5), hostile.peek(&mut peek)).await;
    assert!(matches!(waiting, Ok(Ok(1))), "nothing waited: {waiting:?}");
    pump.abort();
}
