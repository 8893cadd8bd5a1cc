//! Which gateway of a redundant pair is active: a pure state machine (SPEC "Redundant
//! gateways").
//!
//! Two gateways watch the same room; exactly one should publish. Each sees the other only
//! through the broker: the peer's retained status (`role`, `priority`, and `handover_to` when
//! it hands over), and its last will (`offline`) when it dies. From that, from the passing of
//! time and from `cmd/switchover`, this machine decides this gateway's role. It does no I/O
//! and reads no clock (every input carries its [`Now`]), so every story (a start, a death, a
//! return, a switchover, a healed split brain) is a table of steps in `tests.rs`; the daemon
//! feeds it and acts on each [`Change`] (publishing or going quiet, opening serial buses,
//! reconciling the alarm table).
//!
//! The rules, in the order they matter:
//! - a starting gateway is standby (it publishes nothing) and waits [`START_WAIT`] from its
//!   CONNACK for the peer's retained status: a peer that says it is active keeps it
//!   standby whatever the priorities, so a gateway coming back never snatches the role;
//! - a peer that is offline (last will, clean stop, fault) is replaced at once;
//! - an active peer that has been heard beating (`P/gateways/{gw}/alive`, every half
//!   `mqtt.keep_alive`) and then falls silent for 1.5 × `keep_alive` (the bound the broker's
//!   keep-alive would use) is replaced too, without waiting for the broker's last will: a
//!   broker may check keep-alives far less often (mosquitto 2.0: every 6 s). Silence counts
//!   only while this gateway's own broker link is up (a lost link is not the peer's
//!   silence), and only from this gateway's own latest role change; a peer heard again is
//!   online again, so a false takeover (a slow peer, not a dead one) ends by the next rule;
//! - a peer that hands over (`cmd/switchover`: its status says standby with `handover_to`
//!   naming us) is replaced at once;
//! - both active (a healed split brain, or two starts that missed each other): the one that
//!   loses by priority steps down, saying why; equal priorities fall to the lower id;
//! - both standby for [`GRACE`] (a hand-over nobody took, or two starts that each saw the
//!   other standby): the winner by priority takes over, and a gateway that handed over takes
//!   the role back after [`GRACE`] whatever its priority, so the room is never unwatched.

use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::clock::{rfc3339, Now};
use crate::config::Redundancy;

pub mod backlog;
pub mod service;
pub mod switchover;
#[cfg(test)]
mod tests;
mod view;

pub use view::Published;

/// From the CONNACK, how long a starting gateway waits for the peer's retained status before
/// deciding alone. Retained messages arrive right after the subscription, so this is generous.
pub const START_WAIT: Duration = Duration::from_millis(1500);

/// How long both may be standby before one takes over (see the module comment).
pub const GRACE: Duration = Duration::from_secs(3);

/// This gateway's role, as its status says (`"role"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Active,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

/// What the status says about the pair (the `role...` fields of `P/gateways/{gw}/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleStatus {
    pub role: Role,
    /// The other gateway of the pair; absent for a gateway alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// This gateway's `[redundancy] priority`, so the peer can judge a tie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// When the role last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_since: Option<String>,
    /// Why, in an operator's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_reason: Option<String>,
    /// Set by a gateway that stepped down for a switchover: the peer it hands over to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover_to: Option<String>,
}

impl RoleStatus {
    /// A gateway without `[redundancy]`: always active.
    pub fn alone() -> RoleStatus {
        RoleStatus {
            role: Role::Active,
            peer: None,
            priority: None,
            role_since: None,
            role_reason: None,
            handover_to: None,
        }
    }
}

/// The peer as its retained status last described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Nothing seen yet (no retained status, or not subscribed yet).
    Unknown,
    /// Its last will, a clean stop, or a fault status: `why` is in an operator's words.
    Gone { why: String },
    Online {
        role: Role,
        priority: Option<i64>,
        handover_to: Option<String>,
        reason: Option<String>,
        /// When this view of it began (monotonic): the grace of two standbys counts from here.
        since: Instant,
    },
}

/// The peer's status as it arrives: only the fields the decision needs, the rest ignored.
#[derive(Debug, Deserialize)]
struct PeerStatusBody {
    state: String,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    handover_to: Option<String>,
    #[serde(default)]
    role_reason: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// A change of this gateway's role, for the daemon to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub role: Role,
    pub reason: String,
}

/// Where this gateway is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the peer's status; `connected`: since when the broker link is up.
    Starting {
        connected: Option<Instant>,
    },
    Settled(Role),
}

/// The pair as this gateway sees it.
#[derive(Debug, Clone)]
pub struct Pair {
    me: String,
    peer_id: String,
    priority: i64,
    phase: Phase,
    /// When the current role began: wall for the status, monotonic for the grace.
    since_wall: SystemTime,
    since_mono: Instant,
    reason: String,
    handover_to: Option<String>,
    peer: Peer,
    /// A tie of priorities is warned about once.
    warned_tie: bool,
    /// How long an active peer may be silent before this standby takes over (1.5 ×
    /// `mqtt.keep_alive`).
    silence: Duration,
    /// When the peer was last heard live (a beat, or a status published while subscribed):
    /// `Some` only once it has been heard beating, so a peer that does not beat (an older
    /// version) is never timed out, only replaced on its last will.
    heard: Option<Instant>,
    /// Since when this gateway's broker link is up (`None` while down): silence is counted
    /// from here at the earliest.
    link_up: Option<Instant>,
    /// The peer fell silent (`why`): it counts as gone until it is heard again.
    silent: Option<String>,
}

impl Pair {
    /// `silence`: how long an active peer may be silent (1.5 × `mqtt.keep_alive`).
    pub fn new(me: &str, r: &Redundancy, silence: Duration, now: Now) -> Pair {
        Pair {
            me: me.to_string(),
            peer_id: r.peer.clone(),
            priority: r.priority,
            phase: Phase::Starting { connected: None },
            since_wall: now.wall,
            since_mono: now.mono,
            reason: format!("starting: waiting for peer {}'s status", r.peer),
            handover_to: None,
            peer: Peer::Unknown,
            warned_tie: false,
            silence,
            heard: None,
            link_up: None,
            silent: None,
        }
    }

    /// Active (publishes) or standby (also while starting).
    pub fn role(&self) -> Role {
        match self.phase {
            Phase::Settled(r) => r,
            Phase::Starting { .. } => Role::Standby,
        }
    }

    /// Past the start wait: the role is decided (standby now means standby, not undecided).
    pub fn settled(&self) -> bool {
        matches!(self.phase, Phase::Settled(_))
    }

    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The role fields of this gateway's status.
    pub fn status(&self) -> RoleStatus {
        RoleStatus {
            role: self.role(),
            peer: Some(self.peer_id.clone()),
            priority: Some(self.priority),
            role_since: Some(rfc3339(self.since_wall)),
            role_reason: Some(self.reason.clone()),
            handover_to: self.handover_to.clone(),
        }
    }

    /// The peer's retained status (`P/gateways/{peer}/status`) arrived. An empty payload (a
    /// cleared retained message) forgets it; one that cannot be read is ignored and logged.
    pub fn on_peer_status(&mut self, payload: &[u8], now: Now) -> Option<Change> {
        let peer = if payload.is_empty() {
            Peer::Unknown
        } else {
            match serde_json::from_slice::<PeerStatusBody>(payload) {
                Ok(b) => self.peer_from(b, now),
                Err(e) => {
                    tracing::warn!(peer = %self.peer_id, "pair: ignoring the peer's status, not readable: {e}");
                    return None;
                }
            }
        };
        if !matches!(peer, Peer::Online { .. }) {
            // Gone or forgotten: a peer that comes back proves it beats again.
            self.heard = None;
            self.silent = None;
        }
        self.peer = peer;
        self.decide(now)
    }

    /// The peer beat (`P/gateways/{peer}/alive`): it lives. A silent peer is online again:
    /// if both are active now, the both-active rule settles it.
    pub fn on_peer_beat(&mut self, now: Now) -> Option<Change> {
        self.heard = Some(now.mono);
        self.heard_again();
        self.decide(now)
    }

    /// The peer published a status while this gateway was subscribed (not a stored retained
    /// copy, which says nothing of whether the peer still lives): as good as a beat, for a
    /// peer already known to beat. Called before [`Pair::on_peer_status`] with it.
    pub fn note_live_status(&mut self, now: Now) {
        if self.heard.is_some() {
            self.heard = Some(now.mono);
            self.heard_again();
        }
    }

    fn heard_again(&mut self) {
        if let Some(why) = self.silent.take() {
            tracing::info!(peer = %self.peer_id, "pair: peer heard again after it was taken for dead ({why})");
        }
    }

    /// When this standby takes a silent active peer for dead, if it is counting: the peer
    /// is active, has been heard beating, is not already taken for dead, and the link is up.
    /// Counted from the latest of the last beat, the link coming up and this gateway's own
    /// latest role change (so a gateway that just stepped down does not at once time out
    /// the peer it stepped down for).
    fn silence_due(&self) -> Option<Instant> {
        if self.role() == Role::Active || self.silent.is_some() {
            return None;
        }
        let Peer::Online {
            role: Role::Active, ..
        } = self.peer
        else {
            return None;
        };
        let from = self.heard?.max(self.link_up?).max(self.since_mono);
        Some(from + self.silence)
    }

    fn peer_from(&mut self, b: PeerStatusBody, now: Now) -> Peer {
        let p = &self.peer_id;
        match b.state.as_str() {
            "online" => {
                let role = b.role.unwrap_or(Role::Active);
                // A new role (or a new hand-over) starts a new grace; a heartbeat does not.
                let since = match &self.peer {
                    Peer::Online {
                        role: r,
                        handover_to: h,
                        since,
                        ..
                    } if *r == role && *h == b.handover_to => *since,
                    _ => now.mono,
                };
                if b.priority == Some(self.priority) && !self.warned_tie {
                    self.warned_tie = true;
                    tracing::warn!(
                        "pair: this gateway and peer {p} both have priority {}; the lower \
                         gateway id ({}) wins when both are up. Give them different \
                         [redundancy] priority values",
                        self.priority,
                        self.me.as_str().min(p.as_str())
                    );
                }
                Peer::Online {
                    role,
                    priority: b.priority,
                    handover_to: b.handover_to,
                    reason: b.role_reason,
                    since,
                }
            }
            "fault" => Peer::Gone {
                why: format!(
                    "peer {p} stopped on a fault ({})",
                    b.reason.unwrap_or_default()
                ),
            },
            _ => Peer::Gone {
                why: format!("peer {p} offline (last will)"),
            },
        }
    }

    /// The broker link's state, when it changes and at each [`Pair::due`]: `connected`
    /// starts the start wait, and a deadline that has come is acted on.
    pub fn tick(&mut self, connected: bool, now: Now) -> Option<Change> {
        self.link_up = match (connected, self.link_up) {
            (false, _) => None,
            (true, None) => Some(now.mono),
            (true, up) => up,
        };
        if let Phase::Starting { connected: None } = self.phase {
            if connected {
                self.phase = Phase::Starting {
                    connected: Some(now.mono),
                };
            }
        }
        self.decide(now)
    }

    /// The next moment the passing of time alone changes the role, if one is pending: the
    /// end of the start wait, of [`GRACE`] with both standby when this gateway is the one
    /// that takes over then, or of an active peer's allowed silence. The daemon wakes exactly then ([`Pair::tick`]), so a room is
    /// not left unwatched until some later look at the clock. `None`: only an input (the
    /// peer's status, the link, a command) can change anything.
    pub fn due(&self) -> Option<Instant> {
        let timed = match (self.phase, &self.peer) {
            (Phase::Starting { connected }, _) => connected.map(|c| c + START_WAIT),
            (
                Phase::Settled(Role::Standby),
                Peer::Online {
                    role: Role::Standby,
                    handover_to,
                    priority,
                    since,
                    ..
                },
            ) if handover_to.as_deref() != Some(self.me.as_str())
                && (self.handover_to.is_some() || self.wins(*priority)) =>
            {
                Some((*since).max(self.since_mono) + GRACE)
            }
            _ => None,
        };
        timed.into_iter().chain(self.silence_due()).min()
    }

    /// `cmd/switchover`: an active gateway hands over to a standby peer, saying so in its
    /// status (`handover_to`) before the peer acts. Refused (with the reason) otherwise.
    pub fn switchover(&mut self, by: Option<&str>, now: Now) -> Result<Change, String> {
        let p = self.peer_id.clone();
        if self.role() != Role::Active {
            return Err(format!(
                "{} is standby; send the switchover to the active gateway {p}",
                self.me
            ));
        }
        match &self.peer {
            Peer::Online {
                role: Role::Standby,
                ..
            } => {
                let reason = match by {
                    Some(by) => format!("switchover requested by {by}"),
                    None => "switchover requested".to_string(),
                };
                self.handover_to = Some(p);
                Ok(self.set(Role::Standby, reason, now))
            }
            Peer::Online {
                role: Role::Active, ..
            } => Err(format!(
                "peer {p} is active too; the pair is settling who steps down"
            )),
            Peer::Gone { why } => Err(format!(
                "{why}: nobody to hand over to, {} stays active",
                self.me
            )),
            Peer::Unknown => Err(format!(
                "peer {p} has not been seen: nobody to hand over to, {} stays active",
                self.me
            )),
        }
    }

    /// Whether this gateway wins a tie of roles: the lower priority, then the lower id. A
    /// peer whose status gives no priority is judged by id alone.
    fn wins(&self, peer_priority: Option<i64>) -> bool {
        let theirs = peer_priority.unwrap_or(self.priority);
        (self.priority, self.me.as_str()) < (theirs, self.peer_id.as_str())
    }

    fn set(&mut self, role: Role, reason: String, now: Now) -> Change {
        if role == Role::Active {
            self.handover_to = None;
        }
        self.phase = Phase::Settled(role);
        self.since_wall = now.wall;
        self.since_mono = now.mono;
        self.reason = reason.clone();
        Change { role, reason }
    }

    /// The rules of the module comment, applied to what is known now.
    fn decide(&mut self, now: Now) -> Option<Change> {
        let p = self.peer_id.clone();
        if let Some(due) = self.silence_due().filter(|&d| now.mono >= d) {
            let from = due - self.silence;
            let secs = now.mono.saturating_duration_since(from).as_secs_f64();
            self.silent = Some(format!("peer {p} silent for {secs:.1} s"));
        }
        // A silent peer counts as gone, whatever its retained status still says.
        let peer = match &self.silent {
            Some(why) => Peer::Gone { why: why.clone() },
            None => self.peer.clone(),
        };
        match (self.phase, peer) {
            (
                Phase::Settled(Role::Active),
                Peer::Online {
                    role: Role::Active,
                    priority,
                    ..
                },
            ) => {
                if self.wins(priority) {
                    return None;
                }
                let winner = priority.unwrap_or(self.priority);
                Some(self.set(
                    Role::Standby,
                    format!("both active: {p} wins by priority {winner}"),
                    now,
                ))
            }
            (Phase::Settled(Role::Active), _) => None,
            (_, Peer::Gone { why }) => Some(self.set(Role::Active, why, now)),
            (
                phase,
                Peer::Online {
                    role: Role::Active, ..
                },
            ) => match phase {
                Phase::Settled(Role::Standby) => {
                    // The peer took over what we handed it: the hand-over is done.
                    self.handover_to = None;
                    None
                }
                _ => Some(self.set(Role::Standby, format!("peer {p} is active"), now)),
            },
            (
                phase,
                Peer::Online {
                    role: Role::Standby,
                    handover_to: Some(to),
                    reason,
                    ..
                },
            ) if to == self.me => {
                let _ = phase;
                let why = reason.unwrap_or_else(|| "switchover".into());
                Some(self.set(Role::Active, format!("peer {p} handed over ({why})"), now))
            }
            (Phase::Starting { connected }, peer) => {
                let waited = connected.is_some_and(|c| now.mono.duration_since(c) >= START_WAIT);
                if !waited {
                    return None;
                }
                match peer {
                    Peer::Online { priority, .. } => {
                        if self.wins(priority) {
                            let mine = self.priority;
                            Some(self.set(
                                Role::Active,
                                format!("peer {p} is standby: priority {mine} wins"),
                                now,
                            ))
                        } else {
                            let theirs = priority.unwrap_or(self.priority);
                            Some(self.set(
                                Role::Standby,
                                format!("peer {p} is standby and wins by priority {theirs}"),
                                now,
                            ))
                        }
                    }
                    _ => Some(self.set(
                        Role::Active,
                        format!("peer {p} not seen within {START_WAIT:?} of connecting"),
                        now,
                    )),
                }
            }
            (
                Phase::Settled(Role::Standby),
                Peer::Online {
                    role: Role::Standby,
                    priority,
                    since,
                    ..
                },
            ) => {
                let both_for = now
                    .mono
                    .saturating_duration_since(since.max(self.since_mono));
                if both_for < GRACE {
                    return None;
                }
                if self.handover_to.is_some() {
                    return Some(self.set(
                        Role::Active,
                        format!("peer {p} did not take over within {GRACE:?}"),
                        now,
                    ));
                }
                if self.wins(priority) {
                    let mine = self.priority;
                    return Some(self.set(
                        Role::Active,
                        format!("both standby: priority {mine} wins"),
                        now,
                    ));
                }
                None
            }
            (Phase::Settled(Role::Standby), Peer::Unknown) => None,
        }
    }
}
