//! The steady-state measurements of issue 2: alarm latency, rule throughput, footprint,
//! flapping and the time to notice a silent device.

use crate::common::percentile;
use crate::rig::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emberwatch::clock::Now;
use emberwatch::config::{Config, Role};
use emberwatch::decode::{decode_point, plan_reads};
use emberwatch::engine::Engine;
use emberwatch::fieldbus::{PointReading, Reading};
use emberwatch::sim::Scenario;
use tokio_modbus::client::Writer;
use tokio_util::sync::CancellationToken;

pub(crate) async fn latency(trials: usize) {
    println!(
        "\n== latency: Modbus register write → alarm at an MQTT subscriber (poll_interval 100 ms)"
    );
    let broker = Broker::start().await;
    let cancel = CancellationToken::new();
    let sim = normal_sim(&cancel).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bench.toml");
    let devices = device_toml("rack-01", sim.local_addr, "100ms", 1);
    std::fs::write(
        &cfg,
        gateway_toml(broker.port, &dir.path().join("state"), &devices),
    )
    .expect("config");
    let (_client, mut ev) = subscriber(broker.port, "emberwatch/bench/alarms/#").await;
    let _daemon = Daemon::start(&cfg);
    let mut modbus =
        tokio_modbus::client::tcp::connect_slave(sim.local_addr, tokio_modbus::Slave(1))
            .await
            .expect("modbus client");
    // Let the daemon connect and settle.
    modbus
        .write_single_register(116, 250)
        .await
        .expect("write")
        .expect("no exception");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut samples = Vec::with_capacity(trials * 2);
    for _ in 0..trials {
        for (value, state) in [(572u16, "active"), (250u16, "cleared")] {
            // A random phase against the poll cycle: writing right after an alarm arrives
            // would always land just after a poll and measure only the worst case.
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 100)).await;
            let t = Instant::now();
            modbus
                .write_single_register(116, value)
                .await
                .expect("write")
                .expect("no exception");
            let arrived = tokio::time::timeout(Duration::from_secs(5), next_alarm(&mut ev, state))
                .await
                .expect("alarm within 5 s");
            samples.push(arrived.duration_since(t).as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{} transitions: median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 ≤ 120 ms)",
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
        samples.last().copied().unwrap_or(f64::NAN)
    );
    cancel.cancel();
}

pub(crate) fn throughput() {
    println!("\n== throughput: decode + rule evaluation, one core");
    let devices = device_toml(
        "rack-01",
        SocketAddr::from(([127, 0, 0, 1], 5020)),
        "1s",
        20,
    );
    let text = gateway_toml(1883, std::path::Path::new("/tmp/unused"), &devices).replace(
        "points = [\"*/cell_temp_max\"]",
        "points = [\"*/cell_temp_max\", \"*/module_1\", \"*/module_2\", \"*/module_3\"]",
    );
    let cfg = Arc::new(Config::from_toml(&text, Role::Gateway).expect("bench config"));
    let dev = &cfg.devices[0];
    let plan = plan_reads(&dev.points, dev.max_gap);
    let words: Vec<u16> = (0..40).map(|i| 250 + i).collect();
    let mut engine = Engine::new(cfg.clone(), 0);
    let now = Now::system();
    let mut rates = Vec::new();
    for round in 0..15 {
        let n_polls = 20_000;
        let t = Instant::now();
        for i in 0..n_polls {
            let mut points = Vec::with_capacity(dev.points.len());
            for span in &plan {
                for &pi in &span.points {
                    let mut w = words.clone();
                    // Cross the warning threshold now and then so alarms are raised and cleared.
                    if i % 100 == 0 {
                        w[16] = 460;
                    }
                    points.push(PointReading {
                        point: pi,
                        result: decode_point(&dev.points[pi], span.start, &w[..]).map_err(
                            |source| emberwatch::fieldbus::PointError::Decode {
                                address: 0,
                                source,
                            },
                        ),
                    });
                }
            }
            let r = Reading {
                device: 0,
                at: now,
                latency: Duration::ZERO,
                outcome: Ok(points),
            };
            std::hint::black_box(engine.on_reading(&r));
        }
        let secs = t.elapsed().as_secs_f64();
        if round >= 3 {
            rates.push((n_polls * dev.points.len()) as f64 / secs);
        }
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "points/s over {} runs of 400k points: median {:.2} M, p10 {:.2} M, p90 {:.2} M (includes building telemetry messages)",
        rates.len(),
        percentile(&rates, 50.0) / 1e6,
        percentile(&rates, 10.0) / 1e6,
        percentile(&rates, 90.0) / 1e6
    );
}

pub(crate) async fn footprint(n_devices: usize, points: usize, window: Duration) {
    println!(
        "\n== footprint: daemon polling {n_devices} simulated devices × {points} points at 1 Hz"
    );
    let broker = Broker::start().await;
    let cancel = CancellationToken::new();
    let mut sims = Vec::new();
    let mut devices = String::new();
    for i in 0..n_devices {
        let s = normal_sim(&cancel).await;
        devices.push_str(&device_toml(
            &format!("rack-{i:03}"),
            s.local_addr,
            "1s",
            points,
        ));
        sims.push(s);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bench.toml");
    std::fs::write(
        &cfg,
        gateway_toml(broker.port, &dir.path().join("state"), &devices),
    )
    .expect("config");
    let daemon = Daemon::start(&cfg);
    let pid = daemon.0.id();
    tokio::time::sleep(Duration::from_secs(5)).await; // warm-up: connect everything
    let tick = 100.0; // USER_HZ on Linux
    let (t0, _) = proc_stat(pid);
    let start = Instant::now();
    let mut rss = Vec::new();
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.push(proc_stat(pid).1 as f64 / 1024.0);
    }
    let (t1, _) = proc_stat(pid);
    let cpu = (t1 - t0) as f64 / tick / start.elapsed().as_secs_f64() * 100.0;
    rss.sort_by(|a, b| a.total_cmp(b));
    println!(
        "over {:.0} s: CPU {:.2} % of one core (target ≤ 2 %); RSS median {:.1} MB, max {:.1} MB (target ≤ 20 MB)",
        start.elapsed().as_secs_f64(),
        cpu,
        percentile(&rss, 50.0),
        rss.last().copied().unwrap_or(f64::NAN)
    );
    drop(daemon);
    cancel.cancel();
}

/// Events per minute from the simulator's `flapping` temperature (45 ± 1 °C, 4 s period, noise),
/// polled at 1 Hz for an hour of simulated time, with and without deadband and delays.
pub(crate) fn flapping() {
    println!("\n== flapping: alarm events per minute, `flapping` scenario at 1 Hz over 60 simulated minutes");
    let variants = [
        ("no deadband, no delays", "deadband = 0.0"),
        ("deadband 1.0", "deadband = 1.0"),
        ("deadband 2.5", "deadband = 2.5"),
        (
            "on_delay 5s, off_delay 10s",
            "deadband = 0.0\non_delay = \"5s\"\noff_delay = \"10s\"",
        ),
        (
            "deadband 1.0 + off_delay 10s",
            "deadband = 1.0\noff_delay = \"10s\"",
        ),
    ];
    for (name, knobs) in variants {
        let devices = device_toml("rack-01", SocketAddr::from(([127, 0, 0, 1], 5020)), "1s", 1);
        let text = gateway_toml(1883, std::path::Path::new("/tmp/unused"), &devices).replace(
            "above = { warning = 45.0, critical = 55.0 }",
            &format!("above = {{ warning = 45.0, critical = 55.0 }}\n{knobs}"),
        );
        let cfg = Arc::new(Config::from_toml(&text, Role::Gateway).expect("bench config"));
        let mut engine = Engine::new(cfg.clone(), 0);
        let t0 = Now::system();
        let minutes = 60u64;
        let mut events = 0usize;
        let mut chattering = 0usize;
        for s in 0..minutes * 60 {
            let v = Scenario::Flapping.state(s as f64).cell_temp_max_c;
            let r = Reading {
                device: 0,
                at: t0.after(Duration::from_secs(s)),
                latency: Duration::ZERO,
                outcome: Ok(vec![PointReading {
                    point: 0,
                    result: Ok(emberwatch::decode::Decoded {
                        raw: emberwatch::decode::Raw::Float(v),
                        value: (v * 10.0).round() / 10.0,
                    }),
                }]),
            };
            let out = engine.on_reading(&r);
            chattering += out.events.iter().filter(|e| e.detail.chattering).count();
            events += out.events.len();
        }
        println!(
            "{name:<30} {:>6.1} events/min ({events} in {minutes} min, {chattering} flagged chattering)",
            events as f64 / minutes as f64
        );
    }
}

/// Time from a device going silent (its simulator stopped) to the comm-loss fault at a subscriber,
/// at a realistic poll_interval 1 s / timeout 500 ms.
pub(crate) async fn silence(trials: usize) {
    println!("\n== silence: device stops answering → comm-loss fault at a subscriber (poll 1 s, timeout 500 ms)");
    let broker = Broker::start().await;
    let (_client, mut ev) =
        subscriber(broker.port, "emberwatch/bench/alarms/+/+/_link/comm-loss").await;
    let mut samples = Vec::new();
    for _ in 0..trials {
        let cancel = CancellationToken::new();
        let sim = normal_sim(&cancel).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("bench.toml");
        let devices = device_toml("rack-01", sim.local_addr, "1s", 1);
        std::fs::write(
            &cfg,
            gateway_toml(broker.port, &dir.path().join("state"), &devices),
        )
        .expect("config");
        let daemon = Daemon::start(&cfg);
        // Let it poll a few times, at a random phase of its poll cycle.
        tokio::time::sleep(Duration::from_millis(2000 + rand::random::<u64>() % 1000)).await;
        let t = Instant::now();
        cancel.cancel();
        sim.stopped().await;
        let arrived = tokio::time::timeout(Duration::from_secs(10), next_alarm(&mut ev, "active"))
            .await
            .expect("fault within 10 s");
        samples.push(arrived.duration_since(t).as_secs_f64() * 1000.0);
        drop(daemon);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{} trials: median {:.0} ms, p90 {:.0} ms, max {:.0} ms (raised on the 2nd consecutive failed poll)",
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        samples.last().copied().unwrap_or(f64::NAN)
    );
}
