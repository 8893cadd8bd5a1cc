//! The rule engine: one reading (or operator command) in, the messages it causes out.
//!
//! Sits between `fieldbus` and `mqtt`: it runs each point's value through the sensor-fault
//! checks and the rules that watch it, feeds the resulting conditions to the alarm table, and
//! says what to publish (alarm events, zone statuses that changed, telemetry, command results).
//! It does no I/O and reads no clock, so the whole pipeline logic can be driven by tests and
//! benchmarks with made-up readings and simulated time.
//!
//! Fail-safe rules enforced here: a point whose sensor is faulted (no answer, exception, value
//! outside its valid range, stuck, trouble code) raises a fault and is *not* evaluated, so the
//! last good value never clears a threshold alarm; faults never vote; and a zone whose every
//! detector is faulted is itself a critical fault.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::alarms::{
    AlarmEvent, AlarmKind, AlarmTable, Condition, Identity, LinkFault, PointFault, RuleKind,
    Snapshot, Source,
};
use crate::clock::{rfc3339, Now};
use crate::command::{Command, Refused};
use crate::config::{Config, Direction, Point, PointKind, RuleBody};
use crate::decode::Raw;
use crate::fieldbus::{LinkError, PointError, PointReading, Reading};
use crate::message::{CommandResult, Outgoing, Quality, Telemetry};
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

/// Severity of a zone with no working detector left: the room is unwatched.
pub const BLIND_ZONE_SEVERITY: Severity = Severity::Critical;

/// Point kinds that detect a fire; a zone with none of them working is blind.
const DETECTOR_KINDS: [PointKind; 4] = [
    PointKind::Smoke,
    PointKind::Offgas,
    PointKind::Hydrogen,
    PointKind::Temperature,
];

pub struct Engine {
    cfg: std::sync::Arc<Config>,
    table: AlarmTable,
    /// [device][point] → indexes of the threshold and rate-of-rise rules watching it.
    watchers: Vec<Vec<Vec<usize>>>,
    thresholds: HashMap<(usize, usize, usize), ThresholdState>,
    rates: HashMap<(usize, usize, usize), RateState>,
    /// Consecutive failed polls per device.
    misses: Vec<u32>,
    /// [device][point] → the last raw value and since when it has not changed.
    unchanged: Vec<Vec<Option<(Raw, Instant)>>>,
    /// [device][point] → the sensor fault currently raised, so a healthy reading costs no
    /// alarm-table lookups.
    faulted: Vec<Vec<Option<PointFault>>>,
}

/// What one input caused, in publishing order.
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
        let mut table = AlarmTable::restore(&cfg.site.id, &cfg.site.gateway, snapshot);
        table.set_chatter_limit(cfg.alarms.chatter_per_minute);
        let mut engine = Engine {
            table,
            misses: vec![0; cfg.devices.len()],
            unchanged: cfg
                .devices
                .iter()
                .map(|d| vec![None; d.points.len()])
                .collect(),
            faulted: cfg
                .devices
                .iter()
                .map(|d| vec![None; d.points.len()])
                .collect(),
            cfg: cfg.clone(),
            watchers,
            thresholds: HashMap::new(),
            rates: HashMap::new(),
        };
        let restored: Vec<(String, Identity, Option<Severity>)> = engine
            .table
            .alarms()
            .map(|a| {
                (
                    a.identity.key(),
                    a.identity.clone(),
                    a.condition.then_some(a.severity),
                )
            })
            .collect();
        for (key, id, level) in restored {
            if !engine.seed(&id, level) {
                tracing::warn!(alarm = %key, "alarm from before the restart no longer matches the configuration; dropped");
                engine.table.remove(&id);
            }
        }
        engine
    }

    /// Puts a rule's state back where a restored alarm says it was; false if the alarm's rule,
    /// device or point is gone from the configuration.
    fn seed(&mut self, id: &Identity, level: Option<Severity>) -> bool {
        let cfg = self.cfg.clone();
        let Some(source) = Source::of(id) else {
            return false;
        };
        let device = |name: &str| cfg.devices.iter().position(|d| d.id == name);
        let point =
            |di: usize, name: &str| cfg.devices[di].points.iter().position(|p| p.id == name);
        match source {
            // Kept while the agent is still expected; the drain task reports it back or gone.
            Source::DrainAgent { agent } => cfg
                .drain
                .as_ref()
                .is_some_and(|d| d.agents.iter().any(|a| a == agent)),
            // Votes and blind-zone faults belong to a zone, not a device.
            Source::BlindZone => true,
            Source::Vote { rule } => cfg
                .rules
                .iter()
                .any(|r| r.id == rule && matches!(r.body, RuleBody::Vote(_))),
            Source::Link { device: d, fault } => {
                let Some(di) = device(d) else {
                    return false;
                };
                if fault == LinkFault::CommLoss && level.is_some() {
                    // Until the device answers, it is still not answering.
                    self.misses[di] = COMM_LOSS_AFTER;
                }
                true
            }
            Source::PointFault {
                device: d,
                point: p,
                fault,
            } => {
                let Some((di, pi)) = device(d).and_then(|di| Some((di, point(di, p)?))) else {
                    return false;
                };
                if level.is_some() {
                    self.faulted[di][pi] = Some(fault);
                }
                true
            }
            Source::Rule {
                device: d,
                point: p,
                rule,
                kind,
            } => {
                let Some((di, pi)) = device(d).and_then(|di| Some((di, point(di, p)?))) else {
                    return false;
                };
                let Some(ri) = cfg
                    .rules
                    .iter()
                    .position(|r| r.id == rule && r.targets.contains(&(di, pi)))
                else {
                    return false;
                };
                match (&cfg.rules[ri].body, kind) {
                    (RuleBody::Threshold(_), RuleKind::Threshold) => {
                        self.thresholds
                            .insert((ri, di, pi), ThresholdState::at(level));
                        true
                    }
                    (RuleBody::RateOfRise(_), RuleKind::RateOfRise) => {
                        if level.is_some() {
                            self.rates.insert((ri, di, pi), RateState::raised());
                        }
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    /// The alarm table, for metrics and status.
    pub fn alarms(&self) -> &AlarmTable {
        &self.table
    }

    /// What to persist after an input that produced events.
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

    /// Events plus the zone statuses they changed, in publishing order.
    fn finish(&mut self, mut events: Vec<AlarmEvent>, now: Now, extra: Vec<Outgoing>) -> Output {
        let zones: BTreeSet<String> = events.iter().map(|e| e.zone.clone()).collect();
        for z in &zones {
            self.blind_zone(z, now, &mut events);
            self.votes(z, now, &mut events);
        }
        let mut messages: Vec<Outgoing> = events.iter().cloned().map(Outgoing::Event).collect();
        for z in &zones {
            messages.push(Outgoing::Zone(self.table.zone_status(z, now)));
        }
        messages.extend(extra);
        Output { events, messages }
    }

    /// An expected drain agent missing (`Some(severity)`) or back (`None`): a fault alarm
    /// `_drain/{agent}/agent-offline` in each of `zones` (those it serves), so operators see
    /// before a fire that a drain would not be confirmed. Back, it clears in every zone.
    pub fn agent_fault(
        &mut self,
        agent: &str,
        severity: Option<Severity>,
        zones: &[String],
        detail: &str,
        now: Now,
    ) -> Output {
        let source = Source::DrainAgent { agent };
        let zones: Vec<String> = match severity {
            Some(_) => zones.to_vec(),
            None => self.table.zones_with_condition(&source.key()),
        };
        let mut events = Vec::new();
        for zone in zones {
            let id = source.identity(&zone);
            let cond = Condition {
                severity,
                value: None,
                threshold: None,
                message: detail.to_string(),
            };
            events.extend(self.table.update(&id, cond, now));
        }
        self.finish(events, now, Vec::new())
    }

    /// Lifts expired shelves; the daemon calls this about once a second.
    pub fn tick(&mut self, now: Now) -> Output {
        let events = self.table.expire(now);
        self.finish(events, now, Vec::new())
    }

    /// An operator command for the alarm table (`cmd/ack`, `cmd/shelve`, `cmd/service`), or one
    /// that [`Command::parse`] refused; always answered on `cmd/result`, and a refusal changes
    /// nothing.
    pub fn on_command(&mut self, cmd: Result<Command, Refused>, now: Now) -> Output {
        let name = match &cmd {
            Ok(c) => c.name().to_string(),
            Err(r) => r.command.clone(),
        };
        let (events, answer) = match cmd.and_then(|c| self.command(c, now)) {
            Ok((events, reason)) => (
                events,
                CommandResult {
                    command: name,
                    ok: true,
                    reason,
                },
            ),
            Err(refused) => {
                tracing::warn!(command = %refused.command, reason = %refused.reason, "command refused");
                (Vec::new(), refused.result())
            }
        };
        self.finish(events, now, vec![Outgoing::CommandResult(answer)])
    }

    fn command(
        &mut self,
        cmd: Command,
        now: Now,
    ) -> Result<(Vec<AlarmEvent>, Option<String>), Refused> {
        let name = cmd.name();
        let refused = |e: crate::alarms::CommandError| Refused::new(name, e.to_string());
        match cmd {
            Command::Ack(c) => {
                let events = self
                    .table
                    .ack(&c.alarm, c.zone.as_deref(), now)
                    .map_err(refused)?;
                let n = events.len();
                Ok((events, Some(format!("{n} alarm(s) acknowledged"))))
            }
            Command::Shelve(c) => {
                let ev = self
                    .table
                    .shelve(
                        &c.alarm,
                        c.zone.as_deref(),
                        c.duration,
                        self.cfg.alarms.max_shelve,
                        &c.reason,
                        now,
                    )
                    .map_err(refused)?;
                Ok((vec![ev], None))
            }
            Command::Service(c) => {
                let ev = self
                    .table
                    .set_service(&c.alarm, c.zone.as_deref(), c.out_of_service, now)
                    .map_err(refused)?;
                Ok((vec![ev], None))
            }
            // Routed elsewhere by the daemon; answered rather than dropped if one strays here.
            Command::Drill(_) | Command::Replay(_) => Err(Refused::new(
                name,
                format!("cmd/{name} is not answered by the alarm table"),
            )),
        }
    }

    pub fn on_reading(&mut self, r: &Reading) -> Output {
        let mut events = Vec::new();
        let cfg = self.cfg.clone();
        let device = &cfg.devices[r.device];
        let telemetry = match &r.outcome {
            Ok(points) => {
                self.misses[r.device] = 0;
                events.extend(self.link_fault(r.device, LinkFault::CommLoss, None, r.at));
                let exception = points.iter().find_map(|p| match &p.result {
                    Err(e @ PointError::Exception { .. }) => {
                        Some(format!("device {}: {e}", device.id))
                    }
                    _ => None,
                });
                events.extend(self.link_fault(r.device, LinkFault::Exception, exception, r.at));
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
                        LinkFault::CommLoss,
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
        let telemetry = Outgoing::Telemetry {
            device: device.id.clone(),
            body: telemetry,
        };
        self.finish(events, r.at, vec![telemetry])
    }

    /// Raises (`Some(message)`) or clears (`None`) a fault; clearing a fault that is not there
    /// says nothing.
    fn fault(
        &mut self,
        id: &Identity,
        message: Option<String>,
        value: Option<f64>,
        now: Now,
    ) -> Option<AlarmEvent> {
        let cond = match message {
            Some(m) => Condition {
                severity: Some(FAULT_SEVERITY),
                value,
                threshold: None,
                message: m,
            },
            None => {
                if !self.table.condition_of(id) {
                    return None;
                }
                Condition {
                    severity: None,
                    value,
                    threshold: None,
                    message: format!("{} {}: cleared", id.device, id.rule),
                }
            }
        };
        self.table.update(id, cond, now)
    }

    /// A device-level fault (comm-loss, exception).
    fn link_fault(
        &mut self,
        device: usize,
        fault: LinkFault,
        message: Option<String>,
        now: Now,
    ) -> Option<AlarmEvent> {
        let d = &self.cfg.devices[device];
        let id = Source::Link {
            device: &d.id,
            fault,
        }
        .identity(&d.zone);
        self.fault(&id, message, None, now)
    }

    /// Evaluates one point; returns its value if it is good.
    fn on_point(
        &mut self,
        device: usize,
        p: &PointReading,
        now: Now,
        events: &mut Vec<AlarmEvent>,
    ) -> Option<f64> {
        let cfg = self.cfg.clone();
        let d = &cfg.devices[device];
        let point = &d.points[p.point];
        let (raw, value) = match &p.result {
            Ok(decoded) => (decoded.raw, decoded.value),
            // Exceptions are reported once per device (`_link/exception`); the point simply has
            // no value, and its alarms stay as they are.
            Err(PointError::Exception { .. }) => return None,
            Err(e) => {
                let msg = format!("device {} point {}: {e}", d.id, point.id);
                self.point_faults(
                    device,
                    p.point,
                    Some((PointFault::Unreadable, msg)),
                    None,
                    now,
                    events,
                );
                return None;
            }
        };
        if let Some(problem) = self.sensor_problem(device, p.point, point, raw, value, now.mono) {
            self.point_faults(device, p.point, Some(problem), Some(value), now, events);
            // A faulted sensor is not evaluated: its value neither raises nor clears anything.
            return None;
        }
        self.point_faults(device, p.point, None, Some(value), now, events);
        self.evaluate(device, p.point, value, now, events);
        Some(value)
    }

    /// What is wrong with a sensor that answered, if anything: (fault rule, message).
    fn sensor_problem(
        &mut self,
        device: usize,
        pi: usize,
        point: &Point,
        raw: Raw,
        value: f64,
        now: Instant,
    ) -> Option<(PointFault, String)> {
        let unit = if point.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", point.unit)
        };
        // Stuck: the raw value, not the scaled one, so rounding cannot hide a change.
        let slot = &mut self.unchanged[device][pi];
        let since = match slot {
            Some((last, since)) if *last == raw => *since,
            _ => {
                *slot = Some((raw, now));
                now
            }
        };
        if point.trouble.contains(&raw.as_f64()) {
            return Some((
                PointFault::Trouble,
                format!("{} reports trouble (code {:?})", point.id, raw.as_f64()),
            ));
        }
        if let Some((lo, hi)) = point.valid.filter(|(lo, hi)| value < *lo || value > *hi) {
            return Some((
                PointFault::OutOfRange,
                format!(
                    "{} {value:?}{unit} outside valid range [{lo:?}, {hi:?}]: sensor fault",
                    point.id
                ),
            ));
        }
        if let Some(after) = point.stuck_after {
            let frozen = now.saturating_duration_since(since);
            if !after.is_zero() && frozen >= after {
                return Some((
                    PointFault::Stuck,
                    format!(
                        "{} unchanged at {value:?}{unit} for {}: sensor stuck",
                        point.id,
                        humantime::format_duration(Duration::from_secs(frozen.as_secs()))
                    ),
                ));
            }
        }
        None
    }

    /// Sets the point's one current fault (or none), clearing the one it replaces.
    fn point_faults(
        &mut self,
        device: usize,
        pi: usize,
        current: Option<(PointFault, String)>,
        value: Option<f64>,
        now: Now,
        events: &mut Vec<AlarmEvent>,
    ) {
        let was = self.faulted[device][pi];
        let now_fault = current.as_ref().map(|(f, _)| *f);
        if was == now_fault {
            return;
        }
        let cfg = self.cfg.clone();
        let d = &cfg.devices[device];
        let point = &d.points[pi];
        let id = |fault| Identity {
            unit: unit_of(point),
            ..Source::PointFault {
                device: &d.id,
                point: &point.id,
                fault,
            }
            .identity(&d.zone)
        };
        if let Some(old) = was {
            events.extend(self.fault(&id(old), None, value, now));
        }
        if let Some((fault, msg)) = current {
            events.extend(self.fault(&id(fault), Some(msg), value, now));
        }
        self.faulted[device][pi] = now_fault;
    }

    /// Runs a good value through the threshold and rate-of-rise rules watching it.
    fn evaluate(
        &mut self,
        device: usize,
        pi: usize,
        value: f64,
        now: Now,
        events: &mut Vec<AlarmEvent>,
    ) {
        let cfg = self.cfg.clone();
        let d = &cfg.devices[device];
        let point = &d.points[pi];
        let unit = if point.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", point.unit)
        };
        for &ri in &self.watchers[device][pi] {
            let rule = &cfg.rules[ri];
            let (kind, unit, cond) = match &rule.body {
                RuleBody::Threshold(th) => {
                    let state = self.thresholds.entry((ri, device, pi)).or_default();
                    let Some(change) = th.evaluate(state, value, now.mono) else {
                        continue;
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
                    (
                        RuleKind::Threshold,
                        unit_of(point),
                        Condition {
                            severity: change.to,
                            value: Some(value),
                            threshold: Some(change.threshold),
                            message,
                        },
                    )
                }
                RuleBody::RateOfRise(rr) => {
                    let state = self.rates.entry((ri, device, pi)).or_default();
                    let Some(change) = rr.evaluate(state, value, now.mono) else {
                        continue;
                    };
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
                    (
                        RuleKind::RateOfRise,
                        Some(per),
                        Condition {
                            severity: change.active.then_some(rr.severity),
                            value: Some(rate),
                            threshold: Some(rr.per_minute),
                            message,
                        },
                    )
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
            events.extend(self.table.update(&id, cond, now));
        }
    }

    /// A zone whose every detector is faulted (or whose devices do not answer) is blind: that
    /// is itself a critical fault, whatever the single faults' severity.
    fn blind_zone(&mut self, zone: &str, now: Now, events: &mut Vec<AlarmEvent>) {
        let cfg = self.cfg.clone();
        let mut detectors = 0;
        let mut faulted = 0;
        for d in cfg.devices.iter().filter(|d| d.zone == zone) {
            let link_down = LinkFault::ALL.into_iter().any(|fault| {
                let link = Source::Link {
                    device: &d.id,
                    fault,
                };
                self.table.condition(zone, &link.key())
            });
            for p in d.points.iter().filter(|p| DETECTOR_KINDS.contains(&p.kind)) {
                detectors += 1;
                if link_down
                    || PointFault::ALL.into_iter().any(|fault| {
                        let sensor = Source::PointFault {
                            device: &d.id,
                            point: &p.id,
                            fault,
                        };
                        self.table.condition(zone, &sensor.key())
                    })
                {
                    faulted += 1;
                }
            }
        }
        let id = Source::BlindZone.identity(zone);
        let blind = detectors > 0 && faulted == detectors;
        if !blind && !self.table.condition_of(&id) {
            return;
        }
        let cond = Condition {
            severity: blind.then_some(BLIND_ZONE_SEVERITY),
            value: Some(faulted as f64),
            threshold: Some(detectors as f64),
            message: if blind {
                format!("zone {zone} is blind: all {detectors} detectors faulted or not answering")
            } else {
                format!(
                    "zone {zone}: {} of {detectors} detectors working again",
                    detectors - faulted
                )
            },
        };
        events.extend(self.table.update(&id, cond, now));
    }

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
                latching: rule.latch,
                ..Source::Vote { rule: &rule.id }.identity(zone)
            };
            let agreed = voters.len() >= v.need;
            if !agreed && !self.table.condition_of(&id) {
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

/// A point's unit as alarms carry it: none rather than empty.
fn unit_of(point: &Point) -> Option<String> {
    Some(point.unit.clone()).filter(|u| !u.is_empty())
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

    /// Two zones with the same vote rule: each zone's vote is its own alarm. A quiet room-2
    /// must never clear room-1's confirmed fire.
    #[test]
    fn each_zone_votes_for_itself() {
        let text = VOTE_CFG.replace(
            "[[rules]]\nid = \"offgas-high\"",
            "[[devices]]\nid = \"rack-02\"\nzone = \"room-2\"\naddress = \"127.0.0.1:5021\"\n  [[devices.points]]\n  id = \"offgas\"\n  kind = \"offgas\"\n  address = 121\n  [[devices.points]]\n  id = \"smoke_stage\"\n  kind = \"smoke\"\n  address = 120\n[[rules]]\nid = \"offgas-high\"",
        );
        let cfg = Config::from_toml(&text, Role::Gateway).expect("valid");
        let mut e = Engine::new(std::sync::Arc::new(cfg), 0);
        let now = Now::system();
        let fire = e.on_reading(&two_points(now, 50.0, 1.0));
        let vote = fire
            .events
            .iter()
            .find(|ev| ev.kind == AlarmKind::Vote)
            .expect("room-1 confirms");
        assert_eq!(
            (vote.zone.as_str(), vote.state),
            ("room-1", AlarmState::Active)
        );
        // room-2 reads quiet, then one sensor there alarms: room-1's vote stands.
        let mut quiet = two_points(now, 0.0, 0.0);
        quiet.device = 1;
        let out = e.on_reading(&quiet);
        assert!(out.events.is_empty(), "{:?}", out.events);
        let mut one = two_points(now, 50.0, 0.0);
        one.device = 1;
        let out = e.on_reading(&one);
        assert!(
            out.events.iter().all(|ev| ev.kind != AlarmKind::Vote),
            "{:?}",
            out.events
        );
        let levels: Vec<(String, Level)> = e
            .zone_statuses(now)
            .into_iter()
            .filter_map(|m| match m {
                Outgoing::Zone(z) => Some((z.zone, z.level)),
                _ => None,
            })
            .collect();
        assert_eq!(
            levels,
            [
                ("room-1".to_string(), Level::Emergency),
                ("room-2".to_string(), Level::Warning)
            ]
        );
        // Both zones confirm: two vote alarms, one per zone, same key.
        let mut both = two_points(now, 50.0, 1.0);
        both.device = 1;
        let out = e.on_reading(&both);
        let vote = out
            .events
            .iter()
            .find(|ev| ev.kind == AlarmKind::Vote)
            .expect("room-2 confirms too");
        assert_eq!(
            (vote.zone.as_str(), vote.alarm.as_str()),
            ("room-2", "_zone/_vote/confirmed-fire")
        );
        // room-1 calms down: only its vote clears.
        let out = e.on_reading(&two_points(now, 0.0, 0.0));
        let cleared: Vec<(&str, AlarmState)> = out
            .events
            .iter()
            .filter(|ev| ev.kind == AlarmKind::Vote)
            .map(|ev| (ev.zone.as_str(), ev.state))
            .collect();
        assert_eq!(cleared, [("room-1", AlarmState::Cleared)]);
        assert_eq!(
            e.alarms()
                .active_severity_in("room-2", "_zone/_vote/confirmed-fire"),
            Some(Severity::Emergency)
        );
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

    fn cmd(e: &mut Engine, name: &str, body: &str) -> (Vec<AlarmEvent>, CommandResult) {
        let out = e.on_command(Command::parse(name, body.as_bytes()), Now::system());
        let result = out
            .messages
            .iter()
            .find_map(|m| match m {
                Outgoing::CommandResult(r) => Some(r.clone()),
                _ => None,
            })
            .expect("every command is answered");
        (out.events, result)
    }

    #[test]
    fn bad_commands_are_answered_and_change_nothing() {
        let mut e = engine();
        e.on_reading(&reading(Now::system(), Some(57.2)));
        let cases = [
            ("ack", "not json", "cmd/ack: not valid JSON"),
            (
                "ack",
                r#"{"alarm":"rack-99/x/y"}"#,
                "no alarm \"rack-99/x/y\"",
            ),
            (
                "shelve",
                r#"{"alarm":"rack-01/t/hot","reason":"x"}"#,
                "\"for\" is required",
            ),
            (
                "shelve",
                r#"{"alarm":"rack-01/t/hot","for":"30m"}"#,
                "\"reason\" is required",
            ),
            (
                "shelve",
                r#"{"alarm":"rack-01/t/hot","for":"soon","reason":"x"}"#,
                "is not a duration",
            ),
            (
                "shelve",
                r#"{"alarm":"rack-01/t/hot","for":"9h","reason":"x"}"#,
                "exceeds the maximum of 8h",
            ),
            ("reboot", "{}", "unknown command \"reboot\""),
        ];
        for (name, body, want) in cases {
            let (events, r) = cmd(&mut e, name, body);
            assert!(events.is_empty(), "{name} {body}");
            assert!(!r.ok, "{name} {body}");
            let reason = r.reason.unwrap_or_default();
            assert!(reason.contains(want), "{name} {body}: {reason}");
        }
        assert_eq!(e.snapshot().last_seq, 1, "nothing was numbered");
    }

    #[test]
    fn ack_and_shelve_by_command() {
        let mut e = engine();
        e.on_reading(&reading(Now::system(), Some(57.2)));
        let (events, r) = cmd(&mut e, "ack", r#"{"alarm":"*"}"#);
        assert!(r.ok);
        assert!(events[0].acked);
        let (events, r) = cmd(
            &mut e,
            "shelve",
            r#"{"alarm":"rack-01/t/hot","for":"30m","reason":"sensor swap"}"#,
        );
        assert!(r.ok, "{r:?}");
        assert_eq!(events[0].detail.isa_state, crate::alarms::IsaState::Shelved);
        assert!(events[0].detail.shelved_until.is_some());
    }

    #[test]
    fn stuck_and_trouble_are_faults_that_freeze_evaluation() {
        let text = CFG.replace(
            "valid = [-40.0, 150.0]",
            "valid = [-40.0, 150.0]\n  stuck_after = \"10s\"\n  trouble = [6553.5]",
        );
        let cfg = Config::from_toml(&text, Role::Gateway).expect("valid");
        let mut e = Engine::new(std::sync::Arc::new(cfg), 0);
        let t0 = Now::system();
        e.on_reading(&reading(t0, Some(50.0)));
        let out = e.on_reading(&reading(t0.after(Duration::from_secs(10)), Some(50.0)));
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].alarm, "rack-01/t/stuck");
        // While stuck, a value that would clear the threshold alarm cannot (it is the same value).
        let out = e.on_reading(&reading(t0.after(Duration::from_secs(11)), Some(20.0)));
        let keys: Vec<&str> = out.events.iter().map(|e| e.alarm.as_str()).collect();
        assert_eq!(
            keys,
            vec!["rack-01/t/stuck", "rack-01/t/hot"],
            "unstuck, then evaluated"
        );
        let out = e.on_reading(&reading(t0.after(Duration::from_secs(12)), Some(6553.5)));
        assert_eq!(out.events[0].alarm, "rack-01/t/trouble");
        assert!(
            matches!(&out.messages.last(), Some(Outgoing::Telemetry { body, .. }) if body.quality == Quality::Fault)
        );
    }

    #[test]
    fn a_zone_with_every_detector_silent_is_blind() {
        let text = CFG.replace("  id = \"t\"\n", "  id = \"t\"\n  kind = \"temperature\"\n");
        let cfg = Config::from_toml(&text, Role::Gateway).expect("valid");
        let mut e = Engine::new(std::sync::Arc::new(cfg), 0);
        let t0 = Now::system();
        e.on_reading(&reading(t0, None));
        let out = e.on_reading(&reading(t0, None));
        let keys: Vec<&str> = out.events.iter().map(|e| e.alarm.as_str()).collect();
        assert_eq!(
            keys,
            vec!["rack-01/_link/comm-loss", "_zone/_detectors/all-faulted"]
        );
        assert_eq!(out.events[1].severity, Severity::Critical);
        let out = e.on_reading(&reading(t0, Some(25.0)));
        assert_eq!(out.events.len(), 2, "both clear");
    }
}
