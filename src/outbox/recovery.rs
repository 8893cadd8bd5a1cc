//! Crash recovery: [`Outbox::open`] rebuilds the outbox from what is on disk.
//!
//! Kept apart because it is the part that must be right after a power cut and is read on its
//! own when a gateway comes back with damaged files: leftovers of an interrupted compaction or
//! cursor write are removed, damaged bytes are logged and skipped (and truncated away at the end
//! of a segment), records out of order are skipped, cursors of brokers no longer configured are
//! removed and a new broker starts where the slowest existing one is. The steps are one function
//! each, called in the order they touch the disk.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use super::segment::{self, Segment};
use super::store::{Cursor, Held};
use super::{cursor, files, frame, Kind, Options, Outbox, OutboxError};

/// What the segment files held, as recovered.
#[derive(Default)]
struct Recovered {
    held: VecDeque<Held>,
    segments: BTreeMap<u64, Segment>,
    /// The last position kept: a later record must be after it.
    last_pos: Option<u64>,
    latest_seq: Option<u64>,
    total_bytes: u64,
    /// Where damaged bytes were skipped, for [`Outbox::assess`]'s verdict.
    damaged: Vec<String>,
}

impl Outbox {
    /// Opens (creating if needed) the outbox under `storage_dir/outbox`, with one cursor per
    /// broker in `brokers` (their URLs). Recovers from a crash: damaged bytes are logged, skipped
    /// and, at the end of a segment, truncated away. Cursors of brokers no longer configured are
    /// removed; a new broker starts where the slowest existing one is.
    pub fn open(
        storage_dir: &Path,
        opts: Options,
        brokers: &[String],
    ) -> Result<Outbox, OutboxError> {
        let dir = storage_dir.join("outbox");
        let cursor_dir = dir.join("cursors");
        for d in [&dir, &cursor_dir] {
            files::create_dir(d)?;
        }
        let ids = segment_ids(&dir)?;

        // Cursors first: what every broker already has is held without its payload from the
        // start (a new broker starts where the slowest one is, so the same bound holds).
        let stored = stored_cursors(&cursor_dir, brokers)?;
        let evict_below = stored.values().min().copied().unwrap_or(0);

        let mut rec = Recovered::default();
        for (i, &id) in ids.iter().enumerate() {
            rec.segment(&dir, id, evict_below, i + 1 == ids.len())?;
        }

        let next_pos = next_position(
            rec.last_pos,
            rec.segments.keys().next_back().copied(),
            stored.values().max().copied(),
        );
        let oldest_held = rec.held.front().map_or(next_pos, |h| h.record.pos);
        let newcomer_start = stored.values().min().copied().unwrap_or(oldest_held);

        let (active_id, active) = open_active(&dir, &mut rec.segments, next_pos)?;
        let cursors = brokers
            .iter()
            .map(|b| {
                let name = cursor::file_name(b);
                let path = cursor_dir.join(&name);
                let (next, dirty) = match stored.get(&name) {
                    Some(&p) => (p, false),
                    None => (newcomer_start, true),
                };
                let c = Cursor {
                    path,
                    next,
                    acked: BTreeSet::new(),
                    dirty,
                };
                (b.clone(), c)
            })
            .collect();

        let mut outbox = Outbox {
            dir,
            cursor_dir,
            opts,
            held: rec.held,
            segments: rec.segments,
            active,
            active_id,
            next_pos,
            cursors,
            total_bytes: rec.total_bytes,
            latest_seq: rec.latest_seq,
            poisoned: false,
            over_bound: false,
            dropped: 0,
            retry_bound_at: 0,
            evicted_below: evict_below,
            damaged: rec.damaged,
            lost: Vec::new(),
        };
        outbox.commit()?;
        if outbox.total_bytes > outbox.opts.max_bytes {
            outbox.enforce_bound()?;
        }
        Ok(outbox)
    }
}

/// The segment ids under `dir`, oldest first. A `.seg.tmp` file is a compaction interrupted
/// before its rename (the original is intact): it is removed.
fn segment_ids(dir: &Path) -> Result<Vec<u64>, OutboxError> {
    let mut ids = Vec::new();
    for name in files::list(dir)? {
        if let Some(id) = segment::id_of(&name) {
            ids.push(id);
        } else if name.ends_with(".seg.tmp") {
            let _ = fs::remove_file(dir.join(&name));
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The positions in the cursor files of the configured brokers, by file name. Other files
/// (brokers no longer configured, interrupted writes) are removed; a damaged cursor is logged
/// and left out, so that broker gets everything still held again.
fn stored_cursors(
    cursor_dir: &Path,
    brokers: &[String],
) -> Result<BTreeMap<String, u64>, OutboxError> {
    let mut stored = BTreeMap::new();
    let wanted: BTreeSet<String> = brokers.iter().map(|b| cursor::file_name(b)).collect();
    for name in files::list(cursor_dir)? {
        let path = cursor_dir.join(&name);
        if name.ends_with(".cursor.tmp") || !wanted.contains(&name) {
            if name.ends_with(".cursor") {
                tracing::info!(
                    "outbox: {} is for a broker no longer configured; removed",
                    path.display()
                );
            }
            files::remove(&path)?;
            continue;
        }
        match cursor::read(&path) {
            Ok(Some(pos)) => {
                stored.insert(name, pos);
            }
            Ok(None) => {}
            Err(reason) => tracing::warn!(
                "outbox: {}: {reason}; this broker gets everything still held again",
                path.display()
            ),
        }
    }
    Ok(stored)
}

impl Recovered {
    /// Reads segment `id` back: logs damage, truncates a damaged tail, keeps the records in
    /// position order (those before `evict_below` without their payload) and removes the file
    /// if nothing in it survived, unless it is the `last` one (it becomes the active segment).
    fn segment(
        &mut self,
        dir: &Path,
        id: u64,
        evict_below: u64,
        last: bool,
    ) -> Result<(), OutboxError> {
        let mut seg = Segment::new(dir, id);
        let path = seg.path.clone();
        let bytes = files::read(&path)?;
        let scan = frame::scan_from(&bytes, evict_below);
        for d in &scan.damage {
            let tail = d.offset + d.len == bytes.len() as u64;
            // Whether this is a torn write or lost events is judged against the alarm state
            // ([`Outbox::assess`]): the bytes alone cannot say.
            tracing::warn!(
                "outbox: {} offset {}: {} damaged bytes skipped ({}){}",
                path.display(),
                d.offset,
                d.len,
                d.reason,
                if tail { ", at the end of the file" } else { "" }
            );
            self.damaged.push(format!(
                "{} offset {} ({} bytes{})",
                path.display(),
                d.offset,
                d.len,
                if tail { ", tail" } else { "" }
            ));
        }
        if scan.valid_end < bytes.len() as u64 {
            files::truncate(&path, scan.valid_end)?;
        }
        seg.bytes = scan.valid_end;
        for f in scan.records {
            let r = f.record;
            if self.last_pos.is_some_and(|p| r.pos <= p) {
                tracing::warn!(
                    "outbox: {} offset {}: record at position {} is out of order; skipped",
                    path.display(),
                    f.offset,
                    r.pos
                );
                continue;
            }
            self.last_pos = Some(r.pos);
            seg.count(&r);
            if r.kind == Kind::Event {
                self.latest_seq = self.latest_seq.max(Some(r.seq));
            }
            let evicted = r.pos < evict_below;
            self.held.push_back(Held {
                record: Arc::new(r),
                segment: id,
                size: f.size,
                offset: f.offset,
                evicted,
            });
        }
        if seg.records == 0 && !last {
            return files::remove(&path);
        }
        self.total_bytes += seg.bytes;
        self.segments.insert(id, seg);
        Ok(())
    }
}

/// The position the next record gets. Positions never go back: past every record kept, every
/// segment name (a segment is named for the first position it was created for, even if it is
/// empty now) and every cursor.
fn next_position(
    last_pos: Option<u64>,
    newest_segment: Option<u64>,
    furthest_cursor: Option<u64>,
) -> u64 {
    [last_pos.map(|p| p + 1), newest_segment, furthest_cursor]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
}

/// The active segment, opened for append: the newest one, or a new one named `next_pos` if
/// there is none (it is then added to `segments`).
fn open_active(
    dir: &Path,
    segments: &mut BTreeMap<u64, Segment>,
    next_pos: u64,
) -> Result<(u64, File), OutboxError> {
    let id = match segments.keys().next_back() {
        Some(&id) => id,
        None => {
            let seg = Segment::new(dir, next_pos);
            files::create(dir, &seg.path)?;
            segments.insert(next_pos, seg);
            next_pos
        }
    };
    let path = dir.join(segment::file_name(id));
    let active = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|source| OutboxError::Io {
            path,
            op: "open for append",
            source,
        })?;
    Ok((id, active))
}

#[cfg(test)]
mod tests {
    use super::next_position;

    #[test]
    fn an_empty_outbox_starts_at_zero() {
        assert_eq!(next_position(None, None, None), 0);
    }

    #[test]
    fn the_next_position_follows_the_last_record() {
        assert_eq!(next_position(Some(41), Some(30), Some(40)), 42);
    }

    #[test]
    fn positions_never_go_back_behind_a_segment_name_or_a_cursor() {
        // Everything was trimmed: only the empty active segment's name remembers.
        assert_eq!(next_position(None, Some(42), None), 42);
        // The records a broker confirmed are gone with their segments.
        assert_eq!(next_position(Some(9), Some(5), Some(42)), 42);
    }
}
