//! `emberwatch sim --sunspec`: the rack also as a SunSpec battery (models 1 common, 802 battery
//! base, 804 lithium-ion string with 16 modules, then the end marker) at holding register
//! 40000, beside the register map of SPEC.md, so that `emberwatch discover` and SunSpec
//! profiles can be tested against something that plays the scenarios.
//!
//! Values follow the simulated rack (state of charge, voltage, current, the 16 module
//! temperatures, over-temperature event bits); points a real BMS often leaves out are served as
//! SunSpec's "not implemented" (SoH, DoD, cycle-count-like points, vendor bitfields). Layout
//! from the SunSpec model definitions (pysunspec2 1.3.7 `model_1.json`, `model_802.json`,
//! `model_804.json`); `tests/sunspec_client.py` reads it with pysunspec2 to prove it.

use super::scenario::{RackState, MODULE_COUNT};

/// The marker's register.
pub const BASE: u16 = 40000;
/// Model 1's ID register, and its length.
pub const COMMON: u16 = BASE + 2;
const COMMON_LEN: u16 = 66;
/// Model 802's ID register, and its length.
pub const BATTERY: u16 = COMMON + 2 + COMMON_LEN;
const BATTERY_LEN: u16 = 62;
/// Model 804's ID register, and its length (46 fixed, 16 per module).
pub const STRING: u16 = BATTERY + 2 + BATTERY_LEN;
const MODULE_LEN: u16 = 16;
const STRING_LEN: u16 = 46 + MODULE_LEN * MODULE_COUNT as u16;
/// The end marker's register.
pub const END: u16 = STRING + 2 + STRING_LEN;
/// Registers served from [`BASE`]: up to and including the end marker's length.
pub const LEN: u16 = END + 2 - BASE;

/// Scale factors served (SunSpec: value = raw × 10^sf).
pub const SOC_SF: i16 = -1;
pub const V_SF: i16 = -1;
pub const A_SF: i16 = -1;
pub const CELL_V_SF: i16 = -3;
pub const TMP_SF: i16 = -1;

/// "Not implemented" for uint16, enum16, bitfield16.
const NI_U16: u16 = 0xFFFF;
/// "Not implemented" for int16, sunssf, pad.
const NI_I16: u16 = 0x8000;

/// Cells in the rack (16 modules of 15 in series), for the cell voltages.
const CELLS: f64 = 240.0;

/// Event bits of 802 `Evt1` / 804 `Evt1` (SunSpec symbols OVER_TEMP_ALARM, OVER_TEMP_WARNING).
const OVER_TEMP_ALARM: u32 = 1 << 1;
const OVER_TEMP_WARNING: u32 = 1 << 2;
/// The BMS's own over-temperature limits (°C) behind those bits.
const WARN_C: f64 = 45.0;
const ALARM_C: f64 = 55.0;

/// The whole SunSpec map, [`LEN`] registers from [`BASE`], for the rack in `state`; `unit` is
/// model 1's device address.
pub fn encode(state: &RackState, unit: u8) -> Vec<u16> {
    let mut m = Map(vec![0u16; usize::from(LEN)]);
    m.set(BASE, &[0x5375, 0x6E53]);

    m.set(COMMON, &[1, COMMON_LEN]);
    m.string(COMMON + 2, 16, "emberwatch");
    m.string(COMMON + 18, 16, "sim-rack");
    m.string(COMMON + 34, 8, ""); // Opt: not implemented (all zero)
    m.string(COMMON + 42, 8, env!("CARGO_PKG_VERSION"));
    m.string(COMMON + 50, 16, "SIM-0001");
    m.set(COMMON + 66, &[u16::from(unit), NI_I16]);

    let soc = sf(state.soc_pct, SOC_SF);
    let volts = sf(state.rack_voltage_v, V_SF);
    let amps = i16_sf(state.rack_current_a, A_SF);
    let cell_avg = state.rack_voltage_v / CELLS;
    let (hot, hot_i) = extreme(&state.module_temp_c, |a, b| a > b);
    let (cold, cold_i) = extreme(&state.module_temp_c, |a, b| a < b);
    let avg = state.module_temp_c.iter().sum::<f64>() / MODULE_COUNT as f64;
    let events = events(state.cell_temp_max_c.max(hot));
    let watts = (state.rack_voltage_v * state.rack_current_a / 10.0)
        .round()
        .clamp(-32767.0, 32767.0) as i16 as u16;

    let b = BATTERY;
    m.set(b, &[802, BATTERY_LEN]);
    m.set(
        b + 2,
        &[
            280,    // AHRtg: 280 Ah
            22400,  // WHRtg: 224 kWh (WHRtg_SF 1)
            100,    // WChaRteMax: 100 kW (WChaDisChaMax_SF 3)
            100,    // WDisChaRteMax
            NI_U16, // DisChaRte
            1000,   // SoCMax 100.0 %
            50,     // SoCMin 5.0 %
            NI_U16, // SocRsvMax
            NI_U16, // SoCRsvMin
            soc,    // SoC
            NI_U16, // DoD
            NI_U16, // SoH: not implemented
            0,
            1234,   // NCyc (uint32)
            NI_U16, // ChaSt
            0,      // LocRemCtl: REMOTE
            NI_U16, // Hb
            NI_U16, // CtrlHb
            0,      // AlmRst
            4,      // Typ: LITHIUM_ION
            3,      // State: CONNECTED
            NI_U16, // StateVnd
            0xFFFF,
            0xFFFF, // WarrDt: not implemented
            (events >> 16) as u16,
            events as u16, // Evt1
            0,
            0, // Evt2
            0xFFFF,
            0xFFFF, // EvtVnd1: not implemented
            0xFFFF,
            0xFFFF, // EvtVnd2: not implemented
            volts,  // V
            9000,   // VMax 900.0 V
            6500,   // VMin 650.0 V
            sf(cell_avg + 0.02, CELL_V_SF),
            1,
            u16::try_from(hot_i + 1).unwrap_or(1), // CellVMax, its string and module
            sf(cell_avg - 0.02, CELL_V_SF),
            1,
            u16::try_from(cold_i + 1).unwrap_or(1), // CellVMin, its string and module
            sf(cell_avg, CELL_V_SF),                // CellVAvg
            amps,                                   // A
            125,                                    // AChaMax
            125,                                    // ADisChaMax
            watts,                                  // W (W_SF 1)
            NI_U16,                                 // ReqInvState
            NI_I16,                                 // ReqW
            1,                                      // SetOp: CONNECT
            3,                                      // SetInvState: INVERTER_STARTED
            0,                                      // AHRtg_SF
            1,                                      // WHRtg_SF
            3,                                      // WChaDisChaMax_SF
            NI_I16,                                 // DisChaRte_SF
            SOC_SF as u16,
            NI_I16, // DoD_SF
            0,      // SoH_SF
            V_SF as u16,
            CELL_V_SF as u16,
            A_SF as u16,
            0, // AMax_SF
            1, // W_SF
        ],
    );

    let s = STRING;
    m.set(s, &[804, STRING_LEN]);
    m.set(
        s + 2,
        &[
            1,                   // Idx
            MODULE_COUNT as u16, // NMod
            0,
            0b11,   // St: STRING_ENABLED, CONTACTOR_STATUS
            0,      // ConFail: NO_FAILURE
            NI_U16, // NCellBal
            soc,    // SoC
            NI_U16, // DoD
            0,
            1234,   // NCyc
            NI_U16, // SoH: not implemented
            amps,   // A
            volts,  // V
            sf(cell_avg + 0.02, CELL_V_SF),
            u16::try_from(hot_i + 1).unwrap_or(1),
            sf(cell_avg - 0.02, CELL_V_SF),
            u16::try_from(cold_i + 1).unwrap_or(1),
            sf(cell_avg, CELL_V_SF),
            i16_sf(hot, TMP_SF),
            u16::try_from(hot_i + 1).unwrap_or(1), // ModTmpMax and its module
            i16_sf(cold, TMP_SF),
            u16::try_from(cold_i + 1).unwrap_or(1), // ModTmpMin and its module
            i16_sf(avg, TMP_SF),                    // ModTmpAvg
            NI_I16,                                 // Pad1
            0,
            1, // ConSt: contactor 0 closed
            (events >> 16) as u16,
            events as u16, // Evt1
            0xFFFF,
            0xFFFF, // Evt2: not implemented
            0xFFFF,
            0xFFFF, // EvtVnd1
            0xFFFF,
            0xFFFF, // EvtVnd2
            NI_U16, // SetEna
            NI_U16, // SetCon
            SOC_SF as u16,
            0,      // SoH_SF
            NI_I16, // DoD_SF
            A_SF as u16,
            V_SF as u16,
            CELL_V_SF as u16,
            TMP_SF as u16,
            NI_I16,
            NI_I16,
            NI_I16, // Pad2..4
        ],
    );
    for (i, t) in state.module_temp_c.iter().enumerate().take(MODULE_COUNT) {
        let at = s + 48 + MODULE_LEN * i as u16;
        // The hottest cell of the rack sits in the hottest module.
        let cell_max = if i == hot_i {
            t.max(state.cell_temp_max_c)
        } else {
            *t
        };
        m.set(
            at,
            &[
                15,     // ModNCell
                soc,    // ModSoC
                NI_U16, // ModSoH
                sf(cell_avg + 0.02, CELL_V_SF),
                NI_U16,
                sf(cell_avg - 0.02, CELL_V_SF),
                NI_U16,
                sf(cell_avg, CELL_V_SF),
                i16_sf(cell_max, TMP_SF), // ModCellTmpMax
                NI_U16,
                i16_sf(*t - 1.0, TMP_SF), // ModCellTmpMin
                NI_U16,
                i16_sf(*t - 0.5, TMP_SF), // ModCellTmpAvg
                NI_I16,
                NI_I16,
                NI_I16, // Pad5..7
            ],
        );
    }
    m.set(END, &[0xFFFF, 0]);
    m.0
}

struct Map(Vec<u16>);

impl Map {
    /// Every address written is inside the map by construction (the constants above).
    fn set(&mut self, at: u16, words: &[u16]) {
        let from = usize::from(at - BASE);
        if let Some(dst) = self.0.get_mut(from..from + words.len()) {
            dst.copy_from_slice(words);
        }
    }

    fn string(&mut self, at: u16, regs: u16, s: &str) {
        let mut bytes = s.as_bytes().to_vec();
        bytes.resize(usize::from(regs) * 2, 0);
        let words: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        self.set(at, &words);
    }
}

/// An unsigned value in units of 10^sf, saturated (never the 0xFFFF sentinel).
fn sf(value: f64, sf: i16) -> u16 {
    (value / 10f64.powi(sf.into())).round().clamp(0.0, 65534.0) as u16
}

/// A signed value in units of 10^sf, saturated (never the 0x8000 sentinel).
fn i16_sf(value: f64, sf: i16) -> u16 {
    (value / 10f64.powi(sf.into()))
        .round()
        .clamp(-32767.0, 32767.0) as i16 as u16
}

/// The largest (or smallest, by `better`) value and its index.
fn extreme(values: &[f64], better: impl Fn(f64, f64) -> bool) -> (f64, usize) {
    let mut best = (values.first().copied().unwrap_or(0.0), 0);
    for (i, v) in values.iter().enumerate() {
        if better(*v, best.0) {
            best = (*v, i);
        }
    }
    best
}

/// The over-temperature event bits the BMS raises at `hottest` °C.
fn events(hottest: f64) -> u32 {
    let mut e = 0;
    if hottest >= WARN_C {
        e |= OVER_TEMP_WARNING;
    }
    if hottest >= ALARM_C {
        e |= OVER_TEMP_ALARM;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(map: &[u16], addr: u16) -> u16 {
        map[usize::from(addr - BASE)]
    }

    #[test]
    fn the_chain_is_marker_1_802_804_end() {
        let map = encode(&RackState::nominal(), 1);
        assert_eq!(map.len(), usize::from(LEN));
        assert_eq!(&map[..2], &[0x5375, 0x6E53]);
        assert_eq!((at(&map, COMMON), at(&map, COMMON + 1)), (1, 66));
        assert_eq!((at(&map, BATTERY), at(&map, BATTERY + 1)), (802, 62));
        assert_eq!((at(&map, STRING), at(&map, STRING + 1)), (804, 302));
        assert_eq!((at(&map, END), at(&map, END + 1)), (0xFFFF, 0));
        assert_eq!((BATTERY, STRING, END), (40070, 40134, 40438));
    }

    #[test]
    fn values_follow_the_rack_and_unimplemented_points_are_sentinels() {
        let mut state = RackState::nominal();
        state.module_temp_c[3] = 61.0;
        state.cell_temp_max_c = 61.0;
        let map = encode(&state, 1);
        assert_eq!(at(&map, BATTERY + 11), 950, "SoC 95.0 % at SoC_SF -1");
        assert_eq!(at(&map, BATTERY + 13), 0xFFFF, "SoH not implemented");
        assert_eq!(at(&map, BATTERY + 34), 8000, "V 800.0");
        assert_eq!(at(&map, STRING + 8), 950);
        assert_eq!(at(&map, STRING + 12), 0xFFFF, "string SoH not implemented");
        assert_eq!(at(&map, STRING + 20), 610, "ModTmpMax 61.0 °C");
        assert_eq!(at(&map, STRING + 21), 4, "in module 4");
        assert_eq!(at(&map, STRING + 22), 250, "ModTmpMin 25.0 °C");
        assert_eq!(
            at(&map, STRING + 29),
            0b110,
            "over-temperature alarm and warning"
        );
        assert_eq!(
            at(&map, STRING + 48 + 16 * 3 + 8),
            610,
            "module 4's hottest cell"
        );
    }
}
