//! Alarms a zone's other alarms add up to: a blind zone, and vote rules agreeing.
//!
//! Neither comes from one reading; both are re-judged from the alarm table whenever an alarm
//! of the zone changed, and keep no state of their own, so after a restart they follow from
//! the restored table alone.

use crate::alarms::{AlarmKind, Condition, Identity, LinkFault, PointFault, Source};
use crate::config::{Config, PointKind, RuleBody};
use crate::rules::vote::{self, Voter};
use crate::rules::Severity;

use super::Changes;

/// Severity of a zone with no working detector left: the room is unwatched.
pub const BLIND_ZONE_SEVERITY: Severity = Severity::Critical;

/// Point kinds that detect a fire; a zone with none of them working is blind.
const DETECTOR_KINDS: [PointKind; 4] = [
    PointKind::Smoke,
    PointKind::Offgas,
    PointKind::Hydrogen,
    PointKind::Temperature,
];

/// A zone whose every detector is faulted (or whose devices do not answer) is blind: that
/// is itself a critical fault, whatever the single faults' severity.
pub(super) fn blind_zone(cfg: &Config, zone: &str, changes: &mut Changes) {
    let table = &*changes.table;
    let mut detectors = 0;
    let mut faulted = 0;
    for d in cfg.devices.iter().filter(|d| d.zone == zone) {
        let link_down = LinkFault::ALL.into_iter().any(|fault| {
            let link = Source::Link {
                device: &d.id,
                fault,
            };
            table.condition(zone, &link.key())
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
                    table.condition(zone, &sensor.key())
                })
            {
                faulted += 1;
            }
        }
    }
    let id = Source::BlindZone.identity(zone);
    let blind = detectors > 0 && faulted == detectors;
    if !blind && !table.condition_of(&id) {
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
    changes.update(&id, cond);
}

/// Re-counts every vote rule in one zone after its alarms changed.
pub(super) fn votes(cfg: &Config, zone: &str, changes: &mut Changes) {
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
        let candidates = changes
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
        if !agreed && !changes.table.condition_of(&id) {
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
        changes.update(&id, cond);
    }
}
