//! The console's SQLite database: every event received, the latest state of each alarm, the
//! audit trail, each gateway's record of what it holds and lost, drain timelines, and trends.
//!
//! One writer task owns the only writing connection and commits in batches (a storm of events
//! is a few transactions, not thousands of fsyncs); everyone else sends it [`Write`]s on a
//! bounded channel and reads through their own connection (WAL lets readers run beside the
//! writer). History is kept for `console.history`, trends for [`TREND_KEEP`].

mod read;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::Connection;

pub use read::{EventQuery, TrendPoint};
pub use writer::{Health, Write, Writer, CHANNEL};

/// How long trends are kept: a week's chart and a day to spare.
pub const TREND_KEEP: Duration = Duration::from_secs(8 * 24 * 3600);

/// Why the database could not be opened or read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("console.database {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("console.database: {0}")]
    Query(#[from] rusqlite::Error),
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    site TEXT NOT NULL, gateway TEXT NOT NULL, seq INTEGER NOT NULL,
    zone TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL, alarm TEXT NOT NULL,
    severity TEXT NOT NULL, state TEXT NOT NULL,
    time_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,
    json TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_seq ON events (site, gateway, seq);
CREATE INDEX IF NOT EXISTS events_by_gateway ON events (gateway, site, seq);
CREATE INDEX IF NOT EXISTS events_by_time ON events (time_ms);
CREATE TABLE IF NOT EXISTS alarms (
    site TEXT NOT NULL, zone TEXT NOT NULL, alarm TEXT NOT NULL,
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, time_ms INTEGER NOT NULL,
    isa_state TEXT NOT NULL, json TEXT NOT NULL,
    PRIMARY KEY (site, zone, alarm)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gateways (
    site TEXT NOT NULL, gateway TEXT NOT NULL,
    origin INTEGER NOT NULL, settled INTEGER NOT NULL, lost TEXT NOT NULL,
    PRIMARY KEY (site, gateway)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL, json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS drain_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL, zone TEXT NOT NULL, time_ms INTEGER NOT NULL,
    kind TEXT NOT NULL, json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS drain_log_by_zone ON drain_log (site, zone, time_ms);
CREATE TABLE IF NOT EXISTS trends (
    site TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL, t_ms INTEGER NOT NULL,
    min REAL NOT NULL, max REAL NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (site, device, point, t_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"#;

/// Opens (creating if needed) the database at `path` for writing: WAL, the schema.
pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let err = |e: rusqlite::Error| StoreError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let c = Connection::open(path).map_err(err)?;
    c.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    // WAL: readers never wait for the writer; NORMAL: a commit is durable at the next
    // checkpoint, and a power cut loses at most the last batches, which the gateways' journals
    // still hold (the gap is seen and replayed).
    c.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
    c.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    c.execute_batch(SCHEMA).map_err(err)?;
    Ok(c)
}

/// A read-only connection for the API; serialised by a mutex, reads are short.
#[derive(Debug)]
pub struct Reader {
    conn: Mutex<Connection>,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        let err = |e: rusqlite::Error| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let c = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        c.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        Ok(Reader {
            conn: Mutex::new(c),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        // A panic while holding it cannot leave a connection half-used: reads have no state.
        let c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&c)?)
    }
}

/// Milliseconds since the epoch of an RFC 3339 time, or `None`.
pub fn parse_ms(t: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(t).ok()?;
    i64::try_from(crate::clock::unix_ms(t)).ok()
}
