//! The gateway's drain task: the async shell around the pure [`Coordinator`].
//!
//! The daemon hands it every zone status it publishes and every `cmd/drill`; the MQTT link
//! hands it the acks and presence it subscribed to; a ticker brings the deadlines. It saves
//! the coordinator's state to `storage.dir/drain.json` before publishing anything that state
//! implies, so a restart mid-drain resumes the same `drain_id`. Shaped like the other
//! long-lived parts: a [`DrainHandle`] the daemon holds, one task that owns the state, bounded
//! channels between; the task ends when the handle is dropped (after the engine's last zone
//! status), so the daemon can stop it before the MQTT link says goodbye.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::coordinator::{AgentFault, Coordinator, Effects, Followed, Persisted};
use crate::alarms::ZoneStatus;
use crate::clock::Now;
use crate::command::Drill;
use crate::config::Config;
use crate::message::{CommandResult, Outgoing};
use crate::mqtt::{Inbound, LinkOptions, Publisher, Topics};
use crate::storage::{JsonStore, StoreError};

/// How often deadlines are checked; the clearance is at most this late.
const TICK: Duration = Duration::from_millis(200);

/// Room for zone statuses and drill commands not yet taken by the task.
const QUEUE: usize = 256;

/// The file under `storage.dir`.
pub const STATE_FILE: &str = "drain.json";

/// The gateway's MQTT link, plus the drain subscriptions when `[drain]` is configured.
pub fn link_options(cfg: &Config) -> LinkOptions {
    let mut opts = LinkOptions::gateway(cfg);
    if cfg.drain.is_some() {
        let t = Topics::new(cfg);
        opts.subscriptions = vec![t.drain_acks_filter(), t.drain_agents_filter()];
        if cfg.redundancy.is_some() {
            // A standby follows the pair's drains, to carry them on if it takes over.
            opts.subscriptions.extend(Followed::filters(t.root()));
        }
    }
    opts
}

/// The daemon's side: feeds the drain task. Without `[drain]` it does nothing (drills are
/// answered as refused).
#[derive(Debug)]
pub struct DrainHandle {
    zones: Option<mpsc::Sender<ZoneStatus>>,
    drills: Option<mpsc::Sender<Drill>>,
    publisher: Publisher,
    /// The coordinator's state as last saved, for metrics.
    view: watch::Receiver<Persisted>,
    /// False while this gateway is the standby of a pair: nothing is published.
    active: watch::Sender<bool>,
}

impl DrainHandle {
    /// Called with every message the daemon publishes; zone statuses go to the coordinator.
    pub async fn observe(&self, msg: &Outgoing) {
        if let (Some(tx), Outgoing::Zone(z)) = (&self.zones, msg) {
            if tx.send(z.clone()).await.is_err() {
                tracing::error!(
                    "drain: the drain task has stopped; zone {} not seen",
                    z.zone
                );
            }
        }
    }

    /// A gateway of a redundant pair became active (true) or standby (false). A standby's
    /// coordinator publishes nothing; the daemon gives it no zone statuses.
    pub fn set_active(&self, active: bool) {
        self.active.send_replace(active);
    }

    /// Every zone's current or last drain, as last saved to `drain.json` (empty without
    /// `[drain]`): what `/metrics` shows.
    pub fn snapshot(&self) -> Persisted {
        self.view.borrow().clone()
    }

    /// A `cmd/drill` command; answered on `cmd/result` by the task.
    pub async fn drill(&self, cmd: Drill) {
        match &self.drills {
            Some(tx) => {
                if tx.send(cmd).await.is_err() {
                    tracing::error!("drain: the drain task has stopped; drill not run");
                }
            }
            None => {
                let result = CommandResult {
                    command: "drill".into(),
                    ok: false,
                    reason: Some(
                        "no [drain] section in this gateway's configuration: nothing to drill"
                            .into(),
                    ),
                };
                self.publisher.send(Outgoing::CommandResult(result)).await;
            }
        }
    }
}

/// The running drain task, to be awaited after its handle is dropped.
#[derive(Debug)]
pub struct DrainService {
    task: Option<JoinHandle<()>>,
}

impl DrainService {
    /// Starts the task if `[drain]` is configured; fails only when `drain.json` cannot be read.
    pub fn start(
        cfg: &Config,
        publisher: Publisher,
        incoming: mpsc::Receiver<Inbound>,
        faults: Option<mpsc::Sender<AgentFault>>,
    ) -> Result<(DrainHandle, DrainService), StoreError> {
        let Some(drain) = &cfg.drain else {
            let handle = DrainHandle {
                zones: None,
                drills: None,
                publisher,
                view: watch::channel(Persisted::default()).1,
                active: watch::Sender::new(true),
            };
            return Ok((handle, DrainService { task: None }));
        };
        let (store, persisted): (JsonStore, Persisted) =
            JsonStore::open(&cfg.storage.dir, STATE_FILE)?;
        let coordinator = Coordinator::new(
            Topics::new(cfg),
            drain,
            cfg.zones(),
            persisted,
            Now::system(),
        );
        let (zone_tx, zones) = mpsc::channel(QUEUE);
        let (drill_tx, drills) = mpsc::channel(QUEUE);
        let (view_tx, view) = watch::channel(coordinator.persisted().clone());
        // A gateway of a pair starts standby: nothing resumed is published until it is active.
        let active = watch::Sender::new(cfg.redundancy.is_none());
        let drain_task = DrainTask {
            active: active.subscribe(),
            followed: Followed::default(),
            root: Topics::new(cfg).root().to_string(),
            view: view_tx,
            coordinator,
            store,
            publisher: publisher.clone(),
            zones,
            drills,
            incoming,
            faults,
        };
        let task = tokio::spawn(drain_task.run());
        let handle = DrainHandle {
            zones: Some(zone_tx),
            drills: Some(drill_tx),
            publisher,
            view,
            active,
        };
        Ok((handle, DrainService { task: Some(task) }))
    }

    /// Waits for the task, which ends once its [`DrainHandle`] is dropped.
    pub async fn stopped(self) {
        if let Some(task) = self.task {
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::error!("drain: the drain task panicked: {e}");
                }
            }
        }
    }
}

/// The drain task itself: owns the coordinator, its state file and the receiving ends of the
/// channels, so nothing else touches the drain state while it runs.
struct DrainTask {
    coordinator: Coordinator,
    store: JsonStore,
    publisher: Publisher,
    zones: mpsc::Receiver<ZoneStatus>,
    drills: mpsc::Receiver<Drill>,
    incoming: mpsc::Receiver<Inbound>,
    faults: Option<mpsc::Sender<AgentFault>>,
    view: watch::Sender<Persisted>,
    active: watch::Receiver<bool>,
    /// While standby: the pair's drains as published, adopted at the takeover.
    followed: Followed,
    /// `P`, to recognise the drain messages followed.
    root: String,
}

impl DrainTask {
    /// The task's body: resumes what `drain.json` held, then serves until the daemon drops
    /// its [`DrainHandle`].
    async fn run(mut self) {
        let fx = self.coordinator.resume(Now::system());
        self.apply(fx).await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut incoming_open = true;
        loop {
            let fx = tokio::select! {
                Ok(()) = self.active.changed() => {
                    let active = *self.active.borrow_and_update();
                    self.became(active)
                }
                z = self.zones.recv() => match z {
                    Some(z) => {
                        // Taken over just now: carry on the pair's drains before this zone
                        // status could start a new one.
                        let mut fx = self.role_changed();
                        let zone = self.coordinator.on_zone(&z, Now::system());
                        fx.messages.extend(zone.messages);
                        fx.faults.extend(zone.faults);
                        fx
                    }
                    // The daemon is done: its last zone status has been seen.
                    None => break,
                },
                Some(cmd) = self.drills.recv() => self.drill(cmd),
                m = self.incoming.recv(), if incoming_open => match m {
                    Some(m) if Followed::wants(&self.root, &m.topic) => {
                        // Active, these are this gateway's own drains coming back.
                        if !*self.active.borrow() {
                            self.followed.on_message(&self.root, &m.topic, &m.payload);
                        }
                        Effects::default()
                    }
                    Some(m) => self.coordinator.on_inbound(&m.topic, &m.payload, Now::system()),
                    None => {
                        incoming_open = false;
                        Effects::default()
                    }
                },
                _ = tick.tick() => self.coordinator.tick(Now::system()),
            };
            self.apply(fx).await;
        }
        tracing::debug!("drain: coordinator stopped");
    }

    /// On becoming active (a takeover), the pair's drains become this coordinator's.
    fn role_changed(&mut self) -> Effects {
        if !self.active.has_changed().unwrap_or(false) {
            return Effects::default();
        }
        let active = *self.active.borrow_and_update();
        self.became(active)
    }

    fn became(&mut self, active: bool) -> Effects {
        if active {
            self.coordinator.adopt(&self.followed, Now::system())
        } else {
            Effects::default()
        }
    }

    fn drill(&mut self, cmd: Drill) -> Effects {
        let (result, mut fx) = match self.coordinator.drill(&cmd.zone, Now::system()) {
            Ok((id, fx)) => (Ok(format!("drill {id} of zone {} started", cmd.zone)), fx),
            Err(refused) => (Err(refused.to_string()), Effects::default()),
        };
        let (ok, reason) = match result {
            Ok(r) => (true, r),
            Err(r) => {
                tracing::warn!("drill refused: {r}");
                (false, r)
            }
        };
        fx.messages.push(Outgoing::CommandResult(CommandResult {
            command: "drill".into(),
            ok,
            reason: Some(reason),
        }));
        fx
    }

    /// Saves the state if it changed, then publishes and reports.
    async fn apply(&mut self, fx: Effects) {
        if self.coordinator.take_dirty() {
            if let Err(e) = self.store.save(self.coordinator.persisted()) {
                // Publishing still goes ahead: the drain matters more than its resumability.
                tracing::error!(error = %e, "drain: cannot persist drain state; a restart would not resume this drain");
            }
            self.view.send_replace(self.coordinator.persisted().clone());
        }
        for f in fx.faults {
            if f.active {
                tracing::warn!(agent = %f.agent, severity = %f.severity, "drain agent fault: {}", f.detail);
            }
            // The daemon turns these into `_drain/{agent}/agent-offline` alarms.
            if let Some(tx) = &self.faults {
                if tx.try_send(f).is_err() {
                    tracing::warn!("drain: agent fault not handed to the alarm table (queue full)");
                }
            }
        }
        if !*self.active.borrow() {
            // The standby of a pair: the active gateway publishes the drains.
            return;
        }
        for m in fx.messages {
            self.publisher.send(m).await;
        }
    }
}
