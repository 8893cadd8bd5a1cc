//! Why an outbox operation failed, naming the file and, for writes, the offset.
//!
//! Write and fsync failures are a variant of their own because the caller must treat them
//! differently from everything else: a failed fsync may have dropped dirty pages, and on Linux a
//! second fsync then reports success for data that never reached the disk. So the outbox never
//! retries; it refuses every later append ([`OutboxError::Poisoned`]) and the daemon publishes a
//! critical fault and exits, to be restarted on a clean file.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Opening, reading, listing or creating outbox files.
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// A write or fsync of durable data failed: nothing appended since the last successful
    /// append may be on disk. Fatal: never retried.
    #[error("{path} at offset {offset}: {op} failed: {source}; the outbox refuses further writes")]
    Durability {
        path: PathBuf,
        offset: u64,
        op: &'static str,
        source: std::io::Error,
    },
    /// An earlier write or fsync failed; see the first error.
    #[error("{path}: an earlier write or fsync failed; the outbox refuses further writes until restarted")]
    Poisoned { path: PathBuf },
    /// A record confirmed by every broker (its payload no longer in memory) is not in its
    /// segment file any more.
    #[error("{path}: record at position {pos} is missing from its segment")]
    Missing { path: PathBuf, pos: u64 },
    /// A cursor was asked for by a broker the outbox was not opened with.
    #[error("outbox: no cursor for broker {0:?}")]
    UnknownBroker(String),
}

impl OutboxError {
    /// True for the errors after which the daemon must stop: durable data may be lost and
    /// retrying could hide it.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            OutboxError::Durability { .. } | OutboxError::Poisoned { .. }
        )
    }
}
