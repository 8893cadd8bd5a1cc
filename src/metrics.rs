//! Prometheus metrics at `/metrics` (`[metrics] listen = "127.0.0.1:9464"`).
//!
//! A gateway runs unattended for years; the questions a site's monitoring must answer without
//! reading logs are "is every device answering, and how fast", "what is alarming", "is the broker
//! reachable" and "is anything piling up". Series are named `emberwatch_*`. The registry is owned
//! by the daemon and handed to the HTTP task; every metric inside is an atomic, so updating one is
//! as cheap as an increment and needs no lock.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::fieldbus::Reading;

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
        Metrics {
            registry: Arc::new(r),
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
}
