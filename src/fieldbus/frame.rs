//! Modbus RTU framing for the bus owner: building read requests and finding the reply in whatever
//! bytes came back.
//!
//! We frame RTU ourselves instead of using tokio-modbus's client because an RS-485 bus needs to
//! know *what went wrong*: tokio-modbus silently drops bytes it cannot decode and reports every
//! failure as one I/O error, while an operator commissioning a bus needs CRC errors, short frames,
//! replies from the wrong unit and line noise counted separately (a noisy cable, a duplicate unit
//! id and a wrong baud rate look alike otherwise). Kept free of I/O and clocks so that every
//! corruption can be table-tested; `bus` does the reading and the waiting.

use crate::decode::Table;

/// The most bytes an RTU frame may have (Modbus over serial line v1.02, 2.5.1.1).
pub const MAX_FRAME: usize = 256;

/// CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The function code that reads a table (FC 01-04).
pub fn function_code(table: Table) -> u8 {
    match table {
        Table::Coil => 0x01,
        Table::Discrete => 0x02,
        Table::Holding => 0x03,
        Table::Input => 0x04,
    }
}

/// One read request as it goes on the wire: unit, function, start, count, CRC.
pub fn read_request(unit: u8, table: Table, start: u16, count: u16) -> [u8; 8] {
    let [sh, sl] = start.to_be_bytes();
    let [ch, cl] = count.to_be_bytes();
    let mut f = [unit, function_code(table), sh, sl, ch, cl, 0, 0];
    let [lo, hi] = crc16(&f[..6]).to_le_bytes();
    f[6] = lo;
    f[7] = hi;
    f
}

/// What a read request's reply carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Words(Vec<u16>),
    Bits(Vec<bool>),
    /// A Modbus exception code (the device refused the request).
    Exception(u8),
}

/// What the bytes received so far say about the reply to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// No complete answer yet: keep reading until the timeout.
    Incomplete,
    /// The answer, and how many bytes of noise preceded it (0 on a clean bus).
    Reply { payload: Payload, skipped: usize },
}

/// Why the bytes received by the timeout were not an answer; each is counted per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing at all came back.
    Silent,
    /// A frame of the expected length whose CRC did not match (noise, or a baud/parity mismatch).
    Crc,
    /// The start of an answer that never completed (a collision, or the device reset).
    Short,
    /// Bytes that never formed a frame.
    Garbage,
}

/// Everything learned from the bytes of one exchange: the answer (if any) and every anomaly
/// seen on the way, so the caller can count them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seen {
    /// Well-formed frames (CRC good) from other units: a duplicate unit id, or a slave answering
    /// a request addressed to someone else.
    pub wrong_unit: Vec<u8>,
}

/// Looks for the reply of `unit` to a read of `count` items of `table` in `buf`.
///
/// The reply may be preceded by noise (line turnaround glitches, a late answer to an earlier
/// request that timed out): every offset is tried, and the first frame whose CRC holds wins. A
/// CRC-valid frame from another unit is noted in `seen` and skipped. A frame that decodes but
/// answers with a different length or function than asked is not accepted as an answer.
pub fn scan(buf: &[u8], unit: u8, table: Table, count: u16, seen: &mut Seen) -> Scan {
    let fc = function_code(table);
    let mut at = 0;
    while at + 5 <= buf.len() {
        let rest = &buf[at..];
        let Some(len) = frame_len(rest, fc) else {
            at += 1;
            continue;
        };
        if rest.len() < len {
            // Could be the answer, still arriving; a complete valid frame further on would be
            // caught on a later call once this candidate proves itself or the timeout ends it.
            if let Some(found) = later_frame(buf, at + 1, unit, table, count, seen) {
                return found;
            }
            return Scan::Incomplete;
        }
        let frame = &rest[..len];
        if !crc_ok(frame) {
            at += 1;
            continue;
        }
        if frame[0] != unit {
            seen.wrong_unit.push(frame[0]);
            at += len;
            continue;
        }
        if let Some(payload) = payload(frame, table, count) {
            return Scan::Reply {
                payload,
                skipped: at,
            };
        }
        at += 1;
    }
    Scan::Incomplete
}

/// A complete, CRC-valid answer starting at or after `from`, if there is one.
fn later_frame(
    buf: &[u8],
    from: usize,
    unit: u8,
    table: Table,
    count: u16,
    seen: &mut Seen,
) -> Option<Scan> {
    let tail = buf.get(from..)?;
    let mut inner = Seen::default();
    match scan(tail, unit, table, count, &mut inner) {
        Scan::Reply { payload, skipped } => {
            seen.wrong_unit.extend(inner.wrong_unit);
            Some(Scan::Reply {
                payload,
                skipped: from + skipped,
            })
        }
        Scan::Incomplete => None,
    }
}

/// Names what is wrong with the bytes left when the timeout ends an exchange without an answer.
/// Well-formed frames from other units are skipped (they are counted as wrong-unit replies by
/// [`scan`]); `Silent` then means nothing else came.
pub fn classify_leftover(buf: &[u8], unit: u8, table: Table) -> Fault {
    let fc = function_code(table);
    let mut at = 0;
    let mut noise = false;
    while at < buf.len() {
        let rest = &buf[at..];
        let len = frame_len(rest, fc);
        let complete = len.filter(|&l| rest.len() >= l);
        if let Some(l) = complete {
            if crc_ok(&rest[..l]) && rest[0] != unit {
                at += l;
                continue;
            }
        }
        if rest[0] == unit && len.is_some() {
            return match complete {
                Some(l) if !crc_ok(&rest[..l]) => Fault::Crc,
                // A valid frame of ours that did not answer what was asked.
                Some(_) => Fault::Garbage,
                None => Fault::Short,
            };
        }
        if rest.len() < 3
            && rest[0] == unit
            && rest.get(1).is_none_or(|f| *f == fc || *f == fc | 0x80)
        {
            return Fault::Short;
        }
        noise = true;
        at += 1;
    }
    if noise {
        Fault::Garbage
    } else {
        Fault::Silent
    }
}

/// The length of a reply frame to function `fc` starting at `b[0]`, if `b` starts like one.
fn frame_len(b: &[u8], fc: u8) -> Option<usize> {
    let func = *b.get(1)?;
    if func == fc | 0x80 {
        return Some(5);
    }
    if func != fc {
        return None;
    }
    let n = usize::from(*b.get(2)?);
    // unit, function, byte count, data, CRC
    let len = 3 + n + 2;
    (len <= MAX_FRAME).then_some(len)
}

fn crc_ok(frame: &[u8]) -> bool {
    let Some((body, crc)) = frame.split_last_chunk::<2>() else {
        return false;
    };
    crc16(body) == u16::from_le_bytes(*crc)
}

/// The payload of a CRC-valid frame from the right unit, if it answers what was asked.
fn payload(frame: &[u8], table: Table, count: u16) -> Option<Payload> {
    let fc = function_code(table);
    let func = *frame.get(1)?;
    if func == fc | 0x80 {
        return Some(Payload::Exception(*frame.get(2)?));
    }
    let n = usize::from(*frame.get(2)?);
    let data = frame.get(3..3 + n)?;
    if table.is_bits() {
        if n != usize::from(count).div_ceil(8) {
            return None;
        }
        let bits = (0..usize::from(count))
            .map(|i| data[i / 8] & (1 << (i % 8)) != 0)
            .collect();
        Some(Payload::Bits(bits))
    } else {
        if n != 2 * usize::from(count) {
            return None;
        }
        let words = data
            .chunks_exact(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .collect();
        Some(Payload::Words(words))
    }
}

/// A reply frame as a slave would send it (tests, the benchmark's fake slave).
pub fn reply_frame(unit: u8, table: Table, payload: &Payload) -> Vec<u8> {
    let fc = function_code(table);
    let mut f = vec![unit];
    match payload {
        Payload::Exception(code) => {
            f.push(fc | 0x80);
            f.push(*code);
        }
        Payload::Words(words) => {
            f.push(fc);
            f.push((words.len() * 2).min(250) as u8);
            for w in words.iter().take(125) {
                f.extend_from_slice(&w.to_be_bytes());
            }
        }
        Payload::Bits(bits) => {
            f.push(fc);
            let n = bits.len().div_ceil(8).min(250);
            f.push(n as u8);
            let mut bytes = vec![0u8; n];
            for (i, b) in bits.iter().enumerate().take(n * 8) {
                if *b {
                    bytes[i / 8] |= 1 << (i % 8);
                }
            }
            f.extend_from_slice(&bytes);
        }
    }
    let [lo, hi] = crc16(&f).to_le_bytes();
    f.push(lo);
    f.push(hi);
    f
}

/// How long one character takes on the wire: start bit, data bits, parity bit, stop bits.
pub fn char_time(baud: u32, data_bits: u8, parity: bool, stop_bits: u8) -> std::time::Duration {
    let bits = 1 + u32::from(data_bits) + u32::from(parity) + u32::from(stop_bits);
    std::time::Duration::from_nanos(u64::from(bits) * 1_000_000_000 / u64::from(baud.max(1)))
}

/// The silence that separates frames: 3.5 characters, but fixed at 1.75 ms above 19200 baud
/// (Modbus over serial line v1.02, 2.5.1.1), where timers cannot resolve so short a gap.
pub fn inter_frame(baud: u32, char_time: std::time::Duration) -> std::time::Duration {
    if baud > 19200 {
        std::time::Duration::from_micros(1750)
    } else {
        char_time * 7 / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(unit: u8, w: &[u16]) -> Vec<u8> {
        reply_frame(unit, Table::Holding, &Payload::Words(w.to_vec()))
    }

    #[test]
    fn crc_matches_the_specification_example() {
        // Modbus over serial line v1.02, 6.2.2: 02 07 → CRC 0x1241 (sent 41 12).
        assert_eq!(crc16(&[0x02, 0x07]), 0x1241);
        // A read of 1 holding register at 116 from unit 1, as mbpoll sends it.
        assert_eq!(
            read_request(1, Table::Holding, 116, 1),
            [0x01, 0x03, 0x00, 0x74, 0x00, 0x01, 0xC4, 0x10]
        );
    }

    #[test]
    fn replies_are_found_through_every_kind_of_corruption() {
        let good = words(1, &[250, 0]);
        let mut bad_crc = good.clone();
        bad_crc[4] ^= 0x40;
        let other = words(2, &[7, 7]);
        let ok = Scan::Reply {
            payload: Payload::Words(vec![250, 0]),
            skipped: 0,
        };
        let cat = |parts: &[&[u8]]| parts.concat();
        // (what arrived, the scan, wrong units noted, leftover classification at timeout)
        type Case = (&'static str, Vec<u8>, Scan, Vec<u8>, Fault);
        let cases: Vec<Case> = vec![
            ("clean", good.clone(), ok.clone(), vec![], Fault::Garbage),
            (
                "noise first",
                cat(&[&[0x00, 0xFF, 0x13], &good]),
                Scan::Reply {
                    payload: Payload::Words(vec![250, 0]),
                    skipped: 3,
                },
                vec![],
                Fault::Garbage,
            ),
            (
                "wrong unit then right",
                cat(&[&other, &good]),
                Scan::Reply {
                    payload: Payload::Words(vec![250, 0]),
                    skipped: other.len(),
                },
                vec![2],
                Fault::Garbage,
            ),
            (
                "wrong unit only",
                other.clone(),
                Scan::Incomplete,
                vec![2],
                Fault::Silent,
            ),
            (
                "bad crc",
                bad_crc.clone(),
                Scan::Incomplete,
                vec![],
                Fault::Crc,
            ),
            (
                "short",
                good[..5].to_vec(),
                Scan::Incomplete,
                vec![],
                Fault::Short,
            ),
            (
                "noise only",
                vec![0xFF; 9],
                Scan::Incomplete,
                vec![],
                Fault::Garbage,
            ),
            ("nothing", vec![], Scan::Incomplete, vec![], Fault::Silent),
            (
                "bad crc then a good retry frame",
                cat(&[&bad_crc, &good]),
                Scan::Reply {
                    payload: Payload::Words(vec![250, 0]),
                    skipped: bad_crc.len(),
                },
                vec![],
                Fault::Crc,
            ),
            (
                "wrong length for the request",
                words(1, &[250]),
                Scan::Incomplete,
                vec![],
                Fault::Garbage,
            ),
        ];
        for (name, buf, want, wrong, fault) in cases {
            let mut seen = Seen::default();
            assert_eq!(scan(&buf, 1, Table::Holding, 2, &mut seen), want, "{name}");
            assert_eq!(seen.wrong_unit, wrong, "{name}");
            assert_eq!(
                classify_leftover(&buf, 1, Table::Holding),
                fault,
                "{name} at timeout"
            );
        }
    }

    #[test]
    fn a_frame_still_arriving_is_incomplete_not_an_error() {
        let good = words(1, &[1, 2, 3]);
        for cut in 0..good.len() {
            let mut seen = Seen::default();
            assert_eq!(
                scan(&good[..cut], 1, Table::Holding, 3, &mut seen),
                Scan::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn exceptions_and_bits_decode() {
        let ex = reply_frame(1, Table::Holding, &Payload::Exception(2));
        assert_eq!(
            scan(&ex, 1, Table::Holding, 5, &mut Seen::default()),
            Scan::Reply {
                payload: Payload::Exception(2),
                skipped: 0
            }
        );
        let bits = vec![
            true, false, true, true, false, false, false, false, true, false,
        ];
        let f = reply_frame(3, Table::Coil, &Payload::Bits(bits.clone()));
        assert_eq!(
            scan(&f, 3, Table::Coil, 10, &mut Seen::default()),
            Scan::Reply {
                payload: Payload::Bits(bits),
                skipped: 0
            }
        );
    }

    #[test]
    fn inter_frame_silence_follows_the_specification() {
        let c = char_time(9600, 8, true, 1);
        assert_eq!(c.as_micros(), 1145); // 11 bits at 9600
        assert_eq!(inter_frame(9600, c).as_micros(), 4010);
        let c = char_time(115200, 8, false, 1);
        assert_eq!(inter_frame(115200, c).as_micros(), 1750);
    }
}
