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
//! - polls rumqttc continuously, reconnecting with jittered exponential backoff for as long as
//!   it runs, logging each failure once with the broker URL and the reason;
//! - on every CONNACK publishes the retained online presence and subscribes to `cmd/+` (the
//!   gateway) and to the caller's extra filters;
//! - hands publications to rumqttc through a [`Ledger`] that tracks every QoS 1 publish until
//!   the broker's PUBACK, and after a reconnect resends, in order, whatever was not confirmed
//!   (rumqttc itself drops those on a clean session: see `ledger.rs`);
//! - with an outbox: takes records from its feed while the window has room, reports PUBACKs
//!   back to it, republishes the retained status every `mqtt.heartbeat` with the latest `seq`,
//!   and answers `cmd/replay` itself from the journal;
//! - turns publishes on `cmd/+` into [`Command`]s, and those on the extra filters into
//!   [`Inbound`] messages (every broker's loop feeds the same two channels);
//! - on cancellation, sends what is queued, then the retained offline status, waits (up to
//!   [`STOP_GRACE`]) for the broker's acks, and disconnects cleanly. If the grace runs out it
//!   closes the socket without DISCONNECT, so the broker's last will still marks the gateway
//!   offline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttState,
    Outgoing as Wire, QoS, StateError, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::delivery::{self, DurableOutbox, Feed};
use super::echo::Echoes;
use super::embedded;
use super::ledger::{Entry, Ledger};
use super::options::{self, RUMQTTC_INFLIGHT};
use super::payload::{Class, GatewayStatus, Publication};
use super::topics;
use super::{MqttError, Topics};
use crate::clock::Pulse;
use crate::command::{Command, Refused};
use crate::config::{BrokerUrl, Config};
use crate::message::Outgoing;

/// Room in the pipeline → link channel. Large: the channel is also where events wait while
/// the broker is unreachable, and `send` blocks the pipeline only once it is full.
pub const QUEUE: usize = 16_384;

/// QoS 1 publishes handed to rumqttc and not yet acked. Below rumqttc's own in-flight limit,
/// so rumqttc never blocks or replays on its own and packet ids never collide when the broker
/// acks in order.
const WINDOW: usize = 64;

/// QoS 0 telemetry allowed to wait in rumqttc's request channel; beyond that it is dropped.
const TELEMETRY_SLOTS: usize = 256;

/// Room for commands not yet taken by the daemon; more are dropped with a warning rather than
/// stall the connection.
const COMMANDS: usize = 64;

/// Room for messages on the extra subscriptions not yet taken by the caller. They were acked to
/// the broker on receipt, so the room is generous; beyond it they are dropped with a warning
/// rather than stall keep-alives.
const INBOUND: usize = 1024;

/// After cancellation: how long queued messages may take to be confirmed.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A connection that lasted this long resets the backoff; one that drops sooner (a broker that
/// kicks us at once) keeps escalating, so the gateway does not hammer it.
const STABLE: Duration = Duration::from_secs(10);

/// While the same connection failure repeats, it is logged at warn level this often.
const REPEAT_WARNING: Duration = Duration::from_secs(60);

/// A publish received on one of [`LinkOptions::subscriptions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The broker delivered a stored retained message (a new subscription's first look).
    pub retain: bool,
}

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

/// The pipeline's handle on the link. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    /// One per broker loop: `mqtt.url` first, then each of `mqtt.also` (durable links only).
    routes: Arc<[Route]>,
    topics: Arc<Topics>,
    /// The outbox durable messages go through; `None` for a link without one (tests, tools).
    durable: Option<Arc<DurableOutbox>>,
}

/// The way into one broker loop.
#[derive(Clone)]
struct Route {
    tx: mpsc::Sender<Publication>,
    health: Arc<BrokerHealth>,
}

/// One broker's health as the handles see it: the connection flag, the telemetry-dropped
/// counter, and the loop's pulse. The loop task writes it; [`Publisher`] reads it for metrics
/// and the watchdog.
#[derive(Debug)]
struct BrokerHealth {
    /// The broker, as configured (for metrics and log lines).
    url: String,
    connected: AtomicBool,
    telemetry_dropped: AtomicU64,
    /// When the loop last came round to its select. A loop that is stuck (a handler that
    /// never returns) stops marking it, connected or not.
    pulse: Pulse,
}

impl BrokerHealth {
    fn new(url: String) -> BrokerHealth {
        BrokerHealth {
            url,
            connected: AtomicBool::new(false),
            telemetry_dropped: AtomicU64::new(0),
            pulse: Pulse::new(),
        }
    }
}

/// How often a broker loop marks its pulse ([`Publisher::stalled_links`]).
pub const PULSE: Duration = Duration::from_secs(1);

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
        for r in self.routes.iter() {
            if !r.health.connected.load(Ordering::Relaxed)
                || r.tx.try_send(publication.clone()).is_err()
            {
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

    /// Publishes the retained fault status on every broker, straight from memory (the outbox
    /// is what failed), ahead of the offline status the stop then sends.
    pub async fn report_fault(&self, reason: &str) {
        let status = GatewayStatus::Fault {
            reason: reason.to_string(),
        };
        self.send_queued(Publication::status(&self.topics, &status))
            .await;
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
            .map(|r| {
                (
                    r.health.url.clone(),
                    r.health.connected.load(Ordering::Relaxed),
                )
            })
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
        self.routes
            .iter()
            .any(|r| r.health.connected.load(Ordering::Relaxed))
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
        let (client, mut eventloop) = AsyncClient::new(mqtt_opts, WINDOW + TELEMETRY_SLOTS + 8);
        // TCP_NODELAY (rumqttc leaves Nagle on). A poll's QoS 0 telemetry is written at once,
        // its alarm event only after the outbox fsync; the broker answers no QoS 0 publish and
        // delays its TCP ACK (about 40 ms on Linux), and Nagle held the event back until that
        // ACK: 42 ms median from our socket write to the subscriber in the latency bench,
        // 0.3 ms with NODELAY. Our publishes are few and small: each goes out when written.
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, rx) = mpsc::channel(QUEUE);
        let health = Arc::new(BrokerHealth::new(url.to_string()));
        let mut pulse = tokio::time::interval(PULSE);
        pulse.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let feed = durable.as_ref().map(|d| d.feed(&url.to_string()));
        let heartbeat = feed.as_ref().map(|_| {
            let mut i = tokio::time::interval(m.heartbeat);
            // After a disconnection, one heartbeat, not a burst of the missed ones.
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let broker_loop = BrokerLoop {
            url,
            client_id: opts.client_id.clone(),
            topics: topics.clone(),
            presence: opts.presence.clone(),
            wants_commands: opts.commands,
            subscriptions: opts.subscriptions.clone(),
            started_at: started_at.clone(),
            client,
            rx,
            commands: cmd_tx.clone(),
            incoming: in_tx.clone(),
            health: health.clone(),
            ledger: Ledger::new(WINDOW),
            feed,
            heartbeat,
            pulse,
            index,
            echoes: echoes.clone(),
            telemetry_in_channel: 0,
            cancel: cancel.clone(),
            stopping: false,
            deadline: Instant::now(),
            rx_done: false,
            offline_queued: false,
            disconnect_sent: false,
            failures: 0,
            connected_since: None,
            last_error: None,
            next_delay: BACKOFF_FIRST,
        };
        tasks.push(tokio::spawn(broker_loop.run(eventloop)));
        routes.push(Route { tx, health });
    }
    Ok(Link {
        publisher: Publisher {
            routes: routes.into(),
            topics,
            durable: durable.clone(),
        },
        commands,
        incoming,
        tasks: LinkTasks {
            tasks,
            outbox: durable,
        },
    })
}

/// Why the inner select loop handed control back.
enum Step {
    Polled(Result<Event, ConnectionError>),
    /// The stop grace ran out.
    Deadline,
}

/// The loop of one broker: everything here is owned by its one task; the handles see only
/// [`BrokerHealth`].
struct BrokerLoop {
    url: BrokerUrl,
    client_id: String,
    topics: Arc<Topics>,
    presence: Presence,
    wants_commands: bool,
    subscriptions: Vec<String>,
    /// When this process started (RFC 3339), for the outbox-enriched gateway status.
    started_at: String,
    client: AsyncClient,
    rx: mpsc::Receiver<Publication>,
    commands: mpsc::Sender<Result<Command, Refused>>,
    incoming: mpsc::Sender<Inbound>,
    health: Arc<BrokerHealth>,
    ledger: Ledger,
    /// This broker's view of the outbox (durable links only).
    feed: Option<Feed>,
    /// When to republish the retained status with the latest `seq` (durable links only).
    heartbeat: Option<tokio::time::Interval>,
    /// When to show the loop is alive (`BrokerHealth::pulse`).
    pulse: tokio::time::Interval,
    /// This broker's place in the link (0: `mqtt.url`, then `mqtt.also`).
    index: usize,
    /// Commands lately heard through any of the link's brokers (several brokers only).
    echoes: Option<Arc<std::sync::Mutex<Echoes>>>,
    /// QoS 0 publishes handed to rumqttc and not yet written.
    telemetry_in_channel: usize,
    cancel: CancellationToken,
    stopping: bool,
    /// When the stop grace ends (meaningful once `stopping`).
    deadline: Instant,
    /// The pipeline channel is closed and empty.
    rx_done: bool,
    /// The final offline status is queued: nothing more is taken.
    offline_queued: bool,
    disconnect_sent: bool,
    /// Consecutive failures, for the backoff.
    failures: u32,
    connected_since: Option<Instant>,
    /// The last failure logged at warn level, and when: a repeat of it within
    /// [`REPEAT_WARNING`] is logged at debug only.
    last_error: Option<(String, Instant)>,
    /// How long to wait before the next connection attempt.
    next_delay: Duration,
}

impl BrokerLoop {
    async fn run(mut self, mut eventloop: EventLoop) {
        loop {
            let step = {
                // The poll future is never dropped half-way (rumqttc's poll is not cancel
                // safe: a publish taken from its channel but not yet written would be stuck).
                // It stays pinned while the other branches feed rumqttc through `client`.
                let poll = eventloop.poll();
                tokio::pin!(poll);
                loop {
                    tokio::select! {
                        r = &mut poll => break Step::Polled(r),
                        () = self.cancel.cancelled(), if !self.stopping => self.begin_stop(),
                        m = self.rx.recv(), if self.can_take() => self.take(m),
                        () = Feed::appended(&mut self.feed), if self.can_take_durable() => self.pump_feed(),
                        () = tick(&mut self.heartbeat), if self.connected() && !self.stopping => self.send_heartbeat(),
                        _ = self.pulse.tick() => self.health.pulse.mark(),
                        () = sleep_until(self.deadline), if self.stopping => break Step::Deadline,
                    }
                }
            };
            match step {
                Step::Deadline => return self.give_up(),
                Step::Polled(Ok(event)) => {
                    if self.on_event(event) {
                        return self.finish();
                    }
                }
                Step::Polled(Err(e)) => {
                    self.on_error(e, &mut eventloop);
                    if !self.back_off().await {
                        return self.give_up();
                    }
                }
            }
            self.pump();
            self.maybe_disconnect();
        }
    }

    fn connected(&self) -> bool {
        self.connected_since.is_some()
    }

    /// New pipeline messages are taken only when they can go straight to rumqttc: connected,
    /// nothing older waiting in the backlog, room in the window.
    fn can_take(&self) -> bool {
        self.connected()
            && !self.rx_done
            && self.ledger.backlog_is_empty()
            && self.ledger.has_room()
    }

    /// Outbox records are taken on the same terms, until the offline status is queued.
    fn can_take_durable(&self) -> bool {
        self.feed.is_some()
            && self.connected()
            && !self.offline_queued
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

    fn take(&mut self, msg: Option<Publication>) {
        let Some(p) = msg else {
            self.rx_done = true;
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
        if self.telemetry_in_channel >= TELEMETRY_SLOTS
            || self
                .client
                .try_publish(p.topic, p.qos, p.retain, p.payload)
                .is_err()
        {
            self.health
                .telemetry_dropped
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.telemetry_in_channel += 1;
        }
    }

    /// Gives one QoS 1 publication to rumqttc and records it in the ledger.
    fn hand(&mut self, entry: Entry) -> bool {
        let p = &entry.publication;
        match self
            .client
            .try_publish(p.topic.clone(), p.qos, p.retain, p.payload.clone())
        {
            Ok(()) => {
                self.ledger.handed(entry);
                true
            }
            Err(e) => {
                // The channel is sized for the window, so this means rumqttc is gone or full
                // beyond design; keep the message for the next attempt.
                tracing::error!("mqtt: cannot hand {} to the MQTT client: {e}", p.topic);
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
        self.pump_feed();
        self.maybe_queue_offline();
    }

    fn begin_stop(&mut self) {
        self.stopping = true;
        self.deadline = Instant::now() + STOP_GRACE;
        // Nothing new gets in; what is already queued is still delivered, then the offline
        // status goes last.
        self.rx.close();
        self.maybe_queue_offline();
        self.pump();
        self.maybe_disconnect();
    }

    /// The offline status goes last: once stopping, the pipeline channel is drained and every
    /// outbox record has been handed over.
    fn maybe_queue_offline(&mut self) {
        let drained = self.feed.as_ref().is_none_or(|f| !f.has_more());
        if self.stopping && self.rx_done && drained && !self.offline_queued {
            self.offline_queued = true;
            self.queue_offline();
        }
    }

    fn queue_offline(&mut self) {
        let offline = Publication::presence(&self.presence.topic, &self.presence.offline, false);
        let entry = self.ledger.stamp(offline);
        self.ledger.push_backlog(entry);
        self.pump();
    }

    /// Once stopping and everything (offline status included) is confirmed: DISCONNECT, so
    /// the broker discards the last will (the retained status already says offline).
    fn maybe_disconnect(&mut self) {
        if self.offline_queued && self.ledger.is_idle() && self.connected() && !self.disconnect_sent
        {
            match self.client.try_disconnect() {
                Ok(()) => self.disconnect_sent = true,
                Err(e) => tracing::debug!("mqtt: cannot queue DISCONNECT: {e}"),
            }
        }
    }

    /// Handles one event from rumqttc. Returns true when the link is done (DISCONNECT sent).
    fn on_event(&mut self, event: Event) -> bool {
        match event {
            Event::Incoming(Incoming::ConnAck(_)) => self.on_connack(),
            Event::Incoming(Incoming::Publish(p)) => self.on_publish(p),
            Event::Incoming(Incoming::PubAck(ack)) => self.on_puback(ack.pkid),
            Event::Incoming(Incoming::SubAck(ack)) => self.on_suback(&ack),
            Event::Outgoing(Wire::Publish(0)) => {
                self.telemetry_in_channel = self.telemetry_in_channel.saturating_sub(1);
            }
            Event::Outgoing(Wire::Publish(pkid)) => self.on_written(pkid),
            Event::Outgoing(Wire::AwaitAck(pkid)) => self.ledger.parked(pkid),
            Event::Outgoing(Wire::Disconnect) => return self.stopping,
            _ => {}
        }
        false
    }

    fn on_puback(&mut self, pkid: u16) {
        match self.ledger.acked(pkid) {
            Some(entry) => {
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
                self.filters().join(", ")
            );
        }
    }

    fn on_connack(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                "mqtt broker {}: connected as {} after {} failed attempt{}",
                self.url,
                self.client_id,
                self.failures,
                if self.failures == 1 { "" } else { "s" }
            );
        } else {
            tracing::info!("mqtt broker {}: connected as {}", self.url, self.client_id);
        }
        self.connected_since = Some(Instant::now());
        self.last_error = None;
        self.health.connected.store(true, Ordering::Relaxed);
        self.disconnect_sent = false;
        if self.stopping {
            // Reconnected during the stop grace: only flush what is queued and say offline;
            // announcing "online" now would be a lie.
            return;
        }
        let online = self.online_presence();
        let entry = self.ledger.stamp(online);
        self.hand(entry);
        for filter in self.filters() {
            if let Err(e) = self.client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                tracing::error!("mqtt: cannot subscribe to {filter}: {e}");
            }
        }
        if !self.ledger.backlog_is_empty() {
            tracing::info!(
                "mqtt broker {}: resending {} unconfirmed message(s)",
                self.url,
                self.ledger.backlog_len()
            );
        }
    }

    /// Every filter subscribed on connect: commands (if wanted), then the extras.
    fn filters(&self) -> Vec<String> {
        let mut f = Vec::with_capacity(self.subscriptions.len() + 1);
        if self.wants_commands {
            f.push(self.topics.cmd_filter());
        }
        f.extend(self.subscriptions.iter().cloned());
        f
    }

    /// Routes a received publish: commands to [`Link::commands`], anything on the extra
    /// filters to [`Link::incoming`].
    fn on_publish(&mut self, p: rumqttc::Publish) {
        if self.wants_commands && self.topics.command_name(&p.topic).is_some() {
            return self.on_command(p);
        }
        if !self
            .subscriptions
            .iter()
            .any(|f| topics::matches(&p.topic, f))
        {
            if p.topic != self.topics.cmd_result() {
                tracing::debug!("mqtt: ignoring publish on {}", p.topic);
            }
            return;
        }
        let msg = Inbound {
            topic: p.topic.clone(),
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

    fn on_command(&mut self, p: rumqttc::Publish) {
        let Some(name) = self.topics.command_name(&p.topic) else {
            return;
        };
        if p.retain {
            // A retained command would be replayed at every reconnect.
            tracing::warn!(
                "mqtt: ignoring retained command on {}; commands must not be retained",
                p.topic
            );
            return;
        }
        if let (Some(feed), "replay") = (&self.feed, name) {
            // Answered here, on the broker that asked, from the outbox's journal.
            let request = match Command::parse(name, &p.payload) {
                Ok(Command::Replay(r)) => Ok(r),
                Ok(other) => Err(Refused::new(name, format!("not a replay: {other:?}"))),
                Err(refused) => Err(refused),
            };
            for publication in feed.replay(request, &self.topics) {
                let entry = self.ledger.stamp(publication);
                self.ledger.push_backlog(entry);
            }
            return;
        }
        if let Some(echoes) = &self.echoes {
            let echo = echoes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_echo(self.index, name, &p.payload, std::time::Instant::now());
            if echo {
                tracing::info!(
                    "mqtt broker {}: command {name:?} already received through another broker (a bridge's copy); not applied twice",
                    self.url
                );
                return;
            }
        }
        match self.commands.try_send(Command::parse(name, &p.payload)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => tracing::warn!(
                "mqtt: command queue full; dropped command {name:?} from {}",
                p.topic
            ),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("mqtt: nobody takes commands; dropped {name:?}")
            }
        }
    }

    /// After a failed poll: settle the books, then log.
    fn on_error(&mut self, e: ConnectionError, eventloop: &mut EventLoop) {
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
        let requeued = self.ledger.connection_lost();
        let lost_telemetry = std::mem::take(&mut self.telemetry_in_channel) as u64;
        self.health
            .telemetry_dropped
            .fetch_add(lost_telemetry, Ordering::Relaxed);
        self.health.connected.store(false, Ordering::Relaxed);
        if let Some(since) = self.connected_since.take() {
            if since.elapsed() >= STABLE {
                self.failures = 0;
            }
        }
        self.failures = self.failures.saturating_add(1);

        let reason = describe(&e);
        let delay = backoff(self.failures);
        let unconfirmed = if requeued > 0 {
            format!("; {requeued} unconfirmed message(s) will be resent")
        } else {
            String::new()
        };
        // One line per failure; repeats of the same failure go to debug (but to warn again
        // every REPEAT_WARNING) so a broker down for an hour neither floods the journal nor
        // goes quiet.
        let repeat = matches!(&self.last_error, Some((last, at))
            if *last == reason && at.elapsed() < REPEAT_WARNING);
        if repeat {
            tracing::debug!(
                "mqtt broker {}: {reason}; retrying in {} ms{unconfirmed}",
                self.url,
                delay.as_millis()
            );
        } else {
            tracing::warn!(
                "mqtt broker {}: {reason}; retrying in {} ms{unconfirmed}",
                self.url,
                delay.as_millis()
            );
            self.last_error = Some((reason, Instant::now()));
        }
        self.next_delay = delay;
    }

    /// Sleeps the backoff; false if the stop grace ran out meanwhile.
    async fn back_off(&mut self) -> bool {
        let wake = Instant::now() + self.next_delay;
        loop {
            tokio::select! {
                () = sleep_until(wake) => return true,
                () = self.cancel.cancelled(), if !self.stopping => self.begin_stop(),
                _ = self.pulse.tick() => self.health.pulse.mark(),
                () = sleep_until(self.deadline), if self.stopping => return false,
            }
        }
    }

    /// Stopped with messages the broker never confirmed: say how many. The socket (if any)
    /// closes without DISCONNECT, so the broker's last will marks the gateway offline.
    fn give_up(&mut self) {
        self.health.connected.store(false, Ordering::Relaxed);
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
        self.health.connected.store(false, Ordering::Relaxed);
        tracing::info!("mqtt broker {}: disconnected cleanly", self.url);
    }
}

/// The next heartbeat tick; never, for a link without heartbeats.
async fn tick(heartbeat: &mut Option<tokio::time::Interval>) {
    match heartbeat {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// `BACKOFF_FIRST` doubling per failure up to `BACKOFF_MAX`, with jitter (50–100 %) so a site's
/// gateways do not all reconnect in the same instant after a broker restart.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let ceiling = BACKOFF_FIRST.saturating_mul(1 << exp).min(BACKOFF_MAX);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// A connection failure in an operator's words.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => {
                "broker refused the login: bad user name or password (mqtt.username, mqtt.password_file)".into()
            }
            ConnectReturnCode::NotAuthorized => {
                "broker refused the login: not authorized (check mqtt.username / mqtt.password_file and the broker's ACL)".into()
            }
            ConnectReturnCode::BadClientId => {
                "broker refused the client id (mqtt.client_id)".into()
            }
            ConnectReturnCode::ServiceUnavailable => {
                "broker refused the connection: service unavailable".into()
            }
            ConnectReturnCode::RefusedProtocolVersion => {
                "broker refused MQTT 3.1.1".into()
            }
            ConnectReturnCode::Success => "broker sent an odd CONNACK".into(),
        },
        ConnectionError::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "cannot connect: connection refused (is the broker running?)".into()
            }
            _ => format!("cannot connect: {io}"),
        },
        ConnectionError::NetworkTimeout => "no answer from the broker in time".into(),
        ConnectionError::Tls(t) => format!("TLS: {t}"),
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            "connection closed by the broker".into()
        }
        ConnectionError::MqttState(StateError::AwaitPingResp) => {
            "connection lost: no answer to keep-alive ping".into()
        }
        ConnectionError::MqttState(StateError::Io(io))
        | ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(io))) => {
            format!("connection lost: {io}")
        }
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(n),
        )) => format!("connection dropped: the broker sent a {n}-byte packet, above the limit"),
        ConnectionError::MqttState(s) => format!("connection lost: {s}"),
        ConnectionError::FlushTimeout => "connection lost: write timed out".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_is_silent_for_as_long() {
        let mut health = BrokerHealth::new("mqtt://broker:1883".into());
        // As if the loop had last come round 20 s ago.
        health.pulse = Pulse::marked_ago(Duration::from_secs(20));
        assert!(health.pulse.silent_for() >= Duration::from_secs(20));
        health.pulse.mark();
        assert!(health.pulse.silent_for() < Duration::from_secs(1));
    }

    #[test]
    fn backoff_doubles_from_100ms_to_5s_with_jitter() {
        for _ in 0..50 {
            let first = backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let fourth = backoff(4);
            assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800));
            let late = backoff(40);
            assert!(late >= Duration::from_millis(2500) && late <= BACKOFF_MAX);
        }
    }

    #[test]
    fn a_refused_login_says_so() {
        let e = ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword);
        assert!(describe(&e).contains("refused the login: bad user name or password"));
        let e = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert!(describe(&e).contains("refused the login: not authorized"));
        let e = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(describe(&e).contains("is the broker running?"));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(reset)));
        assert_eq!(describe(&e), "connection lost: connection reset");
    }
}
