//! The drain agents the gateway expects, and how each looks now: their retained presence,
//! whether one is missing, and the readiness and faults that say so. This part never looks at
//! a drain: the drain machine asks it who to wait for in a zone and how to show an agent, and
//! it answers from presence alone, so it lives apart from the drain records it does not touch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::outgoing::message;
use super::Effects;
use crate::clock::Now;
use crate::drain::messages::{Presence, PresenceState, Readiness};
use crate::mqtt::Topics;
use crate::rules::Severity;

/// How long after start-up an expected agent may stay unheard of before it counts as missing:
/// retained presence arrives right after the subscription, so this only needs to cover a slow
/// broker.
pub const PRESENCE_GRACE: Duration = Duration::from_secs(10);

/// An expected agent went missing (`active`) or came back: a warning-level fault for the
/// operator, who should learn before a fire that a drain would not be confirmed. The service
/// logs it and hands it to the daemon, which raises or clears `_drain/{agent}/agent-offline` in
/// the alarm table (`Engine::agent_fault`); `P/drain/readiness` carries the same picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFault {
    pub agent: String,
    pub active: bool,
    pub severity: Severity,
    pub detail: String,
    /// The gateway's zones whose drains the agent takes part in: those its presence last
    /// named, or every zone when it never said (a missing agent is shown wherever it could
    /// hold a drain up). Empty when `active` is false: it clears wherever it was raised.
    pub zones: Vec<String>,
}

/// `drain.agents` and what this process has heard of them. Presence and the missing set are
/// not persisted: retained presence comes back from the broker after a restart, and a fault
/// table restored from before it is corrected by the whole picture the first readiness sends.
pub(super) struct Roster {
    /// `drain.agents`.
    expected: Vec<String>,
    /// Each agent's last retained presence.
    presence: BTreeMap<String, Presence>,
    /// When this process started, for [`PRESENCE_GRACE`].
    started: Instant,
    /// Agents reported missing so far (faults raised and not yet cleared).
    missing: BTreeSet<String>,
    /// The readiness last published (without its time), so it is republished only on change.
    readiness: Option<(BTreeMap<String, String>, Vec<String>)>,
}

impl Roster {
    pub(super) fn new(expected: Vec<String>, started: Instant) -> Roster {
        Roster {
            expected,
            presence: BTreeMap::new(),
            started,
            missing: BTreeSet::new(),
            readiness: None,
        }
    }

    /// Whether `agent` is in `drain.agents`: acks from others are ignored.
    pub(super) fn expects(&self, agent: &str) -> bool {
        self.expected.iter().any(|a| a == agent)
    }

    /// Takes an agent's retained presence; an empty payload (a cleared retained message) means
    /// the agent was decommissioned. False when the payload is not a presence (logged, and
    /// nothing changed).
    pub(super) fn update(&mut self, agent: &str, payload: &[u8]) -> bool {
        if payload.is_empty() {
            self.presence.remove(agent);
        } else {
            match serde_json::from_slice::<Presence>(payload) {
                Ok(p) => {
                    self.presence.insert(agent.to_string(), p);
                }
                Err(e) => {
                    tracing::warn!(
                        agent,
                        "drain: ignoring an agent presence that is not one ({e})"
                    );
                    return false;
                }
            }
        }
        true
    }

    /// The zones `agent`'s presence names, if it announced itself.
    pub(super) fn serves(&self, agent: &str) -> Option<Vec<String>> {
        self.presence.get(agent).map(|p| p.zones.clone())
    }

    /// `drain.agents`, less agents whose presence lists only other zones.
    pub(super) fn expected_for(&self, zone: &str) -> Vec<String> {
        self.expected
            .iter()
            .filter(|a| {
                self.presence
                    .get(*a)
                    .is_none_or(|p| p.zones.iter().any(|z| z == zone))
            })
            .cloned()
            .collect()
    }

    /// How an expected agent looks now: `online`, `offline`, or `unknown`.
    pub(super) fn presence_of(&self, agent: &str) -> &'static str {
        match self.presence.get(agent).map(|p| p.state) {
            Some(PresenceState::Online) => "online",
            Some(PresenceState::Offline) => "offline",
            None => "unknown",
        }
    }

    fn is_missing(&self, agent: &str, now: Now) -> bool {
        match self.presence_of(agent) {
            "online" => false,
            "offline" => true,
            _ => now.mono.saturating_duration_since(self.started) >= PRESENCE_GRACE,
        }
    }

    /// Which of the gateway's `zones` `agent` serves, as its presence last said; all of them if
    /// unknown.
    fn zones_served_by(&self, agent: &str, zones: &[String]) -> Vec<String> {
        let said: Vec<String> = self
            .presence
            .get(agent)
            .map(|p| {
                p.zones
                    .iter()
                    .filter(|z| zones.contains(z))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if said.is_empty() {
            zones.to_vec()
        } else {
            said
        }
    }

    /// Publishes `P/drain/readiness` when it changed, raising or clearing agent faults; a fault
    /// names those of the gateway's `zones` the agent serves.
    pub(super) fn check(&mut self, topics: &Topics, zones: &[String], now: Now) -> Effects {
        let mut fx = Effects::default();
        let agents: BTreeMap<String, String> = self
            .expected
            .iter()
            .map(|a| (a.clone(), self.presence_of(a).to_string()))
            .collect();
        let mut missing: Vec<String> = self
            .expected
            .iter()
            .filter(|a| self.is_missing(a, now))
            .cloned()
            .collect();
        missing.sort();
        for a in &missing {
            if self.missing.insert(a.clone()) {
                let detail = format!(
                    "drain agent {a} is {}: drains it takes part in will wait for their deadline",
                    if self.presence_of(a) == "offline" {
                        "offline"
                    } else {
                        "not announced"
                    }
                );
                fx.faults.push(AgentFault {
                    agent: a.clone(),
                    active: true,
                    severity: Severity::Warning,
                    detail,
                    zones: self.zones_served_by(a, zones),
                });
            }
        }
        let back: Vec<String> = self
            .missing
            .iter()
            .filter(|a| !missing.contains(a))
            .cloned()
            .collect();
        for a in back {
            self.missing.remove(&a);
            fx.faults.push(AgentFault {
                detail: format!("drain agent {a} is online again"),
                agent: a,
                active: false,
                severity: Severity::Warning,
                zones: Vec::new(),
            });
        }
        let current = (agents, missing);
        if self.readiness.as_ref() != Some(&current) && !self.expected.is_empty() {
            let body = Readiness {
                agents: current.0.clone(),
                missing: current.1.clone(),
                severity: (!current.1.is_empty()).then_some(Severity::Warning),
                time: crate::clock::rfc3339(now.wall),
            };
            fx.messages.push(message(topics.drain_readiness(), &body));
            // The whole picture on every change, so an alarm table restored from before a
            // restart learns that an agent it still holds as missing is back.
            for a in self.expected.iter().filter(|a| !current.1.contains(a)) {
                fx.faults.push(AgentFault {
                    agent: a.clone(),
                    active: false,
                    severity: Severity::Warning,
                    detail: format!("drain agent {a} is online"),
                    zones: Vec::new(),
                });
            }
            self.readiness = Some(current);
        }
        fx
    }
}
