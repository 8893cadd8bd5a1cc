//! The pipeline's side of a link: a cheap, cloneable [`Publisher`] that puts each message
//! where it must go (the outbox, or each broker loop's channel) and never touches a socket, and
//! the per-broker [`BrokerHealth`] the loops keep up to date for it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::clock::Pulse;
use crate::message::Outgoing;
use crate::mqtt::delivery::{self, DurableOutbox};
use crate::mqtt::payload::{Class, GatewayStatus, Publication};
use crate::mqtt::Topics;

/// The pipeline's handle on the link. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    /// One per broker loop: `mqtt.url` first, then each of `mqtt.also` (durable links only).
    pub(super) routes: Arc<[Route]>,
    pub(super) topics: Arc<Topics>,
    /// The outbox durable messages go through; `None` for a link without one (tests, tools).
    pub(super) durable: Option<Arc<DurableOutbox>>,
    /// Touched by every broker loop when its connection comes up or goes down (see
    /// [`Publisher::link_events`]).
    pub(super) link_events: Arc<watch::Sender<()>>,
}

/// The way into one broker loop.
#[derive(Clone)]
pub(super) struct Route {
    pub(super) tx: mpsc::Sender<Publication>,
    pub(super) health: Arc<BrokerHealth>,
}

/// One broker's health as the handles see it: the connection flag, the telemetry-dropped
/// counter, and the loop's pulse. The loop task writes it; [`Publisher`] reads it for metrics
/// and the watchdog.
#[derive(Debug)]
pub(super) struct BrokerHealth {
    /// The broker, as configured (for metrics and log lines).
    pub(super) url: String,
    /// Written only through [`BrokerHealth::set_connected`], which also tells the daemon.
    connected: AtomicBool,
    /// Shared by every broker of the link: see [`Publisher::link_events`].
    link_events: Arc<watch::Sender<()>>,
    pub(super) telemetry_dropped: AtomicU64,
    /// When the loop last came round to its select. A loop that is stuck (a handler that
    /// never returns) stops marking it, connected or not.
    pub(super) pulse: Pulse,
    /// What the loop leaves on the status topic when it stops (see [`Farewell`]).
    farewell: Mutex<Farewell>,
}

/// What a stopping link leaves behind on its presence topic before its clean DISCONNECT
/// (which makes the broker discard the last will, so this is what stays retained).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Farewell {
    /// `offline`: a clean stop.
    #[default]
    Offline,
    /// This payload instead (the gateway's `fault` status): a fault must not be overwritten
    /// by the `offline` a stop otherwise publishes, nor by the last will.
    Status(Vec<u8>),
    /// Nothing: a reload, whose next generation connects at once and says `online`; a
    /// subscriber must not see the gateway go offline for a configuration change.
    Silent,
}

impl BrokerHealth {
    pub(super) fn new(url: String, link_events: Arc<watch::Sender<()>>) -> BrokerHealth {
        BrokerHealth {
            url,
            connected: AtomicBool::new(false),
            link_events,
            telemetry_dropped: AtomicU64::new(0),
            pulse: Pulse::new(),
            farewell: Mutex::new(Farewell::Offline),
        }
    }

    pub(super) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// A CONNACK (`true`) or the end of the connection (`false`): recorded, and, when it is a
    /// change, told to whoever watches [`Publisher::link_events`].
    pub(super) fn set_connected(&self, up: bool) {
        if self.connected.swap(up, Ordering::Relaxed) != up {
            self.link_events.send_modify(|()| {});
        }
    }

    pub(super) fn farewell(&self) -> Farewell {
        self.farewell
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Publisher {
    /// Events, zone statuses, command results and other durable messages: never dropped. With
    /// an outbox they are on disk when this returns, and each broker's loop takes them from
    /// there; without one they are queued in memory while disconnected and sent in order after
    /// reconnect (waiting only when the queue is full).
    /// Telemetry: never waits; dropped and counted when disconnected or when the queue is full.
    pub async fn send(&self, msg: Outgoing) {
        // A failure is logged here and reported through `outbox_failed`.
        let _ = self.send_all(vec![msg]).await;
    }

    /// As [`Publisher::send`] for several messages; the durable ones share one fsync. Fails
    /// only when the outbox could not make them durable (they were not sent, and the outbox
    /// accepts nothing more: see [`Publisher::outbox_failed`]).
    pub async fn send_all(&self, msgs: Vec<Outgoing>) -> Result<(), String> {
        let mut entries = Vec::new();
        for msg in msgs {
            let publication = match Publication::encode(&self.topics, &msg) {
                Ok(p) => p,
                Err(e) => {
                    // Cannot happen for these types; logged rather than unwrapped all the same.
                    tracing::error!("mqtt: cannot encode {msg:?}: {e}; not sent");
                    continue;
                }
            };
            match (&self.durable, publication.class) {
                (_, Class::Telemetry) => self.send_telemetry(publication),
                (Some(_), Class::Durable) => entries.push(delivery::entry(&msg, publication)),
                _ => self.send_queued(publication).await,
            }
        }
        if let (Some(durable), false) = (&self.durable, entries.is_empty()) {
            if let Err(reason) = durable.append(entries).await {
                tracing::error!("mqtt: not raised, the outbox failed: {reason}");
                return Err(reason);
            }
        }
        Ok(())
    }

    fn send_telemetry(&self, publication: Publication) {
        // The last broker takes the publication itself: one broker (the usual case) copies
        // nothing.
        let mut publication = Some(publication);
        let last = self.routes.len().saturating_sub(1);
        for (i, r) in self.routes.iter().enumerate() {
            let p = if i == last {
                publication.take()
            } else {
                publication.clone()
            };
            let Some(p) = p else { break };
            if !r.health.is_connected() || r.tx.try_send(p).is_err() {
                r.health.telemetry_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn send_queued(&self, publication: Publication) {
        for r in self.routes.iter() {
            let topic = publication.topic.clone();
            if r.tx.send(publication.clone()).await.is_err() {
                tracing::warn!("mqtt: link already stopped; message for {topic} not sent");
            }
        }
    }

    /// Makes the retained fault status, straight from memory (the outbox or the state file is
    /// what failed), the last word of every broker loop when it stops: it replaces the offline
    /// status, and the clean DISCONNECT after it makes the broker discard the last will, so a
    /// subscriber (and a late one, retained) sees why the gateway went away.
    pub fn report_fault(&self, reason: &str) {
        let status = GatewayStatus::Fault {
            reason: reason.to_string(),
        };
        self.farewell(Farewell::Status(status.to_json()));
    }

    /// What every broker loop leaves on the status topic when it stops (see [`Farewell`]).
    pub fn farewell(&self, farewell: Farewell) {
        for r in self.routes.iter() {
            *r.health
                .farewell
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = farewell.clone();
        }
    }

    /// Resolves with the reason when the outbox can no longer write: the daemon must stop.
    /// Never resolves for a link without an outbox.
    pub async fn outbox_failed(&self) -> String {
        match &self.durable {
            Some(d) => d.failed().await,
            None => std::future::pending().await,
        }
    }

    /// The outbox, for its pressure and latest `seq` (metrics, logs).
    pub fn outbox(&self) -> Option<&Arc<DurableOutbox>> {
        self.durable.as_ref()
    }

    /// Telemetry messages dropped so far (disconnected, or queues full), over all brokers.
    pub fn telemetry_dropped(&self) -> u64 {
        self.routes
            .iter()
            .map(|r| r.health.telemetry_dropped.load(Ordering::Relaxed))
            .sum()
    }

    /// Each broker (`mqtt.url`, then `mqtt.also`) and whether it is connected now.
    pub fn brokers(&self) -> Vec<(String, bool)> {
        self.routes
            .iter()
            .map(|r| (r.health.url.clone(), r.health.is_connected()))
            .collect()
    }

    /// The brokers whose loop has not come round for longer than `within`: hung tasks (a
    /// broker that is merely unreachable keeps its loop turning through the backoff). The
    /// daemon withholds the systemd watchdog ping while any is listed.
    pub fn stalled_links(&self, within: Duration) -> Vec<String> {
        self.routes
            .iter()
            .filter(|r| r.health.pulse.silent_for() > within)
            .map(|r| r.health.url.clone())
            .collect()
    }

    /// True between a broker's CONNACK and the next connection error, for any broker.
    pub fn is_connected(&self) -> bool {
        self.routes.iter().any(|r| r.health.is_connected())
    }

    /// Changes each time a broker's connection comes up or goes down, so the daemon acts on a
    /// connection when it happens (a pair's start wait counts from the CONNACK) rather than at
    /// its next look at [`Publisher::is_connected`].
    pub fn link_events(&self) -> watch::Receiver<()> {
        self.link_events.subscribe()
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("connected", &self.is_connected())
            .field("telemetry_dropped", &self.telemetry_dropped())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_is_silent_for_as_long() {
        let mut health = BrokerHealth::new("mqtt://broker:1883".into(), Default::default());
        // As if the loop had last come round 20 s ago.
        health.pulse = Pulse::marked_ago(Duration::from_secs(20));
        assert!(health.pulse.silent_for() >= Duration::from_secs(20));
        health.pulse.mark();
        assert!(health.pulse.silent_for() < Duration::from_secs(1));
    }

    /// The daemon starts a pair's start wait on this signal, not at its next look.
    #[test]
    fn a_connection_coming_up_or_going_down_is_told_once() {
        let events = Arc::new(watch::Sender::new(()));
        let health = BrokerHealth::new("mqtt://broker:1883".into(), events.clone());
        let mut rx = events.subscribe();
        assert!(!rx.has_changed().unwrap_or(true));
        health.set_connected(true);
        assert!(rx.has_changed().unwrap_or(false), "a CONNACK is told");
        rx.mark_unchanged();
        health.set_connected(true);
        assert!(!rx.has_changed().unwrap_or(true), "no change, nothing told");
        health.set_connected(false);
        assert!(
            rx.has_changed().unwrap_or(false),
            "a lost connection is told"
        );
    }
}
