//! What the simulated rack's sensors read at each moment of a scenario.
//!
//! Scenarios are pure functions of scenario time `t` (seconds since the simulator started,
//! multiplied by `--speed`): no clock, no randomness source, no I/O. That lets tests check the
//! thermal-runaway timeline at t = 40 s without waiting 40 s, and makes every run of the demo
//! identical. The "noise" is a hash of (register, whole second of `t`), so it looks like sensor
//! jitter yet is reproducible.
//!
//! The timeline constants below are the contract the demo narrates and the README quotes; change
//! them and both must follow.

use std::fmt;

use super::map;

/// How many module temperature sensors the rack has (registers 100..=115).
pub const MODULE_COUNT: usize = 16;

/// The room's ambient and every temperature at rest, °C.
pub const NORMAL_TEMP_C: f64 = 25.0;
/// Float voltage of the rack at rest, V.
pub const NORMAL_VOLTAGE_V: f64 = 800.0;
/// A UPS on mains floats its battery: no current to speak of, A.
pub const NORMAL_CURRENT_A: f64 = 0.0;
/// State of charge at rest, %.
pub const NORMAL_SOC_PCT: f64 = 95.0;
/// UPS runtime on battery at rest, min.
pub const NORMAL_UPS_RUNTIME_MIN: f64 = 30.0;

/// Temperature jitter, ± °C: enough that a stuck-value detector sees a live sensor.
pub const TEMP_NOISE_C: f64 = 0.2;
/// Voltage jitter, ± V.
pub const VOLTAGE_NOISE_V: f64 = 0.5;
/// Current jitter, ± A.
pub const CURRENT_NOISE_A: f64 = 0.2;
/// Gas sensor jitter once gas is present, ± ppm; clean air reads a flat 0.
pub const OFFGAS_NOISE_PPM: f64 = 3.0;
/// Hydrogen sensor jitter once hydrogen is present, ± %LEL.
pub const HYDROGEN_NOISE_PCT_LEL: f64 = 0.2;
/// Noise holds each value for this long (scenario seconds), like a sensor's update period.
pub const NOISE_STEP_S: f64 = 1.0;

/// thermal-runaway: off-gas appears at this time, s. Electrolyte venting is the first warning,
/// minutes ahead of smoke and heat in a real failure; here compressed to seconds for the demo.
pub const RUNAWAY_OFFGAS_FROM_S: f64 = 10.0;
/// thermal-runaway: off-gas (ppm) against time (s), linear between knots and flat after the last:
/// 0 at 10 s, 60 by 12 s (a detector's 50 ppm alarm trips within two seconds), 300 at 30 s,
/// capped at 1000 from 100 s.
pub const RUNAWAY_OFFGAS_PPM: [(f64, f64); 4] = [
    (RUNAWAY_OFFGAS_FROM_S, 0.0),
    (12.0, 60.0),
    (30.0, 300.0),
    (100.0, 1000.0),
];
/// thermal-runaway: hydrogen appears at this time, s.
pub const RUNAWAY_HYDROGEN_FROM_S: f64 = 15.0;
/// thermal-runaway: hydrogen (%LEL) against time (s): 0 at 15 s, 12 %LEL at 30 s (past the usual
/// 10 %LEL warning), 40 %LEL at 60 s (past the 25 %LEL rooms are kept under), 100 %LEL from 120 s.
pub const RUNAWAY_HYDROGEN_PCT_LEL: [(f64, f64); 4] = [
    (RUNAWAY_HYDROGEN_FROM_S, 0.0),
    (30.0, 12.0),
    (60.0, 40.0),
    (120.0, 100.0),
];
/// thermal-runaway: the hottest cell starts climbing from 25 °C at this time, s.
pub const RUNAWAY_HEAT_FROM_S: f64 = 20.0;
/// thermal-runaway: climb rate of the hottest cell, °C/s: 45 °C at 40 s, 55 °C at 50 s, 65 °C at
/// 60 s, so warning, critical and emergency thresholds are crossed ten seconds apart.
pub const RUNAWAY_HEAT_RATE_C_PER_S: f64 = 1.0;
/// thermal-runaway: the hottest cell stops climbing here, °C (from 115 s).
pub const RUNAWAY_CELL_TEMP_CAP_C: f64 = 120.0;
/// thermal-runaway: each module sensor's share of the hottest cell's rise above ambient. The
/// failing cell sits in module 2 (register 101); its neighbours 1 and 3 warm more slowly, module 4
/// a little, the rest not at all. Shares stay below 1 so a module never reads above the cell.
pub const RUNAWAY_MODULE_HEAT_SHARE: [f64; MODULE_COUNT] = [
    0.6, 0.95, 0.6, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
];
/// thermal-runaway: smoke detector stage from each time on, s: alert at 50 s, action at 55 s,
/// fire 1 at 60 s, fire 2 at 65 s.
pub const RUNAWAY_SMOKE_STAGES: [(f64, u16); 4] = [(50.0, 1), (55.0, 2), (60.0, 3), (65.0, 4)];
/// thermal-runaway: the BMS's voltage shows nothing until late (as at Pangyo): it sags from this
/// time, s.
pub const RUNAWAY_VOLTAGE_SAG_FROM_S: f64 = 60.0;
/// thermal-runaway: sag rate, V/s.
pub const RUNAWAY_VOLTAGE_SAG_V_PER_S: f64 = 0.5;
/// thermal-runaway: the sag stops here, V below normal (760 V from 140 s).
pub const RUNAWAY_VOLTAGE_SAG_MAX_V: f64 = 40.0;

/// flapping: the hottest cell dithers around this temperature, °C (a common warning threshold),
/// to exercise deadbands and on/off delays.
pub const FLAPPING_CENTER_C: f64 = 45.0;
/// flapping: swing either side of the centre, °C (before noise).
pub const FLAPPING_SWING_C: f64 = 1.0;
/// flapping: one full swing takes this long, s.
pub const FLAPPING_PERIOD_S: f64 = 4.0;

/// comm-loss: the rack stops answering at this offset into each cycle, s.
pub const COMM_LOSS_SILENT_FROM_S: f64 = 5.0;
/// comm-loss: and answers again from this offset, s (15 s of silence).
pub const COMM_LOSS_SILENT_UNTIL_S: f64 = 20.0;
/// comm-loss: the cycle repeats with this period, s.
pub const COMM_LOSS_PERIOD_S: f64 = 30.0;

/// Fixed seed for the noise, so that every run reads the same values at the same `t`.
const NOISE_SEED: u64 = 0x454d_4245_5257_4154;

/// A story the simulated rack plays from the moment it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Scenario {
    /// Everything at rest, with small sensor noise.
    Normal,
    /// Off-gas from 10 s, hydrogen from 15 s, heat from 20 s, smoke stages from 50 s.
    ThermalRunaway,
    /// The hottest cell dithers around 45 °C.
    Flapping,
    /// Every value frozen at rest, without noise, as a hung sensor bus reads.
    Stuck,
    /// Normal values, but silent from 5 s to 20 s of every 30 s.
    CommLoss,
}

impl Scenario {
    /// The kebab-case name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Normal => "normal",
            Scenario::ThermalRunaway => "thermal-runaway",
            Scenario::Flapping => "flapping",
            Scenario::Stuck => "stuck",
            Scenario::CommLoss => "comm-loss",
        }
    }

    /// What the sensors read at scenario time `t` (s).
    pub fn state(self, t: f64) -> RackState {
        let state = match self {
            Scenario::Stuck => RackState::nominal(),
            Scenario::Normal | Scenario::CommLoss => RackState::at_rest(t),
            Scenario::Flapping => {
                let mut state = RackState::at_rest(t);
                let phase = std::f64::consts::TAU * t / FLAPPING_PERIOD_S;
                state.cell_temp_max_c = FLAPPING_CENTER_C
                    + FLAPPING_SWING_C * phase.sin()
                    + noise(map::CELL_TEMP_MAX, t, TEMP_NOISE_C);
                state
            }
            Scenario::ThermalRunaway => runaway(t),
        };
        state.with_consistent_max()
    }

    /// Whether the rack answers requests at scenario time `t`; only comm-loss ever goes silent.
    pub fn answers(self, t: f64) -> bool {
        match self {
            Scenario::CommLoss => {
                let offset = t.rem_euclid(COMM_LOSS_PERIOD_S);
                !(COMM_LOSS_SILENT_FROM_S..COMM_LOSS_SILENT_UNTIL_S).contains(&offset)
            }
            _ => true,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The rack's sensors in engineering units, before they are quantised into registers.
#[derive(Debug, Clone, PartialEq)]
pub struct RackState {
    /// Module temperatures 1..16, °C.
    pub module_temp_c: [f64; MODULE_COUNT],
    /// Hottest cell, °C.
    pub cell_temp_max_c: f64,
    /// Smoke detector stage, 0..=4.
    pub smoke_stage: u16,
    /// Electrolyte off-gas, ppm.
    pub offgas_ppm: f64,
    /// Hydrogen, %LEL.
    pub hydrogen_pct_lel: f64,
    /// Rack voltage, V.
    pub rack_voltage_v: f64,
    /// Rack current, A.
    pub rack_current_a: f64,
    /// State of charge, %.
    pub soc_pct: f64,
    /// Whether the UPS runs on battery.
    pub ups_on_battery: bool,
    /// UPS runtime on battery, min.
    pub ups_runtime_min: f64,
}

impl RackState {
    /// The "normal" column of the register map, exactly.
    pub fn nominal() -> Self {
        RackState {
            module_temp_c: [NORMAL_TEMP_C; MODULE_COUNT],
            cell_temp_max_c: NORMAL_TEMP_C,
            smoke_stage: 0,
            offgas_ppm: 0.0,
            hydrogen_pct_lel: 0.0,
            rack_voltage_v: NORMAL_VOLTAGE_V,
            rack_current_a: NORMAL_CURRENT_A,
            soc_pct: NORMAL_SOC_PCT,
            ups_on_battery: false,
            ups_runtime_min: NORMAL_UPS_RUNTIME_MIN,
        }
    }

    /// Nominal values with live-looking jitter on the analogue sensors.
    fn at_rest(t: f64) -> Self {
        let mut state = RackState::nominal();
        for (addr, temp) in (map::MODULE_TEMP_FIRST..).zip(state.module_temp_c.iter_mut()) {
            *temp += noise(addr, t, TEMP_NOISE_C);
        }
        state.cell_temp_max_c += noise(map::CELL_TEMP_MAX, t, TEMP_NOISE_C);
        state.rack_voltage_v += noise(map::RACK_VOLTAGE, t, VOLTAGE_NOISE_V);
        state.rack_current_a += noise(map::RACK_CURRENT, t, CURRENT_NOISE_A);
        state
    }

    /// The hottest cell is by definition at least as hot as any module sensor; noise alone must
    /// not make a rule see a module hotter than the "max".
    fn with_consistent_max(mut self) -> Self {
        let hottest_module = self
            .module_temp_c
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        self.cell_temp_max_c = self.cell_temp_max_c.max(hottest_module);
        self
    }
}

/// thermal-runaway at time `t`: see the `RUNAWAY_*` constants.
fn runaway(t: f64) -> RackState {
    let mut state = RackState::at_rest(t);

    let rise = ((t - RUNAWAY_HEAT_FROM_S).max(0.0) * RUNAWAY_HEAT_RATE_C_PER_S)
        .min(RUNAWAY_CELL_TEMP_CAP_C - NORMAL_TEMP_C);
    state.cell_temp_max_c += rise;
    for (temp, share) in state
        .module_temp_c
        .iter_mut()
        .zip(RUNAWAY_MODULE_HEAT_SHARE)
    {
        *temp += share * rise;
    }

    if t >= RUNAWAY_OFFGAS_FROM_S {
        let ppm = ramp(&RUNAWAY_OFFGAS_PPM, t) + noise(map::OFFGAS, t, OFFGAS_NOISE_PPM);
        state.offgas_ppm = ppm.clamp(0.0, ramp_cap(&RUNAWAY_OFFGAS_PPM));
    }
    if t >= RUNAWAY_HYDROGEN_FROM_S {
        let lel =
            ramp(&RUNAWAY_HYDROGEN_PCT_LEL, t) + noise(map::HYDROGEN, t, HYDROGEN_NOISE_PCT_LEL);
        state.hydrogen_pct_lel = lel.clamp(0.0, ramp_cap(&RUNAWAY_HYDROGEN_PCT_LEL));
    }
    state.smoke_stage = RUNAWAY_SMOKE_STAGES
        .iter()
        .rev()
        .find(|(from, _)| t >= *from)
        .map_or(0, |(_, stage)| *stage);
    state.rack_voltage_v -= ((t - RUNAWAY_VOLTAGE_SAG_FROM_S).max(0.0)
        * RUNAWAY_VOLTAGE_SAG_V_PER_S)
        .min(RUNAWAY_VOLTAGE_SAG_MAX_V);
    state
}

/// Piecewise-linear curve through `knots` (sorted by time): the first value before the first
/// knot, the last value after the last one.
fn ramp(knots: &[(f64, f64)], t: f64) -> f64 {
    let mut value = knots.first().map_or(0.0, |(_, v)| *v);
    for pair in knots.windows(2) {
        let [(t0, v0), (t1, v1)] = [pair[0], pair[1]];
        if t >= t1 {
            value = v1;
        } else if t > t0 {
            value = v0 + (v1 - v0) * (t - t0) / (t1 - t0);
        }
    }
    value
}

/// The value a curve settles at.
fn ramp_cap(knots: &[(f64, f64)]) -> f64 {
    knots.last().map_or(0.0, |(_, v)| *v)
}

/// Uniform jitter in `[-amplitude, amplitude]`, fixed for each register during each
/// `NOISE_STEP_S` of scenario time.
fn noise(register: u16, t: f64, amplitude: f64) -> f64 {
    // A saturating cast: negative or absurd times simply reuse the first or last step.
    let step = (t / NOISE_STEP_S).floor() as u64;
    let hash = splitmix64(NOISE_SEED ^ (u64::from(register) << 48) ^ step);
    // The top 53 bits as a fraction in [0, 1): exactly representable in an f64.
    let unit = (hash >> 11) as f64 / (1u64 << 53) as f64;
    (unit * 2.0 - 1.0) * amplitude
}

/// SplitMix64's finaliser: a cheap, well-mixed hash, so neighbouring steps look unrelated.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::map::*;
    use clap::ValueEnum;

    /// The register at `addr` as an engineering value, scaled per the map.
    fn eng(scenario: Scenario, t: f64, addr: u16) -> f64 {
        let regs = Registers::encode(&scenario.state(t));
        let raw = regs.get(addr).unwrap_or_default();
        match addr {
            MODULE_TEMP_FIRST..=CELL_TEMP_MAX | RACK_CURRENT => f64::from(raw as i16) * 0.1,
            HYDROGEN | RACK_VOLTAGE => f64::from(raw) * 0.1,
            _ => f64::from(raw),
        }
    }

    /// Scenario time in steps of 0.1 s up to `until`.
    fn times(until: f64) -> impl Iterator<Item = f64> {
        (0..=(until * 10.0) as u32).map(|i| f64::from(i) * 0.1)
    }

    #[test]
    fn timeline_table() {
        use Scenario::*;
        let hot_module = MODULE_TEMP_FIRST + 1;
        // (scenario, t, register, lowest, highest) in engineering units.
        let table: &[(Scenario, f64, u16, f64, f64)] = &[
            (Normal, 0.0, CELL_TEMP_MAX, 24.8, 25.2),
            (Normal, 3600.0, MODULE_TEMP_FIRST, 24.8, 25.2),
            (Normal, 77.0, RACK_VOLTAGE, 799.5, 800.5),
            (Normal, 77.0, OFFGAS, 0.0, 0.0),
            (Normal, 77.0, STATE_OF_CHARGE, 95.0, 95.0),
            (Normal, 77.0, UPS_RUNTIME, 30.0, 30.0),
            (ThermalRunaway, 9.9, OFFGAS, 0.0, 0.0),
            (ThermalRunaway, 12.0, OFFGAS, 50.0, 70.0),
            (ThermalRunaway, 30.0, OFFGAS, 280.0, 320.0),
            (ThermalRunaway, 100.0, OFFGAS, 990.0, 1000.0),
            (ThermalRunaway, 10_000.0, OFFGAS, 990.0, 1000.0),
            (ThermalRunaway, 14.9, HYDROGEN, 0.0, 0.0),
            (ThermalRunaway, 30.0, HYDROGEN, 10.0, 14.0),
            (ThermalRunaway, 60.0, HYDROGEN, 35.0, 45.0),
            (ThermalRunaway, 19.9, CELL_TEMP_MAX, 24.8, 25.2),
            (ThermalRunaway, 40.0, CELL_TEMP_MAX, 44.8, 45.2),
            (ThermalRunaway, 50.0, CELL_TEMP_MAX, 54.8, 55.2),
            (ThermalRunaway, 60.0, CELL_TEMP_MAX, 64.8, 65.2),
            (ThermalRunaway, 10_000.0, CELL_TEMP_MAX, 119.8, 120.2),
            (ThermalRunaway, 60.0, hot_module, 62.7, 63.3),
            (ThermalRunaway, 60.0, MODULE_TEMP_FIRST + 8, 24.8, 25.2),
            (ThermalRunaway, 49.9, SMOKE_STAGE, 0.0, 0.0),
            (ThermalRunaway, 50.0, SMOKE_STAGE, 1.0, 1.0),
            (ThermalRunaway, 55.0, SMOKE_STAGE, 2.0, 2.0),
            (ThermalRunaway, 60.0, SMOKE_STAGE, 3.0, 3.0),
            (ThermalRunaway, 65.0, SMOKE_STAGE, 4.0, 4.0),
            (ThermalRunaway, 500.0, SMOKE_STAGE, 4.0, 4.0),
            (ThermalRunaway, 59.0, RACK_VOLTAGE, 799.5, 800.5),
            (ThermalRunaway, 80.0, RACK_VOLTAGE, 789.5, 790.5),
            (ThermalRunaway, 500.0, RACK_VOLTAGE, 759.5, 760.5),
            (ThermalRunaway, 500.0, UPS_ON_BATTERY, 0.0, 0.0),
            (ThermalRunaway, 500.0, UPS_RUNTIME, 30.0, 30.0),
            (Flapping, 1.0, CELL_TEMP_MAX, 45.8, 46.2),
            (Flapping, 3.0, CELL_TEMP_MAX, 43.8, 44.2),
            (Flapping, 3.0, MODULE_TEMP_FIRST, 24.8, 25.2),
            (Stuck, 0.0, CELL_TEMP_MAX, 25.0, 25.0),
            (Stuck, 1234.5, RACK_VOLTAGE, 800.0, 800.0),
            (CommLoss, 10.0, CELL_TEMP_MAX, 24.8, 25.2),
        ];
        for &(scenario, t, addr, lo, hi) in table {
            let v = eng(scenario, t, addr);
            // Compare in tenths: the registers hold tenths, so 0.1-steps are exact there.
            assert!(
                (lo * 10.0).round() <= (v * 10.0).round()
                    && (v * 10.0).round() <= (hi * 10.0).round(),
                "{scenario} at t={t}s: register {addr} = {v}, expected {lo}..={hi}"
            );
        }
    }

    #[test]
    fn hottest_cell_is_never_below_a_module() {
        for scenario in Scenario::value_variants() {
            for t in times(200.0) {
                let regs = Registers::encode(&scenario.state(t));
                let max = regs.get(CELL_TEMP_MAX).unwrap_or_default() as i16;
                for addr in MODULE_TEMP_FIRST..CELL_TEMP_MAX {
                    let module = regs.get(addr).unwrap_or_default() as i16;
                    assert!(
                        max >= module,
                        "{scenario} t={t}: module {addr} {module} > max {max}"
                    );
                }
            }
        }
    }

    #[test]
    fn normal_stays_clear_of_every_threshold() {
        for t in times(3600.0) {
            let s = Scenario::Normal.state(t);
            assert!(s.cell_temp_max_c < 26.0, "t={t}: {s:?}");
            assert!(s.offgas_ppm == 0.0 && s.hydrogen_pct_lel == 0.0 && s.smoke_stage == 0);
            assert!((s.rack_voltage_v - NORMAL_VOLTAGE_V).abs() <= VOLTAGE_NOISE_V);
        }
    }

    #[test]
    fn noise_is_live_but_reproducible() {
        let a = Registers::encode(&Scenario::Normal.state(12.3));
        let b = Registers::encode(&Scenario::Normal.state(12.3));
        assert_eq!(a, b);
        let distinct: std::collections::HashSet<_> = (0..60)
            .map(|s| Registers::encode(&Scenario::Normal.state(f64::from(s))).get(RACK_VOLTAGE))
            .collect();
        assert!(distinct.len() > 3, "voltage barely moves: {distinct:?}");
    }

    #[test]
    fn stuck_never_changes() {
        let first = Registers::encode(&Scenario::Stuck.state(0.0));
        for t in times(600.0) {
            assert_eq!(Registers::encode(&Scenario::Stuck.state(t)), first, "t={t}");
        }
    }

    #[test]
    fn flapping_crosses_45_both_ways_every_period() {
        let temps: Vec<f64> = times(FLAPPING_PERIOD_S)
            .map(|t| Scenario::Flapping.state(t).cell_temp_max_c)
            .collect();
        assert!(temps.iter().any(|&c| c > 45.5));
        assert!(temps.iter().any(|&c| c < 44.5));
        assert!(temps.iter().all(|&c| (43.5..=46.5).contains(&c)));
    }

    #[test]
    fn offgas_rises_monotonically_apart_from_noise() {
        let mut last = 0.0;
        for t in times(120.0) {
            let ppm = Scenario::ThermalRunaway.state(t).offgas_ppm;
            assert!(
                ppm + 2.0 * OFFGAS_NOISE_PPM >= last,
                "t={t}: {ppm} after {last}"
            );
            last = last.max(ppm);
        }
    }

    #[test]
    fn comm_loss_silence_table() {
        let table = [
            (0.0, true),
            (4.9, true),
            (5.0, false),
            (19.9, false),
            (20.0, true),
            (34.9, true),
            (35.0, false),
            (50.0, true),
        ];
        for (t, answers) in table {
            assert_eq!(Scenario::CommLoss.answers(t), answers, "t={t}");
        }
        for scenario in Scenario::value_variants() {
            if *scenario != Scenario::CommLoss {
                assert!(times(60.0).all(|t| scenario.answers(t)), "{scenario}");
            }
        }
    }

    #[test]
    fn display_matches_the_command_line_name() {
        for scenario in Scenario::value_variants() {
            let clap_name = scenario
                .to_possible_value()
                .map(|v| v.get_name().to_owned());
            assert_eq!(clap_name.as_deref(), Some(scenario.name()));
        }
    }

    #[test]
    fn ramp_interpolates_and_holds_the_ends() {
        let knots = [(10.0, 0.0), (20.0, 100.0)];
        assert_eq!(ramp(&knots, 0.0), 0.0);
        assert_eq!(ramp(&knots, 15.0), 50.0);
        assert_eq!(ramp(&knots, 99.0), 100.0);
    }
}
