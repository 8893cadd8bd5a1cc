//! Threshold rules (`above` / `below`), with deadband and on/off delays.
//!
//! Semantics a fire-safety engineer can check against the table tests below:
//! - a level is reached when the value is *at or past* its threshold (57.0 with `critical = 57.0`
//!   is critical);
//! - once at a level, the value must go *strictly past* `threshold ∓ deadband` to leave it, so a
//!   reading dithering around the threshold does not chatter;
//! - a higher level must hold for `on_delay` before it is raised, a lower one (or normal) for
//!   `off_delay` before the alarm steps down; the delay is counted from the first sample that
//!   departed from the current level, so a steadily rising value is not held back by each
//!   intermediate level restarting the clock.

use std::time::{Duration, Instant};

use crate::rules::Severity;

/// Which side of the thresholds is bad: `above = {...}` (too hot, too much gas) or
/// `below = {...}` (too low a voltage, too little flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `above`: a level is reached at or above its threshold.
    Above,
    /// `below`: a level is reached at or below its threshold.
    Below,
}

/// A threshold rule (`above` or `below` in a `[[rules]]` entry), as validated by the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// `above` or `below`: which side of the thresholds is bad.
    pub direction: Direction,
    /// The levels given (`warning`, `critical`, `emergency`, any subset) with their thresholds,
    /// in ascending severity.
    pub levels: Vec<(Severity, f64)>,
    /// `deadband`: how far back past a threshold the value must go before its level clears, so
    /// a reading dithering around the threshold does not chatter.
    pub deadband: f64,
    /// `on_delay`: how long a higher level must hold before it is raised.
    pub on_delay: Duration,
    /// `off_delay`: how long a lower level (or normal) must hold before the alarm steps down.
    pub off_delay: Duration,
}

/// The evaluation state of one (point, rule) pair.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThresholdState {
    /// The level currently in force (`None` = normal).
    pub current: Option<Severity>,
    /// A different level the value has been asking for, and since when.
    pending: Option<(Option<Severity>, Instant)>,
}

impl ThresholdState {
    /// A state already at `level`, as restored after a restart.
    pub fn at(level: Option<Severity>) -> ThresholdState {
        ThresholdState {
            current: level,
            pending: None,
        }
    }
}

/// The outcome of one evaluation that changed the level in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelChange {
    pub from: Option<Severity>,
    pub to: Option<Severity>,
    /// The threshold of the new level (of the old one when clearing), for the event payload.
    pub threshold: f64,
}

impl Threshold {
    fn reached(&self, value: f64, threshold: f64) -> bool {
        match self.direction {
            Direction::Above => value >= threshold,
            Direction::Below => value <= threshold,
        }
    }

    /// Whether a value still holds a level that is in force: not yet strictly past the deadband.
    fn held(&self, value: f64, threshold: f64) -> bool {
        match self.direction {
            Direction::Above => value >= threshold - self.deadband,
            Direction::Below => value <= threshold + self.deadband,
        }
    }

    /// The level the value asks for, given the level in force (which the deadband protects).
    pub fn target(&self, value: f64, current: Option<Severity>) -> Option<Severity> {
        let mut target = None;
        for &(sev, thr) in &self.levels {
            let in_force = current.is_some_and(|c| sev <= c);
            if self.reached(value, thr) || (in_force && self.held(value, thr)) {
                target = Some(sev);
            }
        }
        target
    }

    fn threshold_of(&self, sev: Severity) -> f64 {
        self.levels
            .iter()
            .find(|(s, _)| *s == sev)
            .map(|(_, t)| *t)
            .unwrap_or(f64::NAN)
    }

    /// Feeds one good reading; returns the change of level in force, if any.
    pub fn evaluate(
        &self,
        state: &mut ThresholdState,
        value: f64,
        now: Instant,
    ) -> Option<LevelChange> {
        let target = self.target(value, state.current);
        if target == state.current {
            state.pending = None;
            return None;
        }
        let rising = target > state.current;
        let since = match state.pending {
            // Same direction as before: keep counting from the first departure.
            Some((p, since)) if (p > state.current) == rising => since,
            _ => now,
        };
        state.pending = Some((target, since));
        let delay = if rising {
            self.on_delay
        } else {
            self.off_delay
        };
        if now.saturating_duration_since(since) < delay {
            return None;
        }
        let from = state.current;
        state.current = target;
        state.pending = None;
        let threshold = match (target, from) {
            (Some(t), _) => self.threshold_of(t),
            (None, Some(f)) => self.threshold_of(f),
            (None, None) => f64::NAN,
        };
        Some(LevelChange {
            from,
            to: target,
            threshold,
        })
    }

    /// When a pending change would mature if the value stays where it is; the engine re-evaluates
    /// then even if no new reading has arrived.
    pub fn due(&self, state: &ThresholdState) -> Option<Instant> {
        let (target, since) = state.pending?;
        let delay: Duration = if target > state.current {
            self.on_delay
        } else {
            self.off_delay
        };
        Some(since + delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Severity::*;

    fn above(deadband: f64, on: u64, off: u64) -> Threshold {
        Threshold {
            direction: Direction::Above,
            levels: vec![(Warning, 45.0), (Critical, 55.0), (Emergency, 65.0)],
            deadband,
            on_delay: Duration::from_secs(on),
            off_delay: Duration::from_secs(off),
        }
    }

    /// Plays (seconds, value) samples and returns the level in force after each.
    fn play(rule: &Threshold, samples: &[(u64, f64)]) -> Vec<Option<Severity>> {
        let t0 = Instant::now();
        let mut st = ThresholdState::default();
        samples
            .iter()
            .map(|&(t, v)| {
                rule.evaluate(&mut st, v, t0 + Duration::from_secs(t));
                st.current
            })
            .collect()
    }

    #[test]
    fn levels_without_deadband_or_delay() {
        let r = above(0.0, 0, 0);
        let cases: &[(f64, Option<Severity>)] = &[
            (44.99, None),
            (45.0, Some(Warning)), // exactly at threshold counts
            (54.9, Some(Warning)),
            (55.0, Some(Critical)),
            (64.9, Some(Critical)),
            (65.0, Some(Emergency)),
            (1000.0, Some(Emergency)),
            (-40.0, None),
        ];
        for &(v, want) in cases {
            assert_eq!(play(&r, &[(0, v)]), vec![want], "value {v}");
        }
    }

    #[test]
    fn deadband_holds_until_strictly_past() {
        let r = above(1.0, 0, 0);
        assert_eq!(
            play(&r, &[(0, 45.0), (1, 44.5), (2, 44.0), (3, 43.99)]),
            vec![Some(Warning), Some(Warning), Some(Warning), None]
        );
        // Deadband protects each level in force: critical held at 54.2, stepped down at 53.9.
        assert_eq!(
            play(&r, &[(0, 56.0), (1, 54.2), (2, 53.9)]),
            vec![Some(Critical), Some(Critical), Some(Warning)]
        );
        // A deadband never raises: 44.5 from normal is still normal.
        assert_eq!(play(&r, &[(0, 44.5)]), vec![None]);
    }

    #[test]
    fn on_delay_requires_the_condition_to_hold() {
        let r = above(0.0, 5, 0);
        assert_eq!(
            play(&r, &[(0, 50.0), (4, 50.0), (5, 50.0)]),
            vec![None, None, Some(Warning)]
        );
        // A dip back to normal restarts the clock.
        assert_eq!(
            play(&r, &[(0, 50.0), (3, 40.0), (4, 50.0), (8, 50.0), (9, 50.0)]),
            vec![None, None, None, None, Some(Warning)]
        );
        // A value rising through levels keeps the first departure's clock and lands on the top.
        assert_eq!(
            play(&r, &[(0, 50.0), (3, 60.0), (5, 60.0)]),
            vec![None, None, Some(Critical)]
        );
    }

    #[test]
    fn off_delay_requires_the_clear_to_hold() {
        let r = above(0.0, 0, 5);
        assert_eq!(
            play(&r, &[(0, 50.0), (1, 40.0), (5, 40.0), (6, 40.0)]),
            vec![Some(Warning), Some(Warning), Some(Warning), None]
        );
        // Coming back during the off-delay cancels the clear.
        assert_eq!(
            play(
                &r,
                &[(0, 50.0), (1, 40.0), (3, 50.0), (7, 40.0), (11, 40.0)]
            ),
            vec![
                Some(Warning),
                Some(Warning),
                Some(Warning),
                Some(Warning),
                Some(Warning)
            ]
        );
        // Escalation is not held back by the off-delay.
        assert_eq!(
            play(&r, &[(0, 50.0), (1, 56.0)]),
            vec![Some(Warning), Some(Critical)]
        );
    }

    #[test]
    fn below_rules_mirror_above() {
        let r = Threshold {
            direction: Direction::Below,
            levels: vec![(Warning, 20.0), (Critical, 10.0)],
            deadband: 2.0,
            on_delay: Duration::ZERO,
            off_delay: Duration::ZERO,
        };
        assert_eq!(
            play(&r, &[(0, 20.0), (1, 21.5), (2, 22.0), (3, 22.01), (4, 9.0)]),
            vec![
                Some(Warning),
                Some(Warning),
                Some(Warning),
                None,
                Some(Critical)
            ]
        );
    }

    #[test]
    fn changes_report_the_relevant_threshold() {
        let r = above(0.0, 0, 0);
        let t0 = Instant::now();
        let mut st = ThresholdState::default();
        let up = r.evaluate(&mut st, 57.2, t0).unwrap();
        assert_eq!((up.from, up.to, up.threshold), (None, Some(Critical), 55.0));
        assert_eq!(r.evaluate(&mut st, 57.3, t0), None);
        let down = r.evaluate(&mut st, 20.0, t0).unwrap();
        assert_eq!(
            (down.from, down.to, down.threshold),
            (Some(Critical), None, 55.0)
        );
    }

    #[test]
    fn due_tells_when_a_pending_change_matures() {
        let r = above(0.0, 5, 0);
        let t0 = Instant::now();
        let mut st = ThresholdState::default();
        assert_eq!(r.evaluate(&mut st, 50.0, t0), None);
        assert_eq!(r.due(&st), Some(t0 + Duration::from_secs(5)));
    }
}
