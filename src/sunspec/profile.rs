//! The `[[profiles]]` block `discover` prints for the battery models it found: each useful
//! point with its address, type, unit, SunSpec's scale factor applied and its "not implemented"
//! sentinel, ready to paste into a configuration.
//!
//! Scale factors are SunSpec points of their own (`SoC_SF`), read by a client at poll time;
//! emberwatch's points carry a fixed `scale`. So the scale factor is read here, once, and
//! written as the point's `scale` with a comment naming its register, and every scale factor
//! used is also a point of the profile (`string_soc_sf`) whose `valid` range is the value read
//! now: a device that changes it later raises that point's out-of-range fault (the scales
//! would be wrong) instead of publishing values off by a power of ten.

use std::fmt::Write as _;

use super::chain::Model;
use super::models::{self, ModelDef, PointDef, SunsType};

/// A battery model found in the chain and its registers, from its ID register on.
#[derive(Debug, Clone)]
pub struct Found {
    pub model: Model,
    pub words: Vec<u16>,
}

/// The registers of a battery model `discover` reads: its fixed part, or less if the device
/// says the model is shorter.
pub fn body_len(m: &Model) -> Option<u16> {
    let def = models::battery(m.id)?;
    Some(m.len.min(def.fixed_len) + 2)
}

/// A scale factor as SunSpec allows it: -10..=10 (SunSpec Information Model Specification).
fn scale_text(sf: i16) -> Option<String> {
    match sf {
        0..=10 => Some(format!("{}.0", 10u64.pow(sf.unsigned_abs().into()))),
        -10..=-1 => Some(format!(
            "0.{}1",
            "0".repeat(usize::from(sf.unsigned_abs()) - 1)
        )),
        _ => None,
    }
}

/// The `[[profiles]]` block for every battery model in `found`, or `None` if there is none or
/// none of their points could be written (models too short, scale factors not implemented).
/// `origin` says where the map was read (for the header comment).
pub fn block(profile_id: &str, origin: &str, found: &[Found]) -> Option<String> {
    let batteries: Vec<(&Found, &ModelDef)> = found
        .iter()
        .filter_map(|f| models::battery(f.model.id).map(|d| (f, d)))
        .collect();
    if batteries.is_empty() {
        return None;
    }
    let mut out = String::new();
    let list: Vec<String> = batteries
        .iter()
        .map(|(f, d)| format!("{} {} at {}", d.id, d.name, f.model.start))
        .collect();
    let _ = writeln!(
        out,
        "# SunSpec battery models of {origin} (emberwatch discover): {}.",
        list.join(", ")
    );
    let _ = writeln!(
        out,
        "# Scales are the scale factors read now; each *_sf point re-reads its scale factor at every\n\
         # poll and is out of range (a fault) if the device changes it: then run discover again.\n\
         # A sentinel is the device's \"not implemented\": no value (null), a fault only if required."
    );
    let _ = writeln!(out, "[[profiles]]\nid = \"{profile_id}\"");
    let mut seen: Vec<u16> = Vec::new();
    let mut points = 0;
    for (f, def) in batteries {
        let n = seen.iter().filter(|&&id| id == def.id).count() + 1;
        seen.push(def.id);
        let prefix = if n == 1 {
            def.prefix.to_string()
        } else {
            format!("{}{n}", def.prefix)
        };
        points += model_points(&mut out, &prefix, f, def);
    }
    // A profile without points is refused by check-config: better none at all.
    (points > 0).then_some(out)
}

/// The register at `offset` from the model's ID register, if the device served it.
fn word(f: &Found, offset: u16) -> Option<u16> {
    f.words.get(usize::from(offset)).copied()
}

/// Writes the model's points; returns how many.
fn model_points(out: &mut String, prefix: &str, f: &Found, def: &ModelDef) -> usize {
    let mut written = 0;
    let start = f.model.start;
    let _ = writeln!(out, "\n  # {} {} at register {start}", def.id, def.name);
    let addr = |offset: u16| u32::from(start) + u32::from(offset);
    let mut sfs_used: Vec<(&str, u16, i16)> = Vec::new();
    for pt in def.points {
        if u32::from(pt.offset + pt.ty.width()) > u32::from(f.model.len) + 2
            || word(f, pt.offset + pt.ty.width() - 1).is_none()
        {
            let _ = writeln!(
                out,
                "  # {} left out: past the model's length {}",
                pt.name, f.model.len
            );
            continue;
        }
        let scale = match pt.sf {
            None => None,
            Some(sf_name) => {
                let Some(sf) = def.sfs.iter().find(|s| s.name == sf_name) else {
                    continue;
                };
                let Some(raw) = word(f, sf.offset).filter(|_| sf.offset <= f.model.len + 1) else {
                    let _ = writeln!(
                        out,
                        "  # {} left out: its scale factor {sf_name} is past the model's length",
                        pt.name
                    );
                    continue;
                };
                let value = raw as i16;
                if u64::from(raw) == SunsType::Sunssf.sentinel() {
                    let _ = writeln!(
                        out,
                        "  # {} left out: its scale factor {sf_name} (register {}) is not implemented (0x8000)",
                        pt.name,
                        addr(sf.offset)
                    );
                    continue;
                }
                let Some(text) = scale_text(value) else {
                    let _ = writeln!(
                        out,
                        "  # {} left out: its scale factor {sf_name} (register {}) reads {value}, outside SunSpec's -10..10",
                        pt.name,
                        addr(sf.offset)
                    );
                    continue;
                };
                if !sfs_used.iter().any(|(n, _, _)| *n == sf_name) {
                    sfs_used.push((sf_name, sf.offset, value));
                }
                Some((text, sf_name, addr(sf.offset), value))
            }
        };
        point(out, prefix, pt, addr(pt.offset), scale, f);
        written += 1;
    }
    for (name, offset, value) in sfs_used {
        let id = format!("{prefix}_{}", name.to_ascii_lowercase());
        let _ = writeln!(
            out,
            "\n  [[profiles.points]]\n  id = \"{id}\"\n  kind = \"generic\"\n  table = \"holding\"\n  address = {}\n  type = \"i16\"\n  valid = [{:.1}, {:.1}]   # {name} read {value}: any other value makes the scales above wrong\n  sentinel = 0x8000\n  required = true",
            addr(offset),
            f64::from(value) - 0.5,
            f64::from(value) + 0.5
        );
        written += 1;
    }
    written
}

fn point(
    out: &mut String,
    prefix: &str,
    pt: &PointDef,
    address: u32,
    scale: Option<(String, &str, u32, i16)>,
    f: &Found,
) {
    let _ = writeln!(
        out,
        "\n  [[profiles.points]]\n  id = \"{prefix}_{}\"   # {}\n  kind = \"{}\"\n  table = \"holding\"\n  address = {address}\n  type = \"{}\"   # SunSpec {}",
        pt.id,
        pt.name,
        pt.kind,
        pt.ty.value_type(),
        pt.ty.as_str()
    );
    if let Some((text, name, at, value)) = scale {
        let _ = writeln!(
            out,
            "  scale = {text}   # 10^{value}, from {name} (register {at})"
        );
    }
    if !pt.unit.is_empty() {
        let _ = writeln!(out, "  unit = \"{}\"", pt.unit);
    }
    if pt.kind == "temperature" {
        let _ = writeln!(
            out,
            "  valid = [-40.0, 150.0]   # outside: a broken sensor (a fault), not a fire"
        );
    }
    let now = if (0..pt.ty.width())
        .map(|i| word(f, pt.offset + i).unwrap_or(0))
        .fold(0u64, |acc, w| (acc << 16) | u64::from(w))
        == pt.ty.sentinel()
    {
        " (reads it now)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "  sentinel = {}   # {} \"not implemented\"{now}",
        pt.ty.sentinel_text(),
        pt.ty.as_str()
    );
    if pt.mandatory {
        let _ = writeln!(out, "  required = true   # mandatory in SunSpec");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_factors_become_exact_decimal_scales() {
        assert_eq!(scale_text(-1).as_deref(), Some("0.1"));
        assert_eq!(scale_text(-3).as_deref(), Some("0.001"));
        assert_eq!(scale_text(0).as_deref(), Some("1.0"));
        assert_eq!(scale_text(2).as_deref(), Some("100.0"));
        assert_eq!(scale_text(11), None);
        assert_eq!(scale_text(-32768), None);
    }

    #[test]
    fn a_battery_model_too_short_for_any_point_writes_no_block() {
        // Found by the fuzz smoke (corpus/sunspec_chain/crash-802-of-length-0): an empty
        // profile, which check-config refuses.
        let f = Found {
            model: Model {
                id: 802,
                start: 40002,
                len: 0,
            },
            words: vec![802, 0],
        };
        assert!(block("p", "x", &[f]).is_none());
    }

    #[test]
    fn no_battery_model_no_block() {
        let f = Found {
            model: Model {
                id: 1,
                start: 40002,
                len: 66,
            },
            words: vec![],
        };
        assert!(block("p", "x", &[f]).is_none());
    }
}
