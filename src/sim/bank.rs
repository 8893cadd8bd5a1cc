//! The rack's register bank as a Modbus client sees it: the scenario's values with whatever
//! clients have written laid over them, and the same range checks a real device makes.
//!
//! Kept free of sockets and clocks (time comes in as an argument) so that address checks and
//! override rules are unit-tested without a server; `server` only locks it and calls in.

use tokio_modbus::ExceptionCode;

use super::map::{Registers, BANK_LEN};
use super::scenario::Scenario;
use super::sunspec;

/// The most registers one FC03/FC04 read may ask for (Modbus application protocol, 6.3).
pub const MAX_READ: u16 = 125;
/// The most registers one FC16 write may carry (Modbus application protocol, 6.12).
pub const MAX_WRITE: u16 = 123;

/// Scenario values plus client overrides.
#[derive(Debug, Clone)]
pub struct Bank {
    scenario: Scenario,
    /// A written register keeps its written value from then on: an operator or test that pins a
    /// register expects it to stay pinned while the scenario plays on around it.
    overrides: [Option<u16>; BANK_LEN as usize],
    /// With `--sunspec`: the unit id (model 1's device address) and the overrides of the
    /// SunSpec map at [`sunspec::BASE`].
    sunspec: Option<(u8, Vec<Option<u16>>)>,
}

impl Bank {
    pub fn new(scenario: Scenario) -> Self {
        Bank {
            scenario,
            overrides: [None; BANK_LEN as usize],
            sunspec: None,
        }
    }

    /// As [`Bank::new`], also serving the SunSpec battery map for unit `unit`.
    pub fn with_sunspec(scenario: Scenario, unit: u8) -> Self {
        Bank {
            sunspec: Some((unit, vec![None; usize::from(sunspec::LEN)])),
            ..Bank::new(scenario)
        }
    }

    /// The SunSpec map's registers `addr..addr + count`, if it is served and holds them all.
    fn sunspec_range(&self, addr: u16, count: u16) -> Option<std::ops::Range<usize>> {
        self.sunspec.as_ref()?;
        let from = addr.checked_sub(sunspec::BASE)?;
        let to = from.checked_add(count)?;
        (to <= sunspec::LEN).then(|| usize::from(from)..usize::from(to))
    }

    /// One register at scenario time `t`, or `None` outside the bank; for the in-process API,
    /// which has no exception to report.
    pub fn get(&self, t: f64, addr: u16) -> Option<u16> {
        self.read(t, addr, 1)
            .ok()
            .and_then(|words| words.first().copied())
    }

    /// An FC03/FC04 read of `count` registers from `addr` at scenario time `t`. The whole
    /// snapshot is computed once per read so that a coalesced read sees one consistent moment.
    pub fn read(&self, t: f64, addr: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        if !(1..=MAX_READ).contains(&count) {
            return Err(ExceptionCode::IllegalDataValue);
        }
        if let (Some(range), Some((unit, overrides))) =
            (self.sunspec_range(addr, count), &self.sunspec)
        {
            let map = sunspec::encode(&self.scenario.state(t), *unit);
            return Ok(range
                .map(|i| overrides[i].unwrap_or_else(|| map.get(i).copied().unwrap_or(0)))
                .collect());
        }
        let range = in_bank(addr, count)?;
        let scenario = Registers::encode(&self.scenario.state(t));
        Ok(range
            .map(|a| self.overrides[usize::from(a)].unwrap_or_else(|| scenario.get(a).unwrap_or(0)))
            .collect())
    }

    /// An FC06/FC16 write: all of `values` from `addr`, or nothing if any falls outside the bank.
    pub fn write(&mut self, addr: u16, values: &[u16]) -> Result<(), ExceptionCode> {
        let count = u16::try_from(values.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
        if !(1..=MAX_WRITE).contains(&count) {
            return Err(ExceptionCode::IllegalDataValue);
        }
        if let Some(range) = self.sunspec_range(addr, count) {
            if let Some((_, overrides)) = self.sunspec.as_mut() {
                for (i, value) in range.zip(values) {
                    overrides[i] = Some(*value);
                }
            }
            return Ok(());
        }
        for (a, value) in in_bank(addr, count)?.zip(values) {
            self.overrides[usize::from(a)] = Some(*value);
        }
        Ok(())
    }
}

/// The addresses `addr..addr + count`, if they all lie in the bank.
fn in_bank(addr: u16, count: u16) -> Result<std::ops::Range<u16>, ExceptionCode> {
    match addr.checked_add(count) {
        Some(end) if end <= BANK_LEN => Ok(addr..end),
        _ => Err(ExceptionCode::IllegalDataAddress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::map::*;
    use ExceptionCode::*;

    #[test]
    fn read_checks_table() {
        let bank = Bank::new(Scenario::Stuck);
        // (address, count, expected outcome: Ok(length) or the exception)
        let table: &[(u16, u16, Result<usize, ExceptionCode>)] = &[
            (100, 33, Ok(33)),
            (0, MAX_READ, Ok(125)),
            (BANK_LEN - 1, 1, Ok(1)),
            (BANK_LEN - 1, 2, Err(IllegalDataAddress)),
            (BANK_LEN, 1, Err(IllegalDataAddress)),
            (u16::MAX, 1, Err(IllegalDataAddress)),
            (u16::MAX - 1, 100, Err(IllegalDataAddress)),
            (100, 0, Err(IllegalDataValue)),
            (100, MAX_READ + 1, Err(IllegalDataValue)),
        ];
        for (addr, count, expected) in table {
            let got = bank.read(0.0, *addr, *count).map(|w| w.len());
            assert_eq!(&got, expected, "read {count} from {addr}");
        }
    }

    #[test]
    fn coalesced_read_spans_gaps_as_zero() {
        let words = Bank::new(Scenario::Stuck)
            .read(0.0, MODULE_TEMP_FIRST, 33)
            .unwrap_or_default();
        assert_eq!(words.len(), 33);
        assert_eq!(words[usize::from(CELL_TEMP_MAX - 100)], 250);
        assert_eq!(words[17..20], [0, 0, 0]);
        assert_eq!(words[usize::from(RACK_VOLTAGE - 100)], 8000);
        assert_eq!(words[usize::from(STATE_OF_CHARGE - 100)], 95);
    }

    #[test]
    fn a_written_register_stays_written_as_the_scenario_plays() {
        let mut bank = Bank::new(Scenario::ThermalRunaway);
        assert_eq!(bank.write(OFFGAS, &[7]), Ok(()));
        assert_eq!(bank.write(150, &[1, 2, 3]), Ok(()));
        for t in [0.0, 30.0, 600.0] {
            assert_eq!(bank.get(t, OFFGAS), Some(7), "t={t}");
            assert_eq!(bank.read(t, 150, 3), Ok(vec![1, 2, 3]));
        }
        // Registers nobody wrote still follow the scenario.
        assert_eq!(bank.get(600.0, SMOKE_STAGE), Some(4));
    }

    #[test]
    fn the_sunspec_map_is_served_and_writable_only_with_sunspec() {
        use crate::sim::sunspec::{BASE, LEN, STRING};
        let plain = Bank::new(Scenario::Stuck);
        assert_eq!(plain.read(0.0, BASE, 2), Err(IllegalDataAddress));
        let mut bank = Bank::with_sunspec(Scenario::Stuck, 1);
        assert_eq!(bank.read(0.0, BASE, 2), Ok(vec![0x5375, 0x6E53]));
        assert_eq!(bank.read(0.0, BASE + LEN - 2, 2), Ok(vec![0xFFFF, 0]));
        assert_eq!(bank.read(0.0, BASE + LEN - 1, 2), Err(IllegalDataAddress));
        assert_eq!(
            bank.read(0.0, CELL_TEMP_MAX, 1),
            Ok(vec![250]),
            "the old map stays"
        );
        // A write pins a SunSpec register as it does any other.
        assert_eq!(bank.write(STRING + 22, &[0x8000]), Ok(()));
        assert_eq!(bank.get(30.0, STRING + 22), Some(0x8000));
    }

    #[test]
    fn writes_outside_the_bank_change_nothing() {
        let mut bank = Bank::new(Scenario::Stuck);
        assert_eq!(bank.write(BANK_LEN - 1, &[1, 2]), Err(IllegalDataAddress));
        assert_eq!(bank.get(0.0, BANK_LEN - 1), Some(0));
        assert_eq!(bank.write(BANK_LEN, &[1]), Err(IllegalDataAddress));
        assert_eq!(bank.write(100, &[]), Err(IllegalDataValue));
        let too_many = vec![0; usize::from(MAX_WRITE) + 1];
        assert_eq!(bank.write(0, &too_many), Err(IllegalDataValue));
        assert_eq!(bank.get(0.0, BANK_LEN), None);
    }
}
