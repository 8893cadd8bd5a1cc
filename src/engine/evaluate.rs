//! What the threshold and rate-of-rise rules say about a point's good value, in words an
//! operator reads.
//!
//! The rules themselves (`crate::rules`) are pure state machines; this is where their state is
//! kept per (rule, device, point) and where a change becomes an alarm condition with its
//! message, unit and latching. Only values [`super::health`] has let through get here.

use std::collections::HashMap;

use crate::alarms::{Condition, Identity, RuleKind, Source};
use crate::config::{Direction, Point, RateOfRise, RuleBody, Threshold};
use crate::rules::rate::{RateChange, RateState};
use crate::rules::threshold::{LevelChange, ThresholdState};
use crate::rules::Severity;

use super::{unit_of, unit_suffix, Changes, Setup};

/// (rule index, device index, point index).
type Watch = (usize, usize, usize);

/// Each point-watching rule's state, created on its first value.
#[derive(Default)]
pub(super) struct RuleStates {
    thresholds: HashMap<Watch, ThresholdState>,
    rates: HashMap<Watch, RateState>,
}

impl RuleStates {
    /// After a restart: the threshold resumes at the level its alarm was at (`None`: normal).
    pub(super) fn seed_threshold(&mut self, at: Watch, level: Option<Severity>) {
        self.thresholds.insert(at, ThresholdState::at(level));
    }

    /// After a restart with the rate-of-rise alarm active: it stays raised until the rise slows.
    pub(super) fn seed_rate_raised(&mut self, at: Watch) {
        self.rates.insert(at, RateState::raised());
    }

    /// Runs a good value through the threshold and rate-of-rise rules watching it.
    pub(super) fn evaluate(
        &mut self,
        setup: &Setup,
        device: usize,
        pi: usize,
        value: f64,
        changes: &mut Changes,
    ) {
        let d = &setup.cfg.devices[device];
        let point = &d.points[pi];
        let now = changes.now.mono;
        for &ri in &setup.watchers[device][pi] {
            let rule = &setup.cfg.rules[ri];
            let (kind, unit, cond) = match &rule.body {
                RuleBody::Threshold(th) => {
                    let state = self.thresholds.entry((ri, device, pi)).or_default();
                    let Some(change) = th.evaluate(state, value, now) else {
                        continue;
                    };
                    (
                        RuleKind::Threshold,
                        unit_of(point),
                        threshold_condition(point, th, value, &change),
                    )
                }
                RuleBody::RateOfRise(rr) => {
                    let state = self.rates.entry((ri, device, pi)).or_default();
                    let Some(change) = rr.evaluate(state, value, now) else {
                        continue;
                    };
                    let (per, cond) = rate_condition(point, rr, &change);
                    (RuleKind::RateOfRise, Some(per), cond)
                }
                RuleBody::Vote(_) => continue,
            };
            let id = Identity {
                unit,
                latching: rule.latch,
                ..Source::Rule {
                    device: &d.id,
                    point: &point.id,
                    rule: &rule.id,
                    kind,
                }
                .identity(&d.zone)
            };
            changes.update(&id, cond);
        }
    }
}

/// `t 57.2 degC above critical 55.0`, or `... back to normal (was critical at 55.0)`.
fn threshold_condition(
    point: &Point,
    th: &Threshold,
    value: f64,
    change: &LevelChange,
) -> Condition {
    let unit = unit_suffix(point);
    let message = match change.to {
        Some(sev) => format!(
            "{} {value:?}{unit} {} {sev} {:?}",
            point.id,
            if th.direction == Direction::Above {
                "above"
            } else {
                "below"
            },
            change.threshold
        ),
        None => format!(
            "{} {value:?}{unit} back to normal (was {} at {:?})",
            point.id,
            change.from.map(|s| s.as_str()).unwrap_or("normal"),
            change.threshold
        ),
    };
    Condition {
        severity: change.to,
        value: Some(value),
        threshold: Some(change.threshold),
        message,
    }
}

/// The rate's unit (`degC/min`) and its condition, the rate rounded to two decimals.
fn rate_condition(point: &Point, rr: &RateOfRise, change: &RateChange) -> (String, Condition) {
    let per = format!(
        "{}/min",
        if point.unit.is_empty() {
            "units"
        } else {
            &point.unit
        }
    );
    let rate = (change.per_minute * 100.0).round() / 100.0;
    let message = if change.active {
        format!(
            "{} rising {rate:?} {per} over {:?} (limit {:?})",
            point.id, rr.window, rr.per_minute
        )
    } else {
        format!(
            "{} rise slowed to {rate:?} {per} (limit {:?})",
            point.id, rr.per_minute
        )
    };
    let cond = Condition {
        severity: change.active.then_some(rr.severity),
        value: Some(rate),
        threshold: Some(rr.per_minute),
        message,
    };
    (per, cond)
}
