//! Compaction: keeping the outbox within `storage.outbox_max` when brokers are away.
//!
//! Kept apart because it is the one place that gives up records that no broker may have yet,
//! and which ones is a rule of its own (SPEC): first the journal (segments every broker has),
//! then retained messages superseded by a newer one on the same topic, then other non-alarm
//! messages; never an alarm event, never the newest retained message per topic. Which records
//! go is decided by [`to_drop`], free of I/O; the rewrite of the segments holding them (new
//! file, fsync, rename) follows.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::segment::Segment;
use super::store::Held;
use super::{files, frame, Kind, Outbox, OutboxError};

impl Outbox {
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
            let drop = to_drop(&self.held, self.total_bytes, self.opts.max_bytes);
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
                h.offset = buf.len() as u64;
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

/// The positions to drop from `held` (in position order) to bring `total_bytes` under
/// `max_bytes`: the superseded retained messages, and if dropping those is not enough, also
/// every non-retained message that is not an alarm event.
fn to_drop(held: &VecDeque<Held>, total_bytes: u64, max_bytes: u64) -> BTreeSet<u64> {
    let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
    for h in held {
        if h.record.retain {
            newest.insert(&h.record.topic, h.record.pos);
        }
    }
    let superseded: BTreeSet<u64> = held
        .iter()
        .filter(|h| {
            h.record.kind != Kind::Event
                && h.record.retain
                && newest.get(h.record.topic.as_str()) != Some(&h.record.pos)
        })
        .map(|h| h.record.pos)
        .collect();
    let freed: u64 = held
        .iter()
        .filter(|h| superseded.contains(&h.record.pos))
        .map(|h| h.size)
        .sum();
    let mut drop = superseded;
    if total_bytes - freed > max_bytes {
        drop.extend(
            held.iter()
                .filter(|h| h.record.kind != Kind::Event && !h.record.retain)
                .map(|h| h.record.pos),
        );
    }
    drop
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::outbox::Record;

    /// A held record of 100 bytes on disk.
    fn held(pos: u64, kind: Kind, topic: &str, retain: bool) -> Held {
        Held {
            record: Arc::new(Record {
                pos,
                kind,
                seq: 0,
                time_ms: 0,
                topic: topic.into(),
                retain,
                payload: Vec::new(),
            }),
            segment: 0,
            offset: 0,
            size: 100,
            evicted: false,
        }
    }

    fn mixed() -> VecDeque<Held> {
        VecDeque::from([
            held(0, Kind::Zone, "zones/a", true),
            held(1, Kind::Event, "alarms/1", false),
            held(2, Kind::Message, "cmd/result", false),
            held(3, Kind::Zone, "zones/a", true),
            held(4, Kind::Zone, "zones/b", true),
            held(5, Kind::Event, "alarms/2", false),
        ])
    }

    #[test]
    fn superseded_statuses_go_first_when_that_is_enough() {
        // 600 bytes held, 100 over: the old status of zone a frees it.
        assert_eq!(to_drop(&mixed(), 600, 500), BTreeSet::from([0]));
    }

    #[test]
    fn then_other_messages_but_never_alarms_or_the_newest_status() {
        assert_eq!(to_drop(&mixed(), 600, 300), BTreeSet::from([0, 2]));
    }

    #[test]
    fn only_alarms_and_newest_statuses_leave_nothing_to_drop() {
        let held = VecDeque::from([
            held(0, Kind::Event, "alarms/1", false),
            held(1, Kind::Zone, "zones/a", true),
        ]);
        assert!(to_drop(&held, 200, 0).is_empty());
    }
}
