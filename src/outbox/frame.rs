//! How one outbox record is laid out on disk, and how a segment's bytes are read back.
//!
//! Kept apart from the file handling so that recovery, the part that must be right after a
//! power cut, is a pure function of a byte slice and can be tested at every byte offset.
//!
//! A record is framed as
//!
//! ```text
//! magic  u32 LE  0x31525745 ("EWR1")   lets a reader find the next record after damage
//! len    u32 LE  length of body
//! crc    u32 LE  CRC-32 (IEEE) of body
//! body:
//!   kind    u8   1 alarm event, 2 zone status, 3 message
//!   flags   u8   bit 0: retain
//!   pos     u64 LE  the outbox's own position: dense, increasing, the order of delivery
//!   seq     u64 LE  the alarm event's `seq` (0 for other kinds)
//!   time    u64 LE  milliseconds since the Unix epoch when appended (journal age)
//!   tlen    u16 LE  topic length, then the topic (UTF-8)
//!   payload         the rest
//! ```
//!
//! A torn write (power loss, SIGKILL mid-`write`) leaves a short or zero-filled tail; a flipped
//! bit leaves a CRC mismatch. Either way the damaged bytes are skipped: the reader looks for the
//! next magic whose record checks out, and reports the skipped range so it can be logged.

use super::{Kind, Record};

pub(crate) const MAGIC: u32 = 0x3152_5745;
/// magic + len + crc.
pub(crate) const HEADER: usize = 12;
/// kind + flags + pos + seq + time + tlen.
const FIXED_BODY: usize = 1 + 1 + 8 + 8 + 8 + 2;
/// A length field above this is damage, not a record (payloads are small JSON documents).
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;

/// Appends the framed record to `out`; returns the framed size.
pub(crate) fn encode(rec: &Record, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let topic = rec.topic.as_bytes();
    // Topics are built by emberwatch and far below 64 KiB; longer ones are cut rather than
    // corrupt the frame.
    let tlen = topic.len().min(u16::MAX as usize);
    let body_len = FIXED_BODY + tlen + rec.payload.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let body_start = out.len();
    out.push(rec.kind.code());
    out.push(u8::from(rec.retain));
    out.extend_from_slice(&rec.pos.to_le_bytes());
    out.extend_from_slice(&rec.seq.to_le_bytes());
    out.extend_from_slice(&rec.time_ms.to_le_bytes());
    out.extend_from_slice(&(tlen as u16).to_le_bytes());
    out.extend_from_slice(&topic[..tlen]);
    out.extend_from_slice(&rec.payload);
    let crc = crc32fast::hash(&out[body_start..]);
    out[body_start - 4..body_start].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// A record found in a segment, and where.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Found {
    pub offset: u64,
    pub size: u64,
    pub record: Record,
}

/// Bytes that were not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Damage {
    pub offset: u64,
    pub len: u64,
    /// The first check that failed, for the log line.
    pub reason: &'static str,
}

/// Everything a segment holds: valid records in file order, skipped ranges, and where the
/// valid data ends (the file is truncated there so appends never follow garbage).
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub records: Vec<Found>,
    pub damage: Vec<Damage>,
    pub valid_end: u64,
}

/// Reads every record out of a segment's bytes, skipping damage.
pub(crate) fn scan(bytes: &[u8]) -> Scan {
    scan_from(bytes, 0)
}

/// As [`scan`], but records before position `payload_from` come without their payload
/// (checked all the same): what every broker has is not copied into memory at start-up.
pub(crate) fn scan_from(bytes: &[u8], payload_from: u64) -> Scan {
    let mut scan = Scan::default();
    let mut at = 0usize;
    let mut bad_since: Option<(usize, &'static str)> = None;
    while at < bytes.len() {
        match decode_at(bytes, at, payload_from) {
            Ok((record, size)) => {
                if let Some((from, reason)) = bad_since.take() {
                    scan.damage.push(Damage {
                        offset: from as u64,
                        len: (at - from) as u64,
                        reason,
                    });
                }
                scan.records.push(Found {
                    offset: at as u64,
                    size: size as u64,
                    record,
                });
                at += size;
                scan.valid_end = at as u64;
            }
            Err(reason) => {
                bad_since.get_or_insert((at, reason));
                at += 1;
            }
        }
    }
    if let Some((from, reason)) = bad_since {
        scan.damage.push(Damage {
            offset: from as u64,
            len: (bytes.len() - from) as u64,
            reason,
        });
    }
    scan
}

/// The one record `bytes` holds from its start (a frame read back by its offset), or why not.
pub(crate) fn decode(bytes: &[u8]) -> Result<Record, &'static str> {
    decode_at(bytes, 0, 0).map(|(record, _)| record)
}

/// Decodes the record starting at `at`; returns it and its framed size, or why it is not one.
fn decode_at(bytes: &[u8], at: usize, payload_from: u64) -> Result<(Record, usize), &'static str> {
    let rest = &bytes[at..];
    if rest.len() < HEADER {
        return Err("short header");
    }
    if u32_at(rest, 0) != MAGIC {
        return Err("no record marker");
    }
    let len = u32_at(rest, 4) as usize;
    if !(FIXED_BODY..=MAX_BODY).contains(&len) {
        return Err("impossible length");
    }
    let Some(body) = rest.get(HEADER..HEADER + len) else {
        return Err("record runs past the end of the file");
    };
    if crc32fast::hash(body) != u32_at(rest, 8) {
        return Err("checksum mismatch");
    }
    let kind = Kind::from_code(body[0]).ok_or("unknown record kind")?;
    let retain = body[1] & 1 == 1;
    let pos = u64_at(body, 2);
    let seq = u64_at(body, 10);
    let time_ms = u64_at(body, 18);
    let tlen = u16::from_le_bytes([body[26], body[27]]) as usize;
    let Some(topic) = body.get(FIXED_BODY..FIXED_BODY + tlen) else {
        return Err("topic runs past the record");
    };
    let topic = std::str::from_utf8(topic).map_err(|_| "topic is not UTF-8")?;
    let payload = if pos < payload_from {
        Vec::new()
    } else {
        body[FIXED_BODY + tlen..].to_vec()
    };
    Ok((
        Record {
            pos,
            kind,
            seq,
            time_ms,
            topic: topic.to_string(),
            retain,
            payload,
        },
        HEADER + len,
    ))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pos: u64, payload: &str) -> Record {
        Record {
            pos,
            kind: Kind::Event,
            seq: pos + 100,
            time_ms: 1_700_000_000_000 + pos,
            topic: format!("p/alarms/z/d/p/r{pos}"),
            retain: pos % 2 == 0,
            payload: payload.as_bytes().to_vec(),
        }
    }

    fn encoded(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for r in records {
            starts.push(out.len());
            encode(r, &mut out);
        }
        (out, starts)
    }

    #[test]
    fn records_round_trip() {
        let records = [rec(0, "{}"), rec(1, ""), rec(2, "{\"a\":1}")];
        let (bytes, _) = encoded(&records);
        let scan = scan(&bytes);
        assert!(scan.damage.is_empty());
        assert_eq!(scan.valid_end, bytes.len() as u64);
        let got: Vec<Record> = scan.records.into_iter().map(|f| f.record).collect();
        assert_eq!(got, records);
    }

    #[test]
    fn a_cut_anywhere_in_the_last_record_leaves_the_others() {
        let records = [rec(0, "first"), rec(1, "second"), rec(2, "third one")];
        let (bytes, starts) = encoded(&records);
        for cut in starts[2]..bytes.len() {
            let scan = scan(&bytes[..cut]);
            assert_eq!(scan.records.len(), 2, "cut at {cut}");
            assert_eq!(scan.valid_end, starts[2] as u64, "cut at {cut}");
            if cut > starts[2] {
                assert_eq!(scan.damage.len(), 1, "cut at {cut}");
            }
        }
    }

    #[test]
    fn a_damaged_length_does_not_hide_the_records_after_it() {
        let records = [rec(0, "a"), rec(1, "b"), rec(2, "c")];
        let (mut bytes, starts) = encoded(&records);
        bytes[starts[1] + 4] ^= 0x40;
        let scan = scan(&bytes);
        let pos: Vec<u64> = scan.records.iter().map(|f| f.record.pos).collect();
        assert_eq!(pos, [0, 2]);
        assert_eq!(scan.damage.len(), 1);
        assert_eq!(scan.damage[0].offset, starts[1] as u64);
    }

    #[test]
    fn zero_fill_after_power_loss_is_damage() {
        let (mut bytes, starts) = encoded(&[rec(0, "a")]);
        let end = bytes.len();
        bytes.extend_from_slice(&[0; 100]);
        let scan = scan(&bytes);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.valid_end, end as u64);
        assert_eq!(starts, [0]);
    }
}
