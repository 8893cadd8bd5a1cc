//! The SunSpec information models emberwatch knows, as tables: the battery models' useful
//! points (where each sits in its model, its SunSpec type, its scale factor) and the names of
//! common models, for what `discover` prints.
//!
//! Source: the SunSpec Alliance's model definitions as pysunspec2 1.3.7 ships them
//! (`sunspec2/models/json/model_1.json`, `model_802.json` ... `model_805.json`, from
//! github.com/sunspec/models). Offsets count from the model's ID register (ID is 0, L is 1),
//! as in those files. Only the fixed part of each model is here: the repeating groups (803's
//! strings, 804's modules, 805's cells) are left out, their maxima and minima being in the fixed
//! part already.

/// A SunSpec point type, with its "not implemented" value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SunsType {
    Int16,
    Uint16,
    Enum16,
    Bitfield16,
    Int32,
    Uint32,
    Acc32,
    Bitfield32,
    /// A scale factor: int16, the point's value is raw × 10^sf.
    Sunssf,
}

impl SunsType {
    /// SunSpec's name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            SunsType::Int16 => "int16",
            SunsType::Uint16 => "uint16",
            SunsType::Enum16 => "enum16",
            SunsType::Bitfield16 => "bitfield16",
            SunsType::Int32 => "int32",
            SunsType::Uint32 => "uint32",
            SunsType::Acc32 => "acc32",
            SunsType::Bitfield32 => "bitfield32",
            SunsType::Sunssf => "sunssf",
        }
    }

    /// The emberwatch `type` that reads it.
    pub fn value_type(self) -> &'static str {
        match self {
            SunsType::Int16 | SunsType::Sunssf => "i16",
            SunsType::Uint16 | SunsType::Enum16 | SunsType::Bitfield16 => "u16",
            SunsType::Int32 => "i32",
            SunsType::Uint32 | SunsType::Acc32 | SunsType::Bitfield32 => "u32",
        }
    }

    /// Registers it occupies.
    pub fn width(self) -> u16 {
        match self {
            SunsType::Int32 | SunsType::Uint32 | SunsType::Acc32 | SunsType::Bitfield32 => 2,
            _ => 1,
        }
    }

    /// The register content with which a device says "not implemented" (SunSpec Information
    /// Model Specification, "Unimplemented registers").
    pub fn sentinel(self) -> u64 {
        match self {
            SunsType::Int16 | SunsType::Sunssf => 0x8000,
            SunsType::Uint16 | SunsType::Enum16 | SunsType::Bitfield16 => 0xFFFF,
            SunsType::Int32 => 0x8000_0000,
            SunsType::Uint32 | SunsType::Bitfield32 => 0xFFFF_FFFF,
            SunsType::Acc32 => 0,
        }
    }

    /// How the sentinel is written in a configuration.
    pub fn sentinel_text(self) -> String {
        match self.sentinel() {
            0 => "0".to_string(),
            s => format!("{s:#X}").replace("0X", "0x"),
        }
    }
}

/// One point of a model that `discover` writes into a profile.
#[derive(Debug, Clone, Copy)]
pub struct PointDef {
    /// SunSpec's point name (`SoC`, `ModTmpMax`).
    pub name: &'static str,
    /// Registers from the model's ID register.
    pub offset: u16,
    pub ty: SunsType,
    /// The name of the scale factor point of the same model, if the value is scaled.
    pub sf: Option<&'static str>,
    /// The unit as emberwatch spells it.
    pub unit: &'static str,
    /// Mandatory in SunSpec: a device must implement it, so "not implemented" is a fault.
    pub mandatory: bool,
    /// The point id's suffix in a profile (`soc` → `string_soc`).
    pub id: &'static str,
    /// The emberwatch `kind`.
    pub kind: &'static str,
}

/// A scale factor point: its name and offset.
#[derive(Debug, Clone, Copy)]
pub struct SfDef {
    pub name: &'static str,
    pub offset: u16,
}

/// A battery model.
#[derive(Debug, Clone, Copy)]
pub struct ModelDef {
    pub id: u16,
    /// SunSpec's group name (`lithium_ion_string`).
    pub name: &'static str,
    /// The fixed part's length (the model's `L` without repeating groups).
    pub fixed_len: u16,
    /// Point ids of this model start with this (`string_soc`).
    pub prefix: &'static str,
    pub points: &'static [PointDef],
    pub sfs: &'static [SfDef],
}

/// One row of the tables below, positional so each reads as one line of the model definition.
#[allow(clippy::too_many_arguments)]
const fn p(
    name: &'static str,
    offset: u16,
    ty: SunsType,
    sf: Option<&'static str>,
    unit: &'static str,
    mandatory: bool,
    id: &'static str,
    kind: &'static str,
) -> PointDef {
    PointDef {
        name,
        offset,
        ty,
        sf,
        unit,
        mandatory,
        id,
        kind,
    }
}

const fn sf(name: &'static str, offset: u16) -> SfDef {
    SfDef { name, offset }
}

use SunsType::*;

/// 802, battery base model.
#[rustfmt::skip]
pub const M802: ModelDef = ModelDef {
    id: 802,
    name: "battery",
    fixed_len: 62,
    prefix: "battery",
    points: &[
        p("SoC", 11, Uint16, Some("SoC_SF"), "%", true, "soc", "soc"),
        p("SoH", 13, Uint16, Some("SoH_SF"), "%", false, "soh", "generic"),
        p("State", 22, Enum16, None, "", true, "state", "state"),
        p("Evt1", 26, Bitfield32, None, "", true, "events_1", "state"),
        p("Evt2", 28, Bitfield32, None, "", true, "events_2", "state"),
        p("V", 34, Uint16, Some("V_SF"), "V", true, "voltage", "voltage"),
        p("CellVMax", 37, Uint16, Some("CellV_SF"), "V", false, "cell_v_max", "voltage"),
        p("CellVMin", 40, Uint16, Some("CellV_SF"), "V", false, "cell_v_min", "voltage"),
        p("A", 44, Int16, Some("A_SF"), "A", true, "current", "current"),
    ],
    sfs: &[
        sf("SoC_SF", 56),
        sf("SoH_SF", 58),
        sf("V_SF", 59),
        sf("CellV_SF", 60),
        sf("A_SF", 61),
    ],
};

/// 803, lithium-ion battery bank model (fixed part).
#[rustfmt::skip]
pub const M803: ModelDef = ModelDef {
    id: 803,
    name: "lithium_ion_bank",
    fixed_len: 26,
    prefix: "bank",
    points: &[
        p("ModTmpMax", 4, Int16, Some("ModTmp_SF"), "degC", true, "mod_temp_max", "temperature"),
        p("ModTmpMin", 7, Int16, Some("ModTmp_SF"), "degC", true, "mod_temp_min", "temperature"),
        p("StrVMax", 11, Uint16, Some("V_SF"), "V", false, "str_v_max", "voltage"),
        p("StrVMin", 13, Uint16, Some("V_SF"), "V", false, "str_v_min", "voltage"),
        p("StrAMax", 16, Int16, Some("A_SF"), "A", false, "str_a_max", "current"),
        p("StrAMin", 18, Int16, Some("A_SF"), "A", false, "str_a_min", "current"),
    ],
    sfs: &[sf("ModTmp_SF", 23), sf("A_SF", 24), sf("V_SF", 27)],
};

/// 804, lithium-ion string model (fixed part).
#[rustfmt::skip]
pub const M804: ModelDef = ModelDef {
    id: 804,
    name: "lithium_ion_string",
    fixed_len: 46,
    prefix: "string",
    points: &[
        p("St", 4, Bitfield32, None, "", true, "status", "state"),
        p("SoC", 8, Uint16, Some("SoC_SF"), "%", true, "soc", "soc"),
        p("SoH", 12, Uint16, Some("SoH_SF"), "%", false, "soh", "generic"),
        p("A", 13, Int16, Some("A_SF"), "A", true, "current", "current"),
        p("V", 14, Uint16, Some("V_SF"), "V", false, "voltage", "voltage"),
        p("CellVMax", 15, Uint16, Some("CellV_SF"), "V", true, "cell_v_max", "voltage"),
        p("CellVMin", 17, Uint16, Some("CellV_SF"), "V", true, "cell_v_min", "voltage"),
        p("ModTmpMax", 20, Int16, Some("ModTmp_SF"), "degC", true, "mod_temp_max", "temperature"),
        p("ModTmpMin", 22, Int16, Some("ModTmp_SF"), "degC", true, "mod_temp_min", "temperature"),
        p("Evt1", 28, Bitfield32, None, "", true, "events_1", "state"),
        p("Evt2", 30, Bitfield32, None, "", false, "events_2", "state"),
    ],
    sfs: &[
        sf("SoC_SF", 38),
        sf("SoH_SF", 39),
        sf("A_SF", 41),
        sf("V_SF", 42),
        sf("CellV_SF", 43),
        sf("ModTmp_SF", 44),
    ],
};

/// 805, lithium-ion module model (fixed part).
#[rustfmt::skip]
pub const M805: ModelDef = ModelDef {
    id: 805,
    name: "lithium_ion_module",
    fixed_len: 42,
    prefix: "module",
    points: &[
        p("SoC", 5, Uint16, Some("SoC_SF"), "%", false, "soc", "soc"),
        p("SoH", 7, Uint16, Some("SoH_SF"), "%", false, "soh", "generic"),
        p("V", 10, Uint16, Some("V_SF"), "V", true, "voltage", "voltage"),
        p("CellVMax", 11, Uint16, Some("CellV_SF"), "V", true, "cell_v_max", "voltage"),
        p("CellVMin", 13, Uint16, Some("CellV_SF"), "V", true, "cell_v_min", "voltage"),
        p("CellTmpMax", 16, Int16, Some("Tmp_SF"), "degC", true, "cell_temp_max", "temperature"),
        p("CellTmpMin", 18, Int16, Some("Tmp_SF"), "degC", true, "cell_temp_min", "temperature"),
    ],
    sfs: &[
        sf("SoC_SF", 38),
        sf("SoH_SF", 39),
        sf("V_SF", 41),
        sf("CellV_SF", 42),
        sf("Tmp_SF", 43),
    ],
};

/// The battery models `discover` writes profiles for.
pub const BATTERY: [&ModelDef; 4] = [&M802, &M803, &M804, &M805];

/// The battery model with this id.
pub fn battery(id: u16) -> Option<&'static ModelDef> {
    BATTERY.into_iter().find(|m| m.id == id)
}

/// SunSpec's name of a model, for the list `discover` prints (the common ones; the others are
/// listed by number).
pub fn name(id: u16) -> &'static str {
    match id {
        1 => "common",
        2 => "aggregator",
        10..=14 => "communication interface",
        101 => "inverter (single phase)",
        102 => "inverter (split phase)",
        103 => "inverter (three phase)",
        111..=113 => "inverter (float)",
        120 => "nameplate",
        121 => "basic settings",
        122 => "measurements status",
        123 => "immediate controls",
        124 => "storage",
        160 => "multiple MPPT",
        201..=204 => "meter",
        701 => "DER AC measurement",
        702 => "DER capacity",
        703..=799 => "DER",
        801 => "energy storage (deprecated)",
        802 => "battery",
        803 => "lithium_ion_bank",
        804 => "lithium_ion_string",
        805 => "lithium_ion_module",
        806..=899 => "storage",
        64000..=65534 => "vendor",
        _ => "unknown",
    }
}

/// Model 1's strings (offsets from its ID register, 16 registers each except where noted):
/// manufacturer, model, serial number.
pub const COMMON_MN: (u16, u16) = (2, 16);
pub const COMMON_MD: (u16, u16) = (18, 16);
pub const COMMON_SN: (u16, u16) = (50, 16);
/// Model 1's length.
pub const COMMON_LEN: u16 = 66;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_fits_its_model_and_names_a_scale_factor_of_it() {
        for m in BATTERY {
            for pt in m.points {
                assert!(
                    pt.offset + pt.ty.width() <= m.fixed_len + 2,
                    "{} {}",
                    m.id,
                    pt.name
                );
                if let Some(s) = pt.sf {
                    assert!(m.sfs.iter().any(|f| f.name == s), "{} {}", m.id, s);
                }
            }
            for f in m.sfs {
                assert!(f.offset < m.fixed_len + 2, "{} {}", m.id, f.name);
            }
        }
    }
}
