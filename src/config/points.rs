//! `[[devices.points]]`: the values read from a device. The point type itself belongs to
//! `decode` (it is the register description that plans and decodes reads); this file holds its
//! raw form, its defaults and its validator.

use std::time::Duration;

use serde::Deserialize;

use super::validate::Validator;
use crate::decode::{Point, PointKind, Table, ValueType, WordOrder};

/// Default `kind`.
pub const DEFAULT_KIND: PointKind = PointKind::Generic;
/// Default `table`.
pub const DEFAULT_TABLE: Table = Table::Holding;
/// Default `type` in a register table (a bit table's is `bool`, the only type it holds).
pub const DEFAULT_REGISTER_TYPE: ValueType = ValueType::U16;
/// Default `word_order`: high word first, the Modbus convention.
pub const DEFAULT_WORD_ORDER: WordOrder = WordOrder::Big;
/// Default `scale`: the raw value as is.
pub const DEFAULT_SCALE: f64 = 1.0;
/// Default `offset`.
pub const DEFAULT_OFFSET: f64 = 0.0;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawPoint {
    id: Option<String>,
    kind: Option<String>,
    table: Option<String>,
    address: Option<i64>,
    #[serde(rename = "type")]
    value_type: Option<String>,
    word_order: Option<String>,
    scale: Option<f64>,
    offset: Option<f64>,
    unit: Option<String>,
    valid: Option<Vec<f64>>,
    stuck_after: Option<String>,
    trouble: Vec<f64>,
    field: Option<String>,
    sentinel: Option<i64>,
    required: Option<bool>,
}

impl Validator {
    pub(super) fn point(&mut self, at: &str, p: RawPoint, lines: bool) -> Point {
        let id = self.id(&format!("{at}.id"), p.id, &['_']);
        let kind = match p.kind.as_deref() {
            None => DEFAULT_KIND,
            Some(k) => PointKind::ALL
                .into_iter()
                .find(|v| v.as_str() == k)
                .unwrap_or_else(|| {
                    self.problem(
                        format!("{at}.kind"),
                        format!("unknown kind {k:?} (expected temperature, smoke, offgas, hydrogen, voltage, current, soc, state or generic)"),
                    );
                    DEFAULT_KIND
                }),
        };
        let table = match p.table.as_deref() {
            None => DEFAULT_TABLE,
            Some(t) => Table::parse(t).unwrap_or_else(|| {
                self.problem(
                    format!("{at}.table"),
                    format!("unknown table {t:?} (expected holding, input, coil or discrete)"),
                );
                DEFAULT_TABLE
            }),
        };
        // A serial-lines point has a field instead of a register.
        let address: u16 = match p.address {
            None if lines => 0,
            a => match self.required(&format!("{at}.address"), a) {
                Some(a) => self.int(&format!("{at}.address"), Some(a), 0, "0-65535"),
                None => 0,
            },
        };
        if p.field.is_some() && !lines {
            self.problem(
                format!("{at}.field"),
                "only points of serial-lines devices have a field (Modbus points have an address)",
            );
        }
        let value_type = match p.value_type.as_deref() {
            None if table.is_bits() => ValueType::Bool,
            None => DEFAULT_REGISTER_TYPE,
            Some(t) => ValueType::parse(t).unwrap_or_else(|| {
                self.problem(
                    format!("{at}.type"),
                    format!("unknown type {t:?} (expected u16, i16, u32, i32, f32, u64, i64, f64 or bool)"),
                );
                DEFAULT_REGISTER_TYPE
            }),
        };
        if table.is_bits() && value_type != ValueType::Bool {
            self.problem(
                format!("{at}.type"),
                format!("{} table holds bits: type must be bool", table.as_str()),
            );
        }
        if u32::from(address) + u32::from(value_type.width()) > 65536 {
            self.problem(
                format!("{at}.address"),
                format!(
                    "{address} + {} registers runs past 65535",
                    value_type.width()
                ),
            );
        }
        let word_order = match p.word_order.as_deref() {
            None => DEFAULT_WORD_ORDER,
            Some("big") => WordOrder::Big,
            Some("little") => WordOrder::Little,
            Some(w) => {
                self.problem(
                    format!("{at}.word_order"),
                    format!("unknown word order {w:?} (expected big or little)"),
                );
                DEFAULT_WORD_ORDER
            }
        };
        let scale = p.scale.unwrap_or(DEFAULT_SCALE);
        if !scale.is_finite() || scale == 0.0 {
            self.problem(format!("{at}.scale"), "must be a non-zero number");
        }
        let offset = p.offset.unwrap_or(DEFAULT_OFFSET);
        // TOML spells `nan` and `inf`: with either, every reading decodes to a non-number that
        // no threshold compares against, so the point would watch nothing.
        if !offset.is_finite() {
            self.problem(
                format!("{at}.offset"),
                format!("{offset} is not a finite number: no reading could be computed"),
            );
        }
        let valid = match p.valid {
            None => None,
            Some(v) if v.len() == 2 && v[0] < v[1] => Some((v[0], v[1])),
            Some(v) => {
                self.problem(
                    format!("{at}.valid"),
                    format!("{v:?} must be [low, high] with low < high"),
                );
                None
            }
        };
        let sentinel = self.sentinel(at, p.sentinel, table, value_type, lines);
        let required = p.required.unwrap_or(false);
        if required && sentinel.is_none() {
            self.problem(
                format!("{at}.required"),
                "only a point with a `sentinel` can be required (without one, every reading is a value)",
            );
        }
        let stuck_after = p
            .stuck_after
            .map(|s| self.duration(&format!("{at}.stuck_after"), Some(s), Duration::ZERO));
        Point {
            id,
            kind,
            table,
            address,
            value_type,
            word_order,
            scale,
            offset,
            unit: p.unit.unwrap_or_default(),
            valid,
            stuck_after,
            trouble: p.trouble,
            field: p.field,
            sentinel,
            required,
        }
    }

    /// `sentinel`: written as the register content (`0x8000`) or, for a signed type, as the
    /// value it decodes to (`-32768`); kept as the bit pattern of the point's width.
    fn sentinel(
        &mut self,
        at: &str,
        sentinel: Option<i64>,
        table: Table,
        value_type: ValueType,
        lines: bool,
    ) -> Option<u64> {
        let s = sentinel?;
        if lines || table.is_bits() {
            self.problem(
                format!("{at}.sentinel"),
                "only a point read from registers (holding or input) has a sentinel",
            );
            return None;
        }
        let bits = 16 * u32::from(value_type.width());
        let fits = if bits >= 64 {
            true
        } else if s >= 0 {
            s < 1i64 << bits
        } else {
            s >= -(1i64 << (bits - 1))
        };
        if !fits {
            self.problem(
                format!("{at}.sentinel"),
                format!(
                    "{s} does not fit the {bits} bits of a {}",
                    value_type.as_str()
                ),
            );
            return None;
        }
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        Some((s as u64) & mask)
    }
}
