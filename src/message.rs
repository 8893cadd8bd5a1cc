//! What the pipeline hands the transport: the messages the engine and the drain coordinator
//! produce, before anyone has decided how they travel.
//!
//! They live apart from `mqtt/` so the pure cores (engine, alarms, drain coordinator) say
//! *what* must be published without importing the broker links that decide *how*: `mqtt/`
//! turns each of these into a topic, a QoS and a retain flag, and keeps them durable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// QoS 1 on any topic, durable like events (queued while disconnected, resent after a
    /// reconnect): drain requests, statuses, clearances, agents' acknowledgements. The caller
    /// builds the topic with [`crate::mqtt::Topics`] and the body with its own payload type.
    Message {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    },
}

/// `P/telemetry/{device}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub time: String,
    /// Engineering values by point id; points that could not be read are absent; a point whose
    /// device answered its `sentinel` ("no value", not a fault) is `null`.
    pub points: BTreeMap<String, Option<f64>>,
    pub quality: Quality,
}

/// How far a subscriber can trust one telemetry message as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// Every point was read and is within its sensor's valid range (a `null` point, which the
    /// device says it has no value for, is no fault).
    Good,
    /// Reserved by the SPEC for values that are old; this gateway sends fresh values or none.
    Stale,
    /// The device did not answer, or at least one point is faulted (its value is absent).
    Fault,
}

/// Published on `P/gateways/{gateway}/cmd/result` for every command received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The command's name (`ack`, `shelve`, `replay`, ...).
    pub command: String,
    pub ok: bool,
    /// Why it failed, or what was done; `null` when there is nothing to say.
    pub reason: Option<String>,
}
