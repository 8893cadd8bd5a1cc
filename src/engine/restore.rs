//! Carrying on after a restart: rule and sensor-health state seeded from the persisted alarms.
//!
//! The alarm table comes back from `state.json` as it was, but the state machines behind it
//! (threshold levels, raised rates, missed polls, faulted sensors) are not persisted. Seeding
//! them from the alarms means the first reading after a restart raises nothing that was already
//! raised, and clears what it should. An alarm that no longer matches the configuration (its
//! device, point, rule or drain agent is gone) is retired with a `cleared` event saying why,
//! rather than left active forever or dropped without a word to subscribers.

use crate::alarms::{AlarmTable, Identity, LinkFault, RuleKind, Source};
use crate::config::{Config, RuleBody};
use crate::rules::Severity;

use super::evaluate::RuleStates;
use super::health::Health;
use super::Setup;

/// Seeds `health` and `rules` from every alarm in `table`. Returns the alarms that no longer
/// match, with the reason; the engine retires them with an event ([`Engine::retire_orphans`]).
///
/// [`Engine::retire_orphans`]: super::Engine::retire_orphans
pub(super) fn seed(
    setup: &Setup,
    table: &AlarmTable,
    health: &mut Health,
    rules: &mut RuleStates,
) -> Vec<(Identity, String)> {
    let restored: Vec<(Identity, Option<Severity>)> = table
        .alarms()
        .map(|a| (a.identity.clone(), a.condition.then_some(a.severity)))
        .collect();
    let mut orphans = Vec::new();
    for (id, level) in restored {
        if let Err(why) = seed_one(setup, health, rules, &id, level) {
            tracing::warn!(alarm = %id.key(), zone = %id.zone, "alarm from before the restart or reload: {why}; cleared");
            orphans.push((id, why));
        }
    }
    orphans
}

/// Puts a rule's or sensor's state back where a restored alarm says it was (`level`: its
/// condition, if present); `Err` says what left the configuration.
fn seed_one(
    setup: &Setup,
    health: &mut Health,
    rules: &mut RuleStates,
    id: &Identity,
    level: Option<Severity>,
) -> Result<(), String> {
    let cfg = &setup.cfg;
    let Some(source) = Source::of(id) else {
        return Err(format!(
            "{} is not an alarm this version of emberwatch raises",
            id.key()
        ));
    };
    let kept = |ok: bool, why: String| if ok { Ok(()) } else { Err(why) };
    match source {
        // Kept while the agent is still expected; the drain task reports it back or gone.
        Source::DrainAgent { agent } => kept(
            cfg.drain
                .as_ref()
                .is_some_and(|d| d.agents.iter().any(|a| a == agent)),
            format!("drain agent {agent} removed from drain.agents"),
        ),
        // Votes and blind-zone faults belong to a zone, not a device, and are re-judged from
        // the table.
        Source::BlindZone => Ok(()),
        Source::Vote { rule } => kept(
            cfg.rules
                .iter()
                .any(|r| r.id == rule && matches!(r.body, RuleBody::Vote(_))),
            format!("vote rule {rule} removed from the configuration"),
        ),
        Source::Link { device, fault } => {
            let di = device_index(cfg, device)
                .ok_or_else(|| format!("{device} removed from the configuration"))?;
            if fault == LinkFault::CommLoss && level.is_some() {
                health.seed_comm_loss(di);
            }
            Ok(())
        }
        Source::PointFault {
            device,
            point,
            fault,
        } => {
            let (di, pi) = point_index(cfg, device, point)?;
            if level.is_some() {
                health.seed_fault(di, pi, fault);
            }
            Ok(())
        }
        Source::Rule {
            device,
            point,
            rule,
            kind,
        } => {
            let at = point_index(cfg, device, point)?;
            let why = if cfg.rules.iter().any(|r| r.id == rule) {
                format!("rule {rule} no longer watches {device}/{point} in the configuration")
            } else {
                format!("rule {rule} removed from the configuration")
            };
            kept(seed_rule(cfg, rules, at, rule, kind, level), why)
        }
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

/// The point's indexes, or what is missing: the device, or the point on it.
fn point_index(cfg: &Config, device: &str, point: &str) -> Result<(usize, usize), String> {
    let di = device_index(cfg, device)
        .ok_or_else(|| format!("{device} removed from the configuration"))?;
    let pi = cfg.devices[di]
        .points
        .iter()
        .position(|p| p.id == point)
        .ok_or_else(|| format!("point {device}/{point} removed from the configuration"))?;
    Ok((di, pi))
}
