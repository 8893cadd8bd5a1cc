//! The alarm table of one gateway of a redundant pair (SPEC "Redundant gateways").
//!
//! Both gateways evaluate every reading, so the standby's table is warm, but only the active
//! one publishes. Two things cross between them, both pure here:
//! - what the active one has published, as [`SharedAlarm`]s (its retained
//!   `P/gateways/{gw}/pair` message, and its events as they come): the standby takes the
//!   operators' part of it (acknowledgements, shelves, out of service) into its own table
//!   silently ([`AlarmTable::adopt`]), so they are honoured after a takeover;
//! - at a takeover, its own table is compared with what the pair published
//!   ([`AlarmTable::reconcile`]): an alarm the pair already showed as it is now is not
//!   raised again; one that differs gets one event, under this gateway's own `seq`.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Alarm, AlarmTable, Identity, Slot};
use crate::alarms::{AlarmEvent, AlarmKind, AlarmState};
use crate::clock::{rfc3339, Now};
use crate::rules::Severity;

/// `P/gateways/{gw}/pair`, retained: every alarm of the active gateway that is not plain
/// normal, with the operators' settings. Bounded by the alarm table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shared {
    pub gateway: String,
    /// When it was published (RFC 3339): of two, the newer is what the pair last showed.
    pub time: String,
    /// Since when this gateway has published every change of its alarms as it came (RFC
    /// 3339): the end of its takeover's fresh readings. A state whose `since` is later was
    /// published as an event then; an earlier one may have come and gone unpublished while
    /// it was standby. A gateway coming back judges its unsent backlog by it
    /// (`pair::backlog`). Absent from older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publishing_since: Option<String>,
    /// This gateway's latest event `seq` when it was published: every event up to it went to
    /// the broker before it, so a broker holding this picture has them (a gateway coming back
    /// does not resend them). Absent from older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    pub alarms: Vec<SharedAlarm>,
}

/// One alarm as the pair last published it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedAlarm {
    pub zone: String,
    /// `device/point/rule`, as in events.
    pub alarm: String,
    pub device: String,
    pub point: String,
    pub rule: String,
    pub kind: AlarmKind,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub latching: bool,
    pub severity: Severity,
    pub state: AlarmState,
    pub acked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_by: Option<String>,
    pub since: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelved_until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelve_reason: Option<String>,
    /// Why it is out of service, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_service: Option<String>,
}

/// What an operator sees of an alarm: two gateways agree on an alarm when this is equal.
pub(crate) type Visible = (bool, Severity, bool, bool, bool);

impl SharedAlarm {
    fn from_alarm(a: &Alarm) -> SharedAlarm {
        SharedAlarm {
            zone: a.identity.zone.clone(),
            alarm: a.identity.key(),
            device: a.identity.device.clone(),
            point: a.identity.point.clone(),
            rule: a.identity.rule.clone(),
            kind: a.identity.kind,
            unit: a.identity.unit.clone(),
            latching: a.identity.latching,
            severity: a.severity,
            state: if a.active {
                AlarmState::Active
            } else {
                AlarmState::Cleared
            },
            acked: a.acked,
            acked_by: a.acked_by.clone(),
            since: rfc3339(a.since),
            shelved_until: a.shelved_until.map(rfc3339),
            shelved_by: a.shelved_by.clone(),
            shelve_reason: a.shelve_reason.clone(),
            out_of_service: a.out_of_service.clone(),
        }
    }

    /// The alarm as the peer's event `ev` left it; `before` gives what the event does not
    /// carry (the shelf's reason, why it is out of service).
    pub fn from_event(ev: &AlarmEvent, before: Option<&SharedAlarm>) -> SharedAlarm {
        let shelved = ev.detail.shelved_until.is_some();
        SharedAlarm {
            zone: ev.zone.clone(),
            alarm: ev.alarm.clone(),
            device: ev.device.clone(),
            point: ev.point.clone(),
            rule: ev.rule.clone(),
            kind: ev.kind,
            unit: ev.unit.clone(),
            latching: before.is_some_and(|b| b.latching),
            severity: ev.severity,
            state: ev.state,
            acked: ev.acked,
            acked_by: ev.acked_by.clone(),
            since: ev.since.clone(),
            shelved_until: ev.detail.shelved_until.clone(),
            shelved_by: ev.shelved_by.clone().filter(|_| shelved),
            shelve_reason: before
                .and_then(|b| b.shelve_reason.clone())
                .filter(|_| shelved),
            out_of_service: ev.detail.out_of_service.then(|| {
                before
                    .and_then(|b| b.out_of_service.clone())
                    .unwrap_or_else(|| format!("set at {}", ev.gateway))
            }),
        }
    }

    pub fn slot(&self) -> (String, String) {
        (self.zone.clone(), self.alarm.clone())
    }

    /// What an operator sees of it (state, severity, acknowledged, shelved, out of service):
    /// two reports of an alarm that agree on this show the same thing.
    pub(crate) fn visible(&self) -> Visible {
        (
            self.state == AlarmState::Active,
            self.severity,
            self.acked,
            self.shelved_until.is_some(),
            self.out_of_service.is_some(),
        )
    }

    /// Normal, acknowledged, not shelved, in service: what a table forgets.
    pub fn is_normal(&self) -> bool {
        self.state == AlarmState::Cleared
            && self.acked
            && self.shelved_until.is_none()
            && self.out_of_service.is_none()
    }

    fn shelved_until(&self) -> Option<SystemTime> {
        self.shelved_until
            .as_deref()
            .and_then(|s| humantime::parse_rfc3339(s).ok())
    }
}

fn visible(a: &Alarm) -> Visible {
    (
        a.active,
        a.severity,
        a.acked,
        a.shelved_until.is_some(),
        a.out_of_service.is_some(),
    )
}

/// What "normal" looks like, for an alarm one side does not hold.
fn normal(severity: Severity) -> Visible {
    (false, severity, true, false, false)
}

impl AlarmTable {
    /// A standby publishes nothing, so the events its warm table produced were never seen:
    /// their numbers are given back, and `seq` stays what this gateway has published.
    pub fn rewind_seq(&mut self, to: u64) {
        self.last_seq = self.last_seq.min(to);
    }

    /// What this gateway, active, has published: the `P/gateways/{gw}/pair` message.
    pub fn shared(&self, now: Now) -> Shared {
        Shared {
            gateway: self.gateway.clone(),
            time: rfc3339(now.wall),
            publishing_since: None,
            last_seq: Some(self.last_seq),
            alarms: self.alarms.values().map(SharedAlarm::from_alarm).collect(),
        }
    }

    /// Takes the operators' part of what the pair published into this (standby) table,
    /// without an event: acknowledgements of the same or a worse state, shelves and out of
    /// service. Conditions stay this gateway's own: they come from its own readings.
    pub fn adopt(&mut self, published: &[SharedAlarm]) {
        let by_slot: BTreeMap<Slot, &SharedAlarm> =
            published.iter().map(|p| (p.slot(), p)).collect();
        let slots: Vec<Slot> = self.alarms.keys().cloned().collect();
        for slot in slots {
            let Some(a) = self.alarms.get_mut(&slot) else {
                continue;
            };
            match by_slot.get(&slot) {
                Some(p) => {
                    let same_state = a.active == (p.state == AlarmState::Active);
                    if p.acked && !a.acked && same_state && a.severity <= p.severity {
                        a.acked = true;
                        a.acked_by = p.acked_by.clone();
                        if a.active && !a.condition {
                            // A latched alarm whose condition went: the ack clears it.
                            a.active = false;
                        }
                    }
                    a.shelved_until = p.shelved_until();
                    a.shelve_reason = a.shelved_until.and(p.shelve_reason.clone());
                    a.shelved_by = a.shelved_until.and(p.shelved_by.clone());
                    a.out_of_service = p.out_of_service.clone();
                }
                None => {
                    // Normal at the pair: no shelf, in service, and nothing to acknowledge
                    // unless this gateway sees the condition itself.
                    a.shelved_until = None;
                    a.shelve_reason = None;
                    a.shelved_by = None;
                    a.out_of_service = None;
                    if !a.active {
                        a.acked = true;
                    }
                }
            }
            if a.forgettable() {
                self.alarms.remove(&slot);
            }
        }
        // Shelves and out-of-service settings on alarms this gateway does not hold (normal
        // here): kept, inactive, so they apply if the condition comes.
        for p in published {
            let slot = p.slot();
            let settings = p.shelved_until().is_some() || p.out_of_service.is_some();
            if self.alarms.contains_key(&slot) || !settings {
                continue;
            }
            let mut a = inactive(p);
            a.shelved_until = p.shelved_until();
            a.shelve_reason = a.shelved_until.and(p.shelve_reason.clone());
            a.shelved_by = a.shelved_until.and(p.shelved_by.clone());
            a.out_of_service = p.out_of_service.clone();
            self.alarms.insert(slot, a);
        }
    }

    /// At a takeover: one event, under this gateway's `seq`, for each alarm whose state here
    /// differs from what the pair last published; nothing for those that agree (they are not
    /// raised again). An alarm the pair showed and this gateway does not see is cleared.
    pub fn reconcile(&mut self, published: &[SharedAlarm], now: Now) -> Vec<AlarmEvent> {
        self.adopt(published);
        let by_slot: BTreeMap<Slot, &SharedAlarm> =
            published.iter().map(|p| (p.slot(), p)).collect();
        let mut differ: Vec<Slot> = Vec::new();
        for (slot, a) in &self.alarms {
            let theirs = by_slot
                .get(slot)
                .map_or(normal(a.severity), |p| p.visible());
            if visible(a) != theirs {
                differ.push(slot.clone());
            }
        }
        for (slot, p) in &by_slot {
            if self.alarms.contains_key(slot) || p.is_normal() {
                continue;
            }
            let mut a = inactive(p);
            a.acked = p.acked;
            if p.state == AlarmState::Cleared {
                // Cleared there and not seen here: the same, left to be acknowledged.
                self.alarms.insert(slot.clone(), a);
                continue;
            }
            // Shown active by the pair, not seen here: cleared, and still to be
            // acknowledged if the pair showed it unacknowledged.
            a.since = now.wall;
            a.message = format!(
                "{} cleared: not seen by {} when it took over",
                p.alarm, self.gateway
            );
            self.alarms.insert(slot.clone(), a);
            differ.push(slot.clone());
        }
        let mut events = Vec::new();
        for slot in differ {
            events.extend(self.emit(&slot, now));
        }
        events
    }
}

/// A table entry for an alarm the pair holds and this gateway does not: condition absent.
fn inactive(p: &SharedAlarm) -> Alarm {
    Alarm {
        identity: Identity {
            zone: p.zone.clone(),
            device: p.device.clone(),
            point: p.point.clone(),
            rule: p.rule.clone(),
            kind: p.kind,
            unit: p.unit.clone(),
            latching: p.latching,
        },
        severity: p.severity,
        active: false,
        condition: false,
        acked: true,
        since: humantime::parse_rfc3339(&p.since).unwrap_or(SystemTime::UNIX_EPOCH),
        shelved_until: None,
        shelve_reason: None,
        acked_by: None,
        shelved_by: None,
        out_of_service: None,
        value: None,
        threshold: None,
        message: String::new(),
        transitions: VecDeque::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::alarms::{Condition, IsaState};

    fn id(point: &str) -> Identity {
        Identity {
            zone: "room-1".into(),
            device: "rack-01".into(),
            point: point.into(),
            rule: "r".into(),
            kind: AlarmKind::Threshold,
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

    /// gw-b1 active, gw-b2 standby; both see the same conditions.
    fn pair() -> (AlarmTable, AlarmTable, Now) {
        let now = Now::system();
        (
            AlarmTable::new("pangyo-a", "gw-b1", 10),
            AlarmTable::new("pangyo-a", "gw-b2", 3),
            now,
        )
    }

    #[test]
    fn an_alarm_both_show_alike_is_not_raised_again() {
        let (mut b1, mut b2, now) = pair();
        b1.update(&id("t"), cond(Some(Severity::Critical)), now)
            .unwrap();
        b2.update(&id("t"), cond(Some(Severity::Critical)), now)
            .unwrap();
        b2.rewind_seq(3);
        let shared = b1.shared(now).alarms;
        assert!(b2.reconcile(&shared, now).is_empty());
        assert_eq!(b2.last_seq(), 3);
    }

    #[test]
    fn an_ack_at_the_active_is_honoured_by_the_standby() {
        let (mut b1, mut b2, now) = pair();
        b1.update(&id("t"), cond(Some(Severity::Critical)), now);
        b2.update(&id("t"), cond(Some(Severity::Critical)), now);
        b2.rewind_seq(3);
        b1.ack("rack-01/t/r", None, Some("alice"), now).unwrap();
        b1.shelve(
            "rack-01/u/r",
            None,
            Duration::from_secs(60),
            Duration::from_secs(3600),
            "x",
            None,
            now,
        )
        .unwrap_err();
        b2.adopt(&b1.shared(now).alarms);
        let a = b2.alarms().next().unwrap();
        assert!(a.acked);
        assert_eq!(a.acked_by.as_deref(), Some("alice"));
        // At the takeover: acked on both sides, nothing to say.
        assert!(b2.reconcile(&b1.shared(now).alarms, now).is_empty());
        // A worse condition afterwards needs a new ack, under gw-b2's own seq.
        let e = b2
            .update(&id("t"), cond(Some(Severity::Emergency)), now)
            .unwrap();
        assert_eq!((e.event_id.as_str(), e.acked), ("gw-b2-4", false));
    }

    #[test]
    fn an_ack_of_a_lesser_state_is_not_taken() {
        let (mut b1, mut b2, now) = pair();
        b1.update(&id("t"), cond(Some(Severity::Warning)), now);
        b1.ack("rack-01/t/r", None, None, now).unwrap();
        b2.update(&id("t"), cond(Some(Severity::Critical)), now);
        b2.adopt(&b1.shared(now).alarms);
        assert!(!b2.alarms().next().unwrap().acked);
        // At takeover the difference (critical, unacked) is published once.
        let evs = b2.reconcile(&b1.shared(now).alarms, now);
        assert_eq!(evs.len(), 1);
        assert_eq!(
            (evs[0].severity, evs[0].acked, evs[0].gateway.as_str()),
            (Severity::Critical, false, "gw-b2")
        );
    }

    #[test]
    fn shelves_and_service_travel_even_to_alarms_not_held() {
        let (mut b1, mut b2, now) = pair();
        b1.update(&id("t"), cond(Some(Severity::Warning)), now);
        b1.shelve(
            "rack-01/t/r",
            None,
            Duration::from_secs(600),
            Duration::from_secs(3600),
            "sensor swap",
            Some("bob"),
            now,
        )
        .unwrap();
        b2.adopt(&b1.shared(now).alarms);
        let a = b2.alarms().next().unwrap();
        assert_eq!(a.shelve_reason.as_deref(), Some("sensor swap"));
        assert_eq!(a.shelved_by.as_deref(), Some("bob"));
        assert!(!a.active, "the condition stays gw-b2's own");
        // The condition arrives at gw-b2: the shelf applies.
        let e = b2
            .update(&id("t"), cond(Some(Severity::Warning)), now)
            .unwrap();
        assert_eq!(e.detail.isa_state, IsaState::Shelved);
    }

    #[test]
    fn differences_get_one_event_each_under_the_new_seq() {
        let (mut b1, mut b2, now) = pair();
        // gw-b1 raised "gone" (gw-b2 does not see it) and not "new" (gw-b2 does).
        b1.update(&id("gone"), cond(Some(Severity::Critical)), now);
        b2.update(&id("new"), cond(Some(Severity::Warning)), now);
        b2.rewind_seq(3);
        let evs = b2.reconcile(&b1.shared(now).alarms, now);
        let got: Vec<(&str, AlarmState, u64)> = evs
            .iter()
            .map(|e| (e.alarm.as_str(), e.state, e.seq))
            .collect();
        assert_eq!(
            got,
            [
                ("rack-01/new/r", AlarmState::Active, 4),
                ("rack-01/gone/r", AlarmState::Cleared, 5)
            ]
        );
        assert_eq!(
            evs[1].message,
            "rack-01/gone/r cleared: not seen by gw-b2 when it took over"
        );
        assert!(!evs[1].acked, "it was never acknowledged");
    }

    #[test]
    fn the_shared_message_survives_json() {
        let (mut b1, _, now) = pair();
        b1.update(&id("t"), cond(Some(Severity::Critical)), now);
        let s = b1.shared(now);
        let back: Shared = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let ev = b1
            .update(&id("t"), cond(Some(Severity::Emergency)), now)
            .unwrap();
        let from_ev = SharedAlarm::from_event(&ev, Some(&s.alarms[0]));
        assert_eq!(from_ev.severity, Severity::Emergency);
        assert_eq!(from_ev.slot(), s.alarms[0].slot());
    }
}
