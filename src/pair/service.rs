//! The pair in the running daemon: feeds [`Pair`] what arrives from the broker, follows what
//! the pair has published while standby, and tells the daemon when the role changes.
//!
//! The daemon owns one [`Roles`] beside its engine (a gateway alone has one too: always
//! active, so the daemon has a single path). Apart from the pure machine because this part
//! reads broker messages and touches the engine; apart from `daemon.rs` to keep the loop
//! readable. The broker's messages for the pair come on their own channel ([`split`]), so the
//! drain task's inbound queue is not shared with them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::backlog::{judge, Verdict};
use super::{Change, Pair, Peer, Published, Role, RoleStatus};
use crate::alarms::{AlarmEvent, SharedAlarm};
use crate::clock::{rfc3339, Now};
use crate::config::Config;
use crate::engine::Engine;
use crate::message::Outgoing;
use crate::mqtt::{topics, Inbound, LinkOptions, Topics};
use crate::outbox::Record;

/// Room for the pair's inbound messages (peer status, pictures, the peer's events).
const QUEUE: usize = 1024;

/// The longest a takeover waits for a fresh reading of every device (see [`Roles::became`]).
const SETTLE_MAX: Duration = Duration::from_secs(2);

/// The longest a gateway that comes back standby holds its backlog from before the restart
/// while it waits for its active peer's picture to be as new as the backlog (see
/// [`Roles::backlog_due`]): the retained picture comes right after subscribing, or, from a
/// peer still taking over, within its [`SETTLE_MAX`].
const BACKLOG_WAIT: Duration = Duration::from_secs(3);

/// What to do with the outbox's backlog from before this start ([`Roles::backlog_due`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resend {
    /// Send it all, as any backlog (why, for the log).
    All(String),
    /// Judge each record against what the active peer has published ([`Roles::judge_backlog`]).
    Judge,
}

/// The subscriptions a gateway of a pair adds to its link: the peer's status and beat
/// (`alive`), both gateways' retained `pair` pictures, every alarm event (the peer's are
/// followed) and the retained drain messages. In this order, because a broker sends each
/// subscription's retained messages in turn: the peer's status settles the role, and this
/// gateway's own picture is known before the peer's, which lets a held backlog be judged
/// ([`Roles::backlog_due`]).
pub fn subscribe(cfg: &Config, opts: &mut LinkOptions) {
    let Some(r) = &cfg.redundancy else {
        return;
    };
    let t = Topics::new(cfg);
    opts.subscriptions.extend([
        t.status_of(&r.peer),
        t.alive_of(&r.peer),
        t.pair_of(&cfg.site.gateway),
        t.pair_of(&r.peer),
        t.alarms_filter(),
    ]);
}

/// Splits the link's inbound messages: the pair's to the daemon (second), the rest (drain
/// acks and presence) to the drain task (first). Without `[redundancy]` nothing is split.
pub fn split(
    cfg: &Config,
    mut incoming: mpsc::Receiver<Inbound>,
) -> (mpsc::Receiver<Inbound>, mpsc::Receiver<Inbound>) {
    let (pair_tx, pair_rx) = mpsc::channel(QUEUE);
    let Some(r) = &cfg.redundancy else {
        return (incoming, pair_rx);
    };
    let t = Topics::new(cfg);
    let mine = [
        t.status_of(&r.peer),
        t.alive_of(&r.peer),
        t.pair_of(&r.peer),
        t.pair_of(&cfg.site.gateway),
    ];
    let alarms = t.alarms_filter();
    let (drain_tx, drain_rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        while let Some(m) = incoming.recv().await {
            let to_pair = mine.contains(&m.topic) || topics::matches(&m.topic, &alarms);
            let sent = if to_pair {
                pair_tx.send(m).await.is_ok()
            } else {
                // No drain task (no `[drain]`): its messages have nowhere to go.
                let _ = drain_tx.send(m).await;
                true
            };
            if !sent {
                break;
            }
        }
    });
    (drain_rx, pair_rx)
}

/// How long an active peer may be silent before the standby takes over: 1.5 ×
/// `mqtt.keep_alive`, the bound the broker's keep-alive check uses (both gateways of a pair
/// have the same `keep_alive`, so each beats often enough for the other's count).
pub fn silence(cfg: &Config) -> Duration {
    cfg.mqtt.keep_alive * 3 / 2
}

/// How often the active gateway of a pair beats on `P/gateways/{gw}/alive`: half
/// `mqtt.keep_alive`, so a peer's [`silence`] spans three beats and one lost beat (QoS 0)
/// or a slow turn is not taken for a death.
pub fn beat(cfg: &Config) -> Duration {
    cfg.mqtt.keep_alive / 2
}

/// This gateway's role and what it knows of the pair.
pub struct Roles {
    pair: Option<Pair>,
    /// What the pair has published (standby): the baseline of a takeover.
    published: Published,
    topics: Topics,
    me: String,
    /// The last `seq` this gateway published, while it is standby (or still settling into
    /// a takeover): the warm table's events are not published, so their numbers are given
    /// back.
    standby_seq: Option<u64>,
    /// Active, but not publishing alarms yet until then (see [`Roles::became`]).
    settling: Option<Instant>,
    /// One poll of every device: how long a takeover waits for fresh readings.
    settle: Duration,
    /// When this gateway last began publishing every change (a takeover's end): said in its
    /// picture (`publishing_since`).
    publishing_since: Option<SystemTime>,
    /// The outbox's backlog from before this start, held until the pair is known: the newest
    /// alarm event's or zone status's append time, and the latest moment to decide.
    backlog: Option<(SystemTime, Option<Instant>)>,
    /// The `last_seq` of this gateway's own retained picture as the broker holds it (read at
    /// start): its events up to there reached the broker.
    delivered: Option<u64>,
}

impl Roles {
    /// `engine` has just been restored from `state.json`: what this gateway published last.
    pub fn new(cfg: &Config, engine: &Engine, now: Now) -> Roles {
        let pair = cfg
            .redundancy
            .as_ref()
            .map(|r| Pair::new(&cfg.site.gateway, r, silence(cfg), now));
        Roles {
            standby_seq: pair.as_ref().map(|_| engine.alarms().last_seq()),
            pair,
            published: Published::own(engine.alarms().shared(now), false),
            topics: Topics::new(cfg),
            me: cfg.site.gateway.clone(),
            settling: None,
            settle: cfg
                .devices
                .iter()
                .map(|d| d.poll_interval + d.timeout)
                .max()
                .unwrap_or_default()
                .min(SETTLE_MAX),
            publishing_since: None,
            backlog: None,
            delivered: None,
        }
    }

    pub fn role(&self) -> Role {
        self.pair.as_ref().map_or(Role::Active, Pair::role)
    }

    /// The role fields of the status.
    pub fn status(&self) -> RoleStatus {
        self.pair
            .as_ref()
            .map_or_else(RoleStatus::alone, Pair::status)
    }

    /// While standby: the `seq` to rewind the engine to after each input.
    pub fn standby_seq(&self) -> Option<u64> {
        self.standby_seq
    }

    /// What the pair has published, for the takeover's reconciliation.
    pub fn published(&self) -> Vec<SharedAlarm> {
        self.published.alarms()
    }

    /// A message on the pair's subscriptions. The peer's status may change the role; while
    /// standby, the pair's pictures and the peer's events update what the pair has published,
    /// and their acks, shelves and out-of-service settings go into `engine` silently.
    pub fn on_inbound(&mut self, m: &Inbound, engine: &mut Engine, now: Now) -> Option<Change> {
        let pair = self.pair.as_mut()?;
        let peer = pair.peer_id().to_string();
        if m.topic == self.topics.alive_of(&peer) {
            return pair.on_peer_beat(now);
        }
        if m.topic == self.topics.status_of(&peer) {
            if !m.retain {
                pair.note_live_status(now);
            }
            return pair.on_peer_status(&m.payload, now);
        }
        if pair.role() == Role::Active {
            // Active, this gateway's own table is what the pair publishes.
            return None;
        }
        if m.topic == self.topics.pair_of(&self.me) {
            let own = serde_json::from_slice::<crate::alarms::Shared>(&m.payload).ok();
            if let Some(seq) = own
                .filter(|s| s.gateway == self.me)
                .and_then(|s| s.last_seq)
            {
                self.delivered = self.delivered.max(Some(seq));
            }
        }
        if m.topic == self.topics.pair_of(&peer) || m.topic == self.topics.pair_of(&self.me) {
            match self.published.on_shared(&m.payload) {
                Ok(true) => engine.adopt(&self.published.alarms()),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(topic = %m.topic, "pair: ignoring an unreadable picture: {e}")
                }
            }
        } else if let Ok(ev) = serde_json::from_slice::<AlarmEvent>(&m.payload) {
            if ev.gateway == peer {
                self.published.on_event(&ev);
                engine.adopt(&self.published.alarms());
            }
        }
        None
    }

    /// When the broker link comes up or goes down, and at each [`Roles::due`], with whether
    /// the link is up.
    pub fn tick(&mut self, connected: bool, now: Now) -> Option<Change> {
        self.pair.as_mut()?.tick(connected, now)
    }

    /// The next moment time alone changes something: a role ([`Pair::due`]) or the end of a
    /// takeover's settling ([`Roles::takeover_due`]). The daemon's loop sleeps until it, so
    /// neither waits for the loop's next input or its once-a-second tick.
    pub fn due(&self) -> Option<Instant> {
        let role = self.pair.as_ref().and_then(Pair::due);
        let settled = self.settling.filter(|_| self.role() == Role::Active);
        let backlog = self.backlog.and_then(|(_, until)| until);
        role.into_iter().chain(settled).chain(backlog).min()
    }

    /// `cmd/switchover`.
    pub fn switchover(&mut self, by: Option<&str>, now: Now) -> Result<Change, String> {
        match self.pair.as_mut() {
            Some(p) => p.switchover(by, now),
            None => Err(format!(
                "{} has no [redundancy] peer: there is nobody to switch over to",
                self.me
            )),
        }
    }

    /// The refusal of an alarm-table or drill command while standby.
    pub fn refusal(&self) -> Option<String> {
        let pair = self.pair.as_ref()?;
        if self.settling.is_some() {
            return Some(format!(
                "{} is taking over from {} (fresh readings first); send it again in a moment",
                self.me,
                pair.peer_id()
            ));
        }
        (pair.role() == Role::Standby).then(|| {
            format!(
                "{} is standby; send commands to the active gateway {}",
                self.me,
                pair.peer_id()
            )
        })
    }

    /// The daemon acted on `change`: note what the role means for following the pair.
    ///
    /// Becoming active, the gateway says so at once but publishes alarms only after one more
    /// poll of every device ([`Roles::takeover_due`]): the two gateways poll at different
    /// moments, so the standby's table may be a poll behind what the pair published, and
    /// comparing them at once would publish a state the device has already left.
    pub fn became(&mut self, change: &Change, engine: &Engine, now: Now) {
        match change.role {
            Role::Active => self.settling = Some(now.mono + self.settle),
            // Stepping down: what this gateway published up to now is the pair's latest
            // picture, until the peer publishes a newer one. (From the start, standby keeps
            // what it has followed since connecting.)
            Role::Standby if self.settling.take().is_some() => {}
            Role::Standby if self.standby_seq.is_none() => {
                self.published = Published::own(engine.alarms().shared(now), true);
                self.standby_seq = Some(engine.alarms().last_seq());
            }
            Role::Standby => {}
        }
    }

    /// True once, when a takeover has waited its fresh readings: the alarm table is then
    /// reconciled with what the pair published, and this gateway publishes from then on.
    pub fn takeover_due(&mut self, now: Now) -> bool {
        match self.settling {
            Some(t) if now.mono >= t && self.role() == Role::Active => {
                self.settling = None;
                self.standby_seq = None;
                self.publishing_since = Some(now.wall);
                true
            }
            _ => false,
        }
    }

    /// The retained `P/gateways/{gw}/pair` picture, for an active gateway of a pair.
    pub fn picture(&self, engine: &Engine, now: Now) -> Option<Outgoing> {
        if self.pair.is_none() || self.role() != Role::Active || self.standby_seq.is_some() {
            return None;
        }
        let mut shared = engine.alarms().shared(now);
        shared.publishing_since = self.publishing_since.map(rfc3339);
        let payload = serde_json::to_vec(&shared).ok()?;
        Some(Outgoing::Message {
            topic: self.topics.pair_of(&self.me),
            payload,
            retain: true,
        })
    }

    /// The outbox holds messages from before this start not yet confirmed, the newest alarm
    /// event or zone status among them appended at `newest`: they wait for
    /// [`Roles::backlog_due`].
    pub fn hold_backlog(&mut self, newest: SystemTime) {
        self.backlog = Some((newest, None));
    }

    /// Once, when the backlog held from before this start may go, and how: all of it once
    /// this gateway is active, or its peer is not (nobody else has published since; the
    /// peer, standby, follows what it sends); judged record by record when this gateway is
    /// standby and its peer active ([`super::backlog`]), as soon as the peer's picture is at
    /// least as new as the backlog, or at the latest [`BACKLOG_WAIT`] after the role was
    /// settled (then what the picture cannot vouch for is published). Nothing live waits
    /// meanwhile: until the role is settled, and while standby, this gateway raises nothing.
    pub fn backlog_due(&mut self, now: Now) -> Option<Resend> {
        let (newest, until) = self.backlog.as_mut()?;
        let Some(pair) = self.pair.as_ref() else {
            self.backlog = None;
            return Some(Resend::All("no redundant peer".into()));
        };
        if !pair.settled() {
            return None;
        }
        let peer = pair.peer_id();
        let resend = match (pair.role(), pair.peer()) {
            (Role::Active, _) => Resend::All("this gateway is active".into()),
            (
                Role::Standby,
                Peer::Online {
                    role: Role::Active, ..
                },
            ) => {
                let fresh = self
                    .published
                    .picture()
                    .is_some_and(|(from, time, _)| from == peer && time >= *newest);
                let until = *until.get_or_insert(now.mono + BACKLOG_WAIT);
                if !fresh && now.mono < until {
                    return None;
                }
                if !fresh {
                    tracing::warn!(
                        "pair: no picture from {peer} as new as this gateway's backlog within \
                         {BACKLOG_WAIT:?}; judging the backlog against what is known, in doubt \
                         publishing"
                    );
                }
                Resend::Judge
            }
            (Role::Standby, _) => Resend::All(format!("peer {peer} is not active")),
        };
        self.backlog = None;
        Some(resend)
    }

    /// The positions of the backlog's `records` not to resend: what the active peer has
    /// already published ([`super::backlog::judge`]), each logged with the reason.
    pub fn judge_backlog(&self, records: &[Arc<Record>]) -> BTreeSet<u64> {
        let peer = self.pair.as_ref().map_or("", Pair::peer_id);
        let mut skip = BTreeSet::new();
        for r in records {
            let appended = SystemTime::UNIX_EPOCH + Duration::from_millis(r.time_ms);
            let verdict = judge(
                r.kind,
                &r.payload,
                appended,
                &self.published,
                peer,
                self.delivered,
            );
            if let Verdict::Drop(why) = verdict {
                tracing::info!(topic = %r.topic, "pair: not resending {why}");
                skip.insert(r.pos);
            }
        }
        tracing::info!(
            "pair: of {} message(s) from before the restart not confirmed by the broker, {} \
             not resent (already delivered, or published by the active peer {peer}), the rest \
             resent",
            records.len(),
            skip.len()
        );
        skip
    }
}
