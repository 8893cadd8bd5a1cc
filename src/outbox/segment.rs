//! What the outbox knows about one segment file without reading it: where it is, its size, how
//! many records and alarm events it holds, its newest record's time and its last position.
//!
//! Kept apart, and free of I/O, because three places build this up record by record (recovery
//! scanning a file, an append, compaction rewriting a file) and trimming and the disk bound
//! decide on these numbers: all three must count a record the same way.

use std::path::{Path, PathBuf};

use super::{Kind, Record};

/// A segment's file name: the first position it was created for, zero-padded so that names
/// sort in position order.
pub(super) fn file_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The id in a segment's file name; `None` for any other file in the directory.
pub(super) fn id_of(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")
        .and_then(|s| s.parse::<u64>().ok())
}

#[derive(Debug)]
pub(super) struct Segment {
    pub path: PathBuf,
    /// Bytes in the file: what counts against `storage.outbox_max` and `storage.journal_max`.
    pub bytes: u64,
    pub records: usize,
    /// Alarm events in it: a confirmed segment without any is not worth keeping as journal.
    pub events: usize,
    /// Time of its newest record (Unix milliseconds): the segment's age for the journal.
    pub newest_ms: u64,
    /// Its last record's position: once every broker is past it, the segment is confirmed.
    pub last_pos: Option<u64>,
}

impl Segment {
    /// Segment `id` under `dir`, with nothing counted yet.
    pub fn new(dir: &Path, id: u64) -> Segment {
        Segment {
            path: dir.join(file_name(id)),
            bytes: 0,
            records: 0,
            events: 0,
            newest_ms: 0,
            last_pos: None,
        }
    }

    /// Counts `r` as held in this segment; records are counted in position order. Its bytes
    /// are not counted here: a recovered file also holds the damaged bytes skipped in it.
    pub fn count(&mut self, r: &Record) {
        self.records += 1;
        self.last_pos = Some(r.pos);
        self.newest_ms = self.newest_ms.max(r.time_ms);
        if r.kind == Kind::Event {
            self.events += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pos: u64, kind: Kind, time_ms: u64) -> Record {
        Record {
            pos,
            kind,
            seq: pos,
            time_ms,
            topic: "t".into(),
            retain: false,
            payload: vec![1, 2, 3],
        }
    }

    #[test]
    fn names_sort_in_position_order_and_parse_back() {
        let (a, b) = (file_name(9), file_name(10));
        assert_eq!(a, "00000000000000000009.seg");
        assert!(a < b);
        assert_eq!(id_of(&b), Some(10));
        assert_eq!(id_of(&file_name(u64::MAX)), Some(u64::MAX));
    }

    #[test]
    fn other_files_are_not_segments() {
        assert_eq!(id_of("00000000000000000009.seg.tmp"), None);
        assert_eq!(id_of("cursors"), None);
        assert_eq!(id_of("notes.seg"), None);
    }

    #[test]
    fn counting_keeps_the_last_position_the_newest_time_and_the_events() {
        let mut seg = Segment::new(Path::new("/o"), 4);
        assert_eq!(seg.path, Path::new("/o/00000000000000000004.seg"));
        seg.count(&record(4, Kind::Event, 300));
        seg.count(&record(5, Kind::Zone, 100));
        seg.count(&record(7, Kind::Message, 200));
        assert_eq!(seg.records, 3);
        assert_eq!(seg.events, 1);
        assert_eq!(seg.newest_ms, 300);
        assert_eq!(seg.last_pos, Some(7));
        assert_eq!(seg.bytes, 0);
    }
}
