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

use crate::alarms::{
    AlarmEvent, AlarmKind, AlarmState, EventDetail, IsaState, Level, Snapshot, Source, ZoneStatus,
};
use crate::clock::{rfc3339, Now};
use crate::rules::Severity;

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

    /// Forgets an alarm (its rule or device left the configuration).
    pub fn remove(&mut self, id: &Identity) -> Option<Alarm> {
        self.alarms.remove(&id.slot())
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
                    a.transitions.push_back(now.wall);
                } else if s > a.severity {
                    // A worse condition needs the operator's attention again.
                    a.acked = false;
                }
                if s == Severity::Emergency && a.shelved_until.is_some() {
                    // Never hide an emergency: escalation lifts the shelf.
                    a.shelved_until = None;
                    a.shelve_reason = None;
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
            if a.active && !a.condition {
                // A latched alarm whose condition has gone clears on acknowledgement.
                a.active = false;
                a.since = now.wall;
                a.transitions.push_back(now.wall);
            }
            a.message = format!("{k} acknowledged");
            events.extend(self.emit(&slot, now));
        }
        Ok(events)
    }

    /// Shelves an alarm until `now + for_`; refused for emergencies and beyond `max`.
    pub fn shelve(
        &mut self,
        key: &str,
        zone: Option<&str>,
        for_: Duration,
        max: Duration,
        reason: &str,
        now: Now,
    ) -> Result<AlarmEvent, CommandError> {
        let slot = self.one(key, zone)?;
        let a = self
            .alarms
            .get_mut(&slot)
            .ok_or_else(|| CommandError::Unknown(key.to_string()))?;
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
        a.message = format!(
            "{key} shelved for {}: {reason}",
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
        now: Now,
    ) -> Result<AlarmEvent, CommandError> {
        let slot = self.one(key, zone)?;
        let a = self
            .alarms
            .get_mut(&slot)
            .ok_or_else(|| CommandError::Unknown(key.to_string()))?;
        a.message = match &out {
            Some(r) => format!("{key} out of service: {r}"),
            None => format!("{key} back in service"),
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
                a.message = format!("{} shelf expired", slot.1);
                events.extend(self.emit(&slot, now));
            }
        }
        events
    }

    /// Whether the alarm `key` of `zone` is active, and at which severity.
    pub fn active_severity_in(&self, zone: &str, key: &str) -> Option<Severity> {
        self.alarms
            .get(&(zone.to_string(), key.to_string()))
            .filter(|a| a.active)
            .map(|a| a.severity)
    }

    /// Whether the rule condition of alarm `key` in `zone` is present (faults and votes use
    /// this, not `active`, so a latched or shelved alarm does not change what the rules see).
    pub fn condition(&self, zone: &str, key: &str) -> bool {
        self.alarms
            .get(&(zone.to_string(), key.to_string()))
            .is_some_and(|a| a.condition)
    }

    /// As [`AlarmTable::condition`], for the alarm `id` names.
    pub fn condition_of(&self, id: &Identity) -> bool {
        self.alarms.get(&id.slot()).is_some_and(|a| a.condition)
    }

    /// The zones in which alarm `key` has its condition present.
    pub fn zones_with_condition(&self, key: &str) -> Vec<String> {
        self.alarms
            .iter()
            .filter(|((_, k), a)| k == key && a.condition)
            .map(|((z, _), _)| z.clone())
            .collect()
    }

    /// The alarms of one zone whose condition is present, with their severity.
    pub fn active_in_zone<'a>(
        &'a self,
        zone: &'a str,
    ) -> impl Iterator<Item = (&'a Identity, Severity)> + 'a {
        self.alarms
            .values()
            .filter(move |a| a.condition && a.out_of_service.is_none() && a.identity.zone == zone)
            .map(|a| (&a.identity, a.severity))
    }

    /// Alarms the operator must act on, counted by severity (warning, critical, emergency).
    pub fn active_by_severity(&self) -> [usize; 3] {
        let mut n = [0; 3];
        for a in self.alarms.values().filter(|a| a.counts()) {
            n[a.severity as usize] += 1;
        }
        n
    }

    /// The retained status of one zone: shelved and out-of-service alarms excluded. Its
    /// `evidence` ranks only the alarms that say something about a fire, so faults (a blind
    /// zone included) stay loud on the panel without starting a drain.
    pub fn zone_status(&self, zone: &str, now: Now) -> ZoneStatus {
        let mut level = Level::Normal;
        let mut evidence = Level::Normal;
        let mut active = Vec::new();
        let mut shelved = Vec::new();
        let mut faults = 0;
        let mut unacknowledged = 0;
        // Ordered by zone first: this zone's alarms are one run.
        let of_zone = self
            .alarms
            .range((zone.to_string(), String::new())..)
            .take_while(|((z, _), _)| z == zone);
        for ((_, key), a) in of_zone {
            if !a.acked {
                unacknowledged += 1;
            }
            if a.active && a.shelved_until.is_some() {
                shelved.push(key.clone());
            }
            if !a.counts() {
                continue;
            }
            // A missing drain agent is the drain's trouble, not the room's: listed and counted
            // as a fault, but it neither raises the level nor keeps a finished drain going.
            if !Source::is_drain_agent(&a.identity) {
                level = level.max(Level::from(a.severity));
            }
            if a.identity.kind.is_fire_evidence() {
                evidence = evidence.max(Level::from(a.severity));
            }
            if a.identity.kind == AlarmKind::Fault {
                faults += 1;
            }
            active.push(key.clone());
        }
        ZoneStatus {
            zone: zone.to_string(),
            level,
            active,
            faults,
            time: rfc3339(now.wall),
            shelved,
            unacknowledged,
            evidence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarms::LinkFault;

    const MINUTE: Duration = Duration::from_secs(60);

    fn id(point: &str, kind: AlarmKind) -> Identity {
        Identity {
            zone: "room-1".into(),
            device: "rack-01".into(),
            point: point.into(),
            rule: "r".into(),
            kind,
            unit: Some("degC".into()),
            latching: false,
        }
    }

    fn cond(s: Option<Severity>) -> Condition {
        Condition {
            severity: s,
            value: Some(1.0),
            threshold: Some(1.0),
            message: "m".into(),
        }
    }

    #[test]
    fn events_only_on_change_with_consecutive_seq() {
        let now = Now::system();
        let mut t = AlarmTable::new("site", "gw", 41);
        let a = id("t", AlarmKind::Threshold);
        assert!(
            t.update(&a, cond(None), now).is_none(),
            "normal → normal is silent"
        );
        let e = t.update(&a, cond(Some(Severity::Warning)), now).unwrap();
        assert_eq!((e.seq, e.event_id.as_str()), (42, "gw-42"));
        assert_eq!(e.state, AlarmState::Active);
        assert!(t.update(&a, cond(Some(Severity::Warning)), now).is_none());
        let later = now.after(Duration::from_secs(3));
        let e = t.update(&a, cond(Some(Severity::Critical)), later).unwrap();
        assert_eq!((e.seq, e.severity), (43, Severity::Critical));
        assert_eq!(
            e.since,
            rfc3339(now.wall),
            "escalation keeps the raise time"
        );
        let e = t.update(&a, cond(None), later).unwrap();
        assert_eq!(
            (e.seq, e.state, e.severity),
            (44, AlarmState::Cleared, Severity::Critical)
        );
        assert!(t.update(&a, cond(None), later).is_none());
    }

    /// One step of an alarm's life: what happens, and the ISA state and event it must produce.
    enum Step {
        Raise(Severity),
        Clear,
        Ack,
        Shelve(u64),
        Tick(u64),
        TakeOutOfService,
        InService,
    }

    /// Plays steps on one alarm and returns, per step, the ISA state published (None: no event).
    fn play(latching: bool, steps: &[Step]) -> Vec<Option<IsaState>> {
        let t0 = Now::system();
        let mut now = t0;
        let mut t = AlarmTable::new("s", "gw", 0);
        let mut a = id("t", AlarmKind::Threshold);
        a.latching = latching;
        let key = a.key();
        let max = Duration::from_secs(3600);
        steps
            .iter()
            .map(|s| {
                let evs: Vec<AlarmEvent> = match s {
                    Step::Raise(sev) => t.update(&a, cond(Some(*sev)), now).into_iter().collect(),
                    Step::Clear => t.update(&a, cond(None), now).into_iter().collect(),
                    Step::Ack => t.ack(&key, None, now).unwrap_or_default(),
                    Step::Shelve(secs) => t
                        .shelve(
                            &key,
                            None,
                            Duration::from_secs(*secs),
                            max,
                            "maintenance",
                            now,
                        )
                        .into_iter()
                        .collect(),
                    Step::Tick(secs) => {
                        now = now.after(Duration::from_secs(*secs));
                        t.expire(now)
                    }
                    Step::TakeOutOfService => t
                        .set_service(&key, None, Some("detector replaced".into()), now)
                        .into_iter()
                        .collect(),
                    Step::InService => t.set_service(&key, None, None, now).into_iter().collect(),
                };
                evs.last().map(|e| e.detail.isa_state)
            })
            .collect()
    }

    #[test]
    fn isa_18_2_transitions() {
        use IsaState::*;
        use Step::*;
        let w = Severity::Warning;
        type Case = (&'static str, bool, Vec<Step>, Vec<Option<IsaState>>);
        let cases: Vec<Case> = vec![
            (
                "ack while active, then clear",
                false,
                vec![Raise(w), Ack, Clear],
                vec![
                    Some(ActiveUnacknowledged),
                    Some(ActiveAcknowledged),
                    Some(Normal),
                ],
            ),
            (
                "clear before ack waits for ack",
                false,
                vec![Raise(w), Clear, Ack],
                vec![
                    Some(ActiveUnacknowledged),
                    Some(ClearedUnacknowledged),
                    Some(Normal),
                ],
            ),
            (
                "returns while cleared-unacknowledged",
                false,
                vec![Raise(w), Clear, Raise(w)],
                vec![
                    Some(ActiveUnacknowledged),
                    Some(ClearedUnacknowledged),
                    Some(ActiveUnacknowledged),
                ],
            ),
            (
                "escalation needs a new ack",
                false,
                vec![Raise(w), Ack, Raise(Severity::Critical)],
                vec![
                    Some(ActiveUnacknowledged),
                    Some(ActiveAcknowledged),
                    Some(ActiveUnacknowledged),
                ],
            ),
            (
                "ack of an acknowledged alarm is silent",
                false,
                vec![Raise(w), Ack, Ack],
                vec![Some(ActiveUnacknowledged), Some(ActiveAcknowledged), None],
            ),
            (
                "latched: stays active after clear until acked",
                true,
                vec![Raise(w), Clear, Ack],
                vec![Some(ActiveUnacknowledged), None, Some(Normal)],
            ),
            (
                "latched and acked: clears with the condition",
                true,
                vec![Raise(w), Ack, Clear],
                vec![
                    Some(ActiveUnacknowledged),
                    Some(ActiveAcknowledged),
                    Some(Normal),
                ],
            ),
            (
                "clear while shelved, shelf expires",
                false,
                vec![Raise(w), Shelve(60), Clear, Tick(61)],
                vec![
                    Some(ActiveUnacknowledged),
                    Some(Shelved),
                    Some(Shelved),
                    Some(ClearedUnacknowledged),
                ],
            ),
            (
                "shelf not yet expired",
                false,
                vec![Raise(w), Shelve(60), Tick(30)],
                vec![Some(ActiveUnacknowledged), Some(Shelved), None],
            ),
            (
                "escalation to emergency lifts the shelf",
                false,
                vec![Raise(w), Shelve(60), Raise(Severity::Emergency)],
                vec![
                    Some(ActiveUnacknowledged),
                    Some(Shelved),
                    Some(ActiveUnacknowledged),
                ],
            ),
            (
                "out of service and back",
                false,
                vec![Raise(w), TakeOutOfService, Clear, InService],
                vec![
                    Some(ActiveUnacknowledged),
                    Some(OutOfService),
                    Some(OutOfService),
                    Some(ClearedUnacknowledged),
                ],
            ),
        ];
        for (name, latching, steps, want) in cases {
            assert_eq!(play(latching, &steps), want, "{name}");
        }
    }

    #[test]
    fn shelving_refuses_emergencies_unknown_keys_and_overlong_shelves() {
        let now = Now::system();
        let mut t = AlarmTable::new("s", "gw", 0);
        let a = id("t", AlarmKind::Threshold);
        t.update(&a, cond(Some(Severity::Emergency)), now);
        let max = Duration::from_secs(3600);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            t.shelve(&a.key(), None, hour, max, "x", now),
            Err(CommandError::Emergency(a.key()))
        );
        assert_eq!(
            t.shelve("rack-99/x/y", None, hour, max, "x", now),
            Err(CommandError::Unknown("rack-99/x/y".into()))
        );
        t.update(&a, cond(Some(Severity::Warning)), now);
        assert!(matches!(
            t.shelve(&a.key(), None, hour * 2, max, "x", now),
            Err(CommandError::TooLong { .. })
        ));
        assert_eq!(
            t.ack("rack-99/x/y", None, now),
            Err(CommandError::Unknown("rack-99/x/y".into()))
        );
    }

    #[test]
    fn ack_star_acknowledges_every_unacknowledged_alarm() {
        let now = Now::system();
        let mut t = AlarmTable::new("s", "gw", 0);
        t.update(
            &id("a", AlarmKind::Threshold),
            cond(Some(Severity::Warning)),
            now,
        );
        t.update(
            &id("b", AlarmKind::Threshold),
            cond(Some(Severity::Critical)),
            now,
        );
        let evs = t.ack("*", None, now).unwrap();
        assert_eq!(evs.len(), 2);
        assert!(evs.iter().all(|e| e.acked && e.state == AlarmState::Active));
        assert!(t.ack("*", None, now).unwrap().is_empty());
    }

    #[test]
    fn ack_star_in_a_zone_needs_a_zone_that_exists() {
        let now = Now::system();
        let mut t = AlarmTable::new("s", "gw", 0);
        t.set_zones(["room-1".to_string(), "room-2".to_string()]);
        t.update(
            &id("a", AlarmKind::Threshold),
            cond(Some(Severity::Warning)),
            now,
        );
        let e = t.ack("*", Some("nope"), now).unwrap_err();
        assert_eq!(e.to_string(), "no zone \"nope\"");
        assert!(
            t.ack("*", Some("room-2"), now).unwrap().is_empty(),
            "nothing to do"
        );
        assert_eq!(t.ack("*", Some("room-1"), now).unwrap().len(), 1);
    }

    #[test]
    fn chattering_is_reported_not_suppressed() {
        let mut now = Now::system();
        let mut t = AlarmTable::new("s", "gw", 0);
        let a = id("t", AlarmKind::Threshold);
        let mut last = None;
        for _ in 0..4 {
            last = t.update(&a, cond(Some(Severity::Warning)), now);
            assert!(last.is_some());
            now = now.after(Duration::from_secs(2));
            assert!(
                t.update(&a, cond(None), now).is_some(),
                "no event is dropped"
            );
            now = now.after(Duration::from_secs(2));
        }
        let e = last.unwrap();
        assert!(e.detail.chattering, "{:?}", e.detail);
        assert_eq!(e.detail.transitions_last_minute, 7);
        // A quiet minute later it is no longer chattering.
        let e = t
            .update(
                &a,
                cond(Some(Severity::Warning)),
                now.after(Duration::from_secs(120)),
            )
            .unwrap();
        assert!(!e.detail.chattering);
    }

    #[test]
    fn zone_status_excludes_shelved_and_counts_faults() {
        let now = Now::system();
        let mut t = AlarmTable::new("site", "gw", 0);
        t.update(
            &id("t", AlarmKind::Threshold),
            cond(Some(Severity::Warning)),
            now,
        );
        let link = Source::Link {
            device: "rack-01",
            fault: LinkFault::CommLoss,
        };
        t.update(
            &link.identity("room-1"),
            cond(Some(Severity::Critical)),
            now,
        );
        let z = t.zone_status("room-1", now);
        assert_eq!(z.level, Level::Critical);
        assert_eq!(z.faults, 1);
        assert_eq!(z.active, vec!["rack-01/_link/comm-loss", "rack-01/t/r"]);
        assert_eq!(t.zone_status("room-2", now).level, Level::Normal);
        t.shelve(
            "rack-01/_link/comm-loss",
            None,
            Duration::from_secs(60),
            Duration::from_secs(60),
            "x",
            now,
        )
        .unwrap();
        let z = t.zone_status("room-1", now);
        assert_eq!((z.level, z.faults), (Level::Warning, 0));
        assert_eq!(z.shelved, vec!["rack-01/_link/comm-loss"]);
    }

    /// Faults (link, sensor, blind zone, missing drain agent) make the panel loud but are no
    /// fire evidence: only rule and vote alarms rank in `evidence`, which drains are started on.
    #[test]
    fn zone_evidence_ranks_fire_alarms_only() {
        let now = Now::system();
        let mut t = AlarmTable::new("site", "gw", 0);
        let faults = [
            Source::Link {
                device: "rack-01",
                fault: LinkFault::CommLoss,
            },
            Source::BlindZone,
            Source::DrainAgent { agent: "lb-1" },
        ];
        for f in faults {
            t.update(&f.identity("room-1"), cond(Some(Severity::Critical)), now);
        }
        let z = t.zone_status("room-1", now);
        assert_eq!((z.level, z.evidence), (Level::Critical, Level::Normal));
        assert_eq!(z.faults, 3);
        let hot = id("t", AlarmKind::Threshold);
        t.update(&hot, cond(Some(Severity::Warning)), now);
        let z = t.zone_status("room-1", now);
        assert_eq!((z.level, z.evidence), (Level::Critical, Level::Warning));
        let vote = Source::Vote { rule: "fire" }.identity("room-1");
        t.update(&vote, cond(Some(Severity::Emergency)), now);
        let z = t.zone_status("room-1", now);
        assert_eq!((z.level, z.evidence), (Level::Emergency, Level::Emergency));
        // A shelved rule alarm counts in neither.
        t.update(&vote, cond(None), now);
        t.shelve(&hot.key(), None, MINUTE, MINUTE, "x", now)
            .unwrap();
        let z = t.zone_status("room-1", now);
        assert_eq!((z.level, z.evidence), (Level::Critical, Level::Normal));
    }

    #[test]
    fn restore_keeps_acks_and_shelves() {
        let now = Now::system();
        let mut t = AlarmTable::new("s", "gw", 0);
        let a = id("t", AlarmKind::Threshold);
        t.update(&a, cond(Some(Severity::Warning)), now);
        t.ack(&a.key(), None, now).unwrap();
        let b = id("u", AlarmKind::Threshold);
        t.update(&b, cond(Some(Severity::Warning)), now);
        t.shelve(
            &b.key(),
            None,
            Duration::from_secs(60),
            Duration::from_secs(60),
            "x",
            now,
        )
        .unwrap();
        let snap: Snapshot =
            serde_json::from_str(&serde_json::to_string(&t.snapshot()).unwrap()).unwrap();
        let mut r = AlarmTable::restore("s", "gw", snap);
        assert_eq!(r.last_seq(), 4);
        assert!(
            r.update(&a, cond(Some(Severity::Warning)), now).is_none(),
            "not raised again"
        );
        assert!(r.ack(&a.key(), None, now).unwrap().is_empty(), "ack kept");
        assert_eq!(r.zone_status("room-1", now).shelved, vec![b.key()]);
    }

    #[test]
    fn a_gateway_alarm_is_one_per_zone_and_commands_can_name_the_zone() {
        let now = Now::system();
        let mut t = AlarmTable::new("s", "gw", 0);
        let vote = |zone: &str| {
            Source::Vote {
                rule: "confirmed-fire",
            }
            .identity(zone)
        };
        let key = vote("room-1").key();
        assert!(t
            .update(&vote("room-1"), cond(Some(Severity::Critical)), now)
            .is_some());
        assert!(t
            .update(&vote("room-2"), cond(Some(Severity::Critical)), now)
            .is_some());
        assert_eq!(t.zones_with_condition(&key), ["room-1", "room-2"]);
        // Clearing one zone leaves the other.
        let e = t.update(&vote("room-2"), cond(None), now).unwrap();
        assert_eq!((e.zone.as_str(), e.state), ("room-2", AlarmState::Cleared));
        assert!(t.condition("room-1", &key));
        assert!(!t.condition("room-2", &key));
        // A shelf must name one alarm.
        let hour = Duration::from_secs(3600);
        let err = t
            .shelve(&key, None, hour, hour, "x", now)
            .expect_err("ambiguous");
        assert_eq!(
            err.to_string(),
            "alarm \"_zone/_vote/confirmed-fire\" exists in zones room-1, room-2: add \"zone\" to say which"
        );
        let e = t
            .shelve(&key, Some("room-1"), hour, hour, "x", now)
            .unwrap();
        assert_eq!(e.zone, "room-1");
        assert_eq!(
            t.shelve(&key, Some("room-9"), hour, hour, "x", now)
                .expect_err("not there")
                .to_string(),
            "no alarm \"_zone/_vote/confirmed-fire\" in zone \"room-9\""
        );
        // An ack without a zone acknowledges it wherever it waits.
        let acked = t.ack(&key, None, now).unwrap();
        let zones: Vec<&str> = acked.iter().map(|e| e.zone.as_str()).collect();
        assert_eq!(zones, ["room-1", "room-2"]);
        assert_eq!(t.zone_status("room-1", now).shelved, vec![key.clone()]);
        assert!(t.zone_status("room-2", now).active.is_empty());
    }
}
