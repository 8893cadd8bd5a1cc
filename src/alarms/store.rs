//! Alarm state that survives restarts: the last `seq`, and every alarm that is not normal.
//!
//! Subscribers detect lost events by gaps in `seq`, so it must never go back, and an operator
//! must not be paged twice for one fire because the gateway restarted. The state is written to a
//! temporary file, fsynced and renamed over the old one (then the directory fsynced) before the
//! events it numbers are handed to MQTT, so a crash or power loss at any point leaves either the
//! old state or the new one, never a torn file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::alarms::table::Alarm;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: not a valid emberwatch state file ({reason}); refusing to guess: move it away to start with no alarms and seq from 0")]
    Corrupt { path: PathBuf, reason: String },
}

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
pub struct StateStore {
    path: PathBuf,
    dir: PathBuf,
}

impl StateStore {
    /// Opens the state under `dir`, creating `dir` if needed; no file means a fresh gateway.
    pub fn open(dir: &Path) -> Result<(StateStore, Snapshot), StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            op: "create directory",
            source: e,
        })?;
        let path = dir.join("state.json");
        let snapshot = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
            Err(e) => {
                return Err(StoreError::Io {
                    path,
                    op: "read",
                    source: e,
                })
            }
        };
        Ok((
            StateStore {
                path,
                dir: dir.to_path_buf(),
            },
            snapshot,
        ))
    }

    /// Durably replaces the state.
    pub fn save(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let tmp = self.dir.join("state.json.tmp");
        let io = |op, source| StoreError::Io {
            path: tmp.clone(),
            op,
            source,
        };
        let bytes = serde_json::to_vec_pretty(snapshot).map_err(|e| io("encode", e.into()))?;
        let mut f = File::create(&tmp).map_err(|e| io("create", e))?;
        f.write_all(&bytes).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("fsync", e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io("rename", e))?;
        // The rename itself must reach the disk, or a power loss could bring the old file back.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::Io {
                path: self.dir.clone(),
                op: "fsync directory",
                source: e,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
