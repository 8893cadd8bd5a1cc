//! What the coordinator keeps in `storage.dir/drain.json`, apart from the machine that
//! changes it: these records are the whole of a drain that must survive a restart (its
//! `drain_id`, deadline and each agent's progress), and `metrics.rs` reads them too, so they
//! hold data and the two predicates every rule asks of a drain, and nothing else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::drain::messages::{DrainState, Progress};
use crate::rules::Severity;

/// One drain of one zone: the current one, or the last one (kept so late acks and restores
/// still find it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    pub drain_id: String,
    pub zone: String,
    pub severity: Severity,
    pub reason: Vec<String>,
    pub requested_at: String,
    /// Unix milliseconds; wall clock, so it survives a restart.
    pub deadline_ms: u64,
    pub drill: bool,
    pub state: DrainState,
    /// The agents this drain waits for, and how far each got.
    pub agents: BTreeMap<String, Progress>,
    /// What a failed agent said, for the clearance reason.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
    pub clearance: Option<ClearanceRecord>,
}

/// The clearance last published for a drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearanceRecord {
    pub clear: bool,
    pub reason: String,
    pub time: String,
}

impl DrainRecord {
    /// Still wanted: not cancelled (drained and timed-out drains stay in force until the zone
    /// is back to normal).
    pub(super) fn in_force(&self) -> bool {
        self.state != DrainState::Cancelled
    }

    /// Still waiting for agents or the deadline.
    pub(super) fn open(&self) -> bool {
        matches!(self.state, DrainState::Requested | DrainState::Draining)
    }
}

/// What the coordinator keeps in `storage.dir/drain.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The millisecond stamp of the last `drain_id`, so a new id is always new, even if the
    /// clock steps back.
    pub last_id_ms: u64,
    /// The current or last drain of each zone.
    pub zones: BTreeMap<String, DrainRecord>,
}
