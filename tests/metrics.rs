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

/// Scrapes until `ready` holds, with a deadline; gauges refresh once a second.
async fn scrape_until(
    port: u16,
    what: &str,
    ready: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let last = scrape(port).await;
        if let Some(s) = &last {
            if ready(s) {
                return s.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what}: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn get(s: &HashMap<String, f64>, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_drain_the_outbox_and_the_link() {
    let mut broker = Mosquitto::start().await;
    let mut sim = Sim::start("normal", 1).await;
    let state = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let drain = "\n[drain]\ntrigger = \"critical\"\ndeadline = \"10m\"\nagents = [\"lb-1\"]\n";
    let config = gateway_config(broker.port(), sim.port(), state.path(), drain)
        + &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let _daemon = Daemon::start(&config);
    let url = format!("mqtt://127.0.0.1:{}", broker.port());
    let up = format!("emberwatch_broker_link_connected{{broker=\"{url}\"}}");
    sub.expect_where(
        &format!("{P}/telemetry/rack-01"),
        |j| j["quality"] == "good",
        STARTUP,
    )
    .await;

    // Quiet: no drain, nothing waiting in the outbox, the device answering.
    let s = scrape_until(port, "an idle zone and a connected broker", |s| {
        get(s, &up) == 1.0 && get(s, "emberwatch_outbox_undelivered") == 0.0
    })
    .await;
    assert_eq!(
        get(&s, "emberwatch_drain_state{zone=\"room-1\",state=\"idle\"}"),
        1.0
    );
    assert_eq!(get(&s, "emberwatch_power_clearance{zone=\"room-1\"}"), 0.0);
    assert!(get(&s, "emberwatch_link_requests_total{device=\"rack-01\"}") >= 1.0);
    assert_eq!(
        get(
            &s,
            "emberwatch_link_errors_total{device=\"rack-01\",kind=\"port\"}"
        ),
        0.0
    );
    assert!(get(&s, "emberwatch_outbox_bytes") > 0.0, "{s:?}");

    // A critical alarm starts a drain that waits for lb-1, which never answers.
    sim.write(116, 572).await;
    let s = scrape_until(port, "a drain waiting for lb-1", |s| {
        get(s, "emberwatch_drain_state{zone=\"room-1\",state=\"idle\"}") == 0.0
            && get(
                s,
                "emberwatch_drain_agents{zone=\"room-1\",progress=\"pending\"}",
            ) == 1.0
    })
    .await;
    let open = get(
        &s,
        "emberwatch_drain_state{zone=\"room-1\",state=\"requested\"}",
    ) + get(
        &s,
        "emberwatch_drain_state{zone=\"room-1\",state=\"draining\"}",
    );
    assert_eq!(open, 1.0, "{s:?}");
    assert_eq!(get(&s, "emberwatch_power_clearance{zone=\"room-1\"}"), 0.0);

    // The broker goes away: what is raised meanwhile waits in the outbox, and its age grows.
    broker.kill().await;
    sim.write(116, 250).await;
    let s = scrape_until(port, "an undelivered, ageing outbox", |s| {
        get(s, &up) == 0.0
            && get(s, "emberwatch_outbox_undelivered") >= 1.0
            && get(s, "emberwatch_outbox_oldest_undelivered_seconds") >= 2.0
    })
    .await;
    assert_eq!(get(&s, "emberwatch_broker_connected"), 0.0);

    // The device goes silent: the link counts the failures.
    sim.kill().await;
    scrape_until(port, "port errors on rack-01", |s| {
        get(
            s,
            "emberwatch_link_errors_total{device=\"rack-01\",kind=\"port\"}",
        ) + get(
            s,
            "emberwatch_link_errors_total{device=\"rack-01\",kind=\"timeout\"}",
        ) >= 1.0
    })
    .await;

    // The broker returns: the outbox drains.
    broker.restart().await;
    scrape_until(
        port,
        "the outbox delivered after the broker returned",
        |s| {
            get(s, &up) == 1.0
                && get(s, "emberwatch_outbox_undelivered") == 0.0
                && get(s, "emberwatch_outbox_oldest_undelivered_seconds") == 0.0
        },
    )
    .await;
}
