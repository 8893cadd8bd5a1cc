//! What the pair has published, as a standby gateway follows it: the baseline it reconciles
//! its own alarm table against when it takes over (`AlarmTable::reconcile`).
//!
//! Two sources, both from the broker: the retained `P/gateways/{gw}/pair` of either gateway
//! (the whole picture, newest by its `time`, so a gateway coming back reads what the pair last
//! showed whoever showed it) and the peer's alarm events as they arrive (each newer than any
//! picture, and the only news when the peer dies between an event and its next picture). Pure:
//! payloads in, the view out.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::alarms::{AlarmEvent, Shared, SharedAlarm};

/// The newest published state of the pair's alarms.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The picture's `time`; `None` for this gateway's own `state.json` (older than any).
    time: Option<SystemTime>,
    /// Which gateway's picture it is (`None` for `state.json`), and since when that gateway
    /// publishes every change as it comes (its `publishing_since`, if it says).
    from: Option<(String, Option<SystemTime>)>,
    alarms: BTreeMap<(String, String), SharedAlarm>,
}

impl Published {
    /// What this gateway itself published last: its own table (from `state.json` at start,
    /// or as it steps down).
    pub fn own(shared: Shared, fresh: bool) -> Published {
        Published {
            time: if fresh { parse(&shared.time) } else { None },
            from: None,
            alarms: shared.alarms.into_iter().map(|a| (a.slot(), a)).collect(),
        }
    }

    /// A retained `P/gateways/{gw}/pair`: taken if newer than what is held. Returns whether
    /// it was taken; a payload that cannot be read is refused with the reason.
    pub fn on_shared(&mut self, payload: &[u8]) -> Result<bool, String> {
        if payload.is_empty() {
            return Ok(false);
        }
        let shared: Shared = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        let Some(time) = parse(&shared.time) else {
            return Err(format!("\"time\" {:?} is not RFC 3339", shared.time));
        };
        if self.time.is_some_and(|t| t > time) {
            return Ok(false);
        }
        self.time = Some(time);
        let since = shared.publishing_since.as_deref().and_then(parse);
        self.from = Some((shared.gateway, since));
        self.alarms = shared.alarms.into_iter().map(|a| (a.slot(), a)).collect();
        Ok(true)
    }

    /// Whose picture this is, as of when, and since when that gateway has published every
    /// change as it came: `None` until a picture has been read (only `state.json` known).
    pub fn picture(&self) -> Option<(&str, SystemTime, Option<SystemTime>)> {
        let (from, since) = self.from.as_ref()?;
        Some((from.as_str(), self.time?, *since))
    }

    /// One alarm as the pair last published it; `None`: normal (or never raised).
    pub fn get(&self, zone: &str, alarm: &str) -> Option<&SharedAlarm> {
        self.alarms.get(&(zone.to_string(), alarm.to_string()))
    }

    /// One of the peer's alarm events.
    pub fn on_event(&mut self, ev: &AlarmEvent) {
        let slot = (ev.zone.clone(), ev.alarm.clone());
        let a = SharedAlarm::from_event(ev, self.alarms.get(&slot));
        if a.is_normal() {
            self.alarms.remove(&slot);
        } else {
            self.alarms.insert(slot, a);
        }
        if let Some(t) = parse(&ev.time) {
            self.time = Some(self.time.map_or(t, |old| old.max(t)));
        }
    }

    pub fn alarms(&self) -> Vec<SharedAlarm> {
        self.alarms.values().cloned().collect()
    }
}

fn parse(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarms::{AlarmTable, Condition, Identity};
    use crate::clock::Now;
    use crate::rules::Severity;

    fn id() -> Identity {
        Identity {
            zone: "room-1".into(),
            device: "rack-01".into(),
            point: "t".into(),
            rule: "r".into(),
            kind: crate::alarms::AlarmKind::Threshold,
            unit: None,
            latching: false,
        }
    }

    fn raise(t: &mut AlarmTable, s: Option<Severity>, now: Now) -> Option<AlarmEvent> {
        let c = Condition {
            severity: s,
            value: None,
            threshold: None,
            message: "m".into(),
        };
        t.update(&id(), c, now)
    }

    #[test]
    fn the_newest_picture_wins_and_events_follow_it() {
        let now = Now::system();
        let mut own = AlarmTable::new("s", "gw-b1", 0);
        raise(&mut own, Some(Severity::Warning), now);
        let mut v = Published::own(own.shared(now), false);
        assert_eq!(v.alarms().len(), 1);
        // The peer's picture, newer than state.json: it replaces it (nothing active there).
        let peer = AlarmTable::new("s", "gw-b2", 0);
        let later = now.after(std::time::Duration::from_secs(5));
        let pic = serde_json::to_vec(&peer.shared(later)).unwrap();
        assert_eq!(v.on_shared(&pic), Ok(true));
        assert!(v.alarms().is_empty());
        // An older picture does not go back.
        let old = serde_json::to_vec(&own.shared(now)).unwrap();
        assert_eq!(v.on_shared(&old), Ok(false));
        // The peer's events fold in, and a normal alarm leaves.
        let mut peer = peer;
        let ev = raise(&mut peer, Some(Severity::Critical), later).unwrap();
        v.on_event(&ev);
        assert_eq!(v.alarms()[0].severity, Severity::Critical);
        let ev = raise(&mut peer, None, later).unwrap();
        v.on_event(&ev);
        assert_eq!(v.alarms().len(), 1, "cleared, not yet acknowledged");
        let evs = peer.ack("*", None, None, later).unwrap();
        v.on_event(&evs[0]);
        assert!(v.alarms().is_empty());
        assert!(v.on_shared(b"{").is_err());
    }
}
