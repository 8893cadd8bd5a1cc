//! Alarm state that survives restarts: the last `seq`, and every alarm that is not normal.
//!
//! Subscribers detect lost events by gaps in `seq`, so it must never go back, and an operator
//! must not be paged twice for one fire because the gateway restarted. The state is written to a
//! temporary file, fsynced and renamed over the old one (then the directory fsynced) before the
//! events it numbers are handed to MQTT, so a crash or power loss at any point leaves either the
//! old state or the new one, never a torn file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::alarms::table::{Alarm, MAX_SEQ};
use crate::alarms::AlarmEvent;
use crate::storage::JsonStore;
pub use crate::storage::StoreError;

/// What is persisted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last event number used by this gateway.
    pub last_seq: u64,
    /// Alarms that are active (or otherwise not normal), by key.
    pub alarms: Vec<Alarm>,
}

impl Snapshot {
    /// Brings the snapshot up to the events the outbox holds past it, oldest first: the
    /// outbox is the truth. An event is fsynced there before `state.json` is saved, and once
    /// there it is delivered (subscribers may have seen it), so when the save failed (a full
    /// disk, a crash between the two writes) the state is what is behind. `latching` says
    /// whether a rule latches (the event does not carry it). Returns how many events were
    /// applied; events at or below `last_seq` are already in the snapshot and skipped.
    pub fn roll_forward(
        &mut self,
        events: &[AlarmEvent],
        latching: impl Fn(&str) -> bool,
    ) -> usize {
        let mut applied = 0;
        for ev in events {
            if ev.seq <= self.last_seq {
                continue;
            }
            let at = self
                .alarms
                .iter()
                .position(|a| a.identity.zone == ev.zone && a.identity.key() == ev.alarm);
            let before = at.map(|i| self.alarms.remove(i));
            let latch = before
                .as_ref()
                .map_or_else(|| latching(&ev.rule), |b| b.identity.latching);
            if let Some(a) = Alarm::from_event(ev, latch, before.as_ref()) {
                self.alarms.push(a);
            }
            self.last_seq = ev.seq;
            applied += 1;
        }
        applied
    }
}

/// `storage.dir/state.json`.
#[derive(Debug)]
pub struct StateStore(JsonStore);

impl StateStore {
    /// Opens the state under `dir`, creating `dir` if needed; no file means a fresh gateway.
    pub fn open(dir: &Path) -> Result<(StateStore, Snapshot), StoreError> {
        let (store, snapshot): (_, Snapshot) = JsonStore::open(dir, "state.json")?;
        if snapshot.last_seq > MAX_SEQ {
            return Err(StoreError::Corrupt {
                path: store.path().to_path_buf(),
                reason: format!(
                    "last_seq {} is beyond {MAX_SEQ}: numbering on would wrap to 0 and \
                     subscribers would drop new alarms as duplicates",
                    snapshot.last_seq
                ),
            });
        }
        Ok((StateStore(store), snapshot))
    }

    /// Durably replaces the state.
    pub fn save(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.0.save(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarms::AlarmState;
    use std::fs;

    /// The report's case: state.json saved at seq 59 (active) while the outbox went on to
    /// seq 60 (cleared) before the save failed. Rolled forward, the state says what
    /// subscribers saw: cleared (unacknowledged: nobody acked it), numbered through 60.
    #[test]
    fn the_state_rolls_forward_over_what_the_outbox_raised() {
        let active: AlarmEvent = serde_json::from_str(
            r#"{"event_id":"gw-59","seq":59,"site":"s","gateway":"gw","alarm":"rack-01/t/hot",
            "rule":"hot","zone":"room-1","device":"rack-01","point":"t","kind":"threshold",
            "severity":"critical","state":"active","acked":false,"value":57.0,"threshold":55.0,
            "unit":"degC","message":"t 57.0 degC above critical 55.0",
            "time":"2026-11-24T13:40:02.123Z","since":"2026-11-24T13:40:02.123Z",
            "isa_state":"active_unacknowledged","shelved_until":null,"out_of_service":false,
            "chattering":false,"transitions_last_minute":1}"#,
        )
        .unwrap();
        let mut snap = Snapshot::default();
        assert_eq!(
            snap.roll_forward(std::slice::from_ref(&active), |_| false),
            1
        );
        assert_eq!(snap.last_seq, 59);
        assert!(snap.alarms[0].active);
        let mut cleared = active.clone();
        cleared.seq = 60;
        cleared.state = AlarmState::Cleared;
        cleared.since = "2026-11-24T13:41:00.000Z".into();
        // Already applied events are skipped; the new one is applied once.
        assert_eq!(
            snap.roll_forward(&[active.clone(), cleared.clone()], |_| false),
            1
        );
        assert_eq!(snap.last_seq, 60);
        assert_eq!(snap.alarms.len(), 1);
        let a = &snap.alarms[0];
        assert!(!a.active && !a.acked && !a.condition);
        assert_eq!(
            a.since,
            humantime::parse_rfc3339("2026-11-24T13:41:00Z").unwrap()
        );
        // Acknowledged and cleared: normal, nothing left to remember.
        let mut acked = cleared;
        acked.seq = 61;
        acked.acked = true;
        assert_eq!(snap.roll_forward(&[acked], |_| false), 1);
        assert!(snap.alarms.is_empty());
        assert_eq!(snap.last_seq, 61);
    }

    #[test]
    fn state_persists_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, snap) = StateStore::open(dir.path()).unwrap();
        assert_eq!(snap, Snapshot::default());
        s.save(&Snapshot {
            last_seq: 42,
            alarms: vec![],
        })
        .unwrap();
        let (_, snap) = StateStore::open(dir.path()).unwrap();
        assert_eq!(snap.last_seq, 42);
        // Numbering on from near u64::MAX would wrap to 0, and subscribers dropping duplicates
        // by event_id would drop new alarms: such a state is refused, not used.
        for (seq, ok) in [(MAX_SEQ, true), (MAX_SEQ + 1, false), (u64::MAX - 1, false)] {
            fs::write(
                dir.path().join("state.json"),
                format!("{{\"last_seq\": {seq}, \"alarms\": []}}"),
            )
            .unwrap();
            match StateStore::open(dir.path()) {
                Ok((_, snap)) => assert!(ok && snap.last_seq == seq, "{seq} accepted"),
                Err(e) => assert!(
                    !ok && e.to_string().contains(&format!(
                        "state.json: not a valid emberwatch state file (last_seq {seq} is \
                         beyond {MAX_SEQ}"
                    )),
                    "{seq}: {e}"
                ),
            }
        }
        fs::write(dir.path().join("state.json"), "{\"last_seq\": 4").unwrap();
        let e = StateStore::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("state.json: not a valid emberwatch state file"),
            "{e}"
        );
    }
}
