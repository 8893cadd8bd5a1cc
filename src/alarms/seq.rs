//! Event sequence numbers that survive restarts.
//!
//! Subscribers detect lost events by gaps in `seq`, so it must never go back, not even after a
//! crash or power loss: the number is written to a temporary file, fsynced and renamed over the
//! old one before the event carrying it is handed to MQTT.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SeqError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: holds {content:?}, not a sequence number; refusing to guess (move it away to restart numbering)")]
    Corrupt { path: PathBuf, content: String },
}

/// The last `seq` used by this gateway, on disk.
#[derive(Debug)]
pub struct SeqStore {
    path: PathBuf,
    dir: PathBuf,
}

impl SeqStore {
    /// Opens `dir/seq`, creating `dir` if needed; returns the store and the last seq used (0 if none).
    pub fn open(dir: &Path) -> Result<(SeqStore, u64), SeqError> {
        let io = |op, source| SeqError::Io {
            path: dir.to_path_buf(),
            op,
            source,
        };
        fs::create_dir_all(dir).map_err(|e| io("create directory", e))?;
        let path = dir.join("seq");
        let last = match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| SeqError::Corrupt {
                path: path.clone(),
                content: s.chars().take(40).collect(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(SeqError::Io {
                    path,
                    op: "read",
                    source: e,
                })
            }
        };
        Ok((
            SeqStore {
                path,
                dir: dir.to_path_buf(),
            },
            last,
        ))
    }

    /// Durably records `seq` as used.
    pub fn store(&mut self, seq: u64) -> Result<(), SeqError> {
        let tmp = self.dir.join("seq.tmp");
        let io = |op, source| SeqError::Io {
            path: tmp.clone(),
            op,
            source,
        };
        let mut f = File::create(&tmp).map_err(|e| io("create", e))?;
        writeln!(f, "{seq}").map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("fsync", e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io("rename", e))?;
        // The rename itself must reach the disk, or a power loss could bring the old file back.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| SeqError::Io {
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
    fn seq_persists_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, last) = SeqStore::open(dir.path()).unwrap();
        assert_eq!(last, 0);
        s.store(41).unwrap();
        s.store(42).unwrap();
        let (_, last) = SeqStore::open(dir.path()).unwrap();
        assert_eq!(last, 42);
        fs::write(dir.path().join("seq"), "forty").unwrap();
        let e = SeqStore::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a sequence number"), "{e}");
    }
}
