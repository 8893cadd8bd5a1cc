//! A connection to the broker: a cheap [`Publisher`] handle for the pipeline and one task that
//! owns rumqttc's event loop. The gateway uses it, and so does each drain agent: both need the
//! same promise (nothing handed over is lost across a reconnect) and the same presence
//! announcement (retained online status, last will offline). [`LinkOptions`] holds what
//! differs between them.
//!
//! Shaped like rumqttc itself (handle vs. loop): the pipeline never touches the socket, and the
//! socket never waits on the pipeline. Between them is one bounded channel per broker. Without
//! an outbox ([`connect`]), alarm events and zone statuses wait for room in it (they must not be
//! lost); with one ([`connect_durable`], the daemon), they go to disk instead and each broker's
//! loop reads them from there through its own cursor (`delivery.rs`), so a broker that is away
//! holds up neither the pipeline nor the other brokers. Telemetry never waits and is dropped
//! and counted instead.
//!
//! The loop task
//! - connects through rumqttc, reconnecting with jittered exponential backoff for as long as
//!   it runs, logging each failure once with the broker URL and the reason;
//! - on every CONNACK publishes the retained online presence and subscribes to `cmd/+` (the
//!   gateway) and to the caller's extra filters;
//! - hands publications to rumqttc through a [`Ledger`] that tracks every QoS 1 publish until
//!   the broker's PUBACK, and after a reconnect resends, in order, whatever was not confirmed
//!   (rumqttc itself drops those on a clean session: see `ledger.rs`);
//! - with an outbox: takes records from its feed while the window has room, reports PUBACKs
//!   back to it, republishes the retained status every `mqtt.heartbeat` with the latest `seq`,
//!   and answers `cmd/replay` itself from the journal, a batch at a time in what live traffic
//!   leaves of the window (`replays.rs`);
//! - turns publishes on `cmd/+` into [`Command`]s, and those on the extra filters into
//!   [`Inbound`] messages (every broker's loop feeds the same two channels); a command the
//!   daemon has no room for is answered busy on `cmd/result` by the loop itself;
//! - on cancellation, sends what is queued, then the retained offline status (or what
//!   [`Publisher::farewell`] set instead: the `fault` status after a failed write, nothing
//!   on a reload), waits (up to [`STOP_GRACE`]) for the broker's acks, and disconnects
//!   cleanly, so the broker discards the last will. If the grace runs out it
//!   closes the socket without DISCONNECT, so the broker's last will still marks the gateway
//!   offline.
//!
//! The parts, split the way rumqttc splits its event loop from its protocol state:
//! - `publisher.rs`: the handle side, [`Publisher`], and each broker's health it reads;
//! - `broker.rs`: the per-broker loop task, the only part that does I/O;
//! - `outbound.rs`: what the loop writes while connected, all that is ready in one write, and
//!   the read it waits on (rumqttc's state and network driven directly, not its `poll`);
//! - `stop.rs`, `backoff.rs`: the stop protocol and the reconnect backoff, as I/O-free state
//!   the loop drives (tested like `ledger.rs`);
//! - `inbound.rs`: where a received publish goes; `busy.rs`: the queue of busy answers.

mod backoff;
mod broker;
mod busy;
mod inbound;
mod outbound;
mod publisher;
mod stop;
mod waits;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rumqttc::EventLoop;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::backoff::Backoff;
use self::broker::BrokerLoop;
pub use self::inbound::Inbound;
use self::inbound::Router;
use self::outbound::Outbound;
use self::publisher::{BrokerHealth, Route};
pub use self::publisher::{Farewell, Publisher};
use self::stop::Stop;
use super::delivery::DurableOutbox;
use super::echo::Echoes;
use super::embedded;
use super::ledger::Ledger;
use super::options;
use super::payload::GatewayStatus;
use super::{MqttError, Topics};
use crate::command::{Command, Refused};
use crate::config::{BrokerUrl, Config};

/// Room in the pipeline → link channel. Large: the channel is also where events wait while
/// the broker is unreachable, and `send` blocks the pipeline only once it is full.
pub const QUEUE: usize = 16_384;

/// QoS 1 publishes handed to rumqttc and not yet acked. Below rumqttc's own in-flight limit,
/// so rumqttc never blocks or replays on its own and packet ids never collide when the broker
/// acks in order.
const WINDOW: usize = 64;

/// QoS 0 telemetry allowed to wait for the next write (`outbound.rs`); beyond that it is
/// dropped.
const TELEMETRY_SLOTS: usize = 256;

/// Room for commands not yet taken by the daemon; more are answered busy by the broker loop
/// (`busy.rs`) rather than stall the connection or go unanswered.
const COMMANDS: usize = 64;

/// QoS 0 busy answers allowed to wait for the next write beyond telemetry's slots.
const BUSY_SLOTS: usize = 64;

/// Room for messages on the extra subscriptions not yet taken by the caller. They were acked to
/// the broker on receipt, so the room is generous; beyond it they are dropped with a warning
/// rather than stall keep-alives.
const INBOUND: usize = 1024;

/// After cancellation: how long queued messages may take to be confirmed.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Whose presence a connection announces: retained `online` on every connect; `offline` as
/// the last will and as the last message of a clean stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub topic: String,
    pub online: Vec<u8>,
    pub offline: Vec<u8>,
}

/// What differs between the gateway's connection and a drain agent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOptions {
    pub client_id: String,
    pub presence: Presence,
    /// Subscribe to `P/gateways/{gateway}/cmd/+` and deliver commands on [`Link::commands`].
    pub commands: bool,
    /// Further filters, subscribed at QoS 1 on every connect; what arrives on them is
    /// delivered on [`Link::incoming`].
    pub subscriptions: Vec<String>,
    /// Ask the broker to keep a session (clean_session = false), so QoS 1 messages on the
    /// subscriptions published while this client is away are delivered when it returns.
    pub persistent_session: bool,
    /// `mqtt.url = "embedded"` starts the in-process broker (the gateway hosts it); false
    /// just connects to 127.0.0.1:1883 (a drain agent next to such a gateway).
    pub host_embedded: bool,
}

impl LinkOptions {
    /// The gateway: `P/gateways/{gateway}/status` with version and start time, commands on.
    pub fn gateway(cfg: &Config) -> LinkOptions {
        let topics = Topics::new(cfg);
        let online = GatewayStatus::Online {
            version: crate::VERSION.to_string(),
            started_at: crate::clock::rfc3339(SystemTime::now()),
            seq: None,
            outbox: None,
            lost: Vec::new(),
            role: None,
        };
        LinkOptions {
            client_id: cfg.mqtt.client_id.clone(),
            presence: Presence {
                topic: topics.status(),
                online: online.to_json(),
                offline: GatewayStatus::Offline.to_json(),
            },
            commands: true,
            subscriptions: Vec::new(),
            persistent_session: false,
            host_embedded: true,
        }
    }
}

/// How often a broker loop marks its pulse ([`Publisher::stalled_links`]).
pub const PULSE: Duration = Duration::from_secs(1);

/// A running link: the publishing handle, the incoming commands and messages, and the loop
/// task.
#[derive(Debug)]
pub struct Link {
    pub publisher: Publisher,
    /// Every command received, parsed: taken or refused (a refusal is answered on `cmd/result` by
    /// whoever takes it from here). `cmd/replay` is not among them: the link answers it.
    pub commands: mpsc::Receiver<Result<Command, Refused>>,
    /// Publishes on [`LinkOptions::subscriptions`], from every broker.
    pub incoming: mpsc::Receiver<Inbound>,
    tasks: LinkTasks,
}

/// The broker loops of a link, to wait for once they are cancelled. Apart from [`Link`] so that
/// its owner can hand the publisher and the receivers to different tasks
/// ([`Link::into_parts`]) and still wait for the loops at the end.
#[derive(Debug)]
pub struct LinkTasks {
    /// One loop per broker.
    tasks: Vec<JoinHandle<()>>,
    /// Closed after the loops end, so it commits their cursors a last time.
    outbox: Option<Arc<DurableOutbox>>,
}

impl Link {
    /// The publisher, the commands, the inbound messages, and the loops, each to its own owner.
    pub fn into_parts(
        self,
    ) -> (
        Publisher,
        mpsc::Receiver<Result<Command, Refused>>,
        mpsc::Receiver<Inbound>,
        LinkTasks,
    ) {
        (self.publisher, self.commands, self.incoming, self.tasks)
    }

    /// See [`LinkTasks::closed`].
    pub async fn closed(self) {
        self.tasks.closed().await;
    }

    /// Kills the loop tasks without any goodbye, as a crash would (the socket closes without
    /// DISCONNECT, so the broker publishes the last will).
    #[cfg(test)]
    pub(crate) async fn crash(self) {
        for task in self.tasks.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

impl LinkTasks {
    /// Waits for the loop tasks to finish, which they do after the cancellation token given to
    /// [`connect`] fires: at most about [`STOP_GRACE`] later. Then the outbox, if any, commits
    /// its cursors a last time and closes.
    pub async fn closed(self) {
        for task in self.tasks {
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::error!("mqtt: the link task panicked: {e}");
                }
            }
        }
        if let Some(d) = &self.outbox {
            d.close().await;
        }
    }
}

/// Starts the gateway's link described by `cfg.mqtt` and returns at once: the broker need not
/// be up (messages queue until it is). `mqtt.url = "embedded"` first starts the in-process
/// broker on 127.0.0.1:1883. Fails only on set-up problems: unreadable password or
/// certificate files, or an embedded broker that cannot listen. The loop runs until `cancel`
/// fires.
///
/// Durable messages wait in memory: this is the link for tools and tests. The daemon uses
/// [`connect_durable`].
pub async fn connect(cfg: &Config, cancel: CancellationToken) -> Result<Link, MqttError> {
    connect_with(cfg, LinkOptions::gateway(cfg), cancel).await
}

/// As [`connect`], for any identity: the broker and credentials come from `cfg.mqtt`, the
/// rest from `opts`. Durable messages wait in memory (a drain agent, tools).
pub async fn connect_with(
    cfg: &Config,
    opts: LinkOptions,
    cancel: CancellationToken,
) -> Result<Link, MqttError> {
    start(cfg, opts, cancel, None).await
}

/// As [`connect_with`], with durable messages going through `durable` (the outbox), and one
/// loop per broker, `mqtt.url` and each of `mqtt.also`, each delivering from its own cursor.
/// The online presence is then the gateway status with the latest `seq` and the outbox's
/// health, republished every `mqtt.heartbeat`.
pub async fn connect_durable(
    cfg: &Config,
    opts: LinkOptions,
    cancel: CancellationToken,
    durable: Arc<DurableOutbox>,
) -> Result<Link, MqttError> {
    start(cfg, opts, cancel, Some(durable)).await
}

async fn start(
    cfg: &Config,
    opts: LinkOptions,
    cancel: CancellationToken,
    durable: Option<Arc<DurableOutbox>>,
) -> Result<Link, MqttError> {
    let started_at = crate::clock::rfc3339(SystemTime::now());
    let m = &cfg.mqtt;
    let mut urls = vec![m.url.clone()];
    if durable.is_some() {
        urls.extend(m.also.iter().cloned());
    } else if !m.also.is_empty() {
        let also: Vec<String> = m.also.iter().map(ToString::to_string).collect();
        tracing::warn!(
            "mqtt.also ({}) needs the durable outbox; publishing to {} only",
            also.join(", "),
            m.url
        );
    }
    if urls.contains(&BrokerUrl::Embedded) && opts.host_embedded {
        let (ip, port) = options::EMBEDDED_ADDR;
        let broker = embedded::start((ip, port).into()).await?;
        tracing::info!("mqtt: embedded broker listening on {}", broker.addr);
    }
    let topics = Arc::new(Topics::new(cfg));
    let (cmd_tx, commands) = mpsc::channel(COMMANDS);
    let (in_tx, incoming) = mpsc::channel(INBOUND);
    let mut routes = Vec::new();
    let link_events = Arc::new(tokio::sync::watch::Sender::new(()));
    let mut tasks = Vec::new();
    // Only a link with several brokers can hear a command twice.
    let echoes = (urls.len() > 1).then(|| Arc::new(std::sync::Mutex::new(Echoes::default())));
    for (index, url) in urls.into_iter().enumerate() {
        let mut broker = m.clone();
        broker.url = url.clone();
        let mqtt_opts = options::build(
            &broker,
            &opts.client_id,
            Some(&opts.presence),
            !opts.persistent_session,
        )?;
        // No client: the loop queues its requests itself and writes them a turn at a time
        // (`outbound.rs`); rumqttc's request channel stays empty.
        let mut eventloop = EventLoop::new(mqtt_opts, 1);
        // TCP_NODELAY (rumqttc leaves Nagle on). A poll's QoS 0 telemetry is written at once,
        // its alarm event only after the outbox fsync; the broker answers no QoS 0 publish and
        // delays its TCP ACK (about 40 ms on Linux), and Nagle held the event back until that
        // ACK: 42 ms median from our socket write to the subscriber in the latency bench,
        // 0.3 ms with NODELAY. Our publishes are few and small: each goes out when written.
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, rx) = mpsc::channel(QUEUE);
        let health = Arc::new(BrokerHealth::new(url.to_string(), link_events.clone()));
        let mut pulse = tokio::time::interval(PULSE);
        pulse.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let feed = durable.as_ref().map(|d| d.feed(&url.to_string()));
        let heartbeat = feed.as_ref().map(|_| {
            let mut i = tokio::time::interval(m.heartbeat);
            // After a disconnection, one heartbeat, not a burst of the missed ones.
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        // A gateway of a redundant pair beats while active (see `pair`).
        let beat = match (&feed, &cfg.redundancy) {
            (Some(_), Some(_)) => {
                let mut i = tokio::time::interval(crate::pair::service::beat(cfg));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some((topics.alive_of(&cfg.site.gateway), i))
            }
            _ => None,
        };
        let router = Router {
            url: url.clone(),
            topics: topics.clone(),
            wants_commands: opts.commands,
            subscriptions: opts.subscriptions.clone(),
            answers_replay: feed.is_some(),
            index,
            echoes: echoes.clone(),
            commands: cmd_tx.clone(),
            incoming: in_tx.clone(),
        };
        let broker_loop = BrokerLoop {
            url,
            client_id: opts.client_id.clone(),
            presence: opts.presence.clone(),
            started_at: started_at.clone(),
            out: Outbound::default(),
            rx,
            health: health.clone(),
            ledger: Ledger::new(WINDOW),
            role: feed.as_ref().map(|f| f.role_watch()),
            feed,
            heartbeat,
            beat,
            pulse,
            qos0_in_channel: 0,
            busy: Default::default(),
            cancel: cancel.clone(),
            router,
            replays: Default::default(),
            stop: Stop::default(),
            backoff: Backoff::default(),
        };
        tasks.push(tokio::spawn(broker_loop.run(eventloop)));
        routes.push(Route { tx, health });
    }
    Ok(Link {
        publisher: Publisher {
            routes: routes.into(),
            topics,
            durable: durable.clone(),
            link_events,
        },
        commands,
        incoming,
        tasks: LinkTasks {
            tasks,
            outbox: durable,
        },
    })
}
