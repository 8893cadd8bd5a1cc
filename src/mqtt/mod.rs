//! MQTT: the connection to the broker, topics, payloads, and the embedded broker.
//!
//! (Being built: see issue 2.)

use crate::alarms::{AlarmEvent, ZoneStatus};

/// Everything the pipeline hands to MQTT.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// QoS 1, not retained, on `P/alarms/{zone}/{device}/{point}/{rule}`.
    Event(AlarmEvent),
    /// QoS 1, retained, on `P/zones/{zone}/status`.
    Zone(ZoneStatus),
    /// QoS 0, not retained, on `P/telemetry/{device}`; dropped (and counted) when it cannot go out.
    Telemetry { device: String, body: Telemetry },
}

/// `P/telemetry/{device}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Telemetry {
    pub time: String,
    /// Engineering values by point id; points that could not be read are absent.
    pub points: std::collections::BTreeMap<String, f64>,
    pub quality: Quality,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Good,
    Stale,
    Fault,
}
