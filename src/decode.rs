//! From Modbus registers to engineering values, and the read plans that fetch them.
//!
//! Devices answer slowly (an RS-485 rack at 19200 baud takes tens of milliseconds a request), so
//! points that sit close together are fetched in one read: [`plan_reads`] coalesces them within
//! the protocol's limits (125 registers / 2000 bits per request). [`decode`] then turns the words
//! of one point into a number, applying type, word order, scale and offset.

use std::time::Duration;

/// What a point measures (`kind`); votes and zone logic group detectors by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PointKind {
    Temperature,
    Smoke,
    Offgas,
    Hydrogen,
    Voltage,
    Current,
    Soc,
    State,
    Generic,
}

impl PointKind {
    pub const ALL: [PointKind; 9] = [
        PointKind::Temperature,
        PointKind::Smoke,
        PointKind::Offgas,
        PointKind::Hydrogen,
        PointKind::Voltage,
        PointKind::Current,
        PointKind::Soc,
        PointKind::State,
        PointKind::Generic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PointKind::Temperature => "temperature",
            PointKind::Smoke => "smoke",
            PointKind::Offgas => "offgas",
            PointKind::Hydrogen => "hydrogen",
            PointKind::Voltage => "voltage",
            PointKind::Current => "current",
            PointKind::Soc => "soc",
            PointKind::State => "state",
            PointKind::Generic => "generic",
        }
    }
}

/// One value read from a device (a `[[devices.points]]` entry, as validated by the config): where
/// it sits in the device and how its raw content becomes an engineering value.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// `id`: the point's name, unique within its device; the middle segment of its alarm keys
    /// (`device/point/rule`) and of its topics.
    pub id: String,
    /// `kind`: what the point measures; vote patterns may name it in place of a point id.
    pub kind: PointKind,
    /// `table`: which Modbus table the value is read from.
    pub table: Table,
    /// `address`: the first register (or bit) of the value, 0-based as on the wire.
    pub address: u16,
    /// `type`: how the registers are read (`u16`, `i16`, ..., `bool`).
    pub value_type: ValueType,
    /// `word_order`: for values wider than one register, which word comes first.
    pub word_order: WordOrder,
    /// `scale`: the raw value is multiplied by this ...
    pub scale: f64,
    /// `offset`: ... and this is added, giving the value in `unit`.
    pub offset: f64,
    /// `unit`: the engineering unit (`degC`, `ppm`, ...), shown in payloads and `check-config`.
    pub unit: String,
    /// `valid = [low, high]`: outside this range the reading is a sensor fault, not an alarm.
    pub valid: Option<(f64, f64)>,
    /// `stuck_after`: an unchanged raw value for this long is a sensor fault.
    pub stuck_after: Option<Duration>,
    /// `trouble`: raw values with which the detector reports its own trouble (e.g. an
    /// aspirating smoke detector's flow fault): a fault, never a reading.
    pub trouble: Vec<f64>,
    /// `field`: serial-lines only: the key (or the pattern's named group) this point's value
    /// comes from. Defaults to the point id.
    pub field: Option<String>,
    /// `sentinel`: the raw register content (bit pattern of the point's width, as on the wire)
    /// with which the device says "no value here" (SunSpec's "not implemented": 0x8000 for an
    /// int16, 0xFFFF for a uint16, ...). Such a reading is no value, never a number and not a
    /// fault, unless the point is `required`.
    pub sentinel: Option<u64>,
    /// `required`: a point whose sentinel is a fault (the device must give this value).
    pub required: bool,
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Holding,
    Input,
    Coil,
    Discrete,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::Discrete => "discrete",
        }
    }

    pub fn parse(s: &str) -> Option<Table> {
        [Table::Holding, Table::Input, Table::Coil, Table::Discrete]
            .into_iter()
            .find(|t| t.as_str() == s)
    }

    /// Bit tables hold single bits, register tables 16-bit words.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// The most one request may read (Modbus application protocol v1.1b3, 6.1-6.4).
    pub fn max_per_read(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }
}

/// How the raw words of a point are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U16,
    I16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
    Bool,
}

impl ValueType {
    pub const ALL: [ValueType; 9] = [
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
        ValueType::Bool,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
            ValueType::Bool => "bool",
        }
    }

    pub fn parse(s: &str) -> Option<ValueType> {
        ValueType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Registers (or bits, in a bit table) the value occupies.
    pub fn width(self) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 | ValueType::Bool => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 4,
        }
    }
}

/// For values wider than one register: which word comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordOrder {
    /// High word first (Modbus convention, "ABCD").
    Big,
    /// Low word first ("CDAB"), common on PLCs and some BMSes.
    Little,
}

/// One request of a read plan: a contiguous range of one table, and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSpan {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    /// Indexes into the device's point list.
    pub points: Vec<usize>,
}

/// Groups points into as few reads as the protocol limits allow, without spanning holes wider
/// than `max_gap` (unmapped registers in a hole make some devices answer with an exception).
///
/// Points may overlap (a register read both as u16 and as bool); each span covers whole points.
pub fn plan_reads(points: &[Point], max_gap: u16) -> Vec<ReadSpan> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| {
        (
            points[i].table,
            points[i].address,
            points[i].value_type.width(),
        )
    });
    let mut spans: Vec<ReadSpan> = Vec::new();
    for i in order {
        let p = &points[i];
        let width = if p.table.is_bits() {
            1
        } else {
            p.value_type.width()
        };
        let start = u32::from(p.address);
        let end = start + u32::from(width); // exclusive
        if let Some(last) = spans.last_mut() {
            let last_end = u32::from(last.start) + u32::from(last.count);
            let fits = last.table == p.table
                && start <= last_end + u32::from(max_gap)
                && end.max(last_end) - u32::from(last.start) <= u32::from(p.table.max_per_read());
            if fits {
                // The sort puts starts in order, so the span can only grow to the right.
                let new_end = end.max(last_end);
                last.count = (new_end - u32::from(last.start)) as u16;
                last.points.push(i);
                continue;
            }
        }
        spans.push(ReadSpan {
            table: p.table,
            start: p.address,
            count: width,
            points: vec![i],
        });
    }
    spans
}

/// The raw content of one point, before scale and offset: what `stuck_after` compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Raw {
    Int(i128),
    Float(f64),
    Bit(bool),
}

impl Raw {
    pub fn as_f64(self) -> f64 {
        match self {
            Raw::Int(v) => v as f64,
            Raw::Float(v) => v,
            Raw::Bit(b) => {
                if b {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// Why a point could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("needs {need} registers, the read returned {got}")]
    Short { need: usize, got: usize },
    #[error("value is not a number (NaN or infinite)")]
    NotFinite,
    /// The point's `sentinel`: the device has no value to give (not a reading, and a fault
    /// only for a `required` point).
    #[error("reads {sentinel:#X}, the device's \"no value\" (not implemented)")]
    NoValue { sentinel: u64 },
}

/// The raw content of a point as one unsigned bit pattern of its width, words joined in its
/// word order (high word first after reordering): what a `sentinel` is compared with.
pub fn raw_bits(value_type: ValueType, order: WordOrder, words: &[u16]) -> Option<u64> {
    let need = usize::from(value_type.width());
    let words = words.get(..need)?;
    let fold = |acc: u64, &x: &u16| (acc << 16) | u64::from(x);
    Some(match order {
        WordOrder::Big => words.iter().fold(0, fold),
        WordOrder::Little => words.iter().rev().fold(0, fold),
    })
}

/// Decodes one point from the registers that start at its address.
pub fn decode_words(
    value_type: ValueType,
    order: WordOrder,
    words: &[u16],
) -> Result<Raw, DecodeError> {
    let need = usize::from(value_type.width());
    if words.len() < need {
        return Err(DecodeError::Short {
            need,
            got: words.len(),
        });
    }
    let mut w = [0u16; 4];
    w[..need].copy_from_slice(&words[..need]);
    if order == WordOrder::Little {
        w[..need].reverse();
    }
    // Big-endian concatenation of the (now high-first) words.
    let joined: u64 = w[..need]
        .iter()
        .fold(0u64, |acc, &x| (acc << 16) | u64::from(x));
    let raw = match value_type {
        ValueType::U16 => Raw::Int(i128::from(w[0])),
        ValueType::I16 => Raw::Int(i128::from(w[0] as i16)),
        ValueType::Bool => Raw::Bit(w[0] != 0),
        ValueType::U32 => Raw::Int(i128::from(joined as u32)),
        ValueType::I32 => Raw::Int(i128::from(joined as u32 as i32)),
        ValueType::F32 => Raw::Float(f64::from(f32::from_bits(joined as u32))),
        ValueType::U64 => Raw::Int(i128::from(joined)),
        ValueType::I64 => Raw::Int(i128::from(joined as i64)),
        ValueType::F64 => Raw::Float(f64::from_bits(joined)),
    };
    if let Raw::Float(f) = raw {
        if !f.is_finite() {
            return Err(DecodeError::NotFinite);
        }
    }
    Ok(raw)
}

/// Raw value → engineering value (`raw * scale + offset`); booleans stay 0/1.
///
/// A result that is not a finite number (a huge raw value times the scale, or a non-finite
/// scale or offset that validation missed) is [`DecodeError::NotFinite`]: no rule can compare
/// it, so it must reach sensor health as a fault, never as a reading.
pub fn engineering(point: &Point, raw: Raw) -> Result<f64, DecodeError> {
    if let Raw::Bit(_) = raw {
        return Ok(raw.as_f64());
    }
    let v = raw.as_f64() * point.scale + point.offset;
    if !v.is_finite() {
        return Err(DecodeError::NotFinite);
    }
    // Rounded to 9 decimals so 572 × 0.1 reads 57.2, not 57.200000000000003; beyond about
    // 1e299 the rounding itself overflows, and such a value has no decimals to tidy.
    let rounded = (v * 1e9).round() / 1e9;
    Ok(if rounded.is_finite() { rounded } else { v })
}

/// A point decoded from a span's response: its raw content and engineering value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoded {
    pub raw: Raw,
    pub value: f64,
}

/// Register-table response → the point's value.
pub fn decode_point(point: &Point, span_start: u16, words: &[u16]) -> Result<Decoded, DecodeError> {
    let off = usize::from(point.address - span_start);
    let words = words.get(off..).unwrap_or(&[]);
    // Before decoding: a float sentinel (SunSpec's NaN) must read as "no value", not NaN.
    if let Some(sentinel) = point.sentinel {
        if raw_bits(point.value_type, point.word_order, words) == Some(sentinel) {
            return Err(DecodeError::NoValue { sentinel });
        }
    }
    let raw = decode_words(point.value_type, point.word_order, words)?;
    Ok(Decoded {
        raw,
        value: engineering(point, raw)?,
    })
}

/// Bit-table response → the point's value (0 or 1).
pub fn decode_bit(point: &Point, span_start: u16, bits: &[bool]) -> Result<Decoded, DecodeError> {
    let off = usize::from(point.address - span_start);
    let bit = *bits.get(off).ok_or(DecodeError::Short {
        need: off + 1,
        got: bits.len(),
    })?;
    let raw = Raw::Bit(bit);
    Ok(Decoded {
        raw,
        value: raw.as_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(table: Table, address: u16, t: ValueType) -> Point {
        Point {
            id: format!("p{address}"),
            kind: PointKind::Generic,
            table,
            address,
            value_type: t,
            word_order: WordOrder::Big,
            scale: 1.0,
            offset: 0.0,
            unit: String::new(),
            valid: None,
            stuck_after: None,
            trouble: Vec::new(),
            field: None,
            sentinel: None,
            required: false,
        }
    }

    #[test]
    fn a_sentinel_is_no_value_in_either_word_order_and_other_values_decode() {
        let mut p = point(Table::Holding, 10, ValueType::I16);
        p.sentinel = Some(0x8000);
        assert_eq!(
            decode_point(&p, 10, &[0x8000]),
            Err(DecodeError::NoValue { sentinel: 0x8000 })
        );
        assert_eq!(
            decode_point(&p, 10, &[0x8001]).map(|d| d.value),
            Ok(-32767.0)
        );
        let mut p = point(Table::Holding, 10, ValueType::U32);
        p.sentinel = Some(0x8000_0000);
        p.word_order = WordOrder::Little;
        assert_eq!(
            decode_point(&p, 9, &[0, 0x0000, 0x8000]),
            Err(DecodeError::NoValue {
                sentinel: 0x8000_0000
            })
        );
        assert_eq!(
            decode_point(&p, 9, &[0, 0x8000, 0x0000]).map(|d| d.value),
            Ok(32768.0)
        );
        // SunSpec's float32 "not implemented" is a NaN: no value, not a NaN fault.
        let mut p = point(Table::Holding, 0, ValueType::F32);
        p.sentinel = Some(0x7FC0_0000);
        assert_eq!(
            decode_point(&p, 0, &[0x7FC0, 0]),
            Err(DecodeError::NoValue {
                sentinel: 0x7FC0_0000
            })
        );
        assert_eq!(
            decode_point(&p, 0, &[0x7FC0, 1]),
            Err(DecodeError::NotFinite)
        );
    }

    #[test]
    fn decodes_every_type_in_both_word_orders() {
        use ValueType::*;
        let f32w = 57.25f32.to_bits();
        let f64w = (-1234.5f64).to_bits();
        let cases: Vec<(ValueType, Vec<u16>, Raw)> = vec![
            (U16, vec![0xFFFF], Raw::Int(65535)),
            (I16, vec![0xFFFF], Raw::Int(-1)),
            (I16, vec![572], Raw::Int(572)),
            (Bool, vec![7], Raw::Bit(true)),
            (Bool, vec![0], Raw::Bit(false)),
            (U32, vec![0x0001, 0x0002], Raw::Int(65538)),
            (I32, vec![0xFFFF, 0xFFFE], Raw::Int(-2)),
            (
                F32,
                vec![(f32w >> 16) as u16, f32w as u16],
                Raw::Float(57.25),
            ),
            (U64, vec![0, 0, 0x0001, 0x0000], Raw::Int(65536)),
            (I64, vec![0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], Raw::Int(-1)),
            (
                F64,
                vec![
                    (f64w >> 48) as u16,
                    (f64w >> 32) as u16,
                    (f64w >> 16) as u16,
                    f64w as u16,
                ],
                Raw::Float(-1234.5),
            ),
        ];
        for (t, words, want) in cases {
            assert_eq!(
                decode_words(t, WordOrder::Big, &words),
                Ok(want),
                "{t:?} big"
            );
            let mut rev = words.clone();
            rev.reverse();
            assert_eq!(
                decode_words(t, WordOrder::Little, &rev),
                Ok(want),
                "{t:?} little"
            );
        }
    }

    #[test]
    fn short_reads_and_nan_are_errors_not_values() {
        assert_eq!(
            decode_words(ValueType::U32, WordOrder::Big, &[1]),
            Err(DecodeError::Short { need: 2, got: 1 })
        );
        let nan = f32::NAN.to_bits();
        assert_eq!(
            decode_words(
                ValueType::F32,
                WordOrder::Big,
                &[(nan >> 16) as u16, nan as u16]
            ),
            Err(DecodeError::NotFinite)
        );
    }

    #[test]
    fn scale_and_offset_apply_to_numbers_not_bits() {
        let mut p = point(Table::Holding, 100, ValueType::I16);
        p.scale = 0.1;
        p.offset = -40.0;
        let d = decode_point(&p, 100, &[652]).unwrap();
        assert!((d.value - 25.2).abs() < 1e-9, "{}", d.value);
        let b = point(Table::Coil, 3, ValueType::Bool);
        assert_eq!(
            decode_bit(&b, 0, &[false, false, false, true])
                .unwrap()
                .value,
            1.0
        );
    }

    #[test]
    fn a_value_scale_and_offset_cannot_make_finite_is_an_error() {
        let mut p = point(Table::Holding, 100, ValueType::I16);
        p.offset = f64::NAN;
        assert_eq!(decode_point(&p, 100, &[1]), Err(DecodeError::NotFinite));
        let mut p = point(Table::Holding, 100, ValueType::U64);
        p.scale = f64::MAX;
        assert_eq!(
            decode_point(&p, 100, &[0xffff, 0xffff, 0xffff, 0xffff]),
            Err(DecodeError::NotFinite),
            "overflows to infinity"
        );
        // A finite value too large to round to 9 decimals is kept, not turned into infinity.
        let p = point(Table::Holding, 100, ValueType::F64);
        let big = 1e300f64.to_bits();
        let words = [
            (big >> 48) as u16,
            (big >> 32) as u16,
            (big >> 16) as u16,
            big as u16,
        ];
        assert_eq!(decode_point(&p, 100, &words).map(|d| d.value), Ok(1e300));
    }

    #[test]
    fn coalesces_neighbours_and_splits_at_limits_gaps_and_tables() {
        let pts = vec![
            point(Table::Holding, 116, ValueType::I16),
            point(Table::Holding, 100, ValueType::I16),
            point(Table::Holding, 120, ValueType::U16),
            point(Table::Holding, 130, ValueType::U32),
            point(Table::Holding, 200, ValueType::U16), // gap of 68 > max_gap
            point(Table::Input, 100, ValueType::U16),   // other table
            point(Table::Coil, 0, ValueType::Bool),
            point(Table::Coil, 10, ValueType::Bool),
            point(Table::Coil, 1000, ValueType::Bool), // far away: a new read
        ];
        let spans = plan_reads(&pts, 16);
        let got: Vec<(Table, u16, u16, Vec<usize>)> = spans
            .into_iter()
            .map(|s| (s.table, s.start, s.count, s.points))
            .collect();
        assert_eq!(
            got,
            vec![
                (Table::Holding, 100, 32, vec![1, 0, 2, 3]),
                (Table::Holding, 200, 1, vec![4]),
                (Table::Input, 100, 1, vec![5]),
                (Table::Coil, 0, 11, vec![6, 7]),
                (Table::Coil, 1000, 1, vec![8]),
            ]
        );
    }

    #[test]
    fn a_read_never_exceeds_125_registers() {
        let pts: Vec<Point> = (0..300u16)
            .map(|i| point(Table::Holding, i * 2, ValueType::U32))
            .collect();
        let spans = plan_reads(&pts, 16);
        assert!(spans.iter().all(|s| s.count <= 125));
        // 600 registers of contiguous u32s: 124 per read (62 whole points), so 5 reads.
        assert_eq!(spans.len(), 5);
        let covered: usize = spans.iter().map(|s| s.points.len()).sum();
        assert_eq!(covered, 300);
    }

    #[test]
    fn a_read_never_exceeds_2000_bits() {
        let pts: Vec<Point> = (0..=200u16)
            .map(|i| point(Table::Discrete, i * 10, ValueType::Bool))
            .collect();
        let spans = plan_reads(&pts, 16);
        let got: Vec<(u16, u16)> = spans.iter().map(|s| (s.start, s.count)).collect();
        assert_eq!(got, vec![(0, 1991), (2000, 1)]);
    }

    #[test]
    fn overlapping_points_share_a_read() {
        let pts = vec![
            point(Table::Holding, 10, ValueType::U32),
            point(Table::Holding, 11, ValueType::U16),
        ];
        let spans = plan_reads(&pts, 0);
        assert_eq!(spans.len(), 1);
        assert_eq!((spans[0].start, spans[0].count), (10, 2));
    }
}
