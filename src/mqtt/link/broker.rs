//! One broker's loop task: owns rumqttc's event loop and polls it for as long as the link
//! runs, feeding it from the pipeline channel and the outbox through the [`Ledger`]'s window,
//! and driving reconnects and the stop protocol.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{ConnectionError, Event, EventLoop, Incoming, MqttState, QoS};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::backoff::{describe, Backoff};
use super::busy::BusyAnswers;
use super::inbound::Router;
use super::outbound::{io, Io, Outbound};
use super::publisher::{BrokerHealth, Farewell};
use super::stop::Stop;
use super::waits::{beat_tick, grace_over, role_changed, tick};
use super::{Presence, BUSY_SLOTS, TELEMETRY_SLOTS, WINDOW};
use crate::config::BrokerUrl;
use crate::message::Outgoing;
use crate::mqtt::delivery::Feed;
use crate::mqtt::ledger::{Entry, Ledger};
use crate::mqtt::options::RUMQTTC_INFLIGHT;
use crate::mqtt::payload::{Class, Publication};
use crate::mqtt::replays::Replays;

mod events;

/// Why a turn of the loop handed control back.
enum Step {
    /// An event of rumqttc's (connected, written, read), or the connection's failure.
    Polled(Result<Event, ConnectionError>),
    /// Something was read, taken or queued: write what is queued next.
    Turned,
    /// The stop grace ran out.
    Deadline,
}

/// The loop of one broker: everything here is owned by its one task; the handles see only
/// [`BrokerHealth`].
pub(super) struct BrokerLoop {
    pub(super) url: BrokerUrl,
    pub(super) client_id: String,
    pub(super) presence: Presence,
    /// When this process started (RFC 3339), for the outbox-enriched gateway status.
    pub(super) started_at: String,
    /// What the next write sends (see `outbound.rs`).
    pub(super) out: Outbound,
    pub(super) rx: mpsc::Receiver<Publication>,
    pub(super) health: Arc<BrokerHealth>,
    pub(super) ledger: Ledger,
    /// This broker's view of the outbox (durable links only).
    pub(super) feed: Option<Feed>,
    /// The gateway's role in its pair (durable links only): a change republishes the status.
    pub(super) role: Option<tokio::sync::watch::Receiver<crate::pair::RoleStatus>>,
    /// When to republish the retained status with the latest `seq` (durable links only).
    pub(super) heartbeat: Option<tokio::time::Interval>,
    /// A gateway of a redundant pair: its `P/gateways/{gw}/alive` topic and when to beat on
    /// it (half `mqtt.keep_alive`, while active; see `pair`).
    pub(super) beat: Option<(String, tokio::time::Interval)>,
    /// When to show the loop is alive (`BrokerHealth::pulse`).
    pub(super) pulse: tokio::time::Interval,
    /// QoS 0 publishes (telemetry, busy answers) queued and not yet written.
    pub(super) qos0_in_channel: usize,
    /// Busy refusals of commands the daemon had no room for, waiting for a QoS 0 slot.
    pub(super) busy: BusyAnswers,
    pub(super) cancel: CancellationToken,
    /// Where received publishes go (commands, the extra filters, `cmd/replay` back here).
    pub(super) router: Router,
    /// The `cmd/replay` requests being answered, a batch at a time after live traffic.
    pub(super) replays: Replays,
    /// Where the loop is in stopping: running, draining, offline queued, disconnecting.
    pub(super) stop: Stop,
    /// Failures in a row and what was last warned about: how long to wait, how loudly to log.
    pub(super) backoff: Backoff,
}

impl BrokerLoop {
    pub(super) async fn run(mut self, mut eventloop: EventLoop) {
        loop {
            match self.turn(&mut eventloop).await {
                Step::Deadline => return self.give_up(),
                Step::Turned => {}
                Step::Polled(Ok(event)) => {
                    if matches!(event, Event::Incoming(Incoming::ConnAck(_))) {
                        self.out.connected(eventloop.mqtt_options.keep_alive());
                    }
                    if self.on_event(event) {
                        return self.finish();
                    }
                }
                Step::Polled(Err(e)) => {
                    let delay = self.on_error(e, &mut eventloop);
                    if !self.back_off(delay).await {
                        return self.give_up();
                    }
                }
            }
            self.pump();
            self.maybe_disconnect();
        }
    }

    /// One turn: an event rumqttc has buffered, else a write of everything queued (one flush),
    /// else a wait for the broker (or the connect, while there is none) and the loop's inputs.
    async fn turn(&mut self, eventloop: &mut EventLoop) -> Step {
        if let Some(event) = eventloop.state.events.pop_front() {
            return Step::Polled(Ok(event));
        }
        let inflight = eventloop.mqtt_options.inflight();
        if self.connected() && self.out.ready(&eventloop.state, inflight) {
            let limit = Duration::from_secs(eventloop.network_options.connection_timeout());
            let written = tokio::select! {
                r = tokio::time::timeout(limit, self.out.write(eventloop)) => {
                    r.unwrap_or(Err(ConnectionError::FlushTimeout))
                }
                () = grace_over(self.stop.deadline()) => return Step::Deadline,
            };
            return match written {
                Ok(()) => Step::Turned,
                Err(e) => Step::Polled(Err(e)),
            };
        }
        // While connecting this is rumqttc's poll, which is not cancel safe (a connect cut
        // short would start over), so it is never dropped before it resolves: nothing is
        // queued while disconnected. While connected it is a read, dropped as soon as
        // something is queued, to be written on the next turn.
        let io = io(eventloop);
        tokio::pin!(io);
        loop {
            tokio::select! {
                r = &mut io => {
                    return match r {
                        Io::Polled(r) => Step::Polled(r),
                        Io::Read(Ok(ack)) => {
                            self.out.ack(ack);
                            Step::Turned
                        }
                        Io::Read(Err(e)) => Step::Polled(Err(e)),
                    };
                }
                () = self.cancel.cancelled(), if !self.stop.is_stopping() => self.begin_stop(),
                m = self.rx.recv(), if self.can_take() => self.take_ready(m),
                () = Feed::appended(&mut self.feed), if self.can_take_durable() => self.pump_feed(),
                () = tick(&mut self.heartbeat), if self.connected() && !self.stop.is_stopping() => self.send_heartbeat(),
                () = role_changed(&mut self.role), if self.connected() && !self.stop.is_stopping() => self.send_heartbeat(),
                () = beat_tick(&mut self.beat), if self.connected() && !self.stop.is_stopping() => self.send_beat(),
                () = self.out.ping_tick(), if self.connected() => {}
                _ = self.pulse.tick() => self.health.pulse.mark(),
                () = grace_over(self.stop.deadline()) => return Step::Deadline,
            }
            if self.connected() && self.out.has_requests() {
                return Step::Turned;
            }
        }
    }

    fn connected(&self) -> bool {
        self.backoff.is_connected()
    }

    /// New pipeline messages are taken only when they can go straight to rumqttc: connected,
    /// nothing older waiting in the backlog, room in the window.
    fn can_take(&self) -> bool {
        self.connected()
            && self.stop.takes_pipeline()
            && self.ledger.backlog_is_empty()
            && self.ledger.has_room()
    }

    /// Outbox records are taken on the same terms, until the offline status is queued.
    fn can_take_durable(&self) -> bool {
        self.feed.is_some()
            && self.connected()
            && self.stop.takes_outbox()
            && self.ledger.backlog_is_empty()
            && self.ledger.has_room()
    }

    /// Hands outbox records to rumqttc while the window has room.
    fn pump_feed(&mut self) {
        while self.can_take_durable() {
            let room = WINDOW.saturating_sub(self.ledger.outstanding());
            let Some(feed) = self.feed.as_mut() else {
                return;
            };
            if !feed.has_more() {
                return;
            }
            let batch = feed.take(room);
            if batch.is_empty() {
                return;
            }
            for (pos, publication) in batch {
                let entry = self.ledger.stamp(publication);
                if let Some(feed) = self.feed.as_mut() {
                    feed.track(entry.seq, pos);
                }
                if !self.hand(entry) {
                    return;
                }
            }
        }
    }

    /// Hands replay answers and replayed events to rumqttc in the room live traffic left:
    /// called after [`BrokerLoop::pump_feed`], and only while nothing older waits in the
    /// backlog, so a live record is never queued behind a replayed one.
    fn pump_replays(&mut self) {
        while self.connected() && self.ledger.backlog_is_empty() && self.ledger.has_room() {
            let publications = if let Some(result) = self.replays.next_answer() {
                match Publication::encode(&self.router.topics, &Outgoing::CommandResult(result)) {
                    Ok(p) => vec![p],
                    Err(e) => {
                        tracing::error!("mqtt: cannot encode a replay result: {e}");
                        continue;
                    }
                }
            } else {
                let room = WINDOW.saturating_sub(self.ledger.outstanding());
                let (Some(want), Some(feed)) = (self.replays.want(room), self.feed.as_ref()) else {
                    return;
                };
                let batch = feed.replay_batch(want);
                self.replays.batch(want, batch)
            };
            for p in publications {
                let entry = self.ledger.stamp(p);
                self.replays.track(entry.seq);
                // A refused hand-over goes to the backlog, still tracked, and is resent first.
                if !self.hand(entry) {
                    return;
                }
            }
        }
    }

    /// The online presence: with an outbox, the gateway status with the latest `seq` and the
    /// outbox's health; without one, the caller's online payload as given.
    fn online_presence(&self) -> Publication {
        match &self.feed {
            Some(feed) => {
                let status = feed.status(crate::VERSION, &self.started_at);
                Publication::presence(&self.presence.topic, &status.to_json(), true)
            }
            None => Publication::presence(&self.presence.topic, &self.presence.online, true),
        }
    }

    /// The retained status again, with the latest `seq` (durable links only).
    fn send_heartbeat(&mut self) {
        if self.feed.is_none() {
            return;
        }
        let entry = self.ledger.stamp(self.online_presence());
        self.hand(entry);
    }

    /// The active gateway of a pair says it lives: QoS 0, not retained, not journaled (a
    /// lost beat is made good by the next). A standby says nothing: nobody times it out.
    fn send_beat(&mut self) {
        let active = self
            .role
            .as_ref()
            .is_some_and(|r| r.borrow().role == crate::pair::Role::Active);
        let Some((topic, _)) = &self.beat else {
            return;
        };
        if !active {
            return;
        }
        let payload = format!(
            r#"{{"time":"{}"}}"#,
            crate::clock::rfc3339(std::time::SystemTime::now())
        );
        match self
            .out
            .publish(topic, QoS::AtMostOnce, false, payload.into_bytes())
        {
            // Counted as the other QoS 0 publishes are, until it is written.
            Ok(()) => self.qos0_in_channel += 1,
            Err(e) => tracing::debug!("mqtt broker {}: a pair beat not sent: {e}", self.url),
        }
    }

    /// Takes `msg` and whatever else the pipeline has ready (while there is room), so that
    /// the next write sends them all.
    fn take_ready(&mut self, msg: Option<Publication>) {
        self.take(msg);
        while self.can_take() {
            match self.rx.try_recv() {
                Ok(p) => self.take(Some(p)),
                Err(_) => return,
            }
        }
    }

    fn take(&mut self, msg: Option<Publication>) {
        let Some(p) = msg else {
            self.stop.pipeline_closed();
            self.maybe_queue_offline();
            return;
        };
        if p.class == Class::Telemetry {
            self.hand_telemetry(p);
        } else {
            let entry = self.ledger.stamp(p);
            self.hand(entry);
        }
    }

    fn hand_telemetry(&mut self, p: Publication) {
        if self.qos0_in_channel >= TELEMETRY_SLOTS
            || self
                .out
                .publish(&p.topic, p.qos, p.retain, p.payload)
                .is_err()
        {
            self.health
                .telemetry_dropped
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.qos0_in_channel += 1;
        }
    }

    /// Hands busy answers to rumqttc while QoS 0 slots are free. Telemetry stops at
    /// [`TELEMETRY_SLOTS`]; busy answers may use [`BUSY_SLOTS`] more, so a burst of telemetry
    /// cannot keep a command unanswered, and neither can take a QoS 1 publish's room.
    fn pump_busy(&mut self) {
        while self.qos0_in_channel < TELEMETRY_SLOTS + BUSY_SLOTS {
            let Some(p) = self.busy.pop() else {
                return;
            };
            match self.out.publish(&p.topic, p.qos, false, p.payload) {
                Ok(()) => self.qos0_in_channel += 1,
                Err(e) => tracing::debug!("mqtt: a busy answer not sent: {e}"),
            }
        }
    }

    /// Gives one QoS 1 publication to rumqttc and records it in the ledger.
    fn hand(&mut self, entry: Entry) -> bool {
        let p = &entry.publication;
        match self
            .out
            .publish(&p.topic, p.qos, p.retain, p.payload.clone())
        {
            Ok(()) => {
                self.ledger.handed(entry);
                true
            }
            Err(e) => {
                // Our topics are built by `topics.rs` and never invalid; kept for the next
                // attempt all the same rather than lost.
                tracing::error!("mqtt: cannot send {}: {e}", p.topic);
                self.ledger.unhand(entry);
                false
            }
        }
    }

    /// Sends backlog entries (replays after a reconnect, the final offline status) while the
    /// window has room.
    fn pump(&mut self) {
        if !self.connected() {
            return;
        }
        while let Some(entry) = self.ledger.next_from_backlog() {
            if !self.hand(entry) {
                return;
            }
        }
        self.pump_busy();
        self.pump_feed();
        self.pump_replays();
        self.maybe_queue_offline();
    }

    fn begin_stop(&mut self) {
        self.stop.begin(Instant::now());
        // Nothing new gets in; what is already queued is still delivered, then the offline
        // status goes last.
        self.rx.close();
        self.replays.stop();
        self.maybe_queue_offline();
        self.pump();
        self.maybe_disconnect();
    }

    /// The offline status goes last: once stopping, the pipeline channel is drained and every
    /// outbox record has been handed over.
    fn maybe_queue_offline(&mut self) {
        let drained = self.feed.as_ref().is_none_or(|f| !f.has_more()) && self.replays.is_idle();
        if self.stop.offline_due(drained) {
            self.queue_offline();
        }
    }

    /// The last word on the presence topic: `offline`, the fault status, or nothing on a
    /// reload (see [`Farewell`]).
    fn queue_offline(&mut self) {
        let payload = match self.health.farewell() {
            Farewell::Offline => self.presence.offline.clone(),
            Farewell::Status(p) => p,
            Farewell::Silent => {
                // No publish whose PUBACK would wake the loop to disconnect: do it now, or the
                // grace would run out and the last will say offline after all.
                self.pump();
                self.maybe_disconnect();
                return;
            }
        };
        let last = Publication::presence(&self.presence.topic, &payload, false);
        let entry = self.ledger.stamp(last);
        self.ledger.push_backlog(entry);
        self.pump();
    }

    /// Once stopping and everything (offline status included) is confirmed: DISCONNECT, so
    /// the broker discards the last will (the retained status already says offline).
    fn maybe_disconnect(&mut self) {
        if self.stop.awaits_disconnect() && self.ledger.is_idle() && self.connected() {
            self.out.disconnect();
            self.stop.disconnect_sent();
        }
    }

    /// After a failed poll: settle the books, then log.
    /// Returns how long to wait before the next attempt.
    fn on_error(&mut self, e: ConnectionError, eventloop: &mut EventLoop) -> Duration {
        // rumqttc may have buffered events (acks read just before the failure) that it would
        // otherwise hand out after the next CONNACK, where a stale PUBACK would confirm the
        // wrong message. Apply them now, then start rumqttc from a fresh state: its `pending`
        // copy of unacked publishes is dropped because the ledger resends them itself, and a
        // leftover collision would otherwise block its request channel for good.
        while let Some(ev) = eventloop.state.events.pop_front() {
            self.on_event(ev);
        }
        eventloop.state = MqttState::new(RUMQTTC_INFLIGHT, false);
        eventloop.pending.clear();
        // rumqttc's own poll drops the network after a failure; so does this loop, whose
        // reads and writes failed here, so the next turn connects again.
        eventloop.network = None;
        self.out.clear();
        let requeued = self.ledger.connection_lost();
        let lost_telemetry = std::mem::take(&mut self.qos0_in_channel) as u64;
        self.health
            .telemetry_dropped
            .fetch_add(lost_telemetry, Ordering::Relaxed);
        self.health.set_connected(false);
        let reason = describe(&e);
        let retry = self.backoff.failed(&reason, Instant::now());
        let unconfirmed = if requeued > 0 {
            format!("; {requeued} unconfirmed message(s) will be resent")
        } else {
            String::new()
        };
        // One line per failure; repeats of the same failure go to debug (but to warn again
        // every REPEAT_WARNING) so a broker down for an hour neither floods the journal nor
        // goes quiet.
        if retry.repeat {
            tracing::debug!(
                "mqtt broker {}: {reason}; retrying in {} ms{unconfirmed}",
                self.url,
                retry.delay.as_millis()
            );
        } else {
            tracing::warn!(
                "mqtt broker {}: {reason}; retrying in {} ms{unconfirmed}",
                self.url,
                retry.delay.as_millis()
            );
        }
        retry.delay
    }

    /// Sleeps `delay`; false if the stop grace ran out meanwhile.
    async fn back_off(&mut self, delay: Duration) -> bool {
        let wake = Instant::now() + delay;
        loop {
            tokio::select! {
                () = sleep_until(wake) => return true,
                () = self.cancel.cancelled(), if !self.stop.is_stopping() => self.begin_stop(),
                _ = self.pulse.tick() => self.health.pulse.mark(),
                () = grace_over(self.stop.deadline()) => return false,
            }
        }
    }

    /// Stopped with messages the broker never confirmed: say how many. The socket (if any)
    /// closes without DISCONNECT, so the broker's last will marks the gateway offline.
    fn give_up(&mut self) {
        self.health.set_connected(false);
        let unconfirmed = self.ledger.unconfirmed() + self.rx.len();
        if unconfirmed > 0 {
            tracing::warn!(
                "mqtt broker {}: stopping with {unconfirmed} message(s) not confirmed by the broker",
                self.url
            );
        } else {
            tracing::info!("mqtt broker {}: stopped", self.url);
        }
    }

    fn finish(&mut self) {
        self.health.set_connected(false);
        tracing::info!("mqtt broker {}: disconnected cleanly", self.url);
    }
}
