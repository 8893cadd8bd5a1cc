//! The durable outbox: every alarm event, zone status and drain message is on disk before it
//! counts as raised, and leaves only after each broker has acknowledged it.
//!
//! Why it exists: an alarm held only in memory is lost when the daemon crashes, the gateway loses
//! power, or the broker is away longer than a queue can hold; and a broker's PUBACK is not
//! durability either (mosquitto killed with SIGKILL loses QoS 1 messages it had acked). So the
//! gateway keeps its own append-only journal under `storage.dir/outbox/`:
//!
//! - [`Outbox::append`] writes a batch of records and fsyncs once (group commit) before
//!   returning; only then is an event raised.
//! - each broker (the `mqtt.url` and every `mqtt.also`) has its own cursor, advanced by
//!   [`Outbox::ack`] when that broker's PUBACK arrives and persisted by [`Outbox::commit`];
//!   delivery restarts from it in order ([`Outbox::read_from`]) after a reconnect or a restart.
//! - records stay after every broker acked them, as the event journal, bounded by age and size,
//!   so a subscriber that sees a gap in `seq` can ask for it again ([`Outbox::replay_from`]).
//! - the outbox is bounded by `storage.outbox_max`: over it, superseded zone statuses and other
//!   non-alarm records are dropped first; alarm events never are; being over the bound is
//!   reported by [`Outbox::pressure`].
//!
//! File format: see [`frame`] (records) and [`cursor`] (cursors). Segments are named by the
//! first position they were created for, `00000000000000000042.seg`, so names sort in order.

mod compaction;
mod cursor;
mod error;
mod files;
mod frame;
mod journal;
mod loss;
mod recovery;
mod segment;
mod store;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use error::OutboxError;
pub use store::{CursorWrites, Outbox, Pressure, Replay, Staged};

/// What a record is; decides what may be dropped when the outbox is over its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An alarm event: never dropped.
    Event,
    /// A zone status (retained): a newer one for the same zone supersedes it.
    Zone,
    /// Any other durable message: drain requests and statuses, clearances, command results.
    Message,
}

impl Kind {
    pub(crate) fn code(self) -> u8 {
        match self {
            Kind::Event => 1,
            Kind::Zone => 2,
            Kind::Message => 3,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Kind> {
        match c {
            1 => Some(Kind::Event),
            2 => Some(Kind::Zone),
            3 => Some(Kind::Message),
            _ => None,
        }
    }
}

/// A message to make durable: what the caller hands to [`Outbox::append`].
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub kind: Kind,
    /// The alarm event's `seq` (SPEC), which [`Outbox::replay_from`] is asked by; 0 otherwise.
    pub seq: u64,
    pub topic: String,
    pub retain: bool,
    pub payload: Vec<u8>,
}

/// A message as held by the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The outbox's own position: increases by one per record appended and never goes back,
    /// even across restarts. Cursors count in it. Dropped records leave holes.
    pub pos: u64,
    pub kind: Kind,
    /// See [`Entry::seq`].
    pub seq: u64,
    /// When it was appended, in milliseconds since the Unix epoch (journal age).
    pub time_ms: u64,
    pub topic: String,
    pub retain: bool,
    pub payload: Vec<u8>,
}

/// Sizes and ages, from `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `storage.outbox_max`: the disk the outbox may use before it drops what it can spare.
    pub max_bytes: u64,
    /// A segment file is closed and a new one started past this size; whole segments are the
    /// unit of deletion, so smaller segments free space sooner at the cost of more files.
    pub segment_bytes: u64,
    /// `storage.journal_max`: delivered records kept for replay, at most this much disk.
    pub journal_max_bytes: u64,
    /// `storage.journal_max_age`: and no older than this.
    pub journal_max_age: Duration,
}

impl Options {
    /// Sizes from the configuration; a segment is a sixteenth of the bound, between 64 KiB
    /// and 8 MiB.
    pub fn new(max_bytes: u64, journal_max_bytes: u64, journal_max_age: Duration) -> Options {
        Options {
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(64 * 1024, 8 * 1024 * 1024),
            journal_max_bytes,
            journal_max_age,
        }
    }

    pub fn from_config(storage: &crate::config::Storage) -> Options {
        Options::new(
            storage.outbox_max,
            storage.journal_max,
            storage.journal_max_age,
        )
    }
}
