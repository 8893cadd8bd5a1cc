//! The set of alarms of one gateway and the events their changes produce.
//!
//! One alarm per (device, point, rule). Rules decide the severity a condition deserves; this table
//! turns changes of that severity into numbered events and keeps what zone status needs. It holds
//! no clock and does no I/O: the caller passes `now` and persists `seq`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::alarms::{AlarmEvent, AlarmKind, AlarmState, Level, Snapshot, ZoneStatus};
use crate::clock::{rfc3339, Now};
use crate::rules::Severity;

/// Who an alarm is about: fixed for the alarm's life.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub zone: String,
    pub device: String,
    /// A point id, or `_link` for device-level faults, `_vote` for votes.
    pub point: String,
    pub rule: String,
    pub kind: AlarmKind,
    pub unit: Option<String>,
}

impl Identity {
    /// `device/point/rule`: the alarm's key in events, zone status and commands.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.device, self.point, self.rule)
    }
}

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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alarm {
    pub identity: Identity,
    pub severity: Severity,
    pub active: bool,
    pub acked: bool,
    pub since: SystemTime,
}

/// All alarms of one gateway.
#[derive(Debug)]
pub struct AlarmTable {
    site: String,
    gateway: String,
    alarms: BTreeMap<String, Alarm>,
    last_seq: u64,
}

impl AlarmTable {
    /// `last_seq` is the last number used (persisted); the next event gets `last_seq + 1`.
    pub fn new(site: &str, gateway: &str, last_seq: u64) -> AlarmTable {
        AlarmTable {
            site: site.to_string(),
            gateway: gateway.to_string(),
            alarms: BTreeMap::new(),
            last_seq,
        }
    }

    /// A table as it was persisted: active alarms stay active without a new event.
    pub fn restore(site: &str, gateway: &str, snapshot: Snapshot) -> AlarmTable {
        let mut t = AlarmTable::new(site, gateway, snapshot.last_seq);
        for a in snapshot.alarms {
            t.alarms.insert(a.identity.key(), a);
        }
        t
    }

    /// What must survive a restart: seq, and every alarm that is not plain normal.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            last_seq: self.last_seq,
            alarms: self.alarms.values().filter(|a| a.active).cloned().collect(),
        }
    }

    /// Every alarm held, active or not.
    pub fn alarms(&self) -> impl Iterator<Item = &Alarm> {
        self.alarms.values()
    }

    /// Forgets an alarm (its rule or device left the configuration).
    pub fn remove(&mut self, key: &str) -> Option<Alarm> {
        self.alarms.remove(key)
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Applies a condition; returns the event if the alarm changed state or severity.
    pub fn update(&mut self, id: &Identity, cond: Condition, now: Now) -> Option<AlarmEvent> {
        let key = id.key();
        let alarm = self.alarms.get_mut(&key);
        let changed = match (&alarm, cond.severity) {
            (None, None) => false,
            (None, Some(_)) => true,
            (Some(a), Some(s)) => !a.active || a.severity != s,
            (Some(a), None) => a.active,
        };
        if !changed {
            return None;
        }
        let alarm = match alarm {
            Some(a) => a,
            None => self.alarms.entry(key.clone()).or_insert(Alarm {
                identity: id.clone(),
                severity: Severity::Warning,
                active: false,
                acked: false,
                since: now.wall,
            }),
        };
        match cond.severity {
            Some(s) => {
                if !alarm.active {
                    alarm.since = now.wall;
                }
                // A new or worse condition needs the operator's attention again.
                if !alarm.active || s > alarm.severity {
                    alarm.acked = false;
                }
                alarm.active = true;
                alarm.severity = s;
            }
            None => {
                alarm.active = false;
                alarm.since = now.wall;
            }
        }
        let alarm = alarm.clone();
        if !alarm.active {
            // Cleared alarms carry no state worth keeping; dropping them bounds the table.
            self.alarms.remove(&key);
        }
        self.last_seq += 1;
        let seq = self.last_seq;
        Some(AlarmEvent {
            event_id: format!("{}-{}", self.gateway, seq),
            seq,
            site: self.site.clone(),
            gateway: self.gateway.clone(),
            alarm: key,
            rule: id.rule.clone(),
            zone: id.zone.clone(),
            device: id.device.clone(),
            point: id.point.clone(),
            kind: id.kind,
            severity: alarm.severity,
            state: if alarm.active {
                AlarmState::Active
            } else {
                AlarmState::Cleared
            },
            acked: alarm.acked,
            value: cond.value,
            threshold: cond.threshold,
            unit: id.unit.clone(),
            message: cond.message,
            time: rfc3339(now.wall),
            since: rfc3339(alarm.since),
        })
    }

    /// Whether the alarm with this key is active, and at which severity.
    pub fn active_severity(&self, key: &str) -> Option<Severity> {
        self.alarms
            .get(key)
            .filter(|a| a.active)
            .map(|a| a.severity)
    }

    /// The active alarms of one zone, with their severity.
    pub fn active_in_zone<'a>(
        &'a self,
        zone: &'a str,
    ) -> impl Iterator<Item = (&'a Identity, Severity)> + 'a {
        self.alarms
            .values()
            .filter(move |a| a.active && a.identity.zone == zone)
            .map(|a| (&a.identity, a.severity))
    }

    /// The retained status of one zone.
    pub fn zone_status(&self, zone: &str, now: Now) -> ZoneStatus {
        let mut level = Level::Normal;
        let mut active = Vec::new();
        let mut faults = 0;
        for (key, a) in &self.alarms {
            if !a.active || a.identity.zone != zone {
                continue;
            }
            level = level.max(Level::from(a.severity));
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(point: &str, kind: AlarmKind) -> Identity {
        Identity {
            zone: "room-1".into(),
            device: "rack-01".into(),
            point: point.into(),
            rule: "r".into(),
            kind,
            unit: Some("degC".into()),
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

    #[test]
    fn zone_status_takes_the_highest_active_severity_and_counts_faults() {
        let now = Now::system();
        let mut t = AlarmTable::new("site", "gw", 0);
        t.update(
            &id("t", AlarmKind::Threshold),
            cond(Some(Severity::Warning)),
            now,
        );
        t.update(
            &id("_link", AlarmKind::Fault),
            cond(Some(Severity::Critical)),
            now,
        );
        let z = t.zone_status("room-1", now);
        assert_eq!(z.level, Level::Critical);
        assert_eq!(z.faults, 1);
        assert_eq!(z.active, vec!["rack-01/_link/r", "rack-01/t/r"]);
        assert_eq!(t.zone_status("room-2", now).level, Level::Normal);
        t.update(&id("_link", AlarmKind::Fault), cond(None), now);
        let z = t.zone_status("room-1", now);
        assert_eq!((z.level, z.faults), (Level::Warning, 0));
    }
}
