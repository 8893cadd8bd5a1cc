//! The outbox's promises, one test each: what survives a crash, what each broker gets again,
//! what is dropped when the disk bound is reached, and that a failed write is never papered over.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::*;

const A: &str = "mqtt://broker-a:1883";
const B: &str = "mqtts://broker-b:8883";

fn opts() -> Options {
    Options::new(64 << 20, 16 << 20, Duration::from_secs(3600))
}

fn event(seq: u64) -> Entry {
    Entry {
        kind: Kind::Event,
        seq,
        topic: format!("p/alarms/room-1/rack-01/t/r{seq}"),
        retain: false,
        payload: format!("{{\"seq\":{seq}}}").into_bytes(),
    }
}

fn zone(zone: &str, n: u64) -> Entry {
    Entry {
        kind: Kind::Zone,
        seq: 0,
        topic: format!("p/zones/{zone}/status"),
        retain: true,
        payload: format!(
            "{{\"zone\":\"{zone}\",\"n\":{n},\"pad\":\"{}\"}}",
            "x".repeat(200)
        )
        .into_bytes(),
    }
}

fn message(n: u64) -> Entry {
    Entry {
        kind: Kind::Message,
        seq: 0,
        topic: "p/gateways/gw/cmd/result".into(),
        retain: false,
        payload: format!("{{\"n\":{n},\"pad\":\"{}\"}}", "y".repeat(200)).into_bytes(),
    }
}

fn open(dir: &Path, brokers: &[&str]) -> Outbox {
    let brokers: Vec<String> = brokers.iter().map(|s| s.to_string()).collect();
    Outbox::open(dir, opts(), &brokers).unwrap()
}

fn seqs(records: &[std::sync::Arc<Record>]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

/// A bound small enough that a few zone statuses force compaction, in one segment big enough
/// that the journal is not deleted first: compaction rewrites the segment it is in.
fn compacting() -> Options {
    Options {
        max_bytes: 8 << 10,
        segment_bytes: 64 << 10,
        journal_max_bytes: 1 << 20,
        journal_max_age: Duration::from_secs(3600),
    }
}

/// Appends unconfirmed zone statuses until compaction has dropped some.
fn compact(o: &mut Outbox) {
    let mut n = 0;
    while o.pressure().dropped == 0 {
        n += 1;
        assert!(n < 1000, "never compacted: {:?}", o.pressure());
        o.append(vec![zone("room-1", n)]).unwrap();
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn appended_records_survive_a_restart_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path(), &[A]);
    o.append(vec![event(1), event(2)]).unwrap();
    o.append(vec![zone("room-1", 1), event(3)]).unwrap();
    drop(o);
    let o = open(dir.path(), &[A]);
    let got = o.read_from(0, 100);
    assert_eq!(got.iter().map(|r| r.pos).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(got[2].kind, Kind::Zone);
    assert!(got[2].retain);
    assert_eq!(o.latest_seq(), Some(3));
    assert_eq!(o.next_pos(), 4);
}

#[test]
fn a_torn_last_record_is_dropped_at_every_byte_offset() {
    let base = tempfile::tempdir().unwrap();
    let mut o = open(base.path(), &[A]);
    o.append(vec![event(1)]).unwrap();
    o.append(vec![event(2)]).unwrap();
    let seg = segments(base.path()).remove(0);
    let before_last = fs::metadata(&seg).unwrap().len();
    o.append(vec![event(3)]).unwrap();
    drop(o);
    let full = fs::read(&seg).unwrap();
    for cut in before_last..full.len() as u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), &[A]);
        drop(o);
        let target = segments(dir.path()).remove(0);
        fs::write(&target, &full[..cut as usize]).unwrap();
        o = open(dir.path(), &[A]);
        assert_eq!(seqs(&o.read_from(0, 10)), [1, 2], "cut at {cut}");
        assert_eq!(
            fs::metadata(&target).unwrap().len(),
            before_last,
            "cut at {cut}"
        );
        // The next append goes where the torn record was, and everything reads back.
        o.append(vec![event(30)]).unwrap();
        drop(o);
        let o = open(dir.path(), &[A]);
        assert_eq!(seqs(&o.read_from(0, 10)), [1, 2, 30], "cut at {cut}");
        let pos: Vec<u64> = o.read_from(0, 10).iter().map(|r| r.pos).collect();
        assert_eq!(pos, [0, 1, 2], "cut at {cut}");
    }
}

#[test]
fn a_corrupt_record_in_the_middle_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path(), &[A]);
    o.append(vec![event(1)]).unwrap();
    let seg = segments(dir.path()).remove(0);
    let second = fs::metadata(&seg).unwrap().len() as usize;
    o.append(vec![event(2)]).unwrap();
    o.append(vec![event(3)]).unwrap();
    drop(o);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[second + 20] ^= 0xff; // inside the body: the checksum fails
    fs::write(&seg, &bytes).unwrap();
    let mut o = open(dir.path(), &[A]);
    assert_eq!(seqs(&o.read_from(0, 10)), [1, 3]);
    o.append(vec![event(4)]).unwrap();
    assert_eq!(o.read_from(0, 10).last().map(|r| r.pos), Some(3));
}

#[test]
fn a_restart_replays_what_was_not_acked_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path(), &[A]);
    let recs = o.append((1..=10).map(event).collect()).unwrap();
    // Acks out of order: 0..=4 and 6; the cursor stops before 5.
    for r in recs.iter().filter(|r| r.pos <= 4 || r.pos == 6) {
        o.ack(A, r.pos).unwrap();
    }
    o.commit().unwrap();
    assert_eq!(o.cursor(A).unwrap(), 5);
    drop(o);
    let o = open(dir.path(), &[A]);
    let next = o.cursor(A).unwrap();
    assert_eq!(seqs(&o.read_from(next, 100)), [6, 7, 8, 9, 10]);
    assert_eq!(o.pressure().undelivered, 5);
}

#[test]
fn the_age_is_that_of_the_oldest_record_the_slowest_broker_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path(), &[A, B]);
    assert_eq!(o.pressure().oldest_undelivered_ms, None);
    let t0 = std::time::SystemTime::now();
    let first = o.append_at(vec![event(1)], t0).unwrap();
    let second = o
        .append_at(vec![event(2)], t0 + std::time::Duration::from_secs(3))
        .unwrap();
    assert_eq!(second[0].time_ms, first[0].time_ms + 3000);
    // A has both; B, the slowest, still lacks the first: its age is what counts.
    o.ack(A, first[0].pos).unwrap();
    o.ack(A, second[0].pos).unwrap();
    assert_eq!(o.pressure().oldest_undelivered_ms, Some(first[0].time_ms));
    o.ack(B, first[0].pos).unwrap();
    assert_eq!(o.pressure().oldest_undelivered_ms, Some(second[0].time_ms));
    assert_eq!(o.pressure().undelivered, 1);
    o.ack(B, second[0].pos).unwrap();
    assert_eq!(o.pressure().oldest_undelivered_ms, None);
    assert_eq!(o.pressure().undelivered, 0);
}

#[test]
fn acked_but_uncommitted_is_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path(), &[A]);
    o.append(vec![event(1), event(2)]).unwrap();
    o.ack(A, 0).unwrap();
    drop(o); // a crash before commit
    let o = open(dir.path(), &[A]);
    assert_eq!(o.cursor(A).unwrap(), 0);
}

#[test]
fn each_broker_has_its_own_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path(), &[A, B]);
    o.append((1..=6).map(event).collect()).unwrap();
    for p in 0..6 {
        o.ack(A, p).unwrap();
    }
    o.ack(B, 0).unwrap();
    o.commit().unwrap();
    drop(o);
    let mut o = open(dir.path(), &[A, B]);
    assert_eq!(o.cursor(A).unwrap(), 6);
    assert_eq!(o.cursor(B).unwrap(), 1);
    // B being behind keeps what it still needs even though A has everything.
    assert_eq!(
        seqs(&o.read_from(o.cursor(B).unwrap(), 100)),
        [2, 3, 4, 5, 6]
    );
    assert!(o.ack("mqtt://unknown:1", 0).is_err());
    // A broker added later starts where the slowest one is; one removed loses its cursor.
    drop(o);
    let o = open(dir.path(), &[A, "mqtt://broker-c:1883"]);
    assert_eq!(o.cursor("mqtt://broker-c:1883").unwrap(), 6);
    assert!(o.cursor(B).is_err());
    let cursors: Vec<_> = fs::read_dir(dir.path().join("outbox/cursors"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(cursors.len(), 2, "{cursors:?}");
}

#[test]
fn a_damaged_cursor_means_redelivery_not_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path(), &[A]);
    o.append(vec![event(1), event(2)]).unwrap();
    o.ack(A, 0).unwrap();
    o.commit().unwrap();
    drop(o);
    let cursor = fs::read_dir(dir.path().join("outbox/cursors"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::write(&cursor, b"garbage").unwrap();
    let o = open(dir.path(), &[A]);
    assert_eq!(o.cursor(A).unwrap(), 0);
}

#[test]
fn over_the_bound_superseded_statuses_go_first_and_alarms_never() {
    let dir = tempfile::tempdir().unwrap();
    let small = Options {
        max_bytes: 16 * 1024,
        segment_bytes: 2 * 1024,
        journal_max_bytes: 1024,
        journal_max_age: Duration::from_secs(3600),
    };
    let mut o = Outbox::open(dir.path(), small.clone(), &[A.to_string()]).unwrap();
    // The broker is away: nothing is acked. Zone statuses and results pile up with events.
    let mut n = 0;
    while o.pressure().bytes < 14 * 1024 {
        n += 1;
        o.append(vec![
            zone("room-1", n),
            zone("room-2", n),
            message(n),
            event(n),
        ])
        .unwrap();
    }
    assert!(!o.pressure().over_bound);
    assert_eq!(o.pressure().dropped, 0);
    // Crossing the bound drops superseded statuses; results and events stay while that suffices.
    for _ in 0..4 {
        n += 1;
        o.append(vec![zone("room-1", n), event(n)]).unwrap();
    }
    let held = o.read_from(0, usize::MAX);
    assert!(o.pressure().dropped > 0);
    assert!(o.pressure().bytes <= small.max_bytes);
    assert_eq!(
        held.iter().filter(|r| r.kind == Kind::Event).count() as u64,
        n,
        "every alarm event is still there"
    );
    let results = held.iter().filter(|r| r.kind == Kind::Message).count();
    assert!(
        results > 0,
        "non-retained messages wait until superseded statuses are gone"
    );
    let room1: Vec<_> = held
        .iter()
        .filter(|r| r.kind == Kind::Zone && r.topic.contains("room-1"))
        .collect();
    assert!(room1.len() < n as usize, "old room-1 statuses were dropped");
    assert!(
        room1.last().is_some_and(|r| r.payload.ends_with(b"\"}")
            && String::from_utf8_lossy(&r.payload).contains(&format!("\"n\":{n},"))),
        "the newest room-1 status is kept"
    );
    // Only events now: the bound cannot be kept, which is reported, and events keep coming.
    for _ in 0..200 {
        n += 1;
        o.append(vec![event(n)]).unwrap();
    }
    let p = o.pressure();
    assert!(p.over_bound, "{p:?}");
    let held = o.read_from(0, usize::MAX);
    assert_eq!(
        held.iter().filter(|r| r.kind == Kind::Event).count() as u64,
        n
    );
    assert!(held.iter().all(|r| r.kind == Kind::Event || r.retain));
    // What was dropped stays dropped after a restart; positions stay in order.
    drop(o);
    let o = Outbox::open(dir.path(), small, &[A.to_string()]).unwrap();
    let again = o.read_from(0, usize::MAX);
    assert_eq!(again.len(), held.len());
    assert!(again.windows(2).all(|w| w[0].pos < w[1].pos));
    // Once the broker takes everything, the outbox is back within its bound.
    let mut o = o;
    for r in &again {
        o.ack(A, r.pos).unwrap();
    }
    o.commit().unwrap();
    assert!(!o.pressure().over_bound, "{:?}", o.pressure());
}

#[test]
fn the_journal_answers_replay_and_is_bounded_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let small = Options {
        max_bytes: 1 << 20,
        segment_bytes: 1024,
        journal_max_bytes: 1 << 20,
        journal_max_age: Duration::from_secs(60),
    };
    let mut o = Outbox::open(dir.path(), small, &[A.to_string()]).unwrap();
    let t0 = SystemTime::now();
    for s in 10..=40 {
        o.append_at(vec![event(s), zone("room-1", s)], t0).unwrap();
    }
    assert_eq!(
        seqs(&o.replay_from(25).unwrap().events),
        (25..=40).collect::<Vec<_>>()
    );
    assert_eq!(o.replay_from(25).unwrap().oldest_seq, Some(10));
    assert!(o.replay_from(41).unwrap().events.is_empty());
    // Delivered everywhere: the journal still holds it for replay.
    for r in o.read_from(0, usize::MAX) {
        o.ack(A, r.pos).unwrap();
    }
    o.commit().unwrap();
    assert_eq!(o.replay_from(0).unwrap().oldest_seq, Some(10));
    // Two minutes later the sealed segments have aged out; the active one stays.
    o.trim(t0 + Duration::from_secs(120)).unwrap();
    let r = o.replay_from(0).unwrap();
    assert!(r.oldest_seq.is_some_and(|s| s > 10), "{:?}", r.oldest_seq);
    assert_eq!(r.events.last().map(|e| e.seq), Some(40));
    assert_eq!(o.latest_seq(), Some(40));
}

/// A replay streams: each batch is at most what was asked for, goes on from where the last
/// one stopped, stops at the last event of the request, and reads confirmed events back one
/// frame at a time (by offset), also after compaction rewrote their segment and after a
/// restart.
#[test]
fn the_journal_streams_a_replay_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let small = compacting();
    let mut o = Outbox::open(dir.path(), small.clone(), &[A.to_string()]).unwrap();
    for s in 1..=20 {
        for r in o.append(vec![event(s), message(s)]).unwrap() {
            o.ack(A, r.pos).unwrap();
        }
    }
    o.commit().unwrap();
    assert_eq!(o.resident_payload_bytes(), 0, "every broker has them");
    let stream = |o: &Outbox| {
        let (mut pos, mut next, mut batches) = (0, 3, Vec::new());
        loop {
            let b = o.replay_batch(pos, next, 17, 4).unwrap();
            assert!(b.events.len() <= 4);
            assert_eq!(b.oldest_seq, Some(1));
            let Some(last) = b.events.last() else { break };
            next = last.seq + 1;
            pos = b.next_pos;
            batches.push(
                b.events
                    .iter()
                    .map(|r| r.payload.clone())
                    .collect::<Vec<_>>(),
            );
        }
        batches
    };
    let want: Vec<Vec<Vec<u8>>> = (3..=17)
        .collect::<Vec<u64>>()
        .chunks(4)
        .map(|c| c.iter().map(|&s| event(s).payload).collect())
        .collect();
    assert_eq!(stream(&o), want);
    // Unconfirmed statuses force compaction, which rewrites the journal's segments.
    compact(&mut o);
    assert_eq!(stream(&o), want, "after compaction");
    drop(o);
    let o = Outbox::open(dir.path(), small, &[A.to_string()]).unwrap();
    assert_eq!(stream(&o), want, "after a restart");
}

#[test]
fn the_journal_is_bounded_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let small = Options {
        max_bytes: 1 << 20,
        segment_bytes: 1024,
        journal_max_bytes: 4 * 1024,
        journal_max_age: Duration::from_secs(3600),
    };
    let mut o = Outbox::open(dir.path(), small, &[A.to_string()]).unwrap();
    for s in 1..=300 {
        let r = o.append(vec![event(s)]).unwrap();
        o.ack(A, r[0].pos).unwrap();
    }
    o.commit().unwrap();
    let p = o.pressure();
    assert!(p.bytes <= 4 * 1024 + 2 * 1024, "{p:?}");
    let oldest = o.replay_from(0).unwrap().oldest_seq.unwrap();
    assert!(oldest > 1 && oldest < 300, "{oldest}");
    // Positions continue after a restart even though early segments are gone.
    drop(o);
    let o = open(dir.path(), &[A]);
    assert_eq!(o.next_pos(), 300);
    assert_eq!(o.cursor(A).unwrap(), 300);
}

#[test]
fn positions_never_go_back_even_when_everything_was_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let small = Options {
        max_bytes: 1 << 20,
        segment_bytes: 64,
        journal_max_bytes: 0,
        journal_max_age: Duration::from_secs(0),
    };
    let mut o = Outbox::open(dir.path(), small.clone(), &[A.to_string()]).unwrap();
    for s in 1..=5 {
        let r = o.append(vec![message(s)]).unwrap();
        o.ack(A, r[0].pos).unwrap();
        o.commit().unwrap();
    }
    drop(o);
    let mut o = Outbox::open(dir.path(), small, &[A.to_string()]).unwrap();
    let r = o.append(vec![event(9)]).unwrap();
    assert_eq!(r[0].pos, 5);
    assert_eq!(o.read_from(o.cursor(A).unwrap(), 10).len(), 1);
}

/// A full disk: a 64 KiB tmpfs. The first failing write is reported as a durability error and
/// every later append is refused rather than retried.
#[test]
fn a_failed_write_is_fatal_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("tiny");
    fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .output();
    match mounted {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "SKIPPED a_failed_write_is_fatal_and_not_retried: cannot mount a tmpfs ({}); run as root to test the full-disk path",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED a_failed_write_is_fatal_and_not_retried: no mount command ({e})");
            return;
        }
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let mut o = open(&mnt, &[A]);
    let mut err = None;
    for s in 0..10_000 {
        if let Err(e) = o.append(vec![message(s), event(s)]) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("a 64 KiB file system fills up");
    assert!(err.is_fatal(), "{err}");
    assert!(
        matches!(err, OutboxError::Durability { .. }),
        "a write or fsync error: {err}"
    );
    assert!(err.to_string().contains(".seg"), "names the file: {err}");
    let again = o.append(vec![event(1)]).unwrap_err();
    assert!(matches!(again, OutboxError::Poisoned { .. }), "{again}");
    assert!(o.commit().unwrap_err().is_fatal());
}

#[test]
fn confirmed_payloads_leave_memory_and_come_back_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let small = compacting();
    let mut o = Outbox::open(dir.path(), small.clone(), &[A.to_string()]).unwrap();
    let first = o.append((1..=5).map(event).collect()).unwrap();
    let payloads: Vec<Vec<u8>> = first.iter().map(|r| r.payload.clone()).collect();
    let whole = |records: &[std::sync::Arc<Record>]| -> Vec<Vec<u8>> {
        records.iter().map(|r| r.payload.clone()).collect()
    };
    assert!(o.resident_payload_bytes() > 0);
    for r in &first {
        o.ack(A, r.pos).unwrap();
    }
    o.commit().unwrap();
    assert_eq!(o.resident_payload_bytes(), 0, "every broker has them");
    assert_eq!(whole(&o.replay_from(1).unwrap().events), payloads);
    assert_eq!(whole(&o.read_from(0, 5)), payloads, "read back if asked");
    // Unconfirmed statuses pile up in the same segment until compaction rewrites it, with the
    // evicted events read back from the file.
    compact(&mut o);
    assert_eq!(whole(&o.replay_from(1).unwrap().events), payloads);
    drop(o);
    let o = Outbox::open(dir.path(), small, &[A.to_string()]).unwrap();
    assert_eq!(whole(&o.replay_from(1).unwrap().events), payloads);
    let pending = o.read_from(o.cursor(A).unwrap(), usize::MAX);
    assert!(!pending.is_empty() && pending.iter().all(|r| !r.payload.is_empty()));
}

#[test]
fn the_latest_seq_survives_an_aged_out_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path(), &[A]);
    assert_eq!(o.latest_seq(), None);
    // The alarm state says 41 events were raised, long ago; the journal holds none of them.
    o.note_seq(41);
    assert_eq!(o.latest_seq(), Some(41));
    o.append(vec![event(42)]).unwrap();
    o.note_seq(41);
    assert_eq!(o.latest_seq(), Some(42), "never goes back");
}

#[test]
fn a_staged_append_is_invisible_until_finished_and_links_work_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path(), &[A]);
    let first = o.append(vec![event(1)]).unwrap();
    let mut staged = o
        .stage(vec![event(2), event(3)], SystemTime::now())
        .unwrap()
        .expect("something to write");
    // While the disk syncs (no lock held in the daemon), a link reads and acks what is
    // already durable, and its cursor is committed; the staged records are not handed out.
    assert_eq!(seqs(&o.read_from(0, 10)), [1]);
    o.ack(A, first[0].pos).unwrap();
    let writes = o.take_cursor_writes().unwrap();
    o.cursors_written(&writes, writes.write()).unwrap();
    assert_eq!(o.latest_seq(), Some(1));
    let written = staged.write();
    let records = o.finish(staged, written).unwrap();
    assert_eq!(records.iter().map(|r| r.pos).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(seqs(&o.read_from(o.cursor(A).unwrap(), 10)), [2, 3]);
    drop(o);
    let o = open(dir.path(), &[A]);
    assert_eq!(o.cursor(A).unwrap(), 1);
    assert_eq!(seqs(&o.read_from(0, 10)), [1, 2, 3]);
}
