//! Prometheus metrics at `/metrics` (`[metrics] listen = "127.0.0.1:9464"`).
//!
//! A gateway runs unattended for years; the questions a site's monitoring must answer without
//! reading logs are "is every device answering, and how fast", "what is alarming", "is the broker
//! reachable" and "is anything piling up". Series are named `emberwatch_*`. The registry is owned
//! by the daemon and handed to the HTTP task; every metric inside is an atomic, so updating one is
//! as cheap as an increment and needs no lock.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::clock::unix_ms;
use crate::drain::coordinator::Persisted;
use crate::drain::messages::{DrainState, Progress};
use crate::fieldbus::{LinkStats, Reading};
use crate::outbox::Pressure;
use std::time::SystemTime;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeverityLabel {
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabel {
    pub zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrainStateLabel {
    pub zone: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentProgressLabel {
    pub zone: String,
    pub progress: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkErrorLabel {
    pub device: String,
    /// timeout, crc, short_frame, wrong_unit, garbage, malformed_line, port.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabel {
    pub broker: String,
}

/// Every series the daemon exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub poll_seconds: Family<DeviceLabel, Histogram>,
    pub poll_errors: Family<DeviceLabel, Counter>,
    pub points_read: Family<DeviceLabel, Counter>,
    pub alarms_active: Family<SeverityLabel, Gauge>,
    pub alarm_events: Counter,
    pub chattering_events: Counter,
    pub zone_level: Family<ZoneLabel, Gauge>,
    pub broker_connected: Gauge,
    pub telemetry_dropped: Gauge,
    pub last_seq: Gauge,
    pub outbox_bytes: Gauge,
    pub outbox_max_bytes: Gauge,
    pub outbox_undelivered: Gauge,
    pub outbox_oldest_seconds: Gauge<f64, AtomicU64>,
    pub outbox_over_bound: Gauge,
    pub outbox_dropped: Counter,
    pub outbox_superseded: Counter,
    pub outbox_lost_events: Gauge,
    pub broker_loop_connected: Family<BrokerLabel, Gauge>,
    pub drain_state: Family<DrainStateLabel, Gauge>,
    pub power_clearance: Family<ZoneLabel, Gauge>,
    pub drain_agents: Family<AgentProgressLabel, Gauge>,
    pub link_requests: Family<DeviceLabel, Counter>,
    pub link_errors: Family<LinkErrorLabel, Counter>,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics.listen {addr}: {source}")]
pub struct MetricsError {
    addr: String,
    source: std::io::Error,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("emberwatch");
        let poll_seconds = Family::<DeviceLabel, Histogram>::new_with_constructor(|| {
            // 1 ms .. ~4 s: from a LAN Modbus TCP answer to an RS-485 timeout.
            Histogram::new(exponential_buckets(0.001, 2.0, 13))
        });
        r.register(
            "poll_seconds",
            "Time to poll a device (all its requests)",
            poll_seconds.clone(),
        );
        let poll_errors = Family::<DeviceLabel, Counter>::default();
        r.register(
            "poll_errors",
            "Polls that got no answer (connect, timeout, transport)",
            poll_errors.clone(),
        );
        let points_read = Family::<DeviceLabel, Counter>::default();
        r.register("points_read", "Points decoded", points_read.clone());
        let alarms_active = Family::<SeverityLabel, Gauge>::default();
        r.register(
            "alarms_active",
            "Active alarms by severity (shelved excluded)",
            alarms_active.clone(),
        );
        let alarm_events = Counter::default();
        r.register(
            "alarm_events",
            "Alarm events published",
            alarm_events.clone(),
        );
        let chattering_events = Counter::default();
        r.register(
            "alarm_chattering_events",
            "Alarm events flagged as chattering",
            chattering_events.clone(),
        );
        let zone_level = Family::<ZoneLabel, Gauge>::default();
        r.register(
            "zone_level",
            "Zone level: 0 normal, 1 warning, 2 critical, 3 emergency",
            zone_level.clone(),
        );
        let broker_connected = Gauge::default();
        r.register(
            "broker_connected",
            "1 while the MQTT broker connection is up",
            broker_connected.clone(),
        );
        let telemetry_dropped = Gauge::default();
        r.register(
            "telemetry_dropped",
            "Telemetry messages dropped while the broker was unreachable",
            telemetry_dropped.clone(),
        );
        let last_seq = Gauge::default();
        r.register(
            "last_seq",
            "The last alarm event sequence number",
            last_seq.clone(),
        );
        let outbox_bytes = Gauge::default();
        r.register(
            "outbox_bytes",
            "Bytes the outbox holds on disk under storage.dir",
            outbox_bytes.clone(),
        );
        let outbox_max_bytes = Gauge::default();
        r.register(
            "outbox_max_bytes",
            "storage.outbox_max: what the outbox may hold before it drops what it can spare",
            outbox_max_bytes.clone(),
        );
        let outbox_undelivered = Gauge::default();
        r.register(
            "outbox_undelivered",
            "Outbox messages the slowest broker has not confirmed yet",
            outbox_undelivered.clone(),
        );
        let outbox_oldest_seconds = Gauge::<f64, AtomicU64>::default();
        r.register(
            "outbox_oldest_undelivered_seconds",
            "Age of the oldest message the slowest broker has not confirmed (0 when none)",
            outbox_oldest_seconds.clone(),
        );
        let outbox_over_bound = Gauge::default();
        r.register(
            "outbox_over_bound",
            "1 while the outbox is over storage.outbox_max with only alarm events and latest statuses left",
            outbox_over_bound.clone(),
        );
        let outbox_dropped = Counter::default();
        r.register(
            "outbox_dropped",
            "Non-alarm outbox messages dropped to stay within storage.outbox_max",
            outbox_dropped.clone(),
        );
        let outbox_superseded = Counter::default();
        r.register(
            "outbox_superseded",
            "Messages from before a restart not resent because the pair's active gateway had already published them",
            outbox_superseded.clone(),
        );
        let outbox_lost_events = Gauge::default();
        r.register(
            "outbox_lost_events",
            "Alarm events state.json records as raised that the outbox had lost to damage at start (see the status's lost ranges)",
            outbox_lost_events.clone(),
        );
        let broker_loop_connected = Family::<BrokerLabel, Gauge>::default();
        r.register(
            "broker_link_connected",
            "1 while this broker (mqtt.url or one of mqtt.also) is connected",
            broker_loop_connected.clone(),
        );
        let drain_state = Family::<DrainStateLabel, Gauge>::default();
        r.register(
            "drain_state",
            "1 for the state of each zone's current or last drain (idle: none since the state file began)",
            drain_state.clone(),
        );
        let power_clearance = Family::<ZoneLabel, Gauge>::default();
        r.register(
            "power_clearance",
            "1 while the zone's power-cut clearance is given",
            power_clearance.clone(),
        );
        let drain_agents = Family::<AgentProgressLabel, Gauge>::default();
        r.register(
            "drain_agents",
            "Expected drain agents of the zone's current or last drain, by progress",
            drain_agents.clone(),
        );
        let link_requests = Family::<DeviceLabel, Counter>::default();
        r.register(
            "link_requests",
            "Requests sent to the device (Modbus) or lines received (serial-lines)",
            link_requests.clone(),
        );
        let link_errors = Family::<LinkErrorLabel, Counter>::default();
        r.register(
            "link_errors",
            "Field-bus errors by kind: timeout, crc, short_frame, wrong_unit, garbage, malformed_line, port",
            link_errors.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            outbox_bytes,
            outbox_max_bytes,
            outbox_undelivered,
            outbox_oldest_seconds,
            outbox_over_bound,
            outbox_dropped,
            outbox_superseded,
            outbox_lost_events,
            broker_loop_connected,
            drain_state,
            power_clearance,
            drain_agents,
            link_requests,
            link_errors,
            poll_seconds,
            poll_errors,
            points_read,
            alarms_active,
            alarm_events,
            chattering_events,
            zone_level,
            broker_connected,
            telemetry_dropped,
            last_seq,
        }
    }

    /// Accounts one poll.
    pub fn observe(&self, device: &str, r: &Reading) {
        let label = DeviceLabel {
            device: device.to_string(),
        };
        self.poll_seconds
            .get_or_create(&label)
            .observe(r.latency.as_secs_f64());
        match &r.outcome {
            Ok(points) => {
                let good = points.iter().filter(|p| p.result.is_ok()).count();
                self.points_read.get_or_create(&label).inc_by(good as u64);
            }
            Err(_) => {
                self.poll_errors.get_or_create(&label).inc();
            }
        }
    }

    /// Each broker's connection (`mqtt.url` and every `mqtt.also`).
    pub fn set_brokers(&self, brokers: &[(String, bool)]) {
        for (url, up) in brokers {
            self.broker_loop_connected
                .get_or_create(&BrokerLabel {
                    broker: url.clone(),
                })
                .set(i64::from(*up));
        }
    }

    /// The outbox's depth and age: a growing age with a broker connected means deliveries
    /// are stuck, which no log line says as plainly.
    pub fn set_outbox(&self, p: &Pressure, now: SystemTime) {
        self.outbox_bytes.set(clamp(p.bytes));
        self.outbox_max_bytes.set(clamp(p.max));
        self.outbox_undelivered.set(clamp(p.undelivered as u64));
        self.outbox_over_bound.set(i64::from(p.over_bound));
        let now_ms = unix_ms(now);
        let age = p
            .oldest_undelivered_ms
            .map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0);
        self.outbox_oldest_seconds.set(age);
        catch_up(&self.outbox_dropped, p.dropped);
    }

    /// Every zone's drain: one series per state, 1 for the current one (`idle` when the zone
    /// has had no drain), the clearance, and how far the expected agents got.
    pub fn set_drain(&self, zones: &[String], drains: &Persisted) {
        for zone in zones {
            let record = drains.zones.get(zone);
            let current = record.map_or("idle", |r| r.state.as_str());
            let states = std::iter::once("idle").chain(DrainState::ALL.iter().map(|s| s.as_str()));
            for state in states {
                self.drain_state
                    .get_or_create(&DrainStateLabel {
                        zone: zone.clone(),
                        state: state.to_string(),
                    })
                    .set(i64::from(state == current));
            }
            let clear = record.is_some_and(|r| {
                r.state != DrainState::Cancelled && r.clearance.as_ref().is_some_and(|c| c.clear)
            });
            self.power_clearance
                .get_or_create(&ZoneLabel { zone: zone.clone() })
                .set(i64::from(clear));
            for progress in Progress::ALL {
                let n = record.map_or(0, |r| r.agents.values().filter(|p| **p == progress).count());
                self.drain_agents
                    .get_or_create(&AgentProgressLabel {
                        zone: zone.clone(),
                        progress: progress.as_str().to_string(),
                    })
                    .set(n as i64);
            }
        }
    }

    /// One device's field-bus link counters, kept by the pollers (see `fieldbus::counters`).
    pub fn set_link(&self, device: &str, s: &LinkStats) {
        catch_up(
            &self.link_requests.get_or_create(&DeviceLabel {
                device: device.to_string(),
            }),
            s.requests,
        );
        let kinds = [
            ("timeout", s.timeouts),
            ("crc", s.crc_errors),
            ("short_frame", s.short_frames),
            ("wrong_unit", s.wrong_unit),
            ("garbage", s.garbage),
            ("malformed_line", s.malformed_lines),
            ("port", s.port_errors),
        ];
        for (kind, n) in kinds {
            catch_up(
                &self.link_errors.get_or_create(&LinkErrorLabel {
                    device: device.to_string(),
                    kind: kind.to_string(),
                }),
                n,
            );
        }
    }

    /// The text exposition (OpenMetrics, which Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// Serves `/metrics` on `addr` until `cancel`.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        cancel: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError {
                addr: addr.to_string(),
                source,
            })?;
        let me = self.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let body = me.render();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        );
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
        Ok(tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        }))
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Brings a counter up to a total kept elsewhere. Totals only grow, and only the daemon's
/// one-second refresh calls this, so the counter never runs ahead of them.
fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Now;
    use std::time::Duration;

    #[test]
    fn renders_named_series() {
        let m = Metrics::new();
        m.observe(
            "rack-01",
            &Reading {
                device: 0,
                at: Now::system(),
                latency: Duration::from_millis(3),
                outcome: Ok(vec![]),
            },
        );
        m.alarms_active
            .get_or_create(&SeverityLabel {
                severity: "critical".into(),
            })
            .set(2);
        let text = m.render();
        assert!(
            text.contains("emberwatch_poll_seconds_count{device=\"rack-01\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("emberwatch_alarms_active{severity=\"critical\"} 2"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn outbox_drain_and_link_series_follow_their_owners() {
        let m = Metrics::new();
        let now = SystemTime::now();
        let ms = crate::clock::unix_ms(now);
        m.set_outbox(
            &Pressure {
                bytes: 4096,
                max: 1 << 20,
                over_bound: false,
                dropped: 3,
                undelivered: 7,
                oldest_undelivered_ms: Some(ms - 42_000),
            },
            now,
        );
        let mut persisted = Persisted::default();
        let record: crate::drain::coordinator::DrainRecord =
            serde_json::from_value(serde_json::json!({
                "drain_id": "d-1", "zone": "room-1", "severity": "critical", "reason": [],
                "requested_at": "2026-11-25T00:00:00Z", "deadline_ms": 0, "drill": false,
                "state": "drained", "agents": {"lb-1": "done", "k8s-1": "failed"},
                "clearance": {"clear": true, "reason": "drained", "time": "2026-11-25T00:00:01Z"}
            }))
            .unwrap();
        persisted.zones.insert("room-1".into(), record);
        m.set_drain(&["room-1".into(), "room-2".into()], &persisted);
        let mut link = LinkStats {
            requests: 10,
            crc_errors: 2,
            ..LinkStats::default()
        };
        m.set_link("rack-01", &link);
        link.requests = 15;
        m.set_link("rack-01", &link);
        let text = m.render();
        for line in [
            "emberwatch_outbox_bytes 4096",
            "emberwatch_outbox_undelivered 7",
            "emberwatch_outbox_oldest_undelivered_seconds 42.0",
            "emberwatch_outbox_dropped_total 3",
            "emberwatch_drain_state{zone=\"room-1\",state=\"drained\"} 1",
            "emberwatch_drain_state{zone=\"room-1\",state=\"idle\"} 0",
            "emberwatch_drain_state{zone=\"room-2\",state=\"idle\"} 1",
            "emberwatch_power_clearance{zone=\"room-1\"} 1",
            "emberwatch_power_clearance{zone=\"room-2\"} 0",
            "emberwatch_drain_agents{zone=\"room-1\",progress=\"done\"} 1",
            "emberwatch_drain_agents{zone=\"room-1\",progress=\"failed\"} 1",
            "emberwatch_link_requests_total{device=\"rack-01\"} 15",
            "emberwatch_link_errors_total{device=\"rack-01\",kind=\"crc\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // Once every broker has it, the age is 0 again.
        m.set_outbox(&Pressure::default(), now);
        assert!(m
            .render()
            .lines()
            .any(|l| l == "emberwatch_outbox_oldest_undelivered_seconds 0.0"));
    }
}
