//! The rule engine: one reading in, the messages it causes out.
//!
//! Sits between `fieldbus` and `mqtt`: it runs each point's value through the rules that watch
//! it, feeds the resulting conditions to the alarm table, and says what to publish (alarm events,
//! zone statuses that changed, telemetry). It does no I/O and reads no clock, so the whole
//! pipeline logic can be driven by tests and benchmarks with made-up readings.

use std::collections::{BTreeSet, HashMap};

use crate::alarms::{AlarmEvent, AlarmKind, AlarmTable, Condition, Identity, Snapshot};
use crate::clock::{rfc3339, Now};
use crate::config::{Config, Direction, RuleBody};
use crate::fieldbus::{LinkError, PointReading, Reading};
use crate::mqtt::{Outgoing, Quality, Telemetry};
use crate::rules::rate::RateState;
use crate::rules::threshold::ThresholdState;
use crate::rules::vote::{self, Voter};
use crate::rules::Severity;

/// Consecutive failed polls before a device is declared not answering: one miss can be a
/// dropped packet, two in a row is a device the zone cannot rely on (well within the "3 polls"
/// an operator is promised).
pub const COMM_LOSS_AFTER: u32 = 2;

/// Severity of sensor and link faults: they need a technician, not a drain.
pub const FAULT_SEVERITY: Severity = Severity::Warning;

pub struct Engine {
    cfg: std::sync::Arc<Config>,
    table: AlarmTable,
    /// [device][point] → indexes of the threshold and rate-of-rise rules watching it.
    watchers: Vec<Vec<Vec<usize>>>,
    thresholds: HashMap<(usize, usize, usize), ThresholdState>,
    rates: HashMap<(usize, usize, usize), RateState>,
    /// Consecutive failed polls per device.
    misses: Vec<u32>,
}

/// What one reading caused, in publishing order.
#[derive(Debug, Default)]
pub struct Output {
    pub events: Vec<AlarmEvent>,
    pub messages: Vec<Outgoing>,
}

impl Engine {
    /// A fresh engine; `last_seq` is the last event number used by this gateway.
    pub fn new(cfg: std::sync::Arc<Config>, last_seq: u64) -> Engine {
        Engine::restore(
            cfg,
            Snapshot {
                last_seq,
                alarms: Vec::new(),
            },
        )
    }

    /// An engine that carries on from persisted state: alarms active before a restart stay
    /// active without a new event, and rules resume at the level they were at, so the first
    /// reading after the restart raises nothing that was already raised.
    pub fn restore(cfg: std::sync::Arc<Config>, snapshot: Snapshot) -> Engine {
        let mut watchers: Vec<Vec<Vec<usize>>> = cfg
            .devices
            .iter()
            .map(|d| vec![Vec::new(); d.points.len()])
            .collect();
        for (ri, rule) in cfg.rules.iter().enumerate() {
            for &(d, p) in &rule.targets {
                watchers[d][p].push(ri);
            }
        }
        let mut engine = Engine {
            table: AlarmTable::restore(&cfg.site.id, &cfg.site.gateway, snapshot),
            misses: vec![0; cfg.devices.len()],
            cfg: cfg.clone(),
            watchers,
            thresholds: HashMap::new(),
            rates: HashMap::new(),
        };
        let restored: Vec<(String, Identity, Severity)> = engine
            .table
            .alarms()
            .map(|a| (a.identity.key(), a.identity.clone(), a.severity))
            .collect();
        for (key, id, severity) in restored {
            if !engine.seed(&id, severity) {
                tracing::warn!(alarm = %key, "alarm from before the restart no longer matches the configuration; dropped");
                engine.table.remove(&key);
            }
        }
        engine
    }

    /// Puts a rule's state back where a restored alarm says it was; false if the alarm's rule,
    /// device or point is gone from the configuration.
    fn seed(&mut self, id: &Identity, severity: Severity) -> bool {
        let cfg = self.cfg.clone();
        let Some(di) = cfg.devices.iter().position(|d| d.id == id.device) else {
            // Votes belong to a zone, not a device.
            return id.kind == AlarmKind::Vote
                && cfg
                    .rules
                    .iter()
                    .any(|r| r.id == id.rule && matches!(r.body, RuleBody::Vote(_)));
        };
        if id.kind == AlarmKind::Fault {
            if id.point == "_link" {
                // Until the device answers, it is still not answering.
                self.misses[di] = COMM_LOSS_AFTER;
                return true;
            }
            return cfg.devices[di].points.iter().any(|p| p.id == id.point);
        }
        let Some(pi) = cfg.devices[di].points.iter().position(|p| p.id == id.point) else {
            return false;
        };
        let Some(ri) = cfg
            .rules
            .iter()
            .position(|r| r.id == id.rule && r.targets.contains(&(di, pi)))
        else {
            return false;
        };
        match (&cfg.rules[ri].body, id.kind) {
            (RuleBody::Threshold(_), AlarmKind::Threshold) => {
                self.thresholds
                    .insert((ri, di, pi), ThresholdState::at(Some(severity)));
                true
            }
            (RuleBody::RateOfRise(_), AlarmKind::RateOfRise) => {
                self.rates.insert((ri, di, pi), RateState::raised());
                true
            }
            _ => false,
        }
    }

    /// What to persist after a reading that produced events.
    pub fn snapshot(&self) -> Snapshot {
        self.table.snapshot()
    }

    /// The retained status of every zone, for start-up.
    pub fn zone_statuses(&self, now: Now) -> Vec<Outgoing> {
        self.cfg
            .zones()
            .iter()
            .map(|z| Outgoing::Zone(self.table.zone_status(z, now)))
            .collect()
    }

    pub fn on_reading(&mut self, r: &Reading) -> Output {
        let mut events = Vec::new();
        let cfg = self.cfg.clone();
        let device = &cfg.devices[r.device];
        let telemetry = match &r.outcome {
            Ok(points) => {
                self.misses[r.device] = 0;
                events.extend(self.link_fault(r.device, "comm-loss", None, r.at));
                let exception = points.iter().find_map(|p| match &p.result {
                    Err(e @ crate::fieldbus::PointError::Exception { .. }) => Some(e.to_string()),
                    _ => None,
                });
                events.extend(self.link_fault(r.device, "exception", exception, r.at));
                let mut values = std::collections::BTreeMap::new();
                let mut all_good = true;
                for p in points {
                    match self.on_point(r.device, p, r.at, &mut events) {
                        Some(v) => {
                            values.insert(device.points[p.point].id.clone(), v);
                        }
                        None => all_good = false,
                    }
                }
                Telemetry {
                    time: rfc3339(r.at.wall),
                    points: values,
                    quality: if all_good {
                        Quality::Good
                    } else {
                        Quality::Fault
                    },
                }
            }
            Err(e) => {
                self.misses[r.device] = self.misses[r.device].saturating_add(1);
                if self.misses[r.device] >= COMM_LOSS_AFTER {
                    events.extend(self.link_fault(
                        r.device,
                        "comm-loss",
                        Some(link_message(e)),
                        r.at,
                    ));
                }
                Telemetry {
                    time: rfc3339(r.at.wall),
                    points: Default::default(),
                    quality: Quality::Fault,
                }
            }
        };
        let zones: BTreeSet<String> = events.iter().map(|e| e.zone.clone()).collect();
        for z in &zones {
            self.votes(z, r.at, &mut events);
        }
        let mut messages: Vec<Outgoing> = events.iter().cloned().map(Outgoing::Event).collect();
        for z in &zones {
            messages.push(Outgoing::Zone(self.table.zone_status(z, r.at)));
        }
        messages.push(Outgoing::Telemetry {
            device: device.id.clone(),
            body: telemetry,
        });
        Output { events, messages }
    }

    /// Raises (`Some(message)`) or clears (`None`) a device-level fault.
    fn link_fault(
        &mut self,
        device: usize,
        rule: &str,
        message: Option<String>,
        now: Now,
    ) -> Option<AlarmEvent> {
        let d = &self.cfg.devices[device];
        let id = Identity {
            zone: d.zone.clone(),
            device: d.id.clone(),
            point: "_link".into(),
            rule: rule.into(),
            kind: AlarmKind::Fault,
            unit: None,
        };
        let cond = match message {
            Some(m) => Condition {
                severity: Some(FAULT_SEVERITY),
                value: None,
                threshold: None,
                message: m,
            },
            None => {
                // Nothing to clear unless the fault is active.
                self.table.active_severity(&id.key())?;
                Condition {
                    severity: None,
                    value: None,
                    threshold: None,
                    message: format!("device {} {} cleared: answering again", d.id, rule),
                }
            }
        };
        self.table.update(&id, cond, now)
    }

    /// Evaluates one point; returns its value if it is good.
    fn on_point(
        &mut self,
        device: usize,
        p: &PointReading,
        now: Now,
        events: &mut Vec<AlarmEvent>,
    ) -> Option<f64> {
        let d = &self.cfg.devices[device];
        let point = &d.points[p.point];
        let fault_id = Identity {
            zone: d.zone.clone(),
            device: d.id.clone(),
            point: point.id.clone(),
            rule: "out-of-range".into(),
            kind: AlarmKind::Fault,
            unit: Some(point.unit.clone()).filter(|u| !u.is_empty()),
        };
        let value = match &p.result {
            Ok(decoded) => decoded.value,
            // Exceptions are reported once per device (`_link/exception`); the point simply has
            // no value, and its threshold alarms stay as they are.
            Err(crate::fieldbus::PointError::Exception { .. }) => return None,
            Err(e) => {
                let cond = Condition {
                    severity: Some(FAULT_SEVERITY),
                    value: None,
                    threshold: None,
                    message: format!("device {} point {}: {e}", d.id, point.id),
                };
                events.extend(self.table.update(&fault_id, cond, now));
                return None;
            }
        };
        // A reading outside the sensor's valid range is a broken sensor, not a fire and not an
        // all-clear: fault it, and leave threshold alarms as they are.
        let out_of_range = point.valid.filter(|(lo, hi)| value < *lo || value > *hi);
        let fault = match out_of_range {
            Some((lo, hi)) => Condition {
                severity: Some(FAULT_SEVERITY),
                value: Some(value),
                threshold: None,
                message: format!(
                    "{} {} {} outside valid range [{lo}, {hi}]: sensor fault",
                    point.id, value, point.unit
                ),
            },
            None => Condition {
                severity: None,
                value: Some(value),
                threshold: None,
                message: format!("{} {} {} back in valid range", point.id, value, point.unit),
            },
        };
        if out_of_range.is_some() || self.table.active_severity(&fault_id.key()).is_some() {
            events.extend(self.table.update(&fault_id, fault, now));
        }
        if out_of_range.is_some() {
            return None;
        }
        for &ri in &self.watchers[device][p.point] {
            let rule = &self.cfg.rules[ri];
            let th = match &rule.body {
                RuleBody::Threshold(th) => th,
                RuleBody::RateOfRise(rr) => {
                    let state = self.rates.entry((ri, device, p.point)).or_default();
                    let Some(change) = rr.evaluate(state, value, now.mono) else {
                        continue;
                    };
                    let unit = format!(
                        "{}/min",
                        if point.unit.is_empty() {
                            "units"
                        } else {
                            &point.unit
                        }
                    );
                    let rate = (change.per_minute * 100.0).round() / 100.0;
                    let id = Identity {
                        zone: d.zone.clone(),
                        device: d.id.clone(),
                        point: point.id.clone(),
                        rule: rule.id.clone(),
                        kind: AlarmKind::RateOfRise,
                        unit: Some(unit.clone()),
                    };
                    let cond = Condition {
                        severity: change.active.then_some(rr.severity),
                        value: Some(rate),
                        threshold: Some(rr.per_minute),
                        message: if change.active {
                            format!(
                                "{} rising {rate:?} {unit} over {:?} (limit {:?})",
                                point.id, rr.window, rr.per_minute
                            )
                        } else {
                            format!(
                                "{} rise slowed to {rate:?} {unit} (limit {:?})",
                                point.id, rr.per_minute
                            )
                        },
                    };
                    events.extend(self.table.update(&id, cond, now));
                    continue;
                }
                RuleBody::Vote(_) => continue,
            };
            let state = self.thresholds.entry((ri, device, p.point)).or_default();
            let Some(change) = th.evaluate(state, value, now.mono) else {
                continue;
            };
            let unit = if point.unit.is_empty() {
                String::new()
            } else {
                format!(" {}", point.unit)
            };
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
            let id = Identity {
                zone: d.zone.clone(),
                device: d.id.clone(),
                point: point.id.clone(),
                rule: rule.id.clone(),
                kind: AlarmKind::Threshold,
                unit: Some(point.unit.clone()).filter(|u| !u.is_empty()),
            };
            let cond = Condition {
                severity: change.to,
                value: Some(value),
                threshold: Some(change.threshold),
                message,
            };
            events.extend(self.table.update(&id, cond, now));
        }
        Some(value)
    }
}

impl Engine {
    /// Re-counts every vote rule in one zone after its alarms changed.
    fn votes(&mut self, zone: &str, now: Now, events: &mut Vec<AlarmEvent>) {
        let cfg = self.cfg.clone();
        for rule in &cfg.rules {
            let RuleBody::Vote(v) = &rule.body else {
                continue;
            };
            let kind_of = |device: &str, point: &str| {
                cfg.devices
                    .iter()
                    .find(|d| d.id == device)
                    .and_then(|d| d.points.iter().find(|p| p.id == point))
                    .map_or("", |p| p.kind.as_str())
            };
            let candidates = self
                .table
                .active_in_zone(zone)
                .filter(|(id, _)| !matches!(id.kind, AlarmKind::Fault | AlarmKind::Vote))
                .map(|(id, severity)| Voter {
                    device: &id.device,
                    point: &id.point,
                    point_kind: kind_of(&id.device, &id.point),
                    rule: &id.rule,
                    severity,
                });
            let voters = vote::voters(v, candidates);
            let id = Identity {
                zone: zone.to_string(),
                device: "_zone".into(),
                point: "_vote".into(),
                rule: rule.id.clone(),
                kind: AlarmKind::Vote,
                unit: None,
            };
            let agreed = voters.len() >= v.need;
            if !agreed && self.table.active_severity(&id.key()).is_none() {
                continue;
            }
            let list = voters.iter().cloned().collect::<Vec<_>>().join(", ");
            let cond = Condition {
                severity: agreed.then_some(v.severity),
                value: Some(voters.len() as f64),
                threshold: Some(v.need as f64),
                message: if agreed {
                    format!(
                        "{} of {} sensors in {zone} agree: {list}",
                        voters.len(),
                        v.need
                    )
                } else {
                    format!(
                        "vote released: {} of {} sensors in alarm",
                        voters.len(),
                        v.need
                    )
                },
            };
            events.extend(self.table.update(&id, cond, now));
        }
    }
}

fn link_message(e: &LinkError) -> String {
    format!("not answering: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarms::{AlarmState, Level};
    use crate::config::Role;
    use crate::decode::{Decoded, Raw};
    use std::time::Duration;

    const CFG: &str = r#"
[site]
id = "s"
gateway = "gw"
[[devices]]
id = "rack-01"
zone = "room-1"
address = "127.0.0.1:5020"
  [[devices.points]]
  id = "t"
  address = 116
  type = "i16"
  scale = 0.1
  unit = "degC"
  valid = [-40.0, 150.0]
[[rules]]
id = "hot"
points = ["*/t"]
above = { warning = 45.0, critical = 55.0 }
"#;

    fn engine() -> Engine {
        let cfg = Config::from_toml(CFG, Role::Gateway).expect("valid");
        Engine::new(std::sync::Arc::new(cfg), 0)
    }

    fn reading(at: Now, v: Option<f64>) -> Reading {
        Reading {
            device: 0,
            at,
            latency: Duration::ZERO,
            outcome: match v {
                Some(v) => Ok(vec![PointReading {
                    point: 0,
                    result: Ok(Decoded {
                        raw: Raw::Float(v),
                        value: v,
                    }),
                }]),
                None => Err(LinkError::Timeout {
                    device: "rack-01".into(),
                    table: "holding",
                    register: 116,
                    timeout: Duration::from_millis(500),
                }),
            },
        }
    }

    #[test]
    fn a_hot_reading_raises_one_event_and_a_zone_status() {
        let mut e = engine();
        let now = Now::system();
        let out = e.on_reading(&reading(now, Some(57.2)));
        assert_eq!(out.events.len(), 1);
        let ev = &out.events[0];
        assert_eq!(ev.alarm, "rack-01/t/hot");
        assert_eq!(ev.severity, Severity::Critical);
        assert_eq!(ev.message, "t 57.2 degC above critical 55.0");
        assert!(matches!(
            &out.messages[1],
            Outgoing::Zone(z) if z.level == Level::Critical && z.active == vec!["rack-01/t/hot"]
        ));
        assert!(
            matches!(&out.messages[2], Outgoing::Telemetry { body, .. } if body.quality == Quality::Good)
        );
        assert!(e.on_reading(&reading(now, Some(57.3))).events.is_empty());
    }

    #[test]
    fn silence_is_a_fault_after_two_misses_and_never_clears_a_threshold() {
        let mut e = engine();
        let t0 = Now::system();
        e.on_reading(&reading(t0, Some(50.0)));
        assert!(
            e.on_reading(&reading(t0, None)).events.is_empty(),
            "one miss"
        );
        let out = e.on_reading(&reading(t0, None));
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].alarm, "rack-01/_link/comm-loss");
        assert_eq!(out.events[0].kind, AlarmKind::Fault);
        assert!(
            e.on_reading(&reading(t0, None)).events.is_empty(),
            "raised once"
        );
        let out = e.on_reading(&reading(t0.after(Duration::from_secs(1)), Some(50.0)));
        assert_eq!(out.events.len(), 1, "the warning was never cleared");
        assert_eq!(out.events[0].state, AlarmState::Cleared);
        assert_eq!(out.events[0].alarm, "rack-01/_link/comm-loss");
    }

    #[test]
    fn out_of_range_is_a_sensor_fault_not_an_alarm() {
        let mut e = engine();
        let now = Now::system();
        let out = e.on_reading(&reading(now, Some(3276.7)));
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].alarm, "rack-01/t/out-of-range");
        let out = e.on_reading(&reading(now, Some(25.0)));
        assert_eq!(out.events[0].state, AlarmState::Cleared);
    }

    const VOTE_CFG: &str = r#"
[site]
id = "s"
gateway = "gw"
[[devices]]
id = "rack-01"
zone = "room-1"
address = "127.0.0.1:5020"
  [[devices.points]]
  id = "offgas"
  kind = "offgas"
  address = 121
  [[devices.points]]
  id = "smoke_stage"
  kind = "smoke"
  address = 120
[[rules]]
id = "offgas-high"
points = ["*/offgas"]
above = { warning = 20.0 }
[[rules]]
id = "smoke"
points = ["*/smoke_stage"]
above = { warning = 1.0 }
[[rules]]
id = "confirmed-fire"
vote = { alarms = ["*/offgas/*", "*/smoke/*"], need = 2, at_least = "warning", severity = "emergency" }
"#;

    fn two_points(at: Now, offgas: f64, smoke: f64) -> Reading {
        let pr = |point, v: f64| PointReading {
            point,
            result: Ok(Decoded {
                raw: Raw::Float(v),
                value: v,
            }),
        };
        Reading {
            device: 0,
            at,
            latency: Duration::ZERO,
            outcome: Ok(vec![pr(0, offgas), pr(1, smoke)]),
        }
    }

    #[test]
    fn two_distinct_sensors_confirm_a_fire_by_vote() {
        let cfg = Config::from_toml(VOTE_CFG, Role::Gateway).expect("valid");
        let mut e = Engine::new(std::sync::Arc::new(cfg), 0);
        let now = Now::system();
        let out = e.on_reading(&two_points(now, 50.0, 0.0));
        assert_eq!(out.events.len(), 1, "one sensor alone does not confirm");
        let out = e.on_reading(&two_points(now, 50.0, 1.0));
        let keys: Vec<&str> = out.events.iter().map(|e| e.alarm.as_str()).collect();
        assert_eq!(
            keys,
            vec!["rack-01/smoke_stage/smoke", "_zone/_vote/confirmed-fire"]
        );
        let vote = &out.events[1];
        assert_eq!(
            (vote.kind, vote.severity),
            (AlarmKind::Vote, Severity::Emergency)
        );
        assert_eq!(
            vote.message,
            "2 of 2 sensors in room-1 agree: rack-01/offgas, rack-01/smoke_stage"
        );
        assert!(matches!(&out.messages[2], Outgoing::Zone(z) if z.level == Level::Emergency));
        let out = e.on_reading(&two_points(now, 0.0, 1.0));
        assert_eq!(out.events[1].state, AlarmState::Cleared);
    }

    #[test]
    fn a_fast_climb_raises_rate_of_rise() {
        let text = CFG.replace(
            "above = { warning = 45.0, critical = 55.0 }",
            "rate_of_rise = { per_minute = 8.3, window = \"10s\", severity = \"critical\" }",
        );
        let cfg = Config::from_toml(&text, Role::Gateway).expect("valid");
        let mut e = Engine::new(std::sync::Arc::new(cfg), 0);
        let t0 = Now::system();
        let mut raised = None;
        for i in 0..20u64 {
            let out = e.on_reading(&reading(
                t0.after(Duration::from_secs(i)),
                Some(25.0 + 0.5 * i as f64),
            ));
            if let Some(ev) = out.events.first() {
                raised.get_or_insert((i, ev.clone()));
            }
        }
        let (i, ev) = raised.expect("raised");
        assert_eq!(i, 5, "after half the window");
        assert_eq!(
            (ev.kind, ev.value, ev.unit.as_deref()),
            (AlarmKind::RateOfRise, Some(30.0), Some("degC/min"))
        );
    }

    #[test]
    fn a_restart_does_not_raise_active_alarms_again() {
        let cfg = std::sync::Arc::new(Config::from_toml(CFG, Role::Gateway).expect("valid"));
        let mut e = Engine::new(cfg.clone(), 0);
        let now = Now::system();
        assert_eq!(e.on_reading(&reading(now, Some(57.2))).events.len(), 1);
        let snap = e.snapshot();
        assert_eq!((snap.last_seq, snap.alarms.len()), (1, 1));
        let mut again = Engine::restore(cfg, snap);
        assert!(again
            .on_reading(&reading(now, Some(57.2)))
            .events
            .is_empty());
        let out = again.on_reading(&reading(now, Some(20.0)));
        assert_eq!(
            (out.events[0].seq, out.events[0].state),
            (2, AlarmState::Cleared)
        );
    }
}
