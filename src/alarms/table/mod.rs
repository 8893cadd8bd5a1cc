//! The alarms of one gateway, managed as ISA-18.2 / IEC 62682 prescribe.
//!
//! One alarm per (device, point, rule). Rules decide whether a condition is present and at which
//! severity; this table adds what operators need to trust an alarm system: acknowledgement
//! (an alarm that cleared before anyone saw it waits as "cleared, unacknowledged"), latching
//! (stays active until acknowledged, even if the condition went away), shelving (temporarily
//! hidden from the zone level, with a reason and an expiry; never for an emergency), out of
//! service, and chatter counting. Every change of what an operator sees is one numbered event.
//!
//! Pure: the caller passes `now`, persists [`Snapshot`] and publishes the events.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::alarms::{AlarmEvent, AlarmKind, AlarmState, EventDetail, IsaState, Snapshot};
use crate::clock::{rfc3339, Now};
use crate::rules::Severity;

mod pair;
mod zone;

pub use pair::{Shared, SharedAlarm};

#[cfg(test)]
mod tests;

/// Who an alarm is about: fixed for the alarm's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub zone: String,
    pub device: String,
    /// A point id, or a gateway segment ([`Source`] spells them).
    pub point: String,
    pub rule: String,
    pub kind: AlarmKind,
    pub unit: Option<String>,
    /// Stays active until acknowledged, even after the condition clears.
    #[serde(default)]
    pub latching: bool,
}

impl Identity {
    /// `device/point/rule`: the alarm's key in events, zone status and commands. A device's
    /// alarms have keys of their own (a device is in one zone); the gateway's own alarms (votes,
    /// blind zones, missing drain agents: see [`Source`]) repeat the key in every zone, so the
    /// table holds alarms by zone and key.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.device, self.point, self.rule)
    }

    fn slot(&self) -> Slot {
        (self.zone.clone(), self.key())
    }
}

/// Where the table holds an alarm: (zone, key).
type Slot = (String, String);

/// What the rules say about an alarm right now.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// `None`: the condition is gone.
    pub severity: Option<Severity>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
}

/// One alarm's state, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub identity: Identity,
    pub severity: Severity,
    /// Active as the operator sees it (a latched alarm stays active after its condition left).
    pub active: bool,
    /// Whether the rule's condition is present right now.
    #[serde(default)]
    pub condition: bool,
    pub acked: bool,
    pub since: SystemTime,
    #[serde(default)]
    pub shelved_until: Option<SystemTime>,
    #[serde(default)]
    pub shelve_reason: Option<String>,
    /// Who acknowledged the alarm's current state (`"by"` of `cmd/ack`); cleared when the
    /// alarm needs acknowledging again. Kept in state.json so a restart does not forget it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_by: Option<String>,
    /// Who shelved it (`"by"` of `cmd/shelve`), while it is shelved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelved_by: Option<String>,
    #[serde(default)]
    pub out_of_service: Option<String>,
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub message: String,
    /// When the alarm changed active/cleared during the last minute (chatter counting).
    #[serde(skip)]
    transitions: VecDeque<SystemTime>,
}

impl Alarm {
    /// The alarm as `ev` left it, for rolling the persisted table forward over events the
    /// outbox holds past `state.json` (see [`Snapshot::roll_forward`]). `None` if the event
    /// leaves nothing to remember (normal). Times are our own RFC 3339; one that cannot be
    /// read (a hand-edited journal) errs on the visible side: no shelf, `since` the epoch.
    pub fn from_event(ev: &AlarmEvent, latching: bool, before: Option<&Alarm>) -> Option<Alarm> {
        let time = |s: &str| humantime::parse_rfc3339(s).ok();
        let active = ev.state == AlarmState::Active;
        let out_of_service = ev.detail.out_of_service.then(|| {
            before
                .and_then(|b| b.out_of_service.clone())
                .unwrap_or_else(|| "restored from the outbox journal".to_string())
        });
        let shelved_until = ev.detail.shelved_until.as_deref().and_then(time);
        let a = Alarm {
            identity: Identity {
                zone: ev.zone.clone(),
                device: ev.device.clone(),
                point: ev.point.clone(),
                rule: ev.rule.clone(),
                kind: ev.kind,
                unit: ev.unit.clone(),
                latching,
            },
            severity: ev.severity,
            active,
            // What the rules say is not in the event; the first reading re-evaluates it.
            condition: active,
            acked: ev.acked,
            // The names travel in the event, so rolling forward keeps them too.
            acked_by: ev.acked_by.clone(),
            shelved_by: shelved_until.and(ev.shelved_by.clone()),
            since: time(&ev.since).unwrap_or(SystemTime::UNIX_EPOCH),
            shelve_reason: shelved_until.and(before.and_then(|b| b.shelve_reason.clone())),
            shelved_until,
            out_of_service,
            value: ev.value,
            threshold: ev.threshold,
            message: ev.message.clone(),
            transitions: VecDeque::new(),
        };
        (!a.forgettable()).then_some(a)
    }

    fn isa_state(&self) -> IsaState {
        match (
            self.out_of_service.is_some(),
            self.shelved_until.is_some(),
            self.active,
            self.acked,
        ) {
            (true, _, _, _) => IsaState::OutOfService,
            (_, true, _, _) => IsaState::Shelved,
            (_, _, true, false) => IsaState::ActiveUnacknowledged,
            (_, _, true, true) => IsaState::ActiveAcknowledged,
            (_, _, false, false) => IsaState::ClearedUnacknowledged,
            (_, _, false, true) => IsaState::Normal,
        }
    }

    /// Counts toward zone level and the active list: what the operator must act on.
    fn counts(&self) -> bool {
        self.active && self.shelved_until.is_none() && self.out_of_service.is_none()
    }

    /// Nothing left worth remembering: normal, acknowledged, not shelved, in service.
    fn forgettable(&self) -> bool {
        !self.active && self.acked && self.shelved_until.is_none() && self.out_of_service.is_none()
    }
}

/// Why an operator command was refused; the text goes back on `cmd/result`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("no alarm {0:?} (keys are device/point/rule, as in the events' \"alarm\" field)")]
    Unknown(String),
    #[error("alarm {0:?} is at emergency: emergency alarms cannot be shelved")]
    Emergency(String),
    #[error("alarm {key:?} exists in zones {}: add \"zone\" to say which", .zones.join(", "))]
    Ambiguous { key: String, zones: Vec<String> },
    #[error("no alarm {key:?} in zone {zone:?}")]
    NotInZone { key: String, zone: String },
    #[error("no zone {0:?}")]
    NoZone(String),
    #[error("shelving {key:?} for {} exceeds the maximum of {} (alarms.max_shelve)", humantime::format_duration(*.asked), humantime::format_duration(*.max))]
    TooLong {
        key: String,
        asked: Duration,
        max: Duration,
    },
}

/// The largest `seq` a gateway carries on from (`state.json`'s `last_seq`): 2^53 − 1, the
/// largest integer every JSON subscriber reads exactly (JavaScript's `Number.MAX_SAFE_INTEGER`).
/// Counting never gets there (a million events a second for 285 years), so a larger value is a
/// damaged or edited file; refusing it keeps numbering far from u64::MAX, where it would wrap to
/// 0 and subscribers dropping duplicates by `event_id` would drop new alarms.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// Chatter: more than this many transitions in a minute (ISA-18.2 "chattering alarm").
pub const DEFAULT_CHATTER_PER_MINUTE: usize = 5;

/// All alarms of one gateway.
#[derive(Debug)]
pub struct AlarmTable {
    site: String,
    gateway: String,
    alarms: BTreeMap<Slot, Alarm>,
    last_seq: u64,
    chatter_per_minute: usize,
    /// See [`AlarmTable::set_zones`].
    zones: BTreeSet<String>,
}

impl AlarmTable {
    /// `last_seq` is the last number used (persisted); the next event gets `last_seq + 1`.
    pub fn new(site: &str, gateway: &str, last_seq: u64) -> AlarmTable {
        AlarmTable {
            site: site.to_string(),
            gateway: gateway.to_string(),
            alarms: BTreeMap::new(),
            last_seq,
            chatter_per_minute: DEFAULT_CHATTER_PER_MINUTE,
            zones: BTreeSet::new(),
        }
    }

    /// A table as it was persisted: active alarms stay active without a new event, and
    /// acknowledgements and shelves are kept.
    pub fn restore(site: &str, gateway: &str, snapshot: Snapshot) -> AlarmTable {
        let mut t = AlarmTable::new(site, gateway, snapshot.last_seq);
        for a in snapshot.alarms {
            t.alarms.insert(a.identity.slot(), a);
        }
        t
    }

    /// The configured zones, so that a command naming another is refused rather than
    /// answered ok with nothing done.
    pub fn set_zones(&mut self, zones: impl IntoIterator<Item = String>) {
        self.zones = zones.into_iter().collect();
    }

    pub fn set_chatter_limit(&mut self, per_minute: usize) {
        self.chatter_per_minute = per_minute;
    }

    /// What must survive a restart: seq, and every alarm that is not plain normal.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            last_seq: self.last_seq,
            alarms: self.alarms.values().cloned().collect(),
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Every alarm held.
    pub fn alarms(&self) -> impl Iterator<Item = &Alarm> {
        self.alarms.values()
    }

    /// Forgets an alarm whose rule, point, device or drain agent left the configuration, and
    /// says so: the event clears it (`why` is its message) and it leaves the table, so the zone
    /// status no longer lists it. Without the event, subscribers would hold it active forever.
    pub fn retire(&mut self, id: &Identity, why: String, now: Now) -> Option<AlarmEvent> {
        let slot = id.slot();
        let a = self.alarms.get_mut(&slot)?;
        a.active = false;
        a.condition = false;
        // Nobody can acknowledge, shelve or restore an alarm that no longer exists: it ends
        // normal, and the message says why.
        a.acked = true;
        a.shelved_until = None;
        a.shelve_reason = None;
        a.out_of_service = None;
        a.value = None;
        a.since = now.wall;
        a.message = why;
        let ev = self.emit(&slot, now);
        self.alarms.remove(&slot);
        ev
    }

    /// The alarms an operator's command names: `key` in `zone`, or in whichever zone holds it.
    fn named(&self, key: &str, zone: Option<&str>) -> Result<Vec<Slot>, CommandError> {
        let found: Vec<Slot> = self
            .alarms
            .keys()
            .filter(|(z, k)| k == key && zone.is_none_or(|want| want == z))
            .cloned()
            .collect();
        if !found.is_empty() {
            return Ok(found);
        }
        Err(match zone {
            Some(z) if self.alarms.keys().any(|(_, k)| k == key) => CommandError::NotInZone {
                key: key.to_string(),
                zone: z.to_string(),
            },
            _ => CommandError::Unknown(key.to_string()),
        })
    }

    /// Configured, or holding an alarm (one restored from before its zone left the file).
    fn has_zone(&self, zone: &str) -> bool {
        self.zones.contains(zone) || self.alarms.keys().any(|(z, _)| z == zone)
    }

    /// As [`AlarmTable::named`], for commands that must name exactly one alarm.
    fn one(&self, key: &str, zone: Option<&str>) -> Result<Slot, CommandError> {
        let mut found = self.named(key, zone)?;
        if found.len() > 1 {
            return Err(CommandError::Ambiguous {
                key: key.to_string(),
                zones: found.into_iter().map(|(z, _)| z).collect(),
            });
        }
        found
            .pop()
            .ok_or_else(|| CommandError::Unknown(key.to_string()))
    }

    /// The one alarm a command names, to change it (then [`AlarmTable::emit`] the slot).
    fn one_mut(
        &mut self,
        key: &str,
        zone: Option<&str>,
    ) -> Result<(Slot, &mut Alarm), CommandError> {
        let slot = self.one(key, zone)?;
        match self.alarms.get_mut(&slot) {
            Some(a) => Ok((slot, a)),
            None => Err(CommandError::Unknown(key.to_string())),
        }
    }

    /// Applies a condition; returns the event if what the operator sees changed.
    pub fn update(&mut self, id: &Identity, cond: Condition, now: Now) -> Option<AlarmEvent> {
        let slot = id.slot();
        let a = match (self.alarms.get_mut(&slot), cond.severity) {
            (None, None) => return None,
            (Some(a), _) => a,
            (None, Some(s)) => self.alarms.entry(slot.clone()).or_insert(Alarm {
                identity: id.clone(),
                severity: s,
                active: false,
                condition: false,
                acked: true,
                since: now.wall,
                shelved_until: None,
                shelve_reason: None,
                acked_by: None,
                shelved_by: None,
                out_of_service: None,
                value: None,
                threshold: None,
                message: String::new(),
                transitions: VecDeque::new(),
            }),
        };
        a.value = cond.value;
        a.threshold = cond.threshold;
        let mut note = None;
        let changed = match cond.severity {
            Some(s) => {
                let was = (a.active, a.severity);
                if !a.active {
                    a.since = now.wall;
                    a.acked = false;
                    a.acked_by = None;
                    a.transitions.push_back(now.wall);
                } else if s > a.severity {
                    // A worse condition needs the operator's attention again.
                    a.acked = false;
                    a.acked_by = None;
                }
                if s == Severity::Emergency && a.shelved_until.is_some() {
                    // Never hide an emergency: escalation lifts the shelf.
                    a.shelved_until = None;
                    a.shelve_reason = None;
                    a.shelved_by = None;
                    note = Some("shelf lifted: the alarm reached emergency".to_string());
                }
                a.active = true;
                a.condition = true;
                a.severity = s;
                was != (true, s) || note.is_some()
            }
            None => {
                a.condition = false;
                if !a.active || (a.identity.latching && !a.acked) {
                    // Normal already, or latched until someone acknowledges it.
                    false
                } else {
                    a.active = false;
                    a.since = now.wall;
                    a.transitions.push_back(now.wall);
                    true
                }
            }
        };
        if !changed {
            return None;
        }
        a.message = match note {
            Some(n) => format!("{}; {n}", cond.message),
            None => cond.message,
        };
        self.emit(&slot, now)
    }

    /// Numbers and builds the event for the alarm's current state; forgets it if it is normal.
    /// `None` only for a key not in the table, which callers have just looked up.
    fn emit(&mut self, slot: &Slot, now: Now) -> Option<AlarmEvent> {
        let limit = self.chatter_per_minute;
        let a = self.alarms.get_mut(slot)?;
        let key = &slot.1;
        // Cannot overflow: state beyond MAX_SEQ is refused at load (store.rs).
        self.last_seq += 1;
        let seq = self.last_seq;
        let minute_ago = now
            .wall
            .checked_sub(Duration::from_secs(60))
            .unwrap_or(now.wall);
        while a.transitions.front().is_some_and(|t| *t < minute_ago) {
            a.transitions.pop_front();
        }
        let transitions = a.transitions.len();
        let ev = AlarmEvent {
            event_id: format!("{}-{}", self.gateway, seq),
            seq,
            site: self.site.clone(),
            gateway: self.gateway.clone(),
            alarm: key.to_string(),
            rule: a.identity.rule.clone(),
            zone: a.identity.zone.clone(),
            device: a.identity.device.clone(),
            point: a.identity.point.clone(),
            kind: a.identity.kind,
            severity: a.severity,
            state: if a.active {
                AlarmState::Active
            } else {
                AlarmState::Cleared
            },
            acked: a.acked,
            acked_by: a.acked_by.clone(),
            shelved_by: a.shelved_by.clone(),
            value: a.value,
            threshold: a.threshold,
            unit: a.identity.unit.clone(),
            message: a.message.clone(),
            time: rfc3339(now.wall),
            since: rfc3339(a.since),
            detail: EventDetail {
                isa_state: a.isa_state(),
                shelved_until: a.shelved_until.map(rfc3339),
                out_of_service: a.out_of_service.is_some(),
                chattering: transitions > limit,
                transitions_last_minute: transitions as u32,
            },
        };
        if a.forgettable() {
            self.alarms.remove(slot);
        }
        Some(ev)
    }

    /// Acknowledges one alarm, or every unacknowledged one with `"*"`; `zone` narrows either
    /// (a gateway alarm's key names it in every zone, and without a zone all are acknowledged).
    pub fn ack(
        &mut self,
        key: &str,
        zone: Option<&str>,
        by: Option<&str>,
        now: Now,
    ) -> Result<Vec<AlarmEvent>, CommandError> {
        let slots: Vec<Slot> = if key == "*" {
            // A mistyped zone would otherwise acknowledge nothing and answer ok.
            if let Some(z) = zone.filter(|z| !self.has_zone(z)) {
                return Err(CommandError::NoZone(z.to_string()));
            }
            self.alarms
                .iter()
                .filter(|((z, _), a)| !a.acked && zone.is_none_or(|want| want == z))
                .map(|(s, _)| s.clone())
                .collect()
        } else {
            self.named(key, zone)?
        };
        let mut events = Vec::new();
        for slot in slots {
            let Some(a) = self.alarms.get_mut(&slot).filter(|a| !a.acked) else {
                continue;
            };
            let k = &slot.1;
            a.acked = true;
            a.acked_by = by.map(str::to_string);
            if a.active && !a.condition {
                // A latched alarm whose condition has gone clears on acknowledgement.
                a.active = false;
                a.since = now.wall;
                a.transitions.push_back(now.wall);
            }
            a.message = match by {
                Some(by) => format!("{k} acknowledged by {by}"),
                None => format!("{k} acknowledged"),
            };
            events.extend(self.emit(&slot, now));
        }
        Ok(events)
    }

    /// Shelves an alarm until `now + for_`; refused for emergencies and beyond `max`.
    // Each argument is a distinct part of the operator's request (the fields of
    // `command::Shelve` plus the configured maximum); bundling them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn shelve(
        &mut self,
        key: &str,
        zone: Option<&str>,
        for_: Duration,
        max: Duration,
        reason: &str,
        by: Option<&str>,
        now: Now,
    ) -> Result<AlarmEvent, CommandError> {
        let (slot, a) = self.one_mut(key, zone)?;
        if a.active && a.severity == Severity::Emergency {
            return Err(CommandError::Emergency(key.to_string()));
        }
        if for_ > max {
            return Err(CommandError::TooLong {
                key: key.to_string(),
                asked: for_,
                max,
            });
        }
        a.shelved_until = Some(now.wall + for_);
        a.shelve_reason = Some(reason.to_string());
        a.shelved_by = by.map(str::to_string);
        let who = by.map(|b| format!(" by {b}")).unwrap_or_default();
        a.message = format!(
            "{key} shelved{who} for {}: {reason}",
            humantime::format_duration(for_)
        );
        self.emit(&slot, now)
            .ok_or_else(|| CommandError::Unknown(key.to_string()))
    }

    /// Takes an alarm out of service (`Some(reason)`) or puts it back (`None`).
    pub fn set_service(
        &mut self,
        key: &str,
        zone: Option<&str>,
        out: Option<String>,
        by: Option<&str>,
        now: Now,
    ) -> Result<AlarmEvent, CommandError> {
        let (slot, a) = self.one_mut(key, zone)?;
        let who = by.map(|b| format!(" by {b}")).unwrap_or_default();
        a.message = match &out {
            Some(r) => format!("{key} out of service{who}: {r}"),
            None => format!("{key} back in service{who}"),
        };
        a.out_of_service = out;
        self.emit(&slot, now)
            .ok_or_else(|| CommandError::Unknown(key.to_string()))
    }

    /// Lifts shelves whose time is up; each lifted shelf is an event.
    pub fn expire(&mut self, now: Now) -> Vec<AlarmEvent> {
        let due: Vec<Slot> = self
            .alarms
            .iter()
            .filter(|(_, a)| a.shelved_until.is_some_and(|t| t <= now.wall))
            .map(|(s, _)| s.clone())
            .collect();
        let mut events = Vec::new();
        for slot in due {
            if let Some(a) = self.alarms.get_mut(&slot) {
                a.shelved_until = None;
                a.shelve_reason = None;
                a.shelved_by = None;
                a.message = format!("{} shelf expired", slot.1);
                events.extend(self.emit(&slot, now));
            }
        }
        events
    }
}
