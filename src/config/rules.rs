//! `[[rules]]`: what turns readings into alarms. The rule definitions themselves (threshold,
//! rate of rise, vote) belong to `rules`, next to the code that evaluates them; this file holds
//! a rule as configured (its id, its resolved points, `latch`), the raw form, the defaults and
//! the validator.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::validate::Validator;
use super::Device;
use crate::rules::rate::RateOfRise;
use crate::rules::threshold::{Direction, Threshold};
use crate::rules::vote::Vote;
use crate::rules::Severity;

/// Default threshold `deadband`: none.
pub const DEFAULT_DEADBAND: f64 = 0.0;
/// Default threshold `on_delay` and `off_delay`: none, a level changes with the reading.
pub const DEFAULT_DELAY: Duration = Duration::ZERO;
/// Default `rate_of_rise.window`.
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(60);
/// The shortest `rate_of_rise.window` accepted.
pub const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);
/// Default `rate_of_rise.severity`.
pub const DEFAULT_RATE_SEVERITY: Severity = Severity::Critical;
/// Default `vote.need`: two sensors, so no single faulty detector raises the vote.
pub const DEFAULT_VOTE_NEED: usize = 2;
/// Default `vote.at_least`: any alarm of a sensor counts as its vote.
pub const DEFAULT_VOTE_AT_LEAST: Severity = Severity::Warning;
/// Default `vote.severity`.
pub const DEFAULT_VOTE_SEVERITY: Severity = Severity::Emergency;

/// A rule (`[[rules]]`), with its `points` already resolved against the devices.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `id`: the rule's name, `[a-z0-9-]+`, unique in the file; the last segment of its alarm
    /// keys (`device/point/rule`).
    pub id: String,
    /// `points`: `device/point` patterns (device may be `*`), resolved to (device index, point
    /// index) pairs this rule watches. Empty for a vote, which watches alarms instead.
    pub targets: Vec<(usize, usize)>,
    /// `above`/`below`, `rate_of_rise` or `vote`: what the rule checks.
    pub body: RuleBody,
    /// `latch`: the alarm stays active until acknowledged, even after its condition clears;
    /// off by default.
    pub latch: bool,
}

/// What a rule checks: exactly one of these per rule.
#[derive(Debug, Clone)]
pub enum RuleBody {
    /// `above = {...}` or `below = {...}`, with `deadband`, `on_delay`, `off_delay`.
    Threshold(Threshold),
    /// `rate_of_rise = {...}`.
    RateOfRise(RateOfRise),
    /// `vote = {...}`.
    Vote(Vote),
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawRule {
    id: Option<String>,
    points: Vec<String>,
    above: Option<BTreeMap<String, f64>>,
    below: Option<BTreeMap<String, f64>>,
    deadband: Option<f64>,
    on_delay: Option<String>,
    off_delay: Option<String>,
    rate_of_rise: Option<RawRateOfRise>,
    vote: Option<RawVote>,
    latch: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawRateOfRise {
    per_minute: Option<f64>,
    window: Option<String>,
    severity: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawVote {
    alarms: Vec<String>,
    need: Option<i64>,
    at_least: Option<String>,
    severity: Option<String>,
}

impl Validator {
    /// Every `[[rules]]` entry, resolved against `devices`; rule ids must be unique.
    pub(super) fn rules(&mut self, raw: Vec<RawRule>, devices: &[Device]) -> Vec<Rule> {
        let mut rules = Vec::new();
        let mut seen = HashSet::new();
        for (i, r) in raw.into_iter().enumerate() {
            if let Some(rule) = self.rule(i, r, devices) {
                if !seen.insert(rule.id.clone()) {
                    self.problem(
                        format!("rules[{i}].id"),
                        format!("duplicate rule id {:?}", rule.id),
                    );
                }
                rules.push(rule);
            }
        }
        rules
    }

    fn rule(&mut self, i: usize, r: RawRule, devices: &[Device]) -> Option<Rule> {
        let at = format!("rules[{i}]");
        let id = self.id(&format!("{at}.id"), r.id, &['-']);
        let kinds = [
            r.above.is_some() || r.below.is_some(),
            r.rate_of_rise.is_some(),
            r.vote.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.problem(
                at,
                "a rule has exactly one of above/below, rate_of_rise or vote",
            );
            return None;
        }
        if r.above.is_some() && r.below.is_some() {
            self.problem(&at, "a rule has above or below, not both (write two rules)");
            return None;
        }
        let body = if let Some(v) = r.vote {
            if !r.points.is_empty() {
                self.problem(
                    format!("{at}.points"),
                    "a vote rule takes vote.alarms, not points",
                );
            }
            if v.alarms.is_empty() {
                self.problem(format!("{at}.vote.alarms"), "missing: which alarms vote");
            }
            for (j, pat) in v.alarms.iter().enumerate() {
                if pat.split('/').count() != 3 {
                    self.problem(
                        format!("{at}.vote.alarms[{j}]"),
                        format!("{pat:?} must be device/point/rule (each may be *)"),
                    );
                }
            }
            let need: usize = self.int(
                &format!("{at}.vote.need"),
                v.need,
                DEFAULT_VOTE_NEED,
                "1-1000",
            );
            if need == 0 {
                self.problem(format!("{at}.vote.need"), "must be at least 1");
            }
            RuleBody::Vote(Vote {
                alarms: v.alarms,
                need,
                at_least: self.severity(
                    &format!("{at}.vote.at_least"),
                    v.at_least,
                    DEFAULT_VOTE_AT_LEAST,
                ),
                severity: self.severity(
                    &format!("{at}.vote.severity"),
                    v.severity,
                    DEFAULT_VOTE_SEVERITY,
                ),
            })
        } else if let Some(rr) = r.rate_of_rise {
            let per_minute = self
                .required(&format!("{at}.rate_of_rise.per_minute"), rr.per_minute)
                .unwrap_or(1.0);
            if per_minute <= 0.0 || !per_minute.is_finite() {
                self.problem(
                    format!("{at}.rate_of_rise.per_minute"),
                    format!("{per_minute} must be a positive finite number"),
                );
            }
            let window = self.duration(
                &format!("{at}.rate_of_rise.window"),
                rr.window,
                DEFAULT_RATE_WINDOW,
            );
            if window < MIN_RATE_WINDOW {
                self.problem(format!("{at}.rate_of_rise.window"), "must be at least 1s");
            }
            RuleBody::RateOfRise(RateOfRise {
                per_minute,
                window,
                severity: self.severity(
                    &format!("{at}.rate_of_rise.severity"),
                    rr.severity,
                    DEFAULT_RATE_SEVERITY,
                ),
            })
        } else {
            let (direction, map, key) = match (r.above, r.below) {
                (Some(m), _) => (Direction::Above, m, "above"),
                (_, Some(m)) => (Direction::Below, m, "below"),
                _ => return None,
            };
            let mut levels = Vec::new();
            let given = map.len();
            for (name, value) in map {
                match Severity::parse(&name) {
                    // TOML spells `nan` and `inf`: no value ever compares past either, so the
                    // level would never be reached (or always be).
                    Some(_) if !value.is_finite() => self.problem(
                        format!("{at}.{key}.{name}"),
                        format!("{value} is not a finite number: the level could never be judged"),
                    ),
                    Some(s) => levels.push((s, value)),
                    None => self.problem(
                        format!("{at}.{key}.{name}"),
                        "unknown severity (expected warning, critical or emergency)",
                    ),
                }
            }
            levels.sort_by_key(|(s, _)| *s);
            if given == 0 {
                self.problem(
                    format!("{at}.{key}"),
                    "no levels: give warning, critical and/or emergency",
                );
            }
            for w in levels.windows(2) {
                let ((lo_s, lo), (hi_s, hi)) = (w[0], w[1]);
                let ordered = match direction {
                    Direction::Above => lo < hi,
                    Direction::Below => lo > hi,
                };
                if !ordered {
                    let rel = if direction == Direction::Above {
                        "below"
                    } else {
                        "above"
                    };
                    self.problem(
                        format!("{at}.{key}.{lo_s}"),
                        format!("{lo_s} {lo} must be {rel} {hi_s} {hi}"),
                    );
                }
            }
            let deadband = r.deadband.unwrap_or(DEFAULT_DEADBAND);
            if deadband < 0.0 || !deadband.is_finite() {
                self.problem(
                    format!("{at}.deadband"),
                    format!("{deadband} must be a finite number, zero or positive"),
                );
            }
            RuleBody::Threshold(Threshold {
                direction,
                levels,
                deadband,
                on_delay: self.duration(&format!("{at}.on_delay"), r.on_delay, DEFAULT_DELAY),
                off_delay: self.duration(&format!("{at}.off_delay"), r.off_delay, DEFAULT_DELAY),
            })
        };
        let mut targets = Vec::new();
        // Which (device, point) pairs are already targets: a pattern like `*/t` matches a point
        // of every device, and looking each up in `targets` made a big site quadratic.
        let mut targeted = HashSet::new();
        if !matches!(body, RuleBody::Vote(_)) {
            if r.points.is_empty() {
                self.problem(
                    format!("{at}.points"),
                    "missing: which points the rule watches",
                );
            }
            for (j, pat) in r.points.iter().enumerate() {
                let path = format!("{at}.points[{j}]");
                let Some((dev, pt)) = pat.split_once('/') else {
                    self.problem(
                        path,
                        format!("{pat:?} must be device/point (device may be *)"),
                    );
                    continue;
                };
                let before = targets.len();
                for (di, d) in devices.iter().enumerate() {
                    if dev != "*" && dev != d.id {
                        continue;
                    }
                    for (pi, p) in d.points.iter().enumerate() {
                        if p.id == pt && targeted.insert((di, pi)) {
                            targets.push((di, pi));
                        }
                    }
                }
                if targets.len() == before {
                    self.problem(path, format!("no point {pat:?}"));
                }
            }
        }
        Some(Rule {
            id,
            targets,
            body,
            latch: r.latch.unwrap_or(false),
        })
    }
}
