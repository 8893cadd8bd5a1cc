//! Where a publish a broker loop receives goes: a command to [`Link::commands`], a message on
//! the caller's extra filters to [`Link::incoming`], `cmd/replay` back to the loop (it answers
//! from the outbox's journal, on the broker that asked), a command the daemon has no room for
//! back to the loop as a busy refusal (`busy.rs`), anything else nowhere.
//!
//! Apart from the loop because none of it touches the send window or the stop protocol, and
//! because which topic goes where is a contract (SPEC "MQTT") worth a table of its own below.
//!
//! [`Link::commands`]: super::Link::commands
//! [`Link::incoming`]: super::Link::incoming

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use crate::command::{Command, Refused, Replay};
use crate::config::BrokerUrl;
use crate::mqtt::echo::Echoes;
use crate::mqtt::payload::{Class, Publication};
use crate::mqtt::topics::{self, Topics};

/// A publish received on one of [`LinkOptions::subscriptions`](super::LinkOptions::subscriptions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The broker delivered a stored retained message (a new subscription's first look).
    pub retain: bool,
}

/// What a received publish asks of the broker loop itself.
#[derive(Debug, PartialEq)]
pub(super) enum Answer {
    /// A `cmd/replay` to answer from the journal, or its refusal.
    Replay(Result<Replay, Refused>),
    /// A command refused because the daemon's queue was full: `cmd/result` at QoS 0.
    Busy(Publication),
}

/// One broker loop's routing of received publishes (every broker's loop feeds the same two
/// channels).
pub(super) struct Router {
    /// The broker, for log lines.
    pub url: BrokerUrl,
    pub topics: Arc<Topics>,
    /// Subscribe to `cmd/+` and deliver what arrives there as commands.
    pub wants_commands: bool,
    /// The caller's extra filters ([`LinkOptions::subscriptions`](super::LinkOptions)).
    pub subscriptions: Vec<String>,
    /// `cmd/replay` is answered by the loop (it has an outbox); otherwise it is a command
    /// like the others.
    pub answers_replay: bool,
    /// This broker's place in the link (0: `mqtt.url`, then `mqtt.also`), for [`Echoes`].
    pub index: usize,
    /// Commands lately heard through any of the link's brokers (several brokers only).
    pub echoes: Option<Arc<Mutex<Echoes>>>,
    pub commands: mpsc::Sender<Result<Command, Refused>>,
    pub incoming: mpsc::Sender<Inbound>,
}

/// Where a received publish belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination<'t> {
    /// A command, named by its last topic segment.
    Command(&'t str),
    /// `cmd/replay` on a link with an outbox.
    Replay,
    /// A retained command: it would be replayed at every reconnect, so it is ignored.
    RetainedCommand,
    /// On one of the extra filters.
    Subscribed,
    /// Nothing of ours. `quiet`: our own `cmd/result` coming back, not worth a debug line.
    Unwanted { quiet: bool },
}

impl Router {
    /// Every filter subscribed on connect: commands (if wanted), then the extras.
    pub fn filters(&self) -> Vec<String> {
        let mut f = Vec::with_capacity(self.subscriptions.len() + 1);
        if self.wants_commands {
            f.push(self.topics.cmd_filter());
        }
        f.extend(self.subscriptions.iter().cloned());
        f
    }

    fn destination<'t>(&self, topic: &'t str, retain: bool) -> Destination<'t> {
        if let Some(name) = self
            .wants_commands
            .then(|| self.topics.command_name(topic))
            .flatten()
        {
            return if retain {
                Destination::RetainedCommand
            } else if self.answers_replay && name == "replay" {
                Destination::Replay
            } else {
                Destination::Command(name)
            };
        }
        if self.subscriptions.iter().any(|f| topics::matches(topic, f)) {
            Destination::Subscribed
        } else {
            Destination::Unwanted {
                quiet: topic == self.topics.cmd_result(),
            }
        }
    }

    /// Routes a received publish: commands to [`Link::commands`](super::Link::commands),
    /// anything on the extra filters to [`Link::incoming`](super::Link::incoming). Returns
    /// what the loop is to answer itself: a `cmd/replay`, or a command refused as busy.
    pub fn route(&self, p: rumqttc::Publish) -> Option<Answer> {
        match self.destination(&p.topic, p.retain) {
            Destination::RetainedCommand => tracing::warn!(
                "mqtt: ignoring retained command on {}; commands must not be retained",
                p.topic
            ),
            Destination::Replay => return Some(Answer::Replay(self.replay_request(&p.payload))),
            Destination::Command(name) => return self.command(name, &p).map(Answer::Busy),
            Destination::Subscribed => self.deliver(p),
            Destination::Unwanted { quiet: false } => {
                tracing::debug!("mqtt: ignoring publish on {}", p.topic)
            }
            Destination::Unwanted { quiet: true } => {}
        }
        None
    }

    /// A `cmd/replay` body, parsed, with its `reply_to` checked against this gateway's own
    /// command topics: events replayed there would come back as commands (an alarm event on
    /// `cmd/drill` names a zone), so a replay could start drills or ack alarms.
    fn replay_request(&self, payload: &[u8]) -> Result<Replay, Refused> {
        let r = Replay::parse(payload)?;
        let own = self.topics.cmd("#");
        if topics::matches(&r.reply_to, &own) {
            return Err(Refused::new(
                "replay",
                format!(
                    "reply_to {:?} is under this gateway's own command topics ({own}); \
                     replayed events would be taken as commands",
                    r.reply_to
                ),
            ));
        }
        Ok(r)
    }

    /// Hands a command to the daemon; without room, returns its busy refusal instead (waiting
    /// would stall this loop, dropping it would leave the sender without an answer).
    fn command(&self, name: &str, p: &rumqttc::Publish) -> Option<Publication> {
        if let Some(echoes) = &self.echoes {
            let echo = echoes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_echo(self.index, name, &p.payload, std::time::Instant::now());
            if echo {
                tracing::info!(
                    "mqtt broker {}: command {name:?} already received through another broker (a bridge's copy); not applied twice",
                    self.url
                );
                return None;
            }
        }
        match self.commands.try_send(Command::parse(name, &p.payload)) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(_)) => Some(self.busy(name)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("mqtt: nobody takes commands; dropped {name:?}");
                None
            }
        }
    }

    /// The busy refusal of command `name`, as a QoS 0 `cmd/result` (see `busy.rs` for why).
    /// Named as it arrived: the answer must not depend on parsing what was not taken.
    fn busy(&self, name: &str) -> Publication {
        let refused = Refused::new(
            name,
            format!(
                "busy: {} earlier commands are waiting; nothing was changed, send it again",
                self.commands.max_capacity()
            ),
        );
        Publication {
            topic: self.topics.cmd_result(),
            // A struct of strings always serialises; the fallback only keeps this panic-free.
            payload: serde_json::to_vec(&refused.result()).unwrap_or_default(),
            qos: rumqttc::QoS::AtMostOnce,
            retain: false,
            class: Class::Telemetry,
        }
    }

    fn deliver(&self, p: rumqttc::Publish) {
        let msg = Inbound {
            topic: p.topic,
            payload: p.payload.to_vec(),
            retain: p.retain,
        };
        match self.incoming.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(m)) => {
                tracing::warn!("mqtt: inbound queue full; dropped a message on {}", m.topic)
            }
            Err(mpsc::error::TrySendError::Closed(m)) => {
                tracing::debug!("mqtt: nobody takes inbound messages; dropped {}", m.topic)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::harness;

    fn router(wants_commands: bool, answers_replay: bool) -> Router {
        let cfg = harness::config("mqtt://127.0.0.1:1883");
        Router {
            url: cfg.mqtt.url.clone(),
            topics: Arc::new(Topics::new(&cfg)),
            wants_commands,
            subscriptions: vec!["emberwatch/pangyo-a/drain/+/ack".into()],
            answers_replay,
            index: 0,
            echoes: None,
            commands: mpsc::channel(1).0,
            incoming: mpsc::channel(1).0,
        }
    }

    #[test]
    fn each_topic_goes_where_the_contract_says() {
        use Destination::*;
        let cmd = |name: &str| format!("emberwatch/pangyo-a/gateways/gw-b1/cmd/{name}");
        let ack = "emberwatch/pangyo-a/drain/pump-1/ack".to_string();
        // (wants commands, answers replay (has an outbox), topic, retained, destination)
        let table = [
            (true, false, cmd("ack"), false, Command("ack")),
            (true, false, cmd("ack"), true, RetainedCommand),
            // Without an outbox, replay is a command like the others (refused downstream).
            (true, false, cmd("replay"), false, Command("replay")),
            (true, true, cmd("replay"), false, Replay),
            (true, true, cmd("replay"), true, RetainedCommand),
            (true, true, cmd("shelve"), false, Command("shelve")),
            // Our own answers come back on cmd/+; quietly nobody's.
            (true, true, cmd("result"), false, Unwanted { quiet: true }),
            (true, false, cmd("a/b"), false, Unwanted { quiet: false }),
            // A drain agent does not take commands.
            (false, false, cmd("ack"), false, Unwanted { quiet: false }),
            (false, false, ack.clone(), false, Subscribed),
            (false, false, ack.clone(), true, Subscribed),
            (true, true, ack, false, Subscribed),
            (
                true,
                true,
                "emberwatch/other".into(),
                false,
                Unwanted { quiet: false },
            ),
        ];
        for (wants, replay, topic, retain, want) in table {
            let r = router(wants, replay);
            assert_eq!(
                r.destination(&topic, retain),
                want,
                "{topic} retain={retain} commands={wants} replay={replay}"
            );
        }
    }

    fn publish(topic: &str, payload: &[u8]) -> rumqttc::Publish {
        rumqttc::Publish::new(topic, rumqttc::QoS::AtLeastOnce, payload.to_vec())
    }

    /// A full command queue answers the command (busy, at QoS 0) instead of dropping it; a
    /// queue with room takes it and asks nothing of the loop.
    #[test]
    fn a_command_without_room_is_answered_busy() {
        let (tx, mut rx) = mpsc::channel(1);
        let r = Router {
            commands: tx,
            ..router(true, true)
        };
        let ack = "emberwatch/pangyo-a/gateways/gw-b1/cmd/ack";
        assert_eq!(r.route(publish(ack, br#"{"alarm":"*"}"#)), None);
        let Some(Answer::Busy(answer)) = r.route(publish(ack, br#"{"alarm":"x"}"#)) else {
            panic!("no busy answer");
        };
        assert_eq!(
            answer.topic,
            "emberwatch/pangyo-a/gateways/gw-b1/cmd/result"
        );
        assert_eq!(answer.qos, rumqttc::QoS::AtMostOnce);
        assert!(!answer.retain);
        let body: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
        assert_eq!(body["command"], "ack");
        assert_eq!(body["ok"], false);
        assert_eq!(
            body["reason"],
            "busy: 1 earlier commands are waiting; nothing was changed, send it again"
        );
        assert!(rx.try_recv().is_ok());
        assert_eq!(r.route(publish(ack, br#"{"alarm":"x"}"#)), None);
    }

    #[test]
    fn a_replay_onto_our_own_command_topics_is_refused() {
        let r = router(true, true);
        let body = |to: &str| format!(r#"{{"from_seq":1,"reply_to":"{to}"}}"#);
        for to in [
            "emberwatch/pangyo-a/gateways/gw-b1/cmd/drill",
            "emberwatch/pangyo-a/gateways/gw-b1/cmd/ack",
            "emberwatch/pangyo-a/gateways/gw-b1/cmd/result",
            "emberwatch/pangyo-a/gateways/gw-b1/cmd",
            "emberwatch/pangyo-a/gateways/gw-b1/cmd/a/b",
        ] {
            let refused = r.replay_request(body(to).as_bytes()).unwrap_err();
            assert_eq!(refused.command, "replay");
            assert!(
                refused
                    .reason
                    .contains("under this gateway's own command topics")
                    && refused.reason.contains("gw-b1/cmd/#"),
                "{to}: {}",
                refused.reason
            );
        }
        for to in [
            "ops/replay",
            "emberwatch/pangyo-a/gateways/gw-b1/replies",
            "emberwatch/pangyo-a/gateways/gw-b2/cmd-log",
        ] {
            assert_eq!(
                r.replay_request(body(to).as_bytes()).map(|q| q.reply_to),
                Ok(to.to_string())
            );
        }
        // What Command::parse refuses stays refused, with its own reason.
        let bad = r.replay_request(br#"{"from_seq":1,"reply_to":"a/#"}"#);
        assert!(bad
            .unwrap_err()
            .reason
            .contains("not a topic one can publish to"));
    }

    #[test]
    fn filters_are_commands_then_the_extras() {
        let r = router(true, true);
        assert_eq!(
            r.filters(),
            [
                "emberwatch/pangyo-a/gateways/gw-b1/cmd/+".to_string(),
                "emberwatch/pangyo-a/drain/+/ack".to_string()
            ]
        );
        assert_eq!(
            router(false, false).filters(),
            ["emberwatch/pangyo-a/drain/+/ack"]
        );
    }
}
