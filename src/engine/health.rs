//! Whether a device and its sensors are to be believed, before any rule sees a value.
//!
//! A fire detector that cannot be read, reads outside its valid range, reports a trouble code or
//! has not changed for too long gives no evidence either way: its fault is raised (a warning
//! for a technician) and its value is kept from the rules, so the last good value never clears
//! a threshold alarm. Kept apart from rule evaluation because it has its own state (misses,
//! last raw values, the fault raised per point) and its own alarms ([`Source::Link`],
//! [`Source::PointFault`]).

use std::time::{Duration, Instant};

use crate::alarms::{Condition, Identity, LinkFault, PointFault, Source};
use crate::config::{Config, Device, Point};
use crate::decode::{DecodeError, Raw};
use crate::fieldbus::{LinkError, PointError, PointReading};
use crate::rules::Severity;

use super::{unit_of, unit_suffix, Changes};

/// Consecutive failed polls before a device is declared not answering: one miss can be a
/// dropped packet, two in a row is a device the zone cannot rely on (well within the "3 polls"
/// an operator is promised).
pub const COMM_LOSS_AFTER: u32 = 2;

/// Clean answers in a row before a protocol fault clears. A device that answers and then floods
/// the connection with garbage gets one good reply after each reconnect: clearing on that reply
/// would flap the fault and the telemetry quality at every other poll, so the fault holds (and
/// the device's answers are not believed) until the device has behaved for this many polls.
pub const PROTOCOL_CLEAR_AFTER: u32 = 5;

/// Severity of sensor and link faults: they need a technician, not a drain.
pub const FAULT_SEVERITY: Severity = Severity::Warning;

/// Per device and point, what the fault checks remember between polls.
pub(super) struct Health {
    /// Consecutive failed polls per device.
    misses: Vec<u32>,
    /// [device][point] → the last raw value and since when it has not changed; empty for a
    /// device none of whose points has `stuck_after` (nothing to remember, 1 KB a device
    /// saved).
    unchanged: Vec<Vec<Option<(Raw, Instant)>>>,
    /// [device][point] → the sensor fault currently raised, so a healthy reading costs no
    /// alarm-table lookups.
    faulted: Vec<Vec<Option<PointFault>>>,
    /// Per device, the clean answers still needed before its protocol fault clears (0: none
    /// raised).
    protocol_hold: Vec<u32>,
    /// Per device, the link faults whose condition may be present (one bit per
    /// [`LinkFault`]). Clearing one whose bit is off changes nothing, so a healthy poll builds
    /// no alarm identity to look up. All set at start: a restored table may hold any of them.
    link_maybe: Vec<u8>,
}

impl Health {
    pub(super) fn new(cfg: &Config) -> Health {
        Health {
            misses: vec![0; cfg.devices.len()],
            unchanged: cfg
                .devices
                .iter()
                .map(|d| {
                    if d.points.iter().any(|p| p.stuck_after.is_some()) {
                        vec![None; d.points.len()]
                    } else {
                        Vec::new()
                    }
                })
                .collect(),
            faulted: per_point(cfg),
            protocol_hold: vec![0; cfg.devices.len()],
            link_maybe: vec![u8::MAX; cfg.devices.len()],
        }
    }

    /// After a restart with the device's comm-loss active: until it answers, it is still not
    /// answering (the next miss must not count from zero).
    pub(super) fn seed_comm_loss(&mut self, device: usize) {
        self.misses[device] = COMM_LOSS_AFTER;
    }

    /// After a restart with the device's protocol fault active: it must earn its clearance again.
    pub(super) fn seed_protocol(&mut self, device: usize) {
        self.protocol_hold[device] = PROTOCOL_CLEAR_AFTER;
    }

    /// After a restart with a point's sensor fault active, so the next good reading clears it.
    pub(super) fn seed_fault(&mut self, device: usize, point: usize, fault: PointFault) {
        self.faulted[device][point] = Some(fault);
    }

    /// The device answered: its comm-loss clears, and its exception fault follows whether any
    /// point came back as a Modbus exception. Returns whether the answer is to be believed:
    /// not while a protocol fault holds (see [`PROTOCOL_CLEAR_AFTER`]).
    pub(super) fn answered(
        &mut self,
        d: &Device,
        device: usize,
        points: &[PointReading],
        changes: &mut Changes,
    ) -> bool {
        self.misses[device] = 0;
        self.link_fault(d, device, LinkFault::CommLoss, None, changes);
        let hold = &mut self.protocol_hold[device];
        if *hold > 0 {
            *hold -= 1;
            if *hold > 0 {
                return false;
            }
            tracing::info!(device = %d.id, "device answers cleanly again: protocol fault cleared");
            self.link_fault(d, device, LinkFault::Protocol, None, changes);
        }
        let exception = points.iter().find_map(|p| match &p.result {
            Err(e @ PointError::Exception { .. }) => Some(format!("device {}: {e}", d.id)),
            _ => None,
        });
        self.link_fault(d, device, LinkFault::Exception, exception, changes);
        true
    }

    /// The device did not answer: after [`COMM_LOSS_AFTER`] misses in a row, comm-loss. A
    /// malformed answer is no miss (the device is there): it raises the protocol fault at once,
    /// which holds until the device has answered cleanly [`PROTOCOL_CLEAR_AFTER`] times.
    pub(super) fn missed(
        &mut self,
        d: &Device,
        device: usize,
        e: &LinkError,
        changes: &mut Changes,
    ) {
        if matches!(e, LinkError::Protocol { .. }) {
            if self.protocol_hold[device] == 0 {
                tracing::warn!(device = %d.id, "protocol fault: {e}");
            }
            self.protocol_hold[device] = PROTOCOL_CLEAR_AFTER;
            self.link_fault(
                d,
                device,
                LinkFault::Protocol,
                Some(format!("malformed replies: {e}")),
                changes,
            );
            return;
        }
        self.misses[device] = self.misses[device].saturating_add(1);
        if self.misses[device] >= COMM_LOSS_AFTER {
            self.link_fault(
                d,
                device,
                LinkFault::CommLoss,
                Some(format!("not answering: {e}")),
                changes,
            );
        }
    }

    /// Whether the point answered its `sentinel` ("no value", SunSpec's "not implemented") and
    /// is not `required`: then it is neither a reading nor a fault, and a fault it had clears.
    /// A required point's sentinel is left to [`Health::check`], which faults it.
    pub(super) fn no_value(
        &mut self,
        d: &Device,
        device: usize,
        p: &PointReading,
        changes: &mut Changes,
    ) -> bool {
        let sentinel = matches!(
            p.result,
            Err(PointError::Decode {
                source: DecodeError::NoValue { .. },
                ..
            })
        );
        if !sentinel || d.points[p.point].required {
            return false;
        }
        // Only devices with a `stuck_after` point remember values (see `unchanged`).
        if let Some(slot) = self.unchanged[device].get_mut(p.point) {
            *slot = None;
        }
        self.point_fault(d, device, p.point, None, None, changes);
        true
    }

    /// Checks one point of an answer, raising or clearing its sensor fault; returns its value
    /// only if the rules may evaluate it.
    pub(super) fn check(
        &mut self,
        d: &Device,
        device: usize,
        p: &PointReading,
        changes: &mut Changes,
    ) -> Option<f64> {
        let point = &d.points[p.point];
        let (raw, value) = match &p.result {
            Ok(decoded) if decoded.value.is_finite() => (decoded.raw, decoded.value),
            // Exceptions are reported once per device (link exception fault); the point simply
            // has no value, and its alarms stay as they are.
            Err(PointError::Exception { .. }) => return None,
            // A value that is not a number compares with no threshold and passes the valid
            // range, so it is unreadable whatever produced it (decoding refuses the ones it
            // computes), never a reading of quality good that watches nothing.
            unreadable => {
                let why = match unreadable {
                    Ok(decoded) => format!("value {} is not a number", decoded.value),
                    Err(
                        e @ PointError::Decode {
                            source: DecodeError::NoValue { .. },
                            ..
                        },
                    ) => format!("{e}, and the point is required"),
                    Err(e) => e.to_string(),
                };
                let msg = format!("device {} point {}: {why}", d.id, point.id);
                self.point_fault(
                    d,
                    device,
                    p.point,
                    Some((PointFault::Unreadable, msg)),
                    None,
                    changes,
                );
                return None;
            }
        };
        let problem = self.sensor_problem(device, p.point, point, raw, value, changes.now.mono);
        let good = problem.is_none();
        self.point_fault(d, device, p.point, problem, Some(value), changes);
        good.then_some(value)
    }

    /// What is wrong with a sensor that answered, if anything: (fault, message).
    fn sensor_problem(
        &mut self,
        device: usize,
        pi: usize,
        point: &Point,
        raw: Raw,
        value: f64,
        now: Instant,
    ) -> Option<(PointFault, String)> {
        // Stuck: the raw value, not the scaled one, so rounding cannot hide a change.
        let since = match self.unchanged[device].get_mut(pi) {
            Some(Some((last, since))) if *last == raw => *since,
            Some(slot) => {
                *slot = Some((raw, now));
                now
            }
            None => now, // no point of the device can be stuck
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
                    "{} {value:?}{} outside valid range [{lo:?}, {hi:?}]: sensor fault",
                    point.id,
                    unit_suffix(point)
                ),
            ));
        }
        if let Some(after) = point.stuck_after {
            let frozen = now.saturating_duration_since(since);
            if !after.is_zero() && frozen >= after {
                return Some((
                    PointFault::Stuck,
                    format!(
                        "{} unchanged at {value:?}{} for {}: sensor stuck",
                        point.id,
                        unit_suffix(point),
                        humantime::format_duration(Duration::from_secs(frozen.as_secs()))
                    ),
                ));
            }
        }
        None
    }

    /// Sets the point's one current fault (or none), clearing the one it replaces.
    fn point_fault(
        &mut self,
        d: &Device,
        device: usize,
        pi: usize,
        current: Option<(PointFault, String)>,
        value: Option<f64>,
        changes: &mut Changes,
    ) {
        let was = self.faulted[device][pi];
        let now_fault = current.as_ref().map(|(f, _)| *f);
        if was == now_fault {
            return;
        }
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
            fault(&id(old), None, value, changes);
        }
        if let Some((f, msg)) = current {
            fault(&id(f), Some(msg), value, changes);
        }
        self.faulted[device][pi] = now_fault;
    }
}

/// Nothing yet, for every point of every device.
fn per_point<T: Clone>(cfg: &Config) -> Vec<Vec<Option<T>>> {
    cfg.devices
        .iter()
        .map(|d| vec![None; d.points.len()])
        .collect()
}

impl Health {
    /// A device-level fault, raised with `message` or cleared.
    fn link_fault(
        &mut self,
        d: &Device,
        device: usize,
        which: LinkFault,
        message: Option<String>,
        changes: &mut Changes,
    ) {
        let bit = 1u8 << (which as u8);
        let maybe = &mut self.link_maybe[device];
        if message.is_some() {
            *maybe |= bit;
        } else if *maybe & bit == 0 {
            return;
        } else {
            *maybe &= !bit;
        }
        let id = Source::Link {
            device: &d.id,
            fault: which,
        }
        .identity(&d.zone);
        fault(&id, message, None, changes);
    }
}

/// Raises (`Some(message)`) or clears (`None`) a fault; clearing a fault that is not there
/// says nothing.
fn fault(id: &Identity, message: Option<String>, value: Option<f64>, changes: &mut Changes) {
    let cond = match message {
        Some(m) => Condition {
            severity: Some(FAULT_SEVERITY),
            value,
            threshold: None,
            message: m,
        },
        None => {
            if !changes.table.condition_of(id) {
                return;
            }
            Condition {
                severity: None,
                value,
                threshold: None,
                message: format!("{} {}: cleared", id.device, id.rule),
            }
        }
    };
    changes.update(id, cond);
}
