//! Alarm state that survives restarts: the last `seq`, and every alarm that is not normal.
//!
//! Subscribers detect lost events by gaps in `seq`, so it must never go back, and an operator
//! must not be paged twice for one fire because the gateway restarted. The state is written to a
//! temporary file, fsynced and renamed over the old one (then the directory fsynced) before the
//! events it numbers are handed to MQTT, so a crash or power loss at any point leaves either the
//! old state or the new one, never a torn file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::alarms::table::Alarm;
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

/// `storage.dir/state.json`.
#[derive(Debug)]
pub struct StateStore(JsonStore);

impl StateStore {
    /// Opens the state under `dir`, creating `dir` if needed; no file means a fresh gateway.
    pub fn open(dir: &Path) -> Result<(StateStore, Snapshot), StoreError> {
        let (store, snapshot) = JsonStore::open(dir, "state.json")?;
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
    use std::fs;

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
        fs::write(dir.path().join("state.json"), "{\"last_seq\": 4").unwrap();
        let e = StateStore::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("state.json: not a valid emberwatch state file"),
            "{e}"
        );
    }
}
