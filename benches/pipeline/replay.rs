//! A storm of `cmd/replay` requests (issue 15 item 1): the daemon's peak RSS and the latency of
//! a live alarm raised meanwhile.

use crate::rig::*;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_modbus::client::Writer;
use tokio_util::sync::CancellationToken;

/// `requests` replay requests for a journal of `held` events, `trials` times, each with a live
/// alarm raised (written to the simulator) as the storm lands: the daemon's RSS (sampled every
/// 20 ms) and the alarm's latency to a subscriber.
pub(crate) async fn replay_storm(requests: usize, held: u64, trials: usize) {
    println!("\n== replay: {requests} cmd/replay requests (reply_to 1000 chars), {held} events journaled, a live alarm meanwhile");
    let broker = Broker::start().await;
    let cancel = CancellationToken::new();
    let sim = normal_sim(&cancel).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = dir.path().join("state");
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let opts = emberwatch::outbox::Options::new(64 << 20, 16 << 20, Duration::from_secs(86_400));
    let mut o = emberwatch::outbox::Outbox::open(&storage, opts, std::slice::from_ref(&url))
        .expect("outbox");
    for seq in 1..=held {
        let payload = format!(
            r#"{{"event_id":"gw-bench-{seq}","seq":{seq},"pad":"{}"}}"#,
            "x".repeat(300)
        );
        let e = emberwatch::outbox::Entry {
            kind: emberwatch::outbox::Kind::Event,
            seq,
            topic: "emberwatch/bench/alarms/journaled".into(),
            retain: false,
            payload: payload.into_bytes(),
        };
        for r in o.append(vec![e]).expect("append") {
            o.ack(&url, r.pos).expect("ack");
        }
    }
    o.commit().expect("commit");
    drop(o);
    let cfg = dir.path().join("bench.toml");
    let devices = device_toml("rack-01", sim.local_addr, "100ms", 1);
    std::fs::write(&cfg, gateway_toml(broker.port, &storage, &devices)).expect("config");
    let (_client, mut ev) = subscriber(broker.port, "emberwatch/bench/alarms/room-1/#").await;
    let daemon = Daemon::start(&cfg);
    let pid = daemon.0.id();
    let mut modbus =
        tokio_modbus::client::tcp::connect_slave(sim.local_addr, tokio_modbus::Slave(1))
            .await
            .expect("modbus client");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = proc_stat(pid).1 as f64 / 1024.0;
    let mut opts = MqttOptions::new(
        format!("bench-pub-{}", std::process::id()),
        "127.0.0.1",
        broker.port,
    );
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (publisher, mut pev) = AsyncClient::new(opts, requests + 8);
    tokio::spawn(async move { while pev.poll().await.is_ok() {} });
    let (mut peak, mut latencies) = (idle, Vec::new());
    for (trial, (value, state)) in [(572u16, "active"), (250, "cleared")]
        .iter()
        .cycle()
        .take(trials)
        .enumerate()
    {
        for i in 0..requests {
            let body = format!(
                r#"{{"from_seq": 1, "reply_to": "bench/replies/{trial}/{i}/{}"}}"#,
                "r".repeat(1000)
            );
            let topic = "emberwatch/bench/gateways/gw-bench/cmd/replay";
            publisher
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .expect("publish");
        }
        let t = Instant::now();
        modbus
            .write_single_register(116, *value)
            .await
            .expect("write")
            .expect("no exception");
        let sampling = async {
            let mut peak = 0.0f64;
            loop {
                peak = peak.max(proc_stat(pid).1 as f64 / 1024.0);
                tokio::time::sleep(Duration::from_millis(20)).await;
                if t.elapsed() > Duration::from_secs(10) {
                    return peak;
                }
            }
        };
        let arrived = tokio::time::timeout(Duration::from_secs(30), next_alarm(&mut ev, state));
        let (arrived, trial_peak) = tokio::join!(arrived, sampling);
        let arrived = arrived.expect("the live alarm within 30 s");
        latencies.push(arrived.duration_since(t).as_secs_f64() * 1000.0);
        peak = peak.max(trial_peak);
    }
    println!(
        "RSS idle {idle:.1} MB, peak during the storms {peak:.1} MB; live alarm latency (register \
         write → subscriber, poll 100 ms) per storm: {}",
        latencies
            .iter()
            .map(|l| format!("{l:.0} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(daemon);
    cancel.cancel();
}
