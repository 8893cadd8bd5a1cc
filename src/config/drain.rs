//! `[drain]` and `[agent]`: the traffic drain before power is cut. A gateway's `[drain]` says
//! when to ask for one and whom; a drain agent's `[agent]` says which zones it drains and how.
//! Both types, their defaults and their validators side by side.

use std::time::Duration;

use serde::Deserialize;

use super::validate::Validator;
use crate::rules::Severity;

/// Default `drain.trigger`.
pub const DEFAULT_TRIGGER: Severity = Severity::Critical;
/// Default `drain.deadline`.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);
/// Default `agent.timeout`.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// When and from whom the gateway requests a drain (`[drain]`); without the section it never
/// does.
#[derive(Debug, Clone)]
pub struct Drain {
    /// `trigger`: a zone alarm at this severity or above starts the zone's drain; default
    /// [`DEFAULT_TRIGGER`].
    pub trigger: Severity,
    /// `deadline`: how long the gateway waits for the agents to confirm; then the drain is
    /// `timed_out` and power may be cut anyway, naming who did not confirm. Default
    /// [`DEFAULT_DEADLINE`].
    pub deadline: Duration,
    /// `agents`: the ids of the drain agents that must confirm.
    pub agents: Vec<String>,
    /// `cancel_after`: a zone back to normal cancels its drain only once every alarm of the
    /// zone has been acknowledged (`"acknowledged"`), or as soon as it is normal (`"normal"`,
    /// the default).
    pub cancel_after_ack: bool,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawDrain {
    trigger: Option<String>,
    deadline: Option<String>,
    agents: Vec<String>,
    cancel_after: Option<String>,
}

/// A drain agent's own settings (`[agent]`, required by `emberwatch agent`).
#[derive(Debug, Clone)]
pub struct Agent {
    /// `id`: this agent, `[a-z0-9-]+`, as listed in the gateways' `drain.agents`.
    pub id: String,
    /// `zones`: the zones whose drain requests this agent acts on.
    pub zones: Vec<String>,
    /// `drain`: the argv of the hook that drains traffic away from the zone.
    pub drain: Vec<String>,
    /// `restore`: the argv of the hook that brings traffic back when a drain is cancelled;
    /// none by default.
    pub restore: Vec<String>,
    /// `timeout`: how long a hook may run before its process group is killed; default
    /// [`DEFAULT_AGENT_TIMEOUT`].
    pub timeout: Duration,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawAgent {
    id: Option<String>,
    zones: Vec<String>,
    drain: Vec<String>,
    restore: Vec<String>,
    timeout: Option<String>,
}

impl Validator {
    pub(super) fn drain(&mut self, d: RawDrain) -> Drain {
        Drain {
            trigger: self.severity("drain.trigger", d.trigger, DEFAULT_TRIGGER),
            deadline: self.duration("drain.deadline", d.deadline, DEFAULT_DEADLINE),
            agents: d.agents,
            cancel_after_ack: match d.cancel_after.as_deref() {
                None | Some("normal") => false,
                Some("acknowledged") => true,
                Some(other) => {
                    self.problem(
                        "drain.cancel_after",
                        format!("{other:?}: expected \"normal\" or \"acknowledged\""),
                    );
                    false
                }
            },
        }
    }

    pub(super) fn agent(&mut self, a: RawAgent) -> Agent {
        let id = self.id("agent.id", a.id, &['-']);
        if a.zones.is_empty() {
            self.problem("agent.zones", "missing: which zones this agent drains");
        }
        if a.drain.is_empty() {
            self.problem("agent.drain", "missing: the drain hook's argv");
        }
        Agent {
            id,
            zones: a.zones,
            drain: a.drain,
            restore: a.restore,
            timeout: self.duration("agent.timeout", a.timeout, DEFAULT_AGENT_TIMEOUT),
        }
    }
}
