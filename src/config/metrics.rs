//! `[metrics]`: the optional Prometheus endpoint. The type, its default and its validator side
//! by side.

use serde::Deserialize;

use super::validate::Validator;

/// Default `metrics.listen`: this host only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// The Prometheus endpoint (`[metrics]`); without the section nothing is served.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `listen`: the address (`ip:port`) `/metrics` is served on; default [`DEFAULT_LISTEN`].
    pub listen: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawMetrics {
    listen: Option<String>,
}

impl Validator {
    pub(super) fn metrics(&mut self, m: RawMetrics) -> Metrics {
        let m = Metrics {
            listen: m.listen.unwrap_or_else(|| DEFAULT_LISTEN.into()),
        };
        if m.listen.parse::<std::net::SocketAddr>().is_err() {
            self.problem(
                "metrics.listen",
                format!("{:?} is not an address like {DEFAULT_LISTEN}", m.listen),
            );
        }
        m
    }
}
