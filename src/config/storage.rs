//! `[storage]`: where the gateway keeps what must survive a restart, and how much disk it may
//! use. The type, its defaults and its validator side by side.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validate::Validator;

/// Default `storage.dir`.
pub const DEFAULT_DIR: &str = "/var/lib/emberwatch";
/// Default `storage.outbox_max`: 64 MiB.
pub const DEFAULT_OUTBOX_MAX: u64 = 64 << 20;
/// Default `storage.journal_max`: 16 MiB.
pub const DEFAULT_JOURNAL_MAX: u64 = 16 << 20;
/// Default `storage.journal_max_age`: a week.
pub const DEFAULT_JOURNAL_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The gateway's disk (`[storage]`).
#[derive(Debug, Clone)]
pub struct Storage {
    /// `dir`: alarm state, `seq` and the durable outbox live here; default [`DEFAULT_DIR`].
    pub dir: PathBuf,
    /// `outbox_max = "64MB"`: disk the outbox may use. Over it, superseded zone statuses and
    /// other non-alarm messages are dropped first; alarm events never are. Default
    /// [`DEFAULT_OUTBOX_MAX`].
    pub outbox_max: u64,
    /// `journal_max = "16MB"`: events every broker has confirmed are kept this much, for
    /// `cmd/replay` to repair a subscriber's gap. Default [`DEFAULT_JOURNAL_MAX`].
    pub journal_max: u64,
    /// `journal_max_age = "7d"`: and for at most this long. Default
    /// [`DEFAULT_JOURNAL_MAX_AGE`].
    pub journal_max_age: Duration,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawStorage {
    dir: Option<String>,
    outbox_max: Option<String>,
    journal_max: Option<String>,
    journal_max_age: Option<String>,
}

impl Validator {
    pub(super) fn storage(&mut self, s: RawStorage) -> Storage {
        Storage {
            outbox_max: self.size("storage.outbox_max", s.outbox_max, DEFAULT_OUTBOX_MAX),
            journal_max: self.size("storage.journal_max", s.journal_max, DEFAULT_JOURNAL_MAX),
            journal_max_age: self.duration(
                "storage.journal_max_age",
                s.journal_max_age,
                DEFAULT_JOURNAL_MAX_AGE,
            ),
            dir: self.dir(s.dir),
        }
    }

    /// `storage.dir`: an empty path is the working directory of whoever started the daemon,
    /// so alarm state and the outbox would land wherever that happened to be, and a restart
    /// from elsewhere would renumber events from 1 and forget every active alarm.
    fn dir(&mut self, dir: Option<String>) -> PathBuf {
        let dir = dir.unwrap_or_else(|| DEFAULT_DIR.to_string());
        if dir.trim().is_empty() {
            self.problem(
                "storage.dir",
                format!("must not be empty: alarm state and the outbox live there (e.g. {DEFAULT_DIR:?})"),
            );
        }
        PathBuf::from(dir)
    }
}
