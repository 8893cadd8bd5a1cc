//! The drain handshake's payloads (SPEC "MQTT": `P/drain/...`, `P/power/...`), one type per
//! message.
//!
//! The coordinator, the agents, the drill command and the demo all read and write these
//! bodies, so they are defined once here; the exact JSON is pinned by the tests below. Fields
//! beyond the SPEC (`drill`, `exit_status`, `output`, `action`, `offline`) are additions the
//! SPEC allows; `drill` is left out when false so a real drain's bodies are exactly the SPEC's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rules::Severity;

fn is_false(b: &bool) -> bool {
    !*b
}

/// `P/drain/{zone}/request` while a drain is wanted (retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub drain_id: String,
    pub zone: String,
    /// The zone's highest severity so far; rises on escalation, same `drain_id`.
    pub severity: Severity,
    /// The alarm keys that made the zone reach the trigger.
    pub reason: Vec<String>,
    pub requested_at: String,
    /// When clearance is given even without every agent's confirmation (RFC 3339).
    pub deadline: String,
    /// A rehearsal: hooks run with `EMBERWATCH_DRILL=1`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub drill: bool,
    /// The gateway that asks (SPEC "Redundant gateways": every message says which gateway
    /// sent it). Two gateways of a pair in a split brain may both ask for a drain of one zone
    /// under different ids; agents use this to tell whose request is still live. Absent from
    /// older gateways, which agents treat as one requester.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// `P/drain/{zone}/request` once the zone is back to normal (retained): agents restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    pub drain_id: String,
    pub state: CancelledState,
    #[serde(default, skip_serializing_if = "is_false")]
    pub drill: bool,
    /// The gateway that cancels, as in [`Request::gateway`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// The one value of [`Cancelled::state`], so a cancellation can be told from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelledState {
    Cancelled,
}

/// Either body of `P/drain/{zone}/request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestMessage {
    // Tried first: only a cancellation has `state`.
    Cancelled(Cancelled),
    Request(Request),
}

impl RequestMessage {
    pub fn drain_id(&self) -> &str {
        match self {
            RequestMessage::Cancelled(c) => &c.drain_id,
            RequestMessage::Request(r) => &r.drain_id,
        }
    }
}

/// What an agent reports in an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckState {
    Started,
    Done,
    Failed,
}

/// Which hook an ack is about. Restores are reported too, so operators can see services come
/// back; the SPEC's acks are drain acks, so `drain` is the default and left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Drain,
    Restore,
}

impl Action {
    fn is_drain(&self) -> bool {
        *self == Action::Drain
    }
}

/// `P/drain/{zone}/ack/{agent}`, from agents (not retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub drain_id: String,
    pub agent: String,
    pub state: AckState,
    /// One line for the operator: what ran and how it ended.
    pub detail: String,
    #[serde(default, skip_serializing_if = "Action::is_drain")]
    pub action: Action,
    /// The hook's exit code (`done`/`failed`); absent when it was killed or never ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// The last lines of the hook's stdout and stderr.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub drill: bool,
}

/// A drain's state as `P/drain/{zone}/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    Requested,
    Draining,
    Drained,
    TimedOut,
    Cancelled,
}

impl DrainState {
    pub const ALL: [DrainState; 5] = [
        DrainState::Requested,
        DrainState::Draining,
        DrainState::Drained,
        DrainState::TimedOut,
        DrainState::Cancelled,
    ];

    /// As in the status payload (and the `state` label of `emberwatch_drain_state`).
    pub fn as_str(self) -> &'static str {
        match self {
            DrainState::Requested => "requested",
            DrainState::Draining => "draining",
            DrainState::Drained => "drained",
            DrainState::TimedOut => "timed_out",
            DrainState::Cancelled => "cancelled",
        }
    }
}

/// One expected agent's progress, as `P/drain/{zone}/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    /// Asked, nothing heard yet.
    Pending,
    Started,
    Done,
    Failed,
    /// After a cancellation: the agent ran its restore hook.
    Restored,
    RestoreFailed,
}

impl Progress {
    pub const ALL: [Progress; 6] = [
        Progress::Pending,
        Progress::Started,
        Progress::Done,
        Progress::Failed,
        Progress::Restored,
        Progress::RestoreFailed,
    ];

    /// As in the status payload (and the `progress` label of `emberwatch_drain_agents`).
    pub fn as_str(self) -> &'static str {
        match self {
            Progress::Pending => "pending",
            Progress::Started => "started",
            Progress::Done => "done",
            Progress::Failed => "failed",
            Progress::Restored => "restored",
            Progress::RestoreFailed => "restore_failed",
        }
    }
}

/// `P/drain/{zone}/status` (retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub drain_id: String,
    pub state: DrainState,
    pub agents: BTreeMap<String, Progress>,
    /// Expected agents whose presence says offline (or never seen): they cannot answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offline: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub drill: bool,
}

/// `P/power/{zone}/clearance` (retained, advisory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clearance {
    pub zone: String,
    pub clear: bool,
    pub drain_id: String,
    pub reason: String,
    pub time: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub drill: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceState {
    Online,
    Offline,
}

/// `P/drain/agents/{agent}` (retained; the offline form is also the agent's last will).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub state: PresenceState,
    pub zones: Vec<String>,
}

/// `P/drain/readiness` (retained, emberwatch's addition): which expected agents are missing.
/// A missing agent is a warning-level fault: the drain it should take part in will time out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// Every agent of `drain.agents`: `online`, `offline` (its last will or clean stop) or
    /// `unknown` (never announced itself).
    pub agents: BTreeMap<String, String>,
    pub missing: Vec<String>,
    /// `warning` while any agent is missing, else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    pub time: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn bodies_are_the_spec_json() {
        let r = Request {
            drain_id: "room-1-1".into(),
            zone: "room-1".into(),
            severity: Severity::Critical,
            reason: vec!["rack-01/offgas/offgas".into()],
            requested_at: "2026-11-24T13:40:02.123Z".into(),
            deadline: "2026-11-24T13:42:02.123Z".into(),
            drill: false,
            gateway: None,
        };
        assert_eq!(
            json(&r),
            r#"{"drain_id":"room-1-1","zone":"room-1","severity":"critical","reason":["rack-01/offgas/offgas"],"requested_at":"2026-11-24T13:40:02.123Z","deadline":"2026-11-24T13:42:02.123Z"}"#
        );
        let c = Cancelled {
            drain_id: "room-1-1".into(),
            state: CancelledState::Cancelled,
            drill: false,
            gateway: None,
        };
        assert_eq!(json(&c), r#"{"drain_id":"room-1-1","state":"cancelled"}"#);
        let c = Cancelled {
            gateway: Some("gw-b1".into()),
            ..c
        };
        assert_eq!(
            json(&c),
            r#"{"drain_id":"room-1-1","state":"cancelled","gateway":"gw-b1"}"#
        );
        let a = Ack {
            drain_id: "room-1-1".into(),
            agent: "lb-1".into(),
            state: AckState::Done,
            detail: "ok".into(),
            action: Action::Drain,
            exit_status: Some(0),
            output: String::new(),
            drill: true,
        };
        assert_eq!(
            json(&a),
            r#"{"drain_id":"room-1-1","agent":"lb-1","state":"done","detail":"ok","exit_status":0,"drill":true}"#
        );
        let s = Status {
            drain_id: "room-1-1".into(),
            state: DrainState::TimedOut,
            agents: BTreeMap::from([("lb-1".to_string(), Progress::Done)]),
            offline: vec![],
            drill: false,
        };
        assert_eq!(
            json(&s),
            r#"{"drain_id":"room-1-1","state":"timed_out","agents":{"lb-1":"done"}}"#
        );
        let p = Presence {
            state: PresenceState::Offline,
            zones: vec!["room-1".into()],
        };
        assert_eq!(json(&p), r#"{"state":"offline","zones":["room-1"]}"#);
    }

    #[test]
    fn a_request_topic_body_is_told_apart() {
        let cases: &[(&str, bool)] = &[
            (r#"{"drain_id":"x","state":"cancelled"}"#, true),
            (
                r#"{"drain_id":"x","zone":"z","severity":"emergency","reason":[],"requested_at":"t","deadline":"t","drill":true}"#,
                false,
            ),
        ];
        for (text, cancelled) in cases {
            let m: RequestMessage = serde_json::from_str(text).unwrap();
            assert_eq!(
                matches!(m, RequestMessage::Cancelled(_)),
                *cancelled,
                "{text}"
            );
            assert_eq!(m.drain_id(), "x");
        }
        assert!(
            serde_json::from_str::<RequestMessage>(r#"{"drain_id":"x","state":"odd"}"#).is_err()
        );
    }
}
