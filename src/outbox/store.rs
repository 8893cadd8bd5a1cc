//! The outbox's files: segments appended and fsynced, recovered after a crash, trimmed once
//! every broker has them and the journal no longer needs them, compacted when over the bound.
//!
//! Every record still on disk is also held in memory, so delivery never reads files. Once
//! every broker has confirmed a record, only its header stays in memory: the journal kept for
//! `cmd/replay` (up to `storage.journal_max`, 16 MB by default) would otherwise cost its size
//! again in RAM, on gateways that have little. Replay, and compaction of a segment holding such
//! records, read them back from the segment file.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::cursor;
use super::segment::{self, Segment};
use super::{files, frame};
use super::{Entry, Kind, Options, OutboxError, Record};

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

/// Segments read back from disk, by id, then by position.
type Loaded = HashMap<u64, HashMap<u64, Arc<Record>>>;

/// A record held, and where it lives.
#[derive(Debug)]
pub(super) struct Held {
    /// Without its payload once `evicted`.
    pub(super) record: Arc<Record>,
    /// The id of the segment file holding it.
    pub(super) segment: u64,
    /// Framed size on disk.
    pub(super) size: u64,
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
}

fn now_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A record without its payload: what is held once every broker has it.
fn header(r: &Record) -> Record {
    Record {
        pos: r.pos,
        kind: r.kind,
        seq: r.seq,
        time_ms: r.time_ms,
        topic: r.topic.clone(),
        retain: r.retain,
        payload: Vec::new(),
    }
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
        let time_ms = now_ms(now);
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
        for (r, size) in out.iter().zip(sizes) {
            if r.kind == Kind::Event {
                self.latest_seq = self.latest_seq.max(Some(r.seq));
            }
            self.held.push_back(Held {
                record: r.clone(),
                segment: id,
                size,
                evicted: false,
            });
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

    /// `h`'s record with its payload: as held, or read back from its segment (cached in
    /// `loaded` per segment, so a run of evicted records reads each file once).
    fn full(&self, h: &Held, loaded: &mut Loaded) -> Result<Arc<Record>, OutboxError> {
        if !h.evicted {
            return Ok(h.record.clone());
        }
        let records = match loaded.entry(h.segment) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.load_segment(h.segment)?),
        };
        records
            .get(&h.record.pos)
            .cloned()
            .ok_or_else(|| OutboxError::Missing {
                path: self.dir.join(segment::file_name(h.segment)),
                pos: h.record.pos,
            })
    }

    /// Every record in segment `id`, by position, as read from its file.
    fn load_segment(&self, id: u64) -> Result<HashMap<u64, Arc<Record>>, OutboxError> {
        let path = self.dir.join(segment::file_name(id));
        let bytes = files::read(&path)?;
        Ok(frame::scan(&bytes)
            .records
            .into_iter()
            .map(|f| (f.record.pos, Arc::new(f.record)))
            .collect())
    }

    /// Drops from memory the payloads every broker has confirmed (see the module docs).
    fn evict_confirmed(&mut self) {
        let Some(slowest) = self.cursors.values().map(|c| c.next).min() else {
            return;
        };
        let from = self
            .held
            .partition_point(|h| h.record.pos < self.evicted_below);
        let to = self.held.partition_point(|h| h.record.pos < slowest);
        for h in self.held.range_mut(from..to.max(from)) {
            if !h.evicted {
                h.record = Arc::new(header(&h.record));
                h.evicted = true;
            }
        }
        self.evicted_below = self.evicted_below.max(slowest);
    }

    /// Payload bytes held in memory (the bench and tests watch this).
    pub fn resident_payload_bytes(&self) -> u64 {
        self.held
            .iter()
            .map(|h| h.record.payload.len() as u64)
            .sum()
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

    /// Deletes the oldest segments every broker has confirmed once the journal no longer
    /// needs them: beyond `journal_max` bytes, older than `journal_max_age`, or holding no
    /// alarm event. Called by [`Outbox::commit`]; public so a timer can age the journal too.
    pub fn trim(&mut self, now: SystemTime) -> Result<(), OutboxError> {
        let now = now_ms(now);
        let max_age = self.opts.journal_max_age.as_millis() as u64;
        let confirmed = self.confirmed_segments();
        let mut journal: u64 = confirmed
            .iter()
            .filter_map(|id| self.segments.get(id))
            .map(|s| s.bytes)
            .sum();
        for id in confirmed {
            let Some(seg) = self.segments.get(&id) else {
                continue;
            };
            let expired = seg.newest_ms.saturating_add(max_age) < now;
            if journal <= self.opts.journal_max_bytes && !expired && seg.events > 0 {
                break;
            }
            journal -= seg.bytes;
            self.delete_segment(id)?;
        }
        if self.over_bound && self.total_bytes <= self.opts.max_bytes {
            self.over_bound = false;
            self.retry_bound_at = 0;
            tracing::info!(
                "outbox: back within storage.outbox_max ({} of {} bytes)",
                self.total_bytes,
                self.opts.max_bytes
            );
        }
        Ok(())
    }

    /// Journaled alarm events with `seq >= from`, for `cmd/replay`; those every broker has
    /// are read back from their segment files.
    pub fn replay_from(&self, from: u64) -> Result<Replay, OutboxError> {
        let mut replay = Replay::default();
        let mut loaded = Loaded::default();
        for h in &self.held {
            let r = &h.record;
            if r.kind != Kind::Event {
                continue;
            }
            replay.oldest_seq = Some(replay.oldest_seq.map_or(r.seq, |o: u64| o.min(r.seq)));
            if r.seq >= from {
                replay.events.push(self.full(h, &mut loaded)?);
            }
        }
        replay.events.sort_by_key(|r| r.seq);
        Ok(replay)
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

    /// Sealed segments every broker has confirmed entirely, oldest first.
    fn confirmed_segments(&self) -> Vec<u64> {
        let slowest = self.cursors.values().map(|c| c.next).min();
        let mut out = Vec::new();
        for (&id, seg) in &self.segments {
            if id == self.active_id {
                break;
            }
            let done = match (seg.last_pos, slowest) {
                (None, _) => true,
                (Some(_), None) => true,
                (Some(last), Some(next)) => last < next,
            };
            if !done {
                break;
            }
            out.push(id);
        }
        out
    }

    /// Seals the active segment and starts a new one named for the next position.
    fn rotate(&mut self) -> Result<(), OutboxError> {
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

    fn delete_segment(&mut self, id: u64) -> Result<(), OutboxError> {
        let Some(seg) = self.segments.remove(&id) else {
            return Ok(());
        };
        files::remove(&seg.path)?;
        files::sync_dir(&self.dir)?;
        self.total_bytes -= seg.bytes;
        self.held.retain(|h| h.segment != id);
        Ok(())
    }

    /// Over `storage.outbox_max`: first the journal gives way (segments every broker has),
    /// then retained messages superseded by a newer one on the same topic (old zone statuses),
    /// then non-retained messages other than alarm events. Alarm events, and the newest
    /// retained message per topic, are never dropped; if the outbox is still over, that is
    /// reported and writing goes on.
    pub(super) fn enforce_bound(&mut self) -> Result<(), OutboxError> {
        for id in self.confirmed_segments() {
            if self.total_bytes <= self.opts.max_bytes {
                break;
            }
            self.delete_segment(id)?;
        }
        if self.total_bytes > self.opts.max_bytes {
            let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
            for h in &self.held {
                if h.record.retain {
                    newest.insert(&h.record.topic, h.record.pos);
                }
            }
            let superseded: BTreeSet<u64> = self
                .held
                .iter()
                .filter(|h| {
                    h.record.kind != Kind::Event
                        && h.record.retain
                        && newest.get(h.record.topic.as_str()) != Some(&h.record.pos)
                })
                .map(|h| h.record.pos)
                .collect();
            let freed: u64 = self
                .held
                .iter()
                .filter(|h| superseded.contains(&h.record.pos))
                .map(|h| h.size)
                .sum();
            let mut drop = superseded;
            if self.total_bytes - freed > self.opts.max_bytes {
                drop.extend(
                    self.held
                        .iter()
                        .filter(|h| h.record.kind != Kind::Event && !h.record.retain)
                        .map(|h| h.record.pos),
                );
            }
            if !drop.is_empty() {
                self.drop_records(&drop)?;
            }
        }
        if self.total_bytes > self.opts.max_bytes {
            if !self.over_bound {
                tracing::error!(
                    "outbox: over storage.outbox_max ({} of {} bytes) with only alarm events and \
                     the newest retained messages left; still writing them, never dropping alarms",
                    self.total_bytes,
                    self.opts.max_bytes
                );
            }
            self.over_bound = true;
            self.retry_bound_at = self.total_bytes + self.opts.segment_bytes;
        } else if self.over_bound {
            self.over_bound = false;
            self.retry_bound_at = 0;
        }
        Ok(())
    }

    /// Rewrites the segments holding any of `drop` without them (new file, fsync, rename).
    fn drop_records(&mut self, drop: &BTreeSet<u64>) -> Result<(), OutboxError> {
        let mut affected: BTreeSet<u64> = self
            .held
            .iter()
            .filter(|h| drop.contains(&h.record.pos))
            .map(|h| h.segment)
            .collect();
        if affected.contains(&self.active_id) {
            // The active segment is appended to through an open handle; seal it first.
            self.rotate()?;
        }
        affected.remove(&self.active_id);
        let mut n = 0u64;
        for id in affected {
            let Some(seg) = self.segments.get(&id) else {
                continue;
            };
            let path = seg.path.clone();
            let mut buf = Vec::new();
            let mut kept = Segment::new(&self.dir, id);
            // Evicted records are rewritten from the file they are in. If it cannot be read
            // back whole, this segment is left as it is (over the bound, never short).
            let from_disk = if self.held.iter().any(|h| h.segment == id && h.evicted) {
                match self.load_segment(id) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!("outbox: {e}; not compacting this segment");
                        continue;
                    }
                }
            } else {
                HashMap::new()
            };
            if let Some(h) = self
                .held
                .iter()
                .find(|h| h.segment == id && h.evicted && !from_disk.contains_key(&h.record.pos))
            {
                tracing::error!(
                    "outbox: {}: record at position {} is no longer readable; not compacting this segment",
                    path.display(),
                    h.record.pos
                );
                continue;
            }
            for h in self.held.iter_mut().filter(|h| h.segment == id) {
                if drop.contains(&h.record.pos) {
                    continue;
                }
                let full = match from_disk.get(&h.record.pos) {
                    Some(r) if h.evicted => r,
                    _ => &h.record,
                };
                h.size = frame::encode(full, &mut buf) as u64;
                kept.count(&h.record);
            }
            kept.bytes = buf.len() as u64;
            let tmp = path.with_extension("seg.tmp");
            if let Err(e) = files::replace(&self.dir, &path, &tmp, &buf) {
                self.poisoned = true;
                return Err(e);
            }
            let before = self.held.len();
            self.held
                .retain(|h| h.segment != id || !drop.contains(&h.record.pos));
            n += (before - self.held.len()) as u64;
            let old = self.segments.insert(id, kept).map_or(0, |s| s.bytes);
            self.total_bytes = self.total_bytes - old + buf.len() as u64;
        }
        if n > 0 {
            self.dropped += n;
            tracing::warn!(
                "outbox: over storage.outbox_max: dropped {n} superseded or non-alarm records \
                 ({} bytes now, {} dropped since start)",
                self.total_bytes,
                self.dropped
            );
        }
        Ok(())
    }
}
