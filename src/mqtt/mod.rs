//! MQTT: the connection to the broker, topics, payloads, and the embedded broker.
//!
//! MQTT is where emberwatch's warnings become visible to operators and drain agents, so this
//! module's one job is that nothing the pipeline hands it is lost on the way: alarm events and
//! zone statuses are queued while the broker is away and delivered in order afterwards, while
//! telemetry (useful only while fresh) is dropped and counted instead of piling up.
//!
//! - [`topics`]: the one place topic strings are built (SPEC "MQTT" table).
//! - [`payload`]: the gateway status and command result bodies.
//! - [`link`]: the gateway's connection: a cloneable [`Publisher`] handle and a loop task that
//!   owns the rumqttc event loop, in the handle-vs-loop shape rumqttc itself uses.
//! - [`delivery`]: the durable outbox between the pipeline and each broker's loop: per-broker
//!   cursors, `cmd/replay`, the `seq` heartbeat.
//! - [`embedded`]: an in-process rumqttd broker for `mqtt.url = "embedded"` and the demo.

pub mod delivery;
pub mod embedded;
mod error;
mod ledger;
pub mod link;
mod options;
pub mod payload;
pub mod topics;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod tests;

pub use delivery::Durable;
pub use embedded::EmbeddedBroker;
pub use error::MqttError;
pub use link::{connect, connect_durable, Command, Link, Publisher};
pub use payload::{CommandResult, GatewayStatus};
pub use topics::Topics;

use crate::alarms::{AlarmEvent, ZoneStatus};

/// Everything the pipeline hands to MQTT.
// An alarm event is larger than the other variants; boxing it would cost an allocation per
// event for a value that moves through one channel once, so the size difference stays.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// QoS 1, not retained, on `P/alarms/{zone}/{device}/{point}/{rule}`.
    Event(AlarmEvent),
    /// QoS 1, retained, on `P/zones/{zone}/status`.
    Zone(ZoneStatus),
    /// QoS 0, not retained, on `P/telemetry/{device}`; dropped (and counted) when it cannot go out.
    Telemetry { device: String, body: Telemetry },
    /// QoS 1, not retained, on `P/gateways/{gateway}/cmd/result`: the answer to every command
    /// received, so whoever sent it knows it was seen.
    CommandResult(CommandResult),
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
