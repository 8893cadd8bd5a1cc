//! The simulator's register map, in one place, so the scenarios, the Modbus service, the demo and
//! the tests all agree on where each sensor lives and how its value is scaled.
//!
//! The addresses and scales are the contract in SPEC.md ("Simulator register map"); a real rack's
//! map would be written in the configuration instead, which is why nothing outside `sim` should
//! depend on these constants except tests and the demo.

use super::scenario::{RackState, MODULE_COUNT};

/// Module temperatures 1..16 (i16, 0.1 °C) occupy this address and the 15 after it.
pub const MODULE_TEMP_FIRST: u16 = 100;
/// Hottest cell seen by the BMS (i16, 0.1 °C); never below any module temperature.
pub const CELL_TEMP_MAX: u16 = 116;
/// Aspirating smoke detector stage (u16): 0 normal, 1 alert, 2 action, 3 fire 1, 4 fire 2.
pub const SMOKE_STAGE: u16 = 120;
/// Electrolyte off-gas (u16, 1 ppm): the earliest warning a cell gives.
pub const OFFGAS: u16 = 121;
/// Hydrogen (u16, 0.1 %LEL).
pub const HYDROGEN: u16 = 122;
/// Rack voltage (u16, 0.1 V).
pub const RACK_VOLTAGE: u16 = 130;
/// Rack current (i16, 0.1 A); negative while discharging.
pub const RACK_CURRENT: u16 = 131;
/// State of charge (u16, 1 %).
pub const STATE_OF_CHARGE: u16 = 132;
/// UPS on battery (u16, 0/1).
pub const UPS_ON_BATTERY: u16 = 200;
/// UPS battery runtime (u16, 1 min).
pub const UPS_RUNTIME: u16 = 201;

/// Addresses `0..BANK_LEN` answer (unmapped ones read 0) so that a poller can coalesce a read
/// across gaps such as 117..=119; anything beyond is an illegal address, as on a real device.
pub const BANK_LEN: u16 = 300;

/// Every register of the bank at one moment, as a client would read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registers([u16; BANK_LEN as usize]);

impl Registers {
    /// The raw word at `addr`, or `None` outside the bank.
    pub fn get(&self, addr: u16) -> Option<u16> {
        self.0.get(usize::from(addr)).copied()
    }

    /// Quantises engineering values into words the way the rack's firmware would: rounded to
    /// the register's resolution and saturated at the type's limits rather than wrapped.
    pub fn encode(state: &RackState) -> Self {
        let mut words = [0u16; BANK_LEN as usize];
        let mut set = |addr: u16, word: u16| words[usize::from(addr)] = word;
        for (i, temp) in state.module_temp_c.iter().enumerate().take(MODULE_COUNT) {
            // MODULE_COUNT is 16, so the index always fits in a u16.
            set(MODULE_TEMP_FIRST + i as u16, i16_tenths(*temp));
        }
        set(CELL_TEMP_MAX, i16_tenths(state.cell_temp_max_c));
        set(SMOKE_STAGE, state.smoke_stage);
        set(OFFGAS, u16_units(state.offgas_ppm));
        set(HYDROGEN, u16_units(state.hydrogen_pct_lel * 10.0));
        set(RACK_VOLTAGE, u16_units(state.rack_voltage_v * 10.0));
        set(RACK_CURRENT, i16_tenths(state.rack_current_a));
        set(STATE_OF_CHARGE, u16_units(state.soc_pct));
        set(UPS_ON_BATTERY, u16::from(state.ups_on_battery));
        set(UPS_RUNTIME, u16_units(state.ups_runtime_min));
        Registers(words)
    }
}

/// A signed value in tenths, as the two's-complement word an i16 register carries.
fn i16_tenths(value: f64) -> u16 {
    let tenths = (value * 10.0)
        .round()
        .clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16;
    tenths as u16
}

/// An unsigned value already in register units.
fn u16_units(value: f64) -> u16 {
    value.round().clamp(0.0, f64::from(u16::MAX)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_temperatures_are_twos_complement() {
        assert_eq!(i16_tenths(-1.5), (-15i16) as u16);
        assert_eq!(i16_tenths(25.04), 250);
    }

    #[test]
    fn out_of_range_values_saturate() {
        assert_eq!(i16_tenths(1e9), i16::MAX as u16);
        assert_eq!(u16_units(-3.0), 0);
        assert_eq!(u16_units(1e9), u16::MAX);
    }

    #[test]
    fn bank_ends_where_the_map_says() {
        let regs = Registers::encode(&RackState::nominal());
        assert_eq!(regs.get(BANK_LEN - 1), Some(0));
        assert_eq!(regs.get(BANK_LEN), None);
        assert_eq!(regs.get(CELL_TEMP_MAX), Some(250));
        assert_eq!(regs.get(RACK_VOLTAGE), Some(8000));
        assert_eq!(regs.get(STATE_OF_CHARGE), Some(95));
        assert_eq!(regs.get(UPS_RUNTIME), Some(30));
    }
}
