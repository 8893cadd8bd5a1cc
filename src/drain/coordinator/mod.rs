//! The gateway's side of the drain handshake, as a pure state machine.
//!
//! Zone statuses, agents' acks and presence, drill commands and the passing of time go in;
//! retained requests, drain statuses, power-cut clearances and readiness come out as
//! [`Outgoing`] messages. No I/O and no clock: every input carries its `now`, so a whole drain
//! (escalation, a failing agent, the deadline, a cancel) is a table of steps in `tests.rs`,
//! and the async shell in `service.rs` only feeds it and publishes what it returns.
//!
//! This file holds the rules that move a drain; the parts they lean on live beside it:
//! `persisted.rs` (the drain records that survive a restart), `roster.rs` (the expected
//! agents' presence, readiness and faults) and `outgoing.rs` (the retained messages a record
//! is published as).
//!
//! The rules, in the order they matter during a fire:
//! - a zone whose fire evidence (its status's `evidence`: threshold, rate-of-rise and vote
//!   alarms, never faults) reaches `drain.trigger` gets a drain with a new `drain_id`; a higher
//!   evidence severity later keeps the same drain (agents must not drain twice) and republishes
//!   the request with the new severity;
//! - the drain is `drained` once every expected agent said `done`; at the deadline it is
//!   `timed_out`; either way the clearance becomes `clear: true` with a reason that names who
//!   did not confirm. A `failed` agent does not end the wait early: someone may still fix it
//!   by hand before the deadline;
//! - a zone back to `normal` (its `level`, faults included) cancels: request
//!   `{"drain_id","state":"cancelled"}`, clearance withdrawn (`clear: false`), agents restore;
//! - acks for another `drain_id`, from agents not in `drain.agents`, or not expected for that
//!   zone, are logged and ignored;
//! - the drain set of a zone is `drain.agents`, less agents whose presence lists other zones
//!   only; it is fixed when the drain starts;
//! - an expected agent that is offline (its last will) or has not announced itself within
//!   [`PRESENCE_GRACE`] is a warning-level fault: reported in `P/drain/readiness`, in the
//!   drain status's `offline` list, in the log, and returned as an [`AgentFault`];
//! - a drill is a drain with `drill: true` in every message, cancelled (agents restore) as soon
//!   as it is drained or timed out; a real trigger supersedes a running drill.
//!
//! Deadlines are kept in wall-clock milliseconds because they must survive a restart
//! ([`Persisted`]); the monotonic clock is used only for the presence grace of this process.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::messages::{Ack, AckState, Action, DrainState, Progress};
use crate::alarms::{Level, ZoneStatus};
use crate::clock::{unix_ms, Now};
use crate::config;
use crate::message::Outgoing;
use crate::mqtt::Topics;
use crate::rules::Severity;

mod adopt;
mod outgoing;
mod persisted;
mod roster;

pub use adopt::Followed;
pub use persisted::{ClearanceRecord, DrainRecord, Persisted};
pub use roster::{AgentFault, PRESENCE_GRACE};

use roster::Roster;

/// While a drain waits for agents, its request is republished this often. Acks are not
/// retained and the gateway's session is clean, so an ack sent while the gateway was
/// reconnecting (a broker restart) is gone; agents answer a repeated request with what they
/// already did, so the gateway catches up within this period.
pub const REQUEST_REPEAT: Duration = Duration::from_secs(10);

/// What one input produced.
#[derive(Debug, Default)]
pub struct Effects {
    pub messages: Vec<Outgoing>,
    pub faults: Vec<AgentFault>,
}

impl Effects {
    fn extend(&mut self, other: Effects) {
        self.messages.extend(other.messages);
        self.faults.extend(other.faults);
    }
}

/// Why a drill was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrillRefused {
    #[error("zone {0:?} is not watched by this gateway")]
    UnknownZone(String),
    #[error("zone {zone:?} has a real drain in progress ({drain_id}); no drill now")]
    RealDrain { zone: String, drain_id: String },
    #[error("zone {zone:?} is already running drill {drain_id}")]
    AlreadyDrilling { zone: String, drain_id: String },
}

/// The drain machine of one gateway: its configuration, the persisted drains, and what this
/// process alone knows (agents' presence, when each request was last sent), so a restart
/// loses nothing that `drain.json` and the broker's retained messages do not give back.
pub struct Coordinator {
    topics: Topics,
    trigger: Severity,
    deadline: Duration,
    /// The gateway's zones.
    zones: Vec<String>,
    cancel_after_ack: bool,
    state: Persisted,
    /// The expected agents and their presence.
    roster: Roster,
    /// When each zone's request was last published (this process only).
    request_sent: BTreeMap<String, Instant>,
    dirty: bool,
}

impl Coordinator {
    /// `zones` are the gateway's zones (drills are refused for others); `persisted` is what
    /// the last run left in `drain.json`.
    pub fn new(
        topics: Topics,
        drain: &config::Drain,
        zones: Vec<String>,
        persisted: Persisted,
        now: Now,
    ) -> Coordinator {
        Coordinator {
            topics,
            trigger: drain.trigger,
            cancel_after_ack: drain.cancel_after_ack,
            deadline: drain.deadline,
            zones,
            state: persisted,
            roster: Roster::new(drain.agents.clone(), now.mono),
            request_sent: BTreeMap::new(),
            dirty: false,
        }
    }

    /// The state to persist.
    pub fn persisted(&self) -> &Persisted {
        &self.state
    }

    /// True once after each change of [`Coordinator::persisted`]: save it before publishing.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// After a restart: republish every zone's retained request, status and clearance as
    /// persisted (the broker may have lost them), so agents see the same `drain_id` again and
    /// answer with what they already did, and time out what expired while the gateway was down.
    pub fn resume(&mut self, now: Now) -> Effects {
        let mut fx = Effects::default();
        let zones: Vec<String> = self.state.zones.keys().cloned().collect();
        for zone in zones {
            if let Some(rec) = self.state.zones.get(&zone) {
                if rec.in_force() {
                    tracing::info!(zone = %zone, drain_id = %rec.drain_id, state = ?rec.state, "resuming drain after restart");
                }
                self.request_sent.insert(zone.clone(), now.mono);
                fx.messages.push(self.request_message(rec));
                fx.messages.push(self.status_message(rec));
                if let Some(c) = self.clearance_message(rec) {
                    fx.messages.push(c);
                }
            }
        }
        fx.extend(self.tick(now));
        fx
    }

    /// A zone's status changed (or was published at start-up).
    ///
    /// A drain moves a room's traffic away and tells whoever cuts the power that they may: it is
    /// started, and escalated, on fire evidence alone (`z.evidence`). A fault (a link, a stuck,
    /// out-of-range or troubled sensor, a blind zone, a missing agent) says a sensor needs
    /// fixing, not that the room burns; a flapping detector once drained and restored a room
    /// eleven times in 20 s. The blind zone stays a loud critical alarm in `z.level`.
    ///
    /// Cancelling is asymmetric on purpose: it waits for the whole zone, faults included, to be
    /// back to normal (`z.level`). A fault is never "normal": once fire has been seen, sensors
    /// that then fail (a detector's link melting is what a fire does) prove nothing about the
    /// fire, so a fire-safety engineer keeps the traffic away and the clearance given until the
    /// zone is watched again and reads normal.
    pub fn on_zone(&mut self, z: &ZoneStatus, now: Now) -> Effects {
        let mut fx = Effects::default();
        let trigger = Level::from(self.trigger);
        let current = self.state.zones.get(&z.zone).filter(|r| r.in_force());
        if z.evidence >= trigger {
            let severity = severity_of(z.evidence).unwrap_or(self.trigger);
            match current {
                Some(rec) if !rec.drill => {
                    if severity > rec.severity {
                        fx.extend(self.escalate(&z.zone, severity, &z.active));
                    }
                }
                Some(_drill) => {
                    fx.extend(self.cancel(&z.zone, "a real drain supersedes the drill", now));
                    fx.extend(self.start(&z.zone, severity, z.active.clone(), false, now));
                }
                None => fx.extend(self.start(&z.zone, severity, z.active.clone(), false, now)),
            }
        } else if z.level == Level::Normal && current.is_some_and(|r| !r.drill) {
            if !self.cancel_after_ack {
                fx.extend(self.cancel(&z.zone, "zone back to normal", now));
            } else if z.unacknowledged == 0 {
                fx.extend(self.cancel(
                    &z.zone,
                    "zone back to normal and every alarm acknowledged",
                    now,
                ));
            }
        }
        fx
    }

    /// Any publish on the coordinator's subscriptions: acks and agents' presence.
    pub fn on_inbound(&mut self, topic: &str, payload: &[u8], now: Now) -> Effects {
        if let Some((zone, agent)) = self.topics.drain_ack_parts(topic) {
            let (zone, agent) = (zone.to_string(), agent.to_string());
            return self.on_ack(&zone, &agent, payload, now);
        }
        if let Some(agent) = self.topics.drain_agent_id(topic) {
            let agent = agent.to_string();
            return self.on_presence(&agent, payload, now);
        }
        tracing::debug!("drain: ignoring publish on {topic}");
        Effects::default()
    }

    /// An agent's ack on `P/drain/{zone}/ack/{agent}`.
    pub fn on_ack(&mut self, zone: &str, agent: &str, payload: &[u8], now: Now) -> Effects {
        let ack: Ack = match serde_json::from_slice(payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(
                    zone,
                    agent,
                    "drain: ignoring an ack that is not an ack ({e})"
                );
                return Effects::default();
            }
        };
        if ack.agent != agent {
            tracing::warn!(zone, agent, claimed = %ack.agent, "drain: ignoring an ack whose agent does not match its topic");
            return Effects::default();
        }
        if !self.roster.expects(agent) {
            tracing::warn!(zone, agent, drain_id = %ack.drain_id, "drain: ack from unknown agent {agent:?} (not in drain.agents) ignored");
            return Effects::default();
        }
        let Some(rec) = self.state.zones.get_mut(zone) else {
            tracing::info!(zone, agent, drain_id = %ack.drain_id, "drain: ack for a zone with no drain ignored");
            return Effects::default();
        };
        if rec.drain_id != ack.drain_id {
            tracing::info!(zone, agent, drain_id = %ack.drain_id, current = %rec.drain_id, "drain: ack for another drain ignored");
            return Effects::default();
        }
        let Some(progress) = rec.agents.get(agent).copied() else {
            tracing::warn!(zone, agent, drain_id = %ack.drain_id, "drain: ack from an agent not expected for this zone ignored");
            return Effects::default();
        };
        if ack.action == Action::Restore && rec.state != DrainState::Cancelled {
            tracing::info!(zone, agent, drain_id = %ack.drain_id, "drain: restore ack for a drain still in force ignored");
            return Effects::default();
        }
        let next = match (ack.action, ack.state) {
            (Action::Drain, AckState::Started) => Progress::Started,
            (Action::Drain, AckState::Done) => Progress::Done,
            (Action::Drain, AckState::Failed) => Progress::Failed,
            (Action::Restore, AckState::Started) => return Effects::default(),
            (Action::Restore, AckState::Done) => Progress::Restored,
            (Action::Restore, AckState::Failed) => Progress::RestoreFailed,
        };
        // Progress only moves forward: a resent `started` after `done` changes nothing, and the
        // first final answer stands.
        let forward = match progress {
            Progress::Pending => true,
            Progress::Started => next != Progress::Started,
            Progress::Done | Progress::Failed => {
                matches!(next, Progress::Restored | Progress::RestoreFailed)
            }
            Progress::Restored | Progress::RestoreFailed => false,
        };
        if !forward {
            return Effects::default();
        }
        tracing::info!(zone, agent, drain_id = %rec.drain_id, progress = ?next, detail = %ack.detail, "drain: agent progress");
        rec.agents.insert(agent.to_string(), next);
        if next == Progress::Failed {
            rec.details.insert(agent.to_string(), ack.detail.clone());
        }
        if rec.state == DrainState::Requested
            && matches!(next, Progress::Started | Progress::Done | Progress::Failed)
        {
            rec.state = DrainState::Draining;
        }
        self.dirty = true;
        let zone = zone.to_string();
        let mut fx = Effects::default();
        if let Some(rec) = self.state.zones.get(&zone) {
            fx.messages.push(self.status_message(rec));
        }
        fx.extend(self.settle(&zone, now));
        fx
    }

    /// An agent's retained presence on `P/drain/agents/{agent}`.
    pub fn on_presence(&mut self, agent: &str, payload: &[u8], now: Now) -> Effects {
        if !self.roster.update(agent, payload) {
            return Effects::default();
        }
        let mut fx = self.roster.check(&self.topics, &self.zones, now);
        // Open drains show who is offline in their status.
        let zones: Vec<String> = self
            .state
            .zones
            .values()
            .filter(|r| r.open() && r.agents.contains_key(agent))
            .map(|r| r.zone.clone())
            .collect();
        let serves: Option<Vec<String>> = self.roster.serves(agent);
        for zone in zones {
            // A drain started before this agent's presence was known (right after a restart)
            // waited for it in every zone; one it does not serve stops waiting for it.
            if let (Some(serves), Some(rec)) = (&serves, self.state.zones.get_mut(&zone)) {
                if !serves.contains(&zone) && rec.agents.get(agent) == Some(&Progress::Pending) {
                    tracing::info!(zone = %zone, agent, drain_id = %rec.drain_id, "drain: agent does not serve this zone; not waiting for it");
                    rec.agents.remove(agent);
                    self.dirty = true;
                }
            }
            if let Some(rec) = self.state.zones.get(&zone) {
                fx.messages.push(self.status_message(rec));
            }
            fx.extend(self.settle(&zone, now));
        }
        fx
    }

    /// `emberwatch drill` / `cmd/drill`: rehearse a drain of `zone`.
    pub fn drill(&mut self, zone: &str, now: Now) -> Result<(String, Effects), DrillRefused> {
        if !self.zones.iter().any(|z| z == zone) {
            return Err(DrillRefused::UnknownZone(zone.to_string()));
        }
        if let Some(rec) = self.state.zones.get(zone).filter(|r| r.in_force()) {
            let (zone, drain_id) = (zone.to_string(), rec.drain_id.clone());
            return Err(if rec.drill {
                DrillRefused::AlreadyDrilling { zone, drain_id }
            } else {
                DrillRefused::RealDrain { zone, drain_id }
            });
        }
        let fx = self.start(zone, self.trigger, vec!["drill".to_string()], true, now);
        let id = self
            .state
            .zones
            .get(zone)
            .map(|r| r.drain_id.clone())
            .unwrap_or_default();
        Ok((id, fx))
    }

    /// The passing of time: deadlines, and the presence grace.
    pub fn tick(&mut self, now: Now) -> Effects {
        let mut fx = self.roster.check(&self.topics, &self.zones, now);
        let open: Vec<String> = self
            .state
            .zones
            .values()
            .filter(|r| r.open())
            .map(|r| r.zone.clone())
            .collect();
        for zone in open {
            fx.extend(self.settle(&zone, now));
            let due = self
                .request_sent
                .get(&zone)
                .is_none_or(|at| now.mono.saturating_duration_since(*at) >= REQUEST_REPEAT);
            if let Some(rec) = self.state.zones.get(&zone).filter(|r| r.open() && due) {
                fx.messages.push(self.request_message(rec));
                self.request_sent.insert(zone, now.mono);
            }
        }
        fx
    }

    fn start(
        &mut self,
        zone: &str,
        severity: Severity,
        reason: Vec<String>,
        drill: bool,
        now: Now,
    ) -> Effects {
        let now_ms = unix_ms(now.wall);
        let id_ms = now_ms.max(self.state.last_id_ms + 1);
        self.state.last_id_ms = id_ms;
        let drain_id = if drill {
            format!("drill-{zone}-{id_ms}")
        } else {
            format!("{zone}-{id_ms}")
        };
        let agents: BTreeMap<String, Progress> = self
            .roster
            .expected_for(zone)
            .into_iter()
            .map(|a| (a, Progress::Pending))
            .collect();
        let waiting = agents.keys().cloned().collect::<Vec<_>>().join(", ");
        let deadline_ms = now_ms.saturating_add(self.deadline.as_millis() as u64);
        let rec = DrainRecord {
            drain_id: drain_id.clone(),
            zone: zone.to_string(),
            severity,
            reason,
            requested_at: crate::clock::rfc3339(now.wall),
            deadline_ms,
            drill,
            state: DrainState::Requested,
            agents,
            details: BTreeMap::new(),
            clearance: Some(ClearanceRecord {
                clear: false,
                reason: format!("drain {drain_id} requested; waiting for: {waiting}"),
                time: crate::clock::rfc3339(now.wall),
            }),
        };
        if drill {
            tracing::info!(zone, drain_id = %drain_id, "drill: drain requested");
        } else {
            tracing::warn!(zone, drain_id = %drain_id, severity = %severity, reason = ?rec.reason, "drain requested: fire evidence in the zone reached drain.trigger");
        }
        let mut fx = Effects::default();
        fx.messages.push(self.request_message(&rec));
        fx.messages.push(self.status_message(&rec));
        fx.messages.extend(self.clearance_message(&rec));
        self.request_sent.insert(zone.to_string(), now.mono);
        self.state.zones.insert(zone.to_string(), rec);
        self.dirty = true;
        fx.extend(self.settle(zone, now));
        fx
    }

    fn escalate(&mut self, zone: &str, severity: Severity, active: &[String]) -> Effects {
        let mut fx = Effects::default();
        let Some(rec) = self.state.zones.get_mut(zone) else {
            return fx;
        };
        tracing::warn!(zone, drain_id = %rec.drain_id, from = %rec.severity, to = %severity, "drain escalated; same drain");
        rec.severity = severity;
        for a in active {
            if !rec.reason.contains(a) {
                rec.reason.push(a.clone());
            }
        }
        self.dirty = true;
        if let Some(rec) = self.state.zones.get(zone) {
            fx.messages.push(self.request_message(rec));
        }
        fx
    }

    fn cancel(&mut self, zone: &str, why: &str, now: Now) -> Effects {
        let mut fx = Effects::default();
        let Some(rec) = self.state.zones.get_mut(zone) else {
            return fx;
        };
        rec.state = DrainState::Cancelled;
        rec.clearance = Some(ClearanceRecord {
            clear: false,
            reason: format!("{why}: drain {} cancelled; agents restore", rec.drain_id),
            time: crate::clock::rfc3339(now.wall),
        });
        tracing::warn!(zone, drain_id = %rec.drain_id, "drain cancelled: {why}");
        self.dirty = true;
        if let Some(rec) = self.state.zones.get(zone) {
            fx.messages.push(self.request_message(rec));
            fx.messages.push(self.status_message(rec));
            fx.messages.extend(self.clearance_message(rec));
        }
        fx
    }

    /// Ends an open drain once every agent is done or the deadline passed; a finished drill is
    /// then cancelled so agents restore.
    fn settle(&mut self, zone: &str, now: Now) -> Effects {
        let mut fx = Effects::default();
        let deadline = self.deadline;
        let Some(rec) = self.state.zones.get_mut(zone) else {
            return fx;
        };
        if !rec.open() {
            return fx;
        }
        let all_done = rec.agents.values().all(|p| *p == Progress::Done);
        let expired = unix_ms(now.wall) >= rec.deadline_ms;
        let reason = if all_done {
            rec.state = DrainState::Drained;
            if rec.agents.is_empty() {
                "drained: no agents expected (drain.agents is empty)".to_string()
            } else {
                format!(
                    "drained: every expected agent confirmed ({})",
                    rec.agents.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        } else if expired {
            rec.state = DrainState::TimedOut;
            let missing: Vec<String> = rec
                .agents
                .iter()
                .filter(|(_, p)| **p != Progress::Done)
                .map(|(a, p)| match p {
                    Progress::Failed => match rec.details.get(a) {
                        Some(d) if !d.is_empty() => format!("{a} failed: {d}"),
                        _ => format!("{a} failed"),
                    },
                    Progress::Started => format!("{a} still draining"),
                    _ => format!("{a} never answered"),
                })
                .collect();
            format!(
                "deadline of {} passed without every agent's confirmation: {}",
                humantime::format_duration(deadline),
                missing.join("; ")
            )
        } else {
            return fx;
        };
        rec.clearance = Some(ClearanceRecord {
            clear: true,
            reason,
            time: crate::clock::rfc3339(now.wall),
        });
        tracing::warn!(zone, drain_id = %rec.drain_id, state = ?rec.state, "power-cut clearance given");
        let drill = rec.drill;
        self.dirty = true;
        if let Some(rec) = self.state.zones.get(zone) {
            fx.messages.push(self.status_message(rec));
            fx.messages.extend(self.clearance_message(rec));
        }
        if drill {
            fx.extend(self.cancel(zone, "drill over", now));
        }
        fx
    }
}

fn severity_of(level: Level) -> Option<Severity> {
    match level {
        Level::Normal => None,
        Level::Warning => Some(Severity::Warning),
        Level::Critical => Some(Severity::Critical),
        Level::Emergency => Some(Severity::Emergency),
    }
}

#[cfg(test)]
mod tests;
