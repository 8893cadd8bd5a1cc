//! The metrics endpoint as a site's Prometheus sees it: scraped over HTTP and parsed.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET /metrics over a plain socket; the parsed samples by series (name plus labels).
async fn scrape(port: u16) -> Option<HashMap<String, f64>> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    let (head, text) = body.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ')?;
        samples.insert(series.to_string(), value.parse().ok()?);
    }
    Some(samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_polls_and_active_alarms() {
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let state = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = gateway_config(broker.port(), sim.port(), state.path(), "")
        + &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let _daemon = Daemon::start(&config);
    sub.expect_where(
        &format!("{P}/telemetry/rack-01"),
        |j| j["quality"] == "good",
        STARTUP,
    )
    .await;
    sim.write(116, 572).await;
    sub.expect_where(
        &format!("{P}/alarms/room-1/rack-01/cell_temp_max/cell-overtemp"),
        |j| j["state"] == "active",
        STARTUP,
    )
    .await;

    // Gauges refresh once a second: scrape until they show the alarm, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        if let Some(s) = scrape(port).await {
            if s.get("emberwatch_alarms_active{severity=\"critical\"}") == Some(&1.0) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "no critical alarm in metrics: {s:?}"
            );
        }
        assert!(Instant::now() < deadline, "metrics endpoint never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(samples["emberwatch_poll_seconds_count{device=\"rack-01\"}"] >= 1.0);
    assert!(samples["emberwatch_points_read_total{device=\"rack-01\"}"] >= 4.0);
    assert_eq!(samples["emberwatch_broker_connected"], 1.0);
    assert_eq!(samples["emberwatch_zone_level{zone=\"room-1\"}"], 2.0);
    assert!(samples["emberwatch_alarm_events_total"] >= 1.0);
}
