//! What a broker loop sends while connected, and the one read it waits on: rumqttc's state and
//! network driven directly instead of through `EventLoop::poll`, so that every publish ready in
//! one turn of the loop goes out in one write.
//!
//! rumqttc 0.25 writes and flushes each request on its own: at 1,000 devices a second that was
//! 1,000 `writev` calls, a tenth of the gateway's CPU (benches/README.md, "Scale"). Here the
//! loop queues publishes, subscriptions and the DISCONNECT in an [`Outbound`] and writes them
//! all, with the acks and pings due, before one flush. rumqttc still connects (its `poll`,
//! while there is no network), numbers packets, tracks what is in flight and reports what it
//! wrote as events, exactly as before: only the turn-taking is ours. Nothing waits to be
//! batched: a turn writes what is queued when it starts, so an alarm goes out as soon as it is
//! handed over, in the same write as the telemetry queued with it.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{
    valid_topic, ConnectionError, Disconnect, Event, EventLoop, MqttState, Packet, PingReq,
    Publish, QoS, Request, Subscribe,
};
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

/// Requests waiting for the next write, the acks owed to the broker, and the keep-alive.
#[derive(Default)]
pub(super) struct Outbound {
    requests: VecDeque<Request>,
    /// Acks for publishes received (commands at QoS 1), written ahead of the requests.
    acks: Vec<Packet>,
    /// A PINGREQ is due (the keep-alive timer fired).
    ping_due: bool,
    /// Every `keep_alive` from the CONNACK on, as rumqttc pings: irrespective of other traffic.
    keep_alive: Option<Interval>,
}

/// What one wait of the loop's I/O branch brought.
pub(super) enum Io {
    /// rumqttc's `poll` while connecting: the CONNACK or the failure.
    Polled(Result<Event, ConnectionError>),
    /// A packet read and applied to rumqttc's state (its events are in `state.events`), with
    /// the ack it calls for, if any.
    Read(Result<Option<Packet>, ConnectionError>),
}

/// Connects (rumqttc's `poll`, while there is no network) or reads one packet. Cancel safe
/// while connected (what matters: the loop drops it to write): the only await is the framed
/// read, which keeps partial packets in its buffer; applying the packet is synchronous.
pub(super) async fn io(el: &mut EventLoop) -> Io {
    let Some(network) = el.network.as_mut() else {
        return Io::Polled(el.poll().await);
    };
    let read = match network.read().await {
        Ok(packet) => el
            .state
            .handle_incoming_packet(packet)
            .map_err(ConnectionError::from),
        Err(e) => Err(ConnectionError::from(e)),
    };
    Io::Read(read)
}

impl Outbound {
    /// A publish for the next write. Refused (and nothing queued) for a topic no broker would
    /// take (wildcards), as rumqttc's client refuses it.
    pub(super) fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        if !valid_topic(topic) {
            return Err(format!("invalid topic {topic:?}"));
        }
        let mut publish = Publish::new(topic, qos, payload);
        publish.retain = retain;
        self.requests.push_back(Request::Publish(publish));
        Ok(())
    }

    pub(super) fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.requests
            .push_back(Request::Subscribe(Subscribe::new(filter, qos)));
    }

    pub(super) fn disconnect(&mut self) {
        self.requests.push_back(Request::Disconnect(Disconnect));
    }

    /// The ack a received packet called for.
    pub(super) fn ack(&mut self, packet: Option<Packet>) {
        self.acks.extend(packet);
    }

    /// Connected: the keep-alive starts now (none for a zero `keep_alive`).
    pub(super) fn connected(&mut self, keep_alive: Duration) {
        self.ping_due = false;
        self.keep_alive = (!keep_alive.is_zero()).then(|| {
            let mut i = interval_at(Instant::now() + keep_alive, keep_alive);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
    }

    /// The connection is gone: what was queued is the ledger's to resend (QoS 1) or lost
    /// (telemetry, counted by the caller); the keep-alive stops.
    pub(super) fn clear(&mut self) {
        self.requests.clear();
        self.acks.clear();
        self.ping_due = false;
        self.keep_alive = None;
    }

    /// Something was queued: the loop stops waiting and writes.
    pub(super) fn has_requests(&self) -> bool {
        !self.requests.is_empty() || !self.acks.is_empty() || self.ping_due
    }

    /// Something can be written now: acks and pings always, requests while rumqttc's flow
    /// control allows (as its own loop: nothing new while a packet id collides or its
    /// in-flight window is full).
    pub(super) fn ready(&self, state: &MqttState, inflight: u16) -> bool {
        !self.acks.is_empty()
            || self.ping_due
            || (!self.requests.is_empty() && flows(state, inflight))
    }

    /// Resolves at the next keep-alive; never without one.
    pub(super) async fn ping_tick(&mut self) {
        match &mut self.keep_alive {
            Some(i) => {
                i.tick().await;
                self.ping_due = true;
            }
            None => std::future::pending().await,
        }
    }

    /// Writes the acks, the ping if due and the requests rumqttc's flow control lets through,
    /// then flushes once. rumqttc records each (packet ids, in-flight publishes) and pushes its
    /// events (`Outgoing::Publish(pkid)`, ...) to `state.events`, as when its own loop writes.
    /// A refused ping (the last one unanswered) fails the connection, as in rumqttc.
    pub(super) async fn write(&mut self, el: &mut EventLoop) -> Result<(), ConnectionError> {
        let inflight = el.mqtt_options.inflight();
        let Some(network) = el.network.as_mut() else {
            return Ok(());
        };
        for ack in self.acks.drain(..) {
            network.write(ack).await?;
        }
        if std::mem::take(&mut self.ping_due) {
            if let Some(ping) = el.state.handle_outgoing_packet(Request::PingReq(PingReq))? {
                network.write(ping).await?;
            }
        }
        while flows(&el.state, inflight) {
            let Some(request) = self.requests.pop_front() else {
                break;
            };
            if let Some(packet) = el.state.handle_outgoing_packet(request)? {
                network.write(packet).await?;
            }
        }
        network.flush().await?;
        Ok(())
    }
}

/// rumqttc's own condition for taking the next request.
fn flows(state: &MqttState, inflight: u16) -> bool {
    state.collision.is_none() && state.inflight() < inflight
}
