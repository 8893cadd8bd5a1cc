//! What the pipeline hands the transport: the messages the engine and the drain coordinator
//! produce, before anyone has decided how they travel.
//!
//! They live apart from `mqtt/` so the pure cores (engine, alarms, drain coordinator) say
//! *what* must be published without importing the broker links that decide *how*: `mqtt/`
//! turns each of these into a topic, a QoS and a retain flag, and keeps them durable.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::alarms::{AlarmEvent, ZoneStatus};
use crate::decode::Point;

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

/// `P/telemetry/{device}`: `{"time":..,"points":{"id":value,..},"quality":..}`, the points in
/// the order of their ids, as a map would list them.
///
/// Built at every poll of every device, so it owns no names: it holds the device's point list
/// (shared with the configuration) and (point index, value) pairs, and is written straight to
/// JSON without an intermediate map of cloned ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub time: String,
    /// The device's points, whose ids name the values.
    pub names: Arc<[Point]>,
    /// (index in `names`, engineering value), sorted by point id; points that could not be
    /// read are absent; a point whose device answered its `sentinel` ("no value", not a fault)
    /// is `None`, published as `null`.
    pub points: Vec<(usize, Option<f64>)>,
    pub quality: Quality,
}

impl Telemetry {
    /// `points` in any order; they are published sorted by id.
    pub fn new(
        time: String,
        names: Arc<[Point]>,
        mut points: Vec<(usize, Option<f64>)>,
        quality: Quality,
    ) -> Telemetry {
        points.sort_unstable_by(|a, b| id_of(&names, a.0).cmp(id_of(&names, b.0)));
        Telemetry {
            time,
            names,
            points,
            quality,
        }
    }

    /// As [`Telemetry::new`], sorted by `rank` (from [`id_ranks`] of `names`, computed once
    /// per device) instead of comparing ids at every poll.
    pub fn ranked(
        time: String,
        names: Arc<[Point]>,
        mut points: Vec<(usize, Option<f64>)>,
        quality: Quality,
        rank: &[u32],
    ) -> Telemetry {
        points.sort_unstable_by_key(|&(i, _)| rank.get(i).copied().unwrap_or(u32::MAX));
        Telemetry {
            time,
            names,
            points,
            quality,
        }
    }

    /// (point id, value), as published.
    pub fn values(&self) -> impl Iterator<Item = (&str, Option<f64>)> + '_ {
        self.points.iter().map(|&(i, v)| (id_of(&self.names, i), v))
    }

    /// The JSON body, in one buffer sized for it.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(64 + 32 * self.points.len());
        serde_json::to_writer(&mut out, self)?;
        Ok(out)
    }
}

/// Each point's place in the order of the ids, for [`Telemetry::ranked`].
pub fn id_ranks(points: &[Point]) -> Box<[u32]> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| points[a].id.cmp(&points[b].id));
    let mut rank = vec![0u32; points.len()];
    for (place, &i) in order.iter().enumerate() {
        rank[i] = u32::try_from(place).unwrap_or(u32::MAX);
    }
    rank.into_boxed_slice()
}

/// A point's id; empty for an index past the list (never built so, but never a panic).
fn id_of(names: &[Point], i: usize) -> &str {
    names.get(i).map_or("", |p| p.id.as_str())
}

impl Serialize for Telemetry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeStruct};
        struct Points<'t>(&'t Telemetry);
        impl Serialize for Points<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.points.len()))?;
                for (id, v) in self.0.values() {
                    m.serialize_entry(id, &v)?;
                }
                m.end()
            }
        }
        let mut st = s.serialize_struct("Telemetry", 3)?;
        st.serialize_field("time", &self.time)?;
        st.serialize_field("points", &Points(self))?;
        st.serialize_field("quality", &self.quality)?;
        st.end()
    }
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
