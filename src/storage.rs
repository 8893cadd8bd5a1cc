//! State that must survive a restart, kept as one JSON file per owner under `storage.dir`:
//! the alarm table (`state.json`: active alarms, acknowledgements, shelves, `seq`), the drain
//! coordinator (`drain.json`: resume the same `drain_id`) and each drain agent
//! (`agent-{id}.json`: never run a hook twice for one drain).
//!
//! Each owner writes before it acts on the new state. A write is a temporary file, fsynced,
//! renamed over the old one, then the directory fsynced, so a crash or power loss at any point
//! leaves the old state or the new one, never a torn file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: not a valid emberwatch state file ({reason}); refusing to guess: move it away to start afresh")]
    Corrupt { path: PathBuf, reason: String },
}

/// One JSON state file, e.g. `storage.dir/drain.json`.
#[derive(Debug)]
pub struct JsonStore {
    path: PathBuf,
    dir: PathBuf,
}

impl JsonStore {
    /// Opens `dir/name`, creating `dir` if needed; a missing file gives `T::default()`.
    pub fn open<T: DeserializeOwned + Default>(
        dir: &Path,
        name: &str,
    ) -> Result<(JsonStore, T), StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            op: "create directory",
            source: e,
        })?;
        let path = dir.join(name);
        let value = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => T::default(),
            Err(e) => {
                return Err(StoreError::Io {
                    path,
                    op: "read",
                    source: e,
                })
            }
        };
        Ok((
            JsonStore {
                path,
                dir: dir.to_path_buf(),
            },
            value,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Durably replaces the state.
    pub fn save<T: Serialize>(&mut self, value: &T) -> Result<(), StoreError> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let io = |op, source| StoreError::Io {
            path: tmp.clone(),
            op,
            source,
        };
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| io("encode", e.into()))?;
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
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn state_round_trips_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, v): (_, BTreeMap<String, u32>) = JsonStore::open(dir.path(), "x.json").unwrap();
        assert!(v.is_empty());
        s.save(&BTreeMap::from([("a".to_string(), 1u32)])).unwrap();
        let (_, v): (_, BTreeMap<String, u32>) = JsonStore::open(dir.path(), "x.json").unwrap();
        assert_eq!(v["a"], 1);
        fs::write(dir.path().join("x.json"), "{\"a\": ").unwrap();
        let e = JsonStore::open::<BTreeMap<String, u32>>(dir.path(), "x.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.json: not a valid emberwatch state file"),
            "{e}"
        );
    }
}
