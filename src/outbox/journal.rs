//! The journal: records every broker has confirmed, kept on disk for `cmd/replay` and deleted
//! once too old or too large; and the eviction of their payloads from memory.
//!
//! Every record still on disk is also held in memory, so delivery never reads files. Once
//! every broker has confirmed a record, only its header stays in memory: the journal kept for
//! `cmd/replay` (up to `storage.journal_max`, 16 MB by default) would otherwise cost its size
//! again in RAM, on gateways that have little. Replay, and compaction of a segment holding such
//! records, read them back from the segment file. Kept apart from appends and cursors because
//! this is what happens to a record after delivery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use super::segment;
use super::store::{Held, Replay};
use super::{files, frame, Kind, Outbox, OutboxError, Record};
use crate::clock::unix_ms;

/// Segments read back from disk, by id, then by position.
pub(super) type Loaded = HashMap<u64, HashMap<u64, Arc<Record>>>;

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
    /// `h`'s record with its payload: as held, or read back from its segment (cached in
    /// `loaded` per segment, so a run of evicted records reads each file once).
    pub(super) fn full(&self, h: &Held, loaded: &mut Loaded) -> Result<Arc<Record>, OutboxError> {
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
    pub(super) fn load_segment(&self, id: u64) -> Result<HashMap<u64, Arc<Record>>, OutboxError> {
        let path = self.dir.join(segment::file_name(id));
        let bytes = files::read(&path)?;
        Ok(frame::scan(&bytes)
            .records
            .into_iter()
            .map(|f| (f.record.pos, Arc::new(f.record)))
            .collect())
    }

    /// Drops from memory the payloads every broker has confirmed (see the module docs).
    pub(super) fn evict_confirmed(&mut self) {
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

    /// Sealed segments every broker has confirmed entirely, oldest first.
    pub(super) fn confirmed_segments(&self) -> Vec<u64> {
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

    pub(super) fn delete_segment(&mut self, id: u64) -> Result<(), OutboxError> {
        let Some(seg) = self.segments.remove(&id) else {
            return Ok(());
        };
        files::remove(&seg.path)?;
        files::sync_dir(&self.dir)?;
        self.total_bytes -= seg.bytes;
        self.held.retain(|h| h.segment != id);
        Ok(())
    }

    /// Deletes the oldest segments every broker has confirmed once the journal no longer
    /// needs them: beyond `journal_max` bytes, older than `journal_max_age`, or holding no
    /// alarm event. Called by [`Outbox::commit`]; public so a timer can age the journal too.
    pub fn trim(&mut self, now: SystemTime) -> Result<(), OutboxError> {
        let now = unix_ms(now);
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

    /// Journaled alarm events with `seq >= from`, all at once (tests and the bench; the
    /// gateway streams with [`Outbox::replay_batch`]).
    pub fn replay_from(&self, from: u64) -> Result<Replay, OutboxError> {
        let mut replay = self.replay_batch(0, from, u64::MAX, usize::MAX)?;
        replay.events.sort_by_key(|r| r.seq);
        Ok(replay)
    }

    /// One turn of a `cmd/replay`: up to `max` journaled alarm events with
    /// `from_seq <= seq <= until_seq`, looked for from outbox position `from_pos` on (0 the
    /// first time, then the previous batch's [`Replay::next_pos`]), and the oldest event `seq`
    /// still held. Events are journaled in `seq` order (one numbering, one writer), so
    /// position order is `seq` order and a batch never rescans what an earlier one sent. Only
    /// the events returned are read back from disk, each by its own offset: a batch costs
    /// the same whatever the journal's size, and holds only its own payloads in memory.
    pub fn replay_batch(
        &self,
        from_pos: u64,
        from_seq: u64,
        until_seq: u64,
        max: usize,
    ) -> Result<Replay, OutboxError> {
        let mut replay = Replay {
            oldest_seq: self
                .held
                .iter()
                .find(|h| h.record.kind == Kind::Event)
                .map(|h| h.record.seq),
            next_pos: from_pos,
            ..Replay::default()
        };
        let start = self.held.partition_point(|h| h.record.pos < from_pos);
        for h in self.held.range(start..) {
            let r = &h.record;
            if replay.events.len() >= max || (r.kind == Kind::Event && r.seq > until_seq) {
                break;
            }
            replay.next_pos = r.pos + 1;
            if r.kind == Kind::Event && r.seq >= from_seq {
                replay.events.push(self.read_back(h)?);
            }
        }
        Ok(replay)
    }

    /// `h`'s record with its payload: as held, or its one frame read back from its segment.
    fn read_back(&self, h: &Held) -> Result<Arc<Record>, OutboxError> {
        if !h.evicted {
            return Ok(h.record.clone());
        }
        let path = self.dir.join(segment::file_name(h.segment));
        let bytes = files::read_at(&path, h.offset, h.size)?;
        match frame::decode(&bytes) {
            Ok(r) if r.pos == h.record.pos => Ok(Arc::new(r)),
            _ => Err(OutboxError::Missing {
                path,
                pos: h.record.pos,
            }),
        }
    }
}
