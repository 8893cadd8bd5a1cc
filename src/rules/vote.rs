//! Vote rules: k-of-n agreement of distinct sensors in one zone.
//!
//! One detector can fail in a way that looks like a fire (a drifting off-gas cell, dust in a
//! smoke chamber). A vote raises its (usually emergency) alarm only when `need` *different*
//! sensors of the zone are in alarm at `at_least`, so no single faulty detector can drive an
//! emergency alone. Sensor faults never vote: a broken detector is not a witness.

use std::collections::BTreeSet;

use crate::rules::Severity;

/// A vote rule (`vote = {...}` in a `[[rules]]` entry), as validated by the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    /// `alarms`: alarm key patterns, `device/point/rule`, each segment may be `*`; the point
    /// segment also matches a point kind (`*/smoke/*` is every smoke detector's alarm).
    pub alarms: Vec<String>,
    /// `need`: how many different sensors of the zone must be in alarm to raise this one.
    pub need: usize,
    /// `at_least`: the severity a sensor's alarm must have to count as a vote.
    pub at_least: Severity,
    /// `severity`: the severity of the alarm the vote raises.
    pub severity: Severity,
}

/// One active alarm, as a vote sees it.
#[derive(Debug, Clone, Copy)]
pub struct Voter<'a> {
    pub device: &'a str,
    pub point: &'a str,
    /// The point's kind (`smoke`, `offgas`, ...): the point segment of a pattern may name it.
    pub point_kind: &'a str,
    pub rule: &'a str,
    pub severity: Severity,
}

/// Whether `device/point/rule` pattern segments (each may be `*`) match an alarm.
pub fn matches(pattern: &str, v: &Voter) -> bool {
    let mut seg = pattern.split('/');
    let (Some(d), Some(p), Some(r), None) = (seg.next(), seg.next(), seg.next(), seg.next()) else {
        return false;
    };
    (d == "*" || d == v.device)
        && (p == "*" || p == v.point || p == v.point_kind)
        && (r == "*" || r == v.rule)
}

/// The distinct sensors (`device/point`) voting, given the zone's active non-fault alarms.
pub fn voters<'a>(vote: &Vote, alarms: impl IntoIterator<Item = Voter<'a>>) -> BTreeSet<String> {
    alarms
        .into_iter()
        .filter(|v| v.severity >= vote.at_least && vote.alarms.iter().any(|p| matches(p, v)))
        .map(|v| format!("{}/{}", v.device, v.point))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v<'a>(device: &'a str, point: &'a str, kind: &'a str, sev: Severity) -> Voter<'a> {
        Voter {
            device,
            point,
            point_kind: kind,
            rule: "r",
            severity: sev,
        }
    }

    fn vote() -> Vote {
        Vote {
            alarms: vec!["*/offgas/*".into(), "*/smoke/*".into()],
            need: 2,
            at_least: Severity::Warning,
            severity: Severity::Emergency,
        }
    }

    #[test]
    fn patterns_match_point_ids_or_kinds() {
        let a = v("rack-01", "smoke_stage", "smoke", Severity::Warning);
        assert!(matches("*/smoke/*", &a));
        assert!(matches("rack-01/smoke_stage/r", &a));
        assert!(!matches("rack-02/*/*", &a));
        assert!(!matches("*/offgas/*", &a));
        assert!(!matches("*/*", &a));
    }

    #[test]
    fn distinct_sensors_are_counted_once() {
        let alarms = [
            v("rack-01", "offgas", "offgas", Severity::Critical),
            v("rack-01", "offgas", "offgas", Severity::Warning), // a second rule on the same sensor
            v(
                "rack-01",
                "cell_temp_max",
                "temperature",
                Severity::Emergency,
            ),
        ];
        assert_eq!(
            voters(&vote(), alarms).len(),
            1,
            "one detector cannot vote twice"
        );
        let alarms = [
            v("rack-01", "offgas", "offgas", Severity::Warning),
            v("det-02", "smoke_stage", "smoke", Severity::Warning),
        ];
        assert_eq!(voters(&vote(), alarms).len(), 2);
    }

    #[test]
    fn below_at_least_does_not_vote() {
        let mut vt = vote();
        vt.at_least = Severity::Critical;
        let alarms = [
            v("rack-01", "offgas", "offgas", Severity::Critical),
            v("det-02", "smoke_stage", "smoke", Severity::Warning),
        ];
        assert_eq!(voters(&vt, alarms).len(), 1);
    }
}
