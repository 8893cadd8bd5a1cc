//! Modbus TCP framing (the MBAP header and the read PDUs), free of I/O so that every hostile
//! reply can be table-tested; `modbus` does the reading and the waiting.
//!
//! We frame Modbus TCP ourselves rather than use tokio-modbus's client for the same reason `frame`
//! frames RTU: an operator needs to know *what* a device got wrong, in plain words. tokio-modbus
//! reports a mismatched reply with its Rust debug text (`Header { .. }`), accepts a reply carrying
//! more registers than were asked (and asserts on it in debug builds), and cannot tell that a
//! reply was followed by bytes nobody asked for, so a device that answers and then floods the
//! connection with garbage looked healthy every other poll.

use std::fmt;

use crate::decode::Table;
use crate::fieldbus::frame::{function_code, Payload};

/// Bytes of the MBAP header: transaction id, protocol id, length, unit id.
pub const HEADER: usize = 7;

/// The largest PDU a Modbus TCP frame may carry (application protocol v1.1b3, 4.1).
pub const MAX_PDU: usize = 253;

/// One read request as it goes on the wire.
pub fn read_request(transaction: u16, unit: u8, table: Table, start: u16, count: u16) -> [u8; 12] {
    let [th, tl] = transaction.to_be_bytes();
    let [sh, sl] = start.to_be_bytes();
    let [ch, cl] = count.to_be_bytes();
    // Length 6: unit id + function + start + count.
    [
        th,
        tl,
        0,
        0,
        0,
        6,
        unit,
        function_code(table),
        sh,
        sl,
        ch,
        cl,
    ]
}

/// What a device got wrong in a reply, worded for the operator who has to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The header's protocol id is not 0: not a Modbus TCP reply at all.
    ProtocolId(u16),
    /// The header announces a frame length Modbus does not allow.
    Length(u16),
    /// The reply belongs to another request.
    Transaction { asked: u16, got: u16 },
    /// The reply comes from another unit id.
    Unit { asked: u8, got: u8 },
    /// The reply answers another function.
    Function { asked: u8, got: u8 },
    /// The byte count inside the PDU disagrees with the PDU's length.
    ByteCount { announced: usize, carried: usize },
    /// More or fewer registers (or coils) than were asked.
    Count {
        what: &'static str,
        asked: usize,
        got: usize,
    },
    /// The reply was followed by bytes nobody asked for.
    Trailing(usize),
    /// Bytes were waiting on the connection before the request was even sent.
    Unsolicited(usize),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::ProtocolId(id) => {
                write!(f, "protocol id {id} instead of 0: not a Modbus TCP reply")
            }
            Problem::Length(n) => write!(
                f,
                "header announces {n} bytes, outside the 2 to {} Modbus allows",
                MAX_PDU + 1
            ),
            Problem::Transaction { asked, got } => write!(
                f,
                "reply to transaction {got} while transaction {asked} was asked"
            ),
            Problem::Unit { asked, got } => {
                write!(f, "reply from unit {got} while unit {asked} was asked")
            }
            Problem::Function { asked, got } => write!(
                f,
                "reply with function code {got} while function code {asked} was asked"
            ),
            Problem::ByteCount { announced, carried } => write!(
                f,
                "reply announces {announced} data bytes but carries {carried}"
            ),
            Problem::Count { what, asked, got } => {
                write!(f, "asked {asked} {what}, got {got}")
            }
            Problem::Trailing(n) => write!(f, "reply followed by {n} unexpected bytes"),
            Problem::Unsolicited(n) => {
                write!(f, "{n} unexpected bytes sent before any request")
            }
        }
    }
}

/// Checks a reply's header against the request; returns how many PDU bytes follow it.
pub fn header(h: &[u8; HEADER], transaction: u16, unit: u8) -> Result<usize, Problem> {
    let got_tid = u16::from_be_bytes([h[0], h[1]]);
    let protocol = u16::from_be_bytes([h[2], h[3]]);
    let len = u16::from_be_bytes([h[4], h[5]]);
    if protocol != 0 {
        return Err(Problem::ProtocolId(protocol));
    }
    // The length counts the unit id and the PDU; a PDU has at least a function and one byte.
    if !(3..=(MAX_PDU as u16 + 1)).contains(&len) {
        return Err(Problem::Length(len));
    }
    if got_tid != transaction {
        return Err(Problem::Transaction {
            asked: transaction,
            got: got_tid,
        });
    }
    if h[6] != unit {
        return Err(Problem::Unit {
            asked: unit,
            got: h[6],
        });
    }
    Ok(usize::from(len) - 1)
}

/// The payload of a reply PDU to a read of `count` items of `table`.
pub fn reply(pdu: &[u8], table: Table, count: u16) -> Result<Payload, Problem> {
    let fc = function_code(table);
    let Some((&func, rest)) = pdu.split_first() else {
        return Err(Problem::ByteCount {
            announced: 0,
            carried: 0,
        });
    };
    if func == fc | 0x80 {
        return match rest {
            [code] => Ok(Payload::Exception(*code)),
            _ => Err(Problem::ByteCount {
                announced: 1,
                carried: rest.len(),
            }),
        };
    }
    if func != fc {
        return Err(Problem::Function {
            asked: fc,
            got: func,
        });
    }
    let Some((&n, data)) = rest.split_first() else {
        return Err(Problem::ByteCount {
            announced: 0,
            carried: 0,
        });
    };
    if usize::from(n) != data.len() {
        return Err(Problem::ByteCount {
            announced: usize::from(n),
            carried: data.len(),
        });
    }
    let asked = usize::from(count);
    if table.is_bits() {
        if data.len() != asked.div_ceil(8) {
            return Err(Problem::Count {
                what: "coils",
                asked,
                // What the bytes could hold: the exact count is not on the wire for bits.
                got: data.len() * 8,
            });
        }
        let bits = (0..asked).map(|i| data[i / 8] & (1 << (i % 8)) != 0);
        Ok(Payload::Bits(bits.collect()))
    } else {
        if data.len() % 2 != 0 || data.len() / 2 != asked {
            return Err(Problem::Count {
                what: "registers",
                asked,
                got: data.len() / 2,
            });
        }
        let words = data
            .chunks_exact(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]));
        Ok(Payload::Words(words.collect()))
    }
}

/// A reply as a server would send it (tests and benchmarks' hostile devices).
pub fn reply_frame(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let len = (pdu.len() + 1) as u16;
    let mut f = Vec::with_capacity(HEADER + pdu.len());
    f.extend_from_slice(&transaction.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.push(unit);
    f.extend_from_slice(pdu);
    f
}

/// The PDU of a register read reply carrying `words`.
pub fn words_pdu(table: Table, words: &[u16]) -> Vec<u8> {
    let mut p = vec![function_code(table), (words.len() * 2) as u8];
    for w in words {
        p.extend_from_slice(&w.to_be_bytes());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(b: &[u8]) -> [u8; HEADER] {
        b.try_into().unwrap()
    }

    #[test]
    fn a_request_is_the_twelve_bytes_of_the_specification() {
        assert_eq!(
            read_request(0x0102, 1, Table::Holding, 100, 2),
            [1, 2, 0, 0, 0, 6, 1, 3, 0, 100, 0, 2]
        );
    }

    #[test]
    fn every_wrong_header_is_named_in_plain_words() {
        let cases: &[(&[u8], Problem, &str)] = &[
            (
                &[0, 7, 0, 9, 0, 7, 1],
                Problem::ProtocolId(9),
                "protocol id 9 instead of 0: not a Modbus TCP reply",
            ),
            (
                &[0, 7, 0, 0, 0, 0, 1],
                Problem::Length(0),
                "header announces 0 bytes, outside the 2 to 254 Modbus allows",
            ),
            (
                &[0, 7, 0, 0, 0xFF, 0xFF, 1],
                Problem::Length(65535),
                "header announces 65535 bytes, outside the 2 to 254 Modbus allows",
            ),
            (
                &[0, 8, 0, 0, 0, 7, 1],
                Problem::Transaction { asked: 7, got: 8 },
                "reply to transaction 8 while transaction 7 was asked",
            ),
            (
                &[0, 7, 0, 0, 0, 7, 2],
                Problem::Unit { asked: 1, got: 2 },
                "reply from unit 2 while unit 1 was asked",
            ),
        ];
        for (bytes, problem, text) in cases {
            let got = header(&hdr(bytes), 7, 1).unwrap_err();
            assert_eq!(&got, problem);
            assert_eq!(got.to_string(), *text);
            assert!(!text.contains('{'), "no debug text: {text}");
        }
        assert_eq!(header(&hdr(&[0, 7, 0, 0, 0, 7, 1]), 7, 1), Ok(6));
    }

    #[test]
    fn a_reply_with_more_or_fewer_registers_than_asked_is_refused() {
        let more = words_pdu(Table::Holding, &[1, 2, 3]);
        let e = reply(&more, Table::Holding, 2).unwrap_err();
        assert_eq!(e.to_string(), "asked 2 registers, got 3");
        let fewer = words_pdu(Table::Input, &[1]);
        assert_eq!(
            reply(&fewer, Table::Input, 2).unwrap_err().to_string(),
            "asked 2 registers, got 1"
        );
        assert_eq!(
            reply(&words_pdu(Table::Holding, &[1, 2]), Table::Holding, 2),
            Ok(Payload::Words(vec![1, 2]))
        );
    }

    #[test]
    fn pdus_that_lie_about_themselves_are_refused() {
        // Byte count 4, two bytes carried.
        assert_eq!(
            reply(&[3, 4, 0, 1], Table::Holding, 2)
                .unwrap_err()
                .to_string(),
            "reply announces 4 data bytes but carries 2"
        );
        assert_eq!(
            reply(&[4, 2, 0, 1], Table::Holding, 1)
                .unwrap_err()
                .to_string(),
            "reply with function code 4 while function code 3 was asked"
        );
        assert_eq!(
            reply(&[0x83, 2], Table::Holding, 1),
            Ok(Payload::Exception(2))
        );
        assert_eq!(
            reply(&[1, 1, 0b101], Table::Coil, 3),
            Ok(Payload::Bits(vec![true, false, true]))
        );
        assert_eq!(
            reply(&[1, 2, 0, 0], Table::Coil, 3)
                .unwrap_err()
                .to_string(),
            "asked 3 coils, got 16"
        );
        assert!(reply(&[], Table::Coil, 3).is_err());
        assert!(reply(&[3], Table::Holding, 1).is_err());
    }
}
