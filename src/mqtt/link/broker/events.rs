//! What the broker loop does with each event rumqttc reports: a CONNACK (announce, subscribe,
//! resend), a publish received (commands, replays, busy refusals), a PUBACK or a write (the
//! ledger's books). Split from `broker.rs`, which owns the loop's turns, reconnects and stop.

use rumqttc::{Event, Incoming, Outgoing as Wire, QoS, SubscribeReasonCode};
use tokio::time::Instant;

use super::BrokerLoop;
use crate::command::Refused;
use crate::mqtt::link::inbound::Answer;
use crate::mqtt::payload::Publication;

impl BrokerLoop {
    /// Handles one event from rumqttc. Returns true when the link is done (DISCONNECT sent).
    pub(super) fn on_event(&mut self, event: Event) -> bool {
        match event {
            Event::Incoming(Incoming::ConnAck(_)) => self.on_connack(),
            Event::Incoming(Incoming::Publish(p)) => self.on_publish(p),
            Event::Incoming(Incoming::PubAck(ack)) => self.on_puback(ack.pkid),
            Event::Incoming(Incoming::SubAck(ack)) => self.on_suback(&ack),
            Event::Outgoing(Wire::Publish(0)) => {
                self.qos0_in_channel = self.qos0_in_channel.saturating_sub(1);
            }
            Event::Outgoing(Wire::Publish(pkid)) => self.on_written(pkid),
            Event::Outgoing(Wire::AwaitAck(pkid)) => self.ledger.parked(pkid),
            Event::Outgoing(Wire::Disconnect) => return self.stop.is_stopping(),
            _ => {}
        }
        false
    }

    fn on_puback(&mut self, pkid: u16) {
        match self.ledger.acked(pkid) {
            Some(entry) => {
                self.replays.acked(entry.seq);
                if let Some(feed) = self.feed.as_mut() {
                    feed.acked(entry.seq);
                }
            }
            None => tracing::debug!("mqtt: PUBACK {pkid} for nothing outstanding"),
        }
    }

    fn on_written(&mut self, pkid: u16) {
        if !self.ledger.written(pkid) {
            tracing::warn!("mqtt: publish {pkid} written but not tracked; ledger out of step");
        }
    }

    fn on_suback(&self, ack: &rumqttc::SubAck) {
        let refused = ack
            .return_codes
            .iter()
            .any(|c| matches!(c, SubscribeReasonCode::Failure));
        if refused {
            tracing::warn!(
                "mqtt broker {}: subscription to {} refused; those messages will not arrive",
                self.url,
                self.router.filters().join(", ")
            );
        }
    }

    fn on_connack(&mut self) {
        let failures = self.backoff.connected(Instant::now());
        if failures > 0 {
            tracing::info!(
                "mqtt broker {}: connected as {} after {} failed attempt{}",
                self.url,
                self.client_id,
                failures,
                if failures == 1 { "" } else { "s" }
            );
        } else {
            tracing::info!("mqtt broker {}: connected as {}", self.url, self.client_id);
        }
        self.health.set_connected(true);
        self.stop.reconnected();
        if self.stop.is_stopping() {
            // Reconnected during the stop grace: only flush what is queued and say offline;
            // announcing "online" now would be a lie.
            return;
        }
        let online = self.online_presence();
        let entry = self.ledger.stamp(online);
        self.hand(entry);
        for filter in self.router.filters() {
            self.out.subscribe(&filter, QoS::AtLeastOnce);
        }
        if !self.ledger.backlog_is_empty() {
            tracing::info!(
                "mqtt broker {}: resending {} unconfirmed message(s)",
                self.url,
                self.ledger.backlog_len()
            );
        }
    }

    /// Routes a received publish; a `cmd/replay` comes back to be answered here, on the broker
    /// that asked, from the outbox's journal (the router says so only for a link with one):
    /// it joins the replays, streamed by [`BrokerLoop::pump_replays`], or is refused. So does
    /// the busy refusal of a command the daemon had no room for.
    fn on_publish(&mut self, p: rumqttc::Publish) {
        let mut request = match self.router.route(p) {
            None => return,
            Some(Answer::Busy(answer)) => return self.answer_busy(answer),
            Some(Answer::Replay(request)) => request,
        };
        let Some(feed) = &self.feed else {
            return;
        };
        if self.stop.is_stopping() && request.is_ok() {
            request = Err(Refused::new("replay", "the gateway is stopping"));
        }
        self.replays.request(request, feed.latest_seq());
    }

    /// Queues a busy refusal and sends what the QoS 0 slots allow; the log says how many, at
    /// most every few seconds, not one line per command of a flood.
    fn answer_busy(&mut self, answer: Publication) {
        if let Some(w) = self.busy.push(answer, Instant::now()) {
            let dropped = if w.dropped > 0 {
                format!(
                    ", {} of them unanswered (more than {} waiting)",
                    w.dropped,
                    crate::mqtt::link::busy::BACKLOG
                )
            } else {
                String::new()
            };
            tracing::warn!(
                "mqtt broker {}: command queue full; refused {} command(s) as busy{dropped}",
                self.url,
                w.refused
            );
        }
        if self.connected() {
            self.pump_busy();
        }
    }
}
