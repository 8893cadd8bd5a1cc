//! Carrying on after a restart: rule and sensor-health state seeded from the persisted alarms.
//!
//! The alarm table comes back from `state.json` as it was, but the state machines behind it
//! (threshold levels, raised rates, missed polls, faulted sensors) are not persisted. Seeding
//! them from the alarms means the first reading after a restart raises nothing that was already
//! raised, and clears what it should. An alarm that no longer matches the configuration (its
//! device, point, rule or drain agent is gone) is dropped rather than left active forever.

use crate::alarms::{AlarmTable, Identity, LinkFault, RuleKind, Source};
use crate::config::{Config, RuleBody};
use crate::rules::Severity;

use super::evaluate::RuleStates;
use super::health::Health;
use super::Setup;

/// Seeds `health` and `rules` from every alarm in `table`, dropping those that no longer match.
pub(super) fn seed(
    setup: &Setup,
    table: &mut AlarmTable,
    health: &mut Health,
    rules: &mut RuleStates,
) {
    let restored: Vec<(Identity, Option<Severity>)> = table
        .alarms()
        .map(|a| (a.identity.clone(), a.condition.then_some(a.severity)))
        .collect();
    for (id, level) in restored {
        if !seed_one(setup, health, rules, &id, level) {
            tracing::warn!(alarm = %id.key(), "alarm from before the restart no longer matches the configuration; dropped");
            table.remove(&id);
        }
    }
}

/// Puts a rule's or sensor's state back where a restored alarm says it was (`level`: its
/// condition, if present); false if the alarm's source is gone from the configuration.
fn seed_one(
    setup: &Setup,
    health: &mut Health,
    rules: &mut RuleStates,
    id: &Identity,
    level: Option<Severity>,
) -> bool {
    let cfg = &setup.cfg;
    let Some(source) = Source::of(id) else {
        return false;
    };
    match source {
        // Kept while the agent is still expected; the drain task reports it back or gone.
        Source::DrainAgent { agent } => cfg
            .drain
            .as_ref()
            .is_some_and(|d| d.agents.iter().any(|a| a == agent)),
        // Votes and blind-zone faults belong to a zone, not a device, and are re-judged from
        // the table.
        Source::BlindZone => true,
        Source::Vote { rule } => cfg
            .rules
            .iter()
            .any(|r| r.id == rule && matches!(r.body, RuleBody::Vote(_))),
        Source::Link { device, fault } => {
            let Some(di) = device_index(cfg, device) else {
                return false;
            };
            if fault == LinkFault::CommLoss && level.is_some() {
                health.seed_comm_loss(di);
            }
            if fault == LinkFault::Protocol && level.is_some() {
                health.seed_protocol(di);
            }
            true
        }
        Source::PointFault {
            device,
            point,
            fault,
        } => {
            let Some((di, pi)) = point_index(cfg, device, point) else {
                return false;
            };
            if level.is_some() {
                health.seed_fault(di, pi, fault);
            }
            true
        }
        Source::Rule {
            device,
            point,
            rule,
            kind,
        } => point_index(cfg, device, point)
            .is_some_and(|(di, pi)| seed_rule(cfg, rules, (di, pi), rule, kind, level)),
    }
}

/// A threshold or rate-of-rise alarm of the point at `(di, pi)`: false unless `rule` still
/// watches that point and is still of the alarm's kind.
fn seed_rule(
    cfg: &Config,
    rules: &mut RuleStates,
    (di, pi): (usize, usize),
    rule: &str,
    kind: RuleKind,
    level: Option<Severity>,
) -> bool {
    let Some(ri) = cfg
        .rules
        .iter()
        .position(|r| r.id == rule && r.targets.contains(&(di, pi)))
    else {
        return false;
    };
    match (&cfg.rules[ri].body, kind) {
        (RuleBody::Threshold(_), RuleKind::Threshold) => {
            rules.seed_threshold((ri, di, pi), level);
            true
        }
        (RuleBody::RateOfRise(_), RuleKind::RateOfRise) => {
            if level.is_some() {
                rules.seed_rate_raised((ri, di, pi));
            }
            true
        }
        _ => false,
    }
}

fn device_index(cfg: &Config, device: &str) -> Option<usize> {
    cfg.devices.iter().position(|d| d.id == device)
}

fn point_index(cfg: &Config, device: &str, point: &str) -> Option<(usize, usize)> {
    let di = device_index(cfg, device)?;
    let pi = cfg.devices[di].points.iter().position(|p| p.id == point)?;
    Some((di, pi))
}
