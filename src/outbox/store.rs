//! The outbox in memory and its appends and cursors: the records held, the segments they are
//! in, each broker's cursor; appends (stage, write and fsync, finish) into the active segment
//! and its rotation; acks, cursor commits and reading for delivery.
//!
//! The rest of [`Outbox`] lives beside it: [`Outbox::open`] (crash recovery) in `recovery`,
//! the journal and payload eviction in `journal`, the disk bound in `compaction`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::cursor;
use super::journal::Loaded;
use super::segment::{self, Segment};
use super::{files, frame};
use super::{Entry, Kind, Options, OutboxError, Record};
use crate::clock::unix_ms;

/// An append between [`Outbox::stage`] and [`Outbox::finish`].
#[derive(Debug)]
pub struct Staged {
    /// The active segment, opened for append (a second handle on it).
    file: File,
    path: PathBuf,
    offset: u64,
    segment: u64,
    buf: Vec<u8>,
    records: Vec<Arc<Record>>,
    sizes: Vec<u64>,
}

impl Staged {
    /// Writes and fsyncs the records: the slow part of an append, done without the lock.
    pub fn write(&mut self) -> Result<(), OutboxError> {
        let fail = |op, source| OutboxError::Durability {
            path: self.path.clone(),
            offset: self.offset,
            op,
            source,
        };
        self.file
            .write_all(&self.buf)
            .map_err(|e| fail("write", e))?;
        self.file.sync_data().map_err(|e| fail("fsync", e))
    }
}

/// Cursor files to write, from [`Outbox::take_cursor_writes`].
#[derive(Debug)]
pub struct CursorWrites {
    dir: PathBuf,
    writes: Vec<(PathBuf, u64)>,
}

impl CursorWrites {
    /// Writes each cursor file (temporary file, fsync, rename, directory fsync).
    pub fn write(&self) -> Result<(), OutboxError> {
        for (path, pos) in &self.writes {
            cursor::write(&self.dir, path, *pos)?;
        }
        Ok(())
    }
}

/// A record held, and where it lives.
#[derive(Debug)]
pub(super) struct Held {
    /// Without its payload once `evicted`.
    pub(super) record: Arc<Record>,
    /// The id of the segment file holding it.
    pub(super) segment: u64,
    /// Framed size on disk.
    pub(super) size: u64,
    /// Where its frame starts in the segment file: a replay reads back just the records it
    /// sends, not the whole segment, whatever the journal's size.
    pub(super) offset: u64,
    /// Every broker has it: the payload was dropped from memory (the segment file has it).
    pub(super) evicted: bool,
}

#[derive(Debug)]
pub(super) struct Cursor {
    pub(super) path: PathBuf,
    /// The next position this broker has not confirmed; everything before it is acked.
    pub(super) next: u64,
    /// Acked positions at or after `next` (acks may come out of order).
    pub(super) acked: BTreeSet<u64>,
    /// `next` moved since it was last written.
    pub(super) dirty: bool,
}

/// How full the outbox is; for logs, metrics and the status topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pressure {
    /// Bytes on disk in segment files.
    pub bytes: u64,
    /// `storage.outbox_max`.
    pub max: u64,
    /// Over the bound with nothing left that may be dropped: only alarm events and the newest
    /// retained message per topic remain, and they keep being written.
    pub over_bound: bool,
    /// Records dropped to stay within the bound since start.
    pub dropped: u64,
    /// Records not yet acked by the slowest broker.
    pub undelivered: usize,
    /// When the oldest of those was appended (Unix milliseconds): how long the slowest broker
    /// has been behind, which a depth alone does not say.
    pub oldest_undelivered_ms: Option<u64>,
}

/// What [`Outbox::replay_from`] found.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// Alarm events with `seq >= from`, in order.
    pub events: Vec<Arc<Record>>,
    /// The oldest event `seq` still held; a request from before it cannot be fully answered.
    pub oldest_seq: Option<u64>,
    /// Where the next batch of the same replay looks from ([`Outbox::replay_batch`]).
    pub next_pos: u64,
}

/// The durable outbox under `storage.dir/outbox/`. See the module documentation.
#[derive(Debug)]
pub struct Outbox {
    pub(super) dir: PathBuf,
    pub(super) cursor_dir: PathBuf,
    pub(super) opts: Options,
    pub(super) held: VecDeque<Held>,
    pub(super) segments: BTreeMap<u64, Segment>,
    pub(super) active: File,
    pub(super) active_id: u64,
    pub(super) next_pos: u64,
    pub(super) cursors: BTreeMap<String, Cursor>,
    pub(super) total_bytes: u64,
    pub(super) latest_seq: Option<u64>,
    pub(super) poisoned: bool,
    pub(super) over_bound: bool,
    pub(super) dropped: u64,
    /// While over the bound with nothing to drop, compaction is retried only once the outbox
    /// has grown by another segment, not on every append.
    pub(super) retry_bound_at: u64,
    /// Payloads below this position are evicted (see [`Outbox::evict_confirmed`]).
    pub(super) evicted_below: u64,
    /// Where recovery skipped damaged bytes ([`Outbox::assess`]).
    pub(super) damaged: Vec<String>,
    /// Event `seq` ranges found lost at start ([`Outbox::assess`]), reported until exit
    /// (and found again at the next start while the journal reaches back to them).
    pub(super) lost: Vec<(u64, u64)>,
}

impl Outbox {
    /// Appends `entries` in order and fsyncs once; when this returns `Ok` they are durable.
    /// Returns the records as held, with their positions.
    pub fn append(&mut self, entries: Vec<Entry>) -> Result<Vec<Arc<Record>>, OutboxError> {
        self.append_at(entries, SystemTime::now())
    }

    /// As [`Outbox::append`], stamping the records with `now` (tests of journal age).
    pub fn append_at(
        &mut self,
        entries: Vec<Entry>,
        now: SystemTime,
    ) -> Result<Vec<Arc<Record>>, OutboxError> {
        match self.stage(entries, now)? {
            None => Ok(Vec::new()),
            Some(mut staged) => {
                let written = staged.write();
                self.finish(staged, written)
            }
        }
    }

    /// The first third of an append, done under the caller's lock: encodes `entries` at the
    /// next positions (sealing the active segment first if it is full). Nothing is visible
    /// until [`Outbox::finish`]; the slow part, [`Staged::write`], needs no access to the
    /// outbox, so broker links can go on reading and acking while the disk syncs. One append
    /// at a time: the next `stage` comes after this one's `finish`.
    pub fn stage(
        &mut self,
        entries: Vec<Entry>,
        now: SystemTime,
    ) -> Result<Option<Staged>, OutboxError> {
        if self.poisoned {
            return Err(self.poisoned_error());
        }
        if entries.is_empty() {
            return Ok(None);
        }
        if self.active_bytes() >= self.opts.segment_bytes {
            self.rotate()?;
        }
        let time_ms = unix_ms(now);
        let mut buf = Vec::new();
        let mut records = Vec::with_capacity(entries.len());
        let mut sizes = Vec::with_capacity(entries.len());
        for e in entries {
            let record = Record {
                pos: self.next_pos + records.len() as u64,
                kind: e.kind,
                seq: e.seq,
                time_ms,
                topic: e.topic,
                retain: e.retain,
                payload: e.payload,
            };
            sizes.push(frame::encode(&record, &mut buf) as u64);
            records.push(Arc::new(record));
        }
        let path = self.active_path();
        let file = match self.active.try_clone() {
            Ok(f) => f,
            Err(source) => {
                return Err(OutboxError::Io {
                    path,
                    op: "duplicate the segment handle",
                    source,
                })
            }
        };
        Ok(Some(Staged {
            file,
            path,
            offset: self.active_bytes(),
            segment: self.active_id,
            buf,
            records,
            sizes,
        }))
    }

    /// The last third of an append, under the lock again: with the write and fsync done, the
    /// records are held, counted and handed out; if either failed, the outbox is poisoned.
    pub fn finish(
        &mut self,
        staged: Staged,
        written: Result<(), OutboxError>,
    ) -> Result<Vec<Arc<Record>>, OutboxError> {
        if let Err(e) = written {
            self.poisoned = true;
            return Err(e);
        }
        let Staged {
            buf,
            records: out,
            sizes,
            segment: id,
            offset,
            ..
        } = staged;
        if out.first().map(|r| r.pos) != Some(self.next_pos) || id != self.active_id {
            // Another append came in between: positions would repeat. Never happens with one
            // writer; refuse rather than corrupt the order.
            self.poisoned = true;
            return Err(self.poisoned_error());
        }
        self.next_pos += out.len() as u64;
        self.total_bytes += buf.len() as u64;
        if let Some(seg) = self.segments.get_mut(&id) {
            seg.bytes += buf.len() as u64;
            for r in &out {
                seg.count(r);
            }
        }
        let mut at = offset;
        for (r, size) in out.iter().zip(sizes) {
            if r.kind == Kind::Event {
                self.latest_seq = self.latest_seq.max(Some(r.seq));
            }
            self.held.push_back(Held {
                record: r.clone(),
                segment: id,
                size,
                offset: at,
                evicted: false,
            });
            at += size;
        }
        if self.total_bytes > self.opts.max_bytes && self.total_bytes >= self.retry_bound_at {
            self.enforce_bound()?;
        }
        Ok(out)
    }

    /// The next position `broker` has not confirmed.
    pub fn cursor(&self, broker: &str) -> Result<u64, OutboxError> {
        self.cursors
            .get(broker)
            .map(|c| c.next)
            .ok_or_else(|| OutboxError::UnknownBroker(broker.to_string()))
    }

    /// Up to `max` records at or after position `pos`, in order: what a broker link sends next.
    /// Links read from their own cursor, where nothing is evicted; a record that is (a reader
    /// behind every cursor) is read back from its segment, or left out if that fails.
    pub fn read_from(&self, pos: u64, max: usize) -> Vec<Arc<Record>> {
        let start = self.held.partition_point(|h| h.record.pos < pos);
        let mut loaded = Loaded::default();
        self.held
            .range(start..)
            .take(max)
            .filter_map(|h| match self.full(h, &mut loaded) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!("outbox: {e}; record at position {} left out", h.record.pos);
                    None
                }
            })
            .collect()
    }

    /// `broker` acknowledged the record at `pos` (its PUBACK arrived). The cursor moves past
    /// every record acked without a hole before it. In memory until [`Outbox::commit`].
    pub fn ack(&mut self, broker: &str, pos: u64) -> Result<(), OutboxError> {
        let held = &self.held;
        let c = self
            .cursors
            .get_mut(broker)
            .ok_or_else(|| OutboxError::UnknownBroker(broker.to_string()))?;
        if pos < c.next {
            return Ok(());
        }
        c.acked.insert(pos);
        loop {
            let i = held.partition_point(|h| h.record.pos < c.next);
            match held.get(i) {
                Some(h) if c.acked.remove(&h.record.pos) => {
                    c.next = h.record.pos + 1;
                    c.dirty = true;
                }
                _ => break,
            }
        }
        c.acked = c.acked.split_off(&c.next);
        Ok(())
    }

    /// Persists the cursors that moved and deletes the segments nobody needs any more. A crash
    /// before this only means redelivery of what was acked since the last commit.
    pub fn commit(&mut self) -> Result<(), OutboxError> {
        let writes = self.take_cursor_writes()?;
        let written = writes.write();
        self.cursors_written(&writes, written)
    }

    /// The cursors that moved since they were last written, to be written by
    /// [`CursorWrites::write`] without the caller's lock (three fsyncs each), then reported
    /// with [`Outbox::cursors_written`].
    pub fn take_cursor_writes(&mut self) -> Result<CursorWrites, OutboxError> {
        if self.poisoned {
            return Err(self.poisoned_error());
        }
        let mut writes = Vec::new();
        for c in self.cursors.values_mut() {
            if c.dirty {
                writes.push((c.path.clone(), c.next));
                c.dirty = false;
            }
        }
        Ok(CursorWrites {
            dir: self.cursor_dir.clone(),
            writes,
        })
    }

    /// After the cursor files were written (or not: then the outbox is poisoned, as for any
    /// failed fsync), deletes what the journal no longer needs and drops confirmed payloads.
    pub fn cursors_written(
        &mut self,
        writes: &CursorWrites,
        written: Result<(), OutboxError>,
    ) -> Result<(), OutboxError> {
        if let Err(e) = written {
            self.poisoned = true;
            return Err(e);
        }
        if !writes.writes.is_empty() || self.over_bound {
            self.trim(SystemTime::now())?;
        }
        self.evict_confirmed();
        Ok(())
    }

    /// The highest alarm event `seq` ever held (carried by the status heartbeat, so a gap at the
    /// tail is visible to subscribers).
    pub fn latest_seq(&self) -> Option<u64> {
        self.latest_seq
    }

    /// Tells the outbox the last `seq` the alarm state used: after the journal aged out (or
    /// on a fresh outbox under an old state), the heartbeat must still report it.
    pub fn note_seq(&mut self, seq: u64) {
        if seq > 0 {
            self.latest_seq = self.latest_seq.max(Some(seq));
        }
    }

    /// The position the next record will get.
    pub fn next_pos(&self) -> u64 {
        self.next_pos
    }

    /// How full the outbox is.
    pub fn pressure(&self) -> Pressure {
        let slowest = self.cursors.values().map(|c| c.next).min();
        let first = slowest.map(|p| self.held.partition_point(|h| h.record.pos < p));
        let undelivered = first.map_or(0, |i| self.held.len() - i);
        let oldest_undelivered_ms = first
            .and_then(|i| self.held.get(i))
            .map(|h| h.record.time_ms);
        Pressure {
            bytes: self.total_bytes,
            max: self.opts.max_bytes,
            over_bound: self.over_bound,
            dropped: self.dropped,
            undelivered,
            oldest_undelivered_ms,
        }
    }

    /// When the newest alarm event or zone status not yet confirmed by every broker was
    /// appended (ms since the Unix epoch): how recent a redundant peer's picture must be to
    /// judge this backlog after a restart (`pair::backlog`). `None`: no such record waits.
    pub fn newest_unconfirmed_ms(&self) -> Option<u64> {
        let slowest = self.cursors.values().map(|c| c.next).min()?;
        let first = self.held.partition_point(|h| h.record.pos < slowest);
        self.held
            .range(first..)
            .filter(|h| matches!(h.record.kind, Kind::Event | Kind::Zone))
            .map(|h| h.record.time_ms)
            .max()
    }

    /// The brokers the outbox keeps cursors for.
    pub fn brokers(&self) -> impl Iterator<Item = &str> {
        self.cursors.keys().map(String::as_str)
    }

    fn poisoned_error(&self) -> OutboxError {
        OutboxError::Poisoned {
            path: self.active_path(),
        }
    }

    fn active_path(&self) -> PathBuf {
        self.dir.join(segment::file_name(self.active_id))
    }

    fn active_bytes(&self) -> u64 {
        self.segments.get(&self.active_id).map_or(0, |s| s.bytes)
    }

    /// Seals the active segment and starts a new one named for the next position.
    pub(super) fn rotate(&mut self) -> Result<(), OutboxError> {
        let id = self.next_pos;
        let path = self.dir.join(segment::file_name(id));
        if let Err(e) = files::create(&self.dir, &path) {
            self.poisoned = true;
            return Err(e);
        }
        self.active = match OpenOptions::new().append(true).open(&path) {
            Ok(f) => f,
            Err(source) => {
                self.poisoned = true;
                return Err(OutboxError::Durability {
                    path,
                    offset: 0,
                    op: "open for append",
                    source,
                });
            }
        };
        self.segments.insert(id, Segment::new(&self.dir, id));
        self.active_id = id;
        Ok(())
    }
}
