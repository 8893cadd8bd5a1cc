//! Alarm state: which alarms are active, the events their changes produce, zone status.
//!
//! Pure: (condition, now) in, events out. The daemon persists the table's [`Snapshot`] through
//! [`StateStore`] so event numbers never go back and active alarms are not raised again after a
//! restart or crash.

mod source;
mod store;
mod table;

pub use source::{LinkFault, PointFault, RuleKind, Source};
pub use store::{Snapshot, StateStore, StoreError};
pub use table::{Alarm, AlarmTable, CommandError, Condition, Identity, Shared, SharedAlarm};

use serde::{Deserialize, Serialize};

use crate::rules::Severity;

/// What kind of condition an alarm reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    Threshold,
    RateOfRise,
    Vote,
    /// Sensor or link trouble: no answer, exception, stuck or out-of-range value.
    Fault,
}

impl AlarmKind {
    /// Whether an alarm of this kind says something about a fire (a rule saw a value, or
    /// sensors agreeing), as opposed to a fault, which says only that a sensor, a link or a
    /// drain agent cannot be relied on. Drains are started by fire evidence alone: a fault
    /// calls for a technician, and a flapping link must not move a room's traffic to and fro.
    pub fn is_fire_evidence(self) -> bool {
        matches!(
            self,
            AlarmKind::Threshold | AlarmKind::RateOfRise | AlarmKind::Vote
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmState {
    Active,
    Cleared,
}

/// The alarm event of SPEC: published on `P/alarms/{zone}/{device}/{point}/{rule}` on every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    pub event_id: String,
    pub seq: u64,
    pub site: String,
    pub gateway: String,
    /// `device/point/rule`.
    pub alarm: String,
    pub rule: String,
    pub zone: String,
    pub device: String,
    pub point: String,
    pub kind: AlarmKind,
    pub severity: Severity,
    pub state: AlarmState,
    pub acked: bool,
    /// Who acknowledged (the `"by"` of `cmd/ack`); omitted when no name was given or the
    /// alarm is unacknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_by: Option<String>,
    /// Who shelved it (the `"by"` of `cmd/shelve`); omitted unless shelved with a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelved_by: Option<String>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub unit: Option<String>,
    pub message: String,
    pub time: String,
    /// When the alarm entered its current state (raise time for an active alarm).
    pub since: String,
    /// Alarm-management detail beyond SPEC's fields (ISA-18.2 state, shelving, chatter).
    #[serde(flatten)]
    pub detail: EventDetail,
}

/// The ISA-18.2 / IEC 62682 state of an alarm, as an operator's console shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsaState {
    /// Condition gone and acknowledged (the event that says so is the last one).
    #[default]
    Normal,
    ActiveUnacknowledged,
    ActiveAcknowledged,
    /// The condition went away before anyone acknowledged it.
    ClearedUnacknowledged,
    /// Hidden from the zone level by an operator, until `shelved_until`.
    Shelved,
    OutOfService,
}

/// Fields every alarm event carries in addition to SPEC's.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EventDetail {
    pub isa_state: IsaState,
    /// Set while the alarm is shelved.
    pub shelved_until: Option<String>,
    pub out_of_service: bool,
    /// More than the configured number of active/cleared transitions in the last minute.
    /// Reported, never used to drop events.
    pub chattering: bool,
    pub transitions_last_minute: u32,
}

/// Zone level: the highest active severity, or normal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    Normal,
    Warning,
    Critical,
    Emergency,
}

impl From<Severity> for Level {
    fn from(s: Severity) -> Level {
        match s {
            Severity::Warning => Level::Warning,
            Severity::Critical => Level::Critical,
            Severity::Emergency => Level::Emergency,
        }
    }
}

/// Retained on `P/zones/{zone}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneStatus {
    pub zone: String,
    /// What a wall panel shows: the highest severity of every counted alarm, faults included
    /// (a blind zone is critical), so that nobody overlooks an unwatched room.
    pub level: Level,
    /// Keys of the zone's active alarms, sorted.
    pub active: Vec<String>,
    /// Active fault alarms: detectors the zone cannot currently rely on.
    pub faults: u32,
    pub time: String,
    /// Active alarms an operator has shelved: not counted in `level` or `active`.
    #[serde(default)]
    pub shelved: Vec<String>,
    /// Alarms of the zone (active or cleared) no one has acknowledged yet.
    #[serde(default)]
    pub unacknowledged: u32,
    /// The highest severity of the zone's fire evidence alone (threshold, rate-of-rise and
    /// vote alarms, as counted in `level`), never raised by a fault. `level` tells people what
    /// to look at; `evidence` is what a drain is started on, because a drain moves real
    /// traffic and a flapping detector must not move it back and forth.
    #[serde(default)]
    pub evidence: Level,
}
