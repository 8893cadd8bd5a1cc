//! `emberwatch drain-agent`: runs on (or next to) a load balancer or cluster, and drains it
//! when the gateway asks.
//!
//! It subscribes to its zones' retained drain requests with a persistent session (QoS 1), so a
//! request published while it was reconnecting still reaches it, and runs its `drain` hook once
//! per `drain_id`, acking `started` and then `done`/`failed` with the hook's exit status and
//! output tail. A cancellation runs its `restore` hook. What it did is written to
//! `storage.dir/agent-{id}.json` *before* a hook starts, so neither a broker outage nor the
//! agent's own restart can run a hook twice for one drain: a hook that was running when the
//! agent died is reported `failed` (interrupted), not run again. When it sees a request it has
//! already handled (the gateway republishes after its own restart), it answers again with what
//! it already did, so the gateway catches up.
//!
//! Its presence is retained on `P/drain/agents/{agent}`, with a last will saying offline, so
//! operators and the gateway see a missing agent before a fire, not during one.
//!
//! A zone is drained once even when two gateways of a redundant pair each ask under their own
//! `drain_id` (a split brain): the second request joins the first ([`zones`] says when, and
//! when the traffic may come back). For that it also reads the gateways' retained statuses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::hook;
use super::messages::{
    Ack, AckState, Action, Cancelled, Presence, PresenceState, Request, RequestMessage,
};
use crate::clock::unix_ms;
use crate::config::{Agent, Config};
use crate::message::Outgoing;
use crate::mqtt::{self, Inbound, LinkOptions, Publisher, Topics};
use crate::storage::{JsonStore, StoreError};
use watchdog::{watch_over, WorkerPulse};
use zones::Gateways;

mod watchdog;
mod zones;

/// Handled drains remembered; older ones are forgotten (a drain_id is never reused).
const REMEMBER: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the configuration has no [agent] section")]
    NoAgent,
    #[error("agent state in storage.dir: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// How far one hook got, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    NotRun,
    /// Written before the hook starts; found on start-up, it means the agent died mid-hook.
    Running,
    Finished {
        ok: bool,
        exit_status: Option<i32>,
        detail: String,
        output: String,
    },
}

/// One drain this agent has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handled {
    pub zone: String,
    pub drill: bool,
    /// When first seen (Unix ms), to forget the oldest.
    pub seen_ms: u64,
    pub drain: Stage,
    pub restore: Stage,
    /// The drain of the same zone whose hook ran, when this request joined it instead of
    /// running the hook again (two gateways of a pair asking under different ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<String>,
    /// The gateway that asked, when the request says (the latest to repeat it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The request topic said cancelled, or the same gateway asked for a newer drain of the
    /// zone: this drain no longer holds the zone's traffic away.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
}

/// `storage.dir/agent-{id}.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub drains: BTreeMap<String, Handled>,
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), AgentError> {
    let cancel = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AgentError::Signals)?;
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            _ = stop.cancelled() => return,
        }
        stop.cancel();
    });
    serve(cfg, cancel).await
}

/// The agent's MQTT identity: presence topic and payloads, its zones' request topics, a
/// persistent session. Its client id defaults to `emberwatch-agent-{id}` (the gateway's
/// default, `emberwatch-{gateway}`, would make every agent of a site the same client).
pub fn link_options(cfg: &Config, agent: &Agent) -> LinkOptions {
    let topics = Topics::new(cfg);
    let presence = |state| {
        serde_json::to_vec(&Presence {
            state,
            zones: agent.zones.clone(),
        })
        .unwrap_or_default()
    };
    let client_id = if cfg.mqtt.client_id == format!("emberwatch-{}", cfg.site.gateway) {
        format!("emberwatch-agent-{}", agent.id)
    } else {
        cfg.mqtt.client_id.clone()
    };
    LinkOptions {
        client_id,
        presence: mqtt::Presence {
            topic: topics.drain_agent(&agent.id),
            online: presence(PresenceState::Online),
            offline: presence(PresenceState::Offline),
        },
        commands: false,
        subscriptions: agent
            .zones
            .iter()
            .map(|z| topics.drain_request(z))
            .chain([topics.gateway_statuses_filter()])
            .collect(),
        persistent_session: true,
        host_embedded: false,
    }
}

/// Runs the agent until `cancel`; the demo and tests use this directly.
pub async fn serve(cfg: Config, cancel: CancellationToken) -> Result<(), AgentError> {
    let agent = cfg.agent.clone().ok_or(AgentError::NoAgent)?;
    let (store, state): (JsonStore, AgentState) =
        JsonStore::open(&cfg.storage.dir, &format!("agent-{}.json", agent.id))?;
    let link_cancel = CancellationToken::new();
    let mut link =
        mqtt::connect_with(&cfg, link_options(&cfg, &agent), link_cancel.clone()).await?;
    tracing::info!(
        agent = %agent.id,
        zones = ?agent.zones,
        broker = %cfg.mqtt.url,
        state = %store.path().display(),
        "emberwatch drain agent running"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let pulse = Arc::new(WorkerPulse::default());
    // Its own token: the loop below may also end because the link closed.
    let watchdog_stop = CancellationToken::new();
    let watchdog = sd_notify::watchdog_enabled().map(|_| {
        tokio::spawn(watch_over(
            link.publisher.clone(),
            pulse.clone(),
            agent.timeout,
            watchdog_stop.clone(),
        ))
    });
    let mut beat = tokio::time::interval(mqtt::PULSE);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut worker = Worker {
        topics: Topics::new(&cfg),
        agent,
        store,
        state,
        publisher: link.publisher.clone(),
        cancel: cancel.clone(),
        gateways: Gateways::default(),
    };
    loop {
        pulse.idle();
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = beat.tick() => {}
            m = link.incoming.recv() => match m {
                Some(m) => {
                    pulse.busy();
                    worker.on_message(m).await;
                }
                None => break,
            },
        }
    }
    // Acks already handed to the link are delivered, then the offline presence.
    link_cancel.cancel();
    link.closed().await;
    watchdog_stop.cancel();
    if let Some(task) = watchdog {
        let _ = task.await;
    }
    Ok(())
}

/// The agent's state and what it acts with; one message at a time, so hooks never overlap.
struct Worker {
    topics: Topics,
    agent: Agent,
    store: JsonStore,
    state: AgentState,
    publisher: Publisher,
    cancel: CancellationToken,
    /// The gateways' standing from their retained statuses, to tell live requests.
    gateways: Gateways,
}

impl Worker {
    async fn on_message(&mut self, m: Inbound) {
        if let Some(gw) = self.topics.status_gateway(&m.topic) {
            return self.on_status(gw, &m.payload).await;
        }
        let Some(zone) = self
            .agent
            .zones
            .iter()
            .find(|z| self.topics.drain_request(z) == m.topic)
            .cloned()
        else {
            tracing::debug!("ignoring publish on {}", m.topic);
            return;
        };
        if m.payload.is_empty() {
            return; // a cleared retained request
        }
        match serde_json::from_slice::<RequestMessage>(&m.payload) {
            Ok(RequestMessage::Request(r)) => self.on_request(&zone, r).await,
            Ok(RequestMessage::Cancelled(c)) => self.on_cancelled(&zone, c).await,
            Err(e) => {
                tracing::warn!(zone = %zone, "ignoring a drain request that is not one ({e})")
            }
        }
    }

    async fn on_status(&mut self, gateway: &str, payload: &[u8]) {
        match self.gateways.update(gateway, payload) {
            Ok(false) => {}
            Ok(true) => {
                // A gateway died or stepped down: a restore it alone was holding may run.
                for (lead, cancelled) in self.state.restores_due(&self.gateways) {
                    let Some(h) = self.state.drains.get(&lead).cloned() else {
                        continue;
                    };
                    tracing::warn!(zone = %h.zone, drain_id = %lead, gateway, "no drain of the zone is asked for any more (gateway {gateway} gone or standby): restoring");
                    let c = Cancelled {
                        drain_id: cancelled,
                        state: super::messages::CancelledState::Cancelled,
                        drill: h.drill,
                        gateway: None,
                    };
                    self.restore(&h.zone, &lead, c).await;
                }
            }
            Err(e) => tracing::warn!("ignoring {e}"),
        }
    }

    async fn on_request(&mut self, zone: &str, r: Request) {
        if let Some(h) = self.state.drains.get_mut(&r.drain_id) {
            if r.gateway.is_some() && h.gateway != r.gateway {
                // The pair's other gateway took the drain over (same id): it asks now.
                h.gateway = r.gateway.clone();
                self.save();
            }
        }
        if let Some(h) = self.state.drains.get(&r.drain_id).cloned() {
            if !h.cancelled && h.restore != Stage::NotRun {
                // Restored because its gateway went away or stood by, never cancelled, and
                // asked for again: the zone wants draining, so this is a new drain.
                tracing::warn!(zone, drain_id = %r.drain_id, "a drain restored without its cancellation is asked for again: draining again");
                self.state.drains.remove(&r.drain_id);
            } else {
                match h.drain {
                    Stage::Finished { .. } => {
                        // Seen again (gateway restarted, escalation, reconnect): say it again.
                        tracing::debug!(drain_id = %r.drain_id, "drain already handled; repeating its ack");
                        self.ack(zone, &r.drain_id, h.drill, Action::Drain, &h.drain)
                            .await;
                    }
                    Stage::Running => self.interrupted(zone, &r.drain_id, Action::Drain).await,
                    Stage::NotRun => {}
                }
                return;
            }
        }
        self.state
            .supersede(zone, r.gateway.as_deref(), r.drill, &r.drain_id);
        let lead = self.state.lead(zone, r.drill);
        let joined = lead.as_ref().map(|lead| {
            let how = match self.state.drains.get(lead).map(|h| &h.drain) {
                Some(Stage::Finished { detail, .. }) => detail.clone(),
                _ => String::new(),
            };
            Stage::Finished {
                ok: true,
                exit_status: None,
                detail: format!(
                    "joined drain {lead} already under way for zone {zone}: the drain hook is not run again ({lead}: {how})"
                ),
                output: String::new(),
            }
        });
        self.state.drains.insert(
            r.drain_id.clone(),
            Handled {
                zone: zone.to_string(),
                drill: r.drill,
                seen_ms: unix_ms(SystemTime::now()),
                drain: joined.clone().unwrap_or(Stage::Running),
                restore: Stage::NotRun,
                joined: lead.clone(),
                gateway: r.gateway.clone(),
                cancelled: false,
            },
        );
        self.forget_oldest();
        if let Some(done) = joined {
            tracing::warn!(zone, drain_id = %r.drain_id, gateway = ?r.gateway, lead = ?lead, "drain requested for a zone already drained: joining it, hook not run again");
            self.save();
            self.ack(zone, &r.drain_id, r.drill, Action::Drain, &done)
                .await;
            return;
        }
        tracing::warn!(zone, drain_id = %r.drain_id, severity = %r.severity, drill = r.drill, "drain requested: running the drain hook");
        if !self.save() {
            // Without the record a restart could run this hook again; refuse rather than risk it.
            let failed = Stage::Finished {
                ok: false,
                exit_status: None,
                detail: "cannot record the drain in storage.dir; hook not run".into(),
                output: String::new(),
            };
            self.ack(zone, &r.drain_id, r.drill, Action::Drain, &failed)
                .await;
            return;
        }
        self.ack(zone, &r.drain_id, r.drill, Action::Drain, &Stage::Running)
            .await;
        let payload =
            serde_json::to_string(&RequestMessage::Request(r.clone())).unwrap_or_default();
        let env = self.env(
            zone,
            &r.drain_id,
            r.severity.as_str(),
            r.drill,
            "drain",
            payload,
        );
        let report = hook::run(&self.agent.drain, &env, self.agent.timeout, &self.cancel).await;
        self.finish(zone, &r.drain_id, r.drill, Action::Drain, report)
            .await;
    }

    async fn on_cancelled(&mut self, zone: &str, c: Cancelled) {
        let Some(h) = self.state.drains.get(&c.drain_id).cloned() else {
            tracing::debug!(drain_id = %c.drain_id, "cancellation of a drain this agent never ran; nothing to restore");
            return;
        };
        match h.restore {
            Stage::Finished { .. } => {
                self.ack(zone, &c.drain_id, h.drill, Action::Restore, &h.restore)
                    .await;
                return;
            }
            Stage::Running => return self.interrupted(zone, &c.drain_id, Action::Restore).await,
            Stage::NotRun => {}
        }
        if h.drain == Stage::NotRun {
            return;
        }
        if !h.cancelled {
            if let Some(h) = self.state.drains.get_mut(&c.drain_id) {
                h.cancelled = true;
            }
            self.save();
        }
        let lead = self.state.lead_of(&c.drain_id);
        let lead_restore = self.state.drains.get(&lead).map(|l| l.restore.clone());
        if let Some(done @ Stage::Finished { .. }) = lead_restore {
            // The zone's traffic came back already (this drain's gateway had stood by).
            if let Some(h) = self.state.drains.get_mut(&c.drain_id) {
                h.restore = done.clone();
            }
            self.save();
            self.ack(zone, &c.drain_id, h.drill, Action::Restore, &done)
                .await;
            return;
        }
        let live = self.state.live(&lead, &self.gateways);
        if !live.is_empty() {
            tracing::warn!(zone, drain_id = %c.drain_id, still_asked = ?live, "drain cancelled, but another drain of the zone is still asked for: traffic stays away (restore held)");
            return;
        }
        tracing::warn!(zone, drain_id = %c.drain_id, "drain cancelled: running the restore hook");
        self.restore(zone, &lead, c).await;
    }

    /// Runs the restore hook once for `lead`'s group (the lead and the drains that joined it),
    /// answering each of them: `c` is the cancellation that let it run.
    async fn restore(&mut self, zone: &str, lead: &str, c: Cancelled) {
        let group = self.state.group(lead);
        let drill = self.state.drains.get(lead).is_some_and(|h| h.drill);
        for id in &group {
            if let Some(h) = self.state.drains.get_mut(id) {
                h.restore = Stage::Running;
            }
        }
        if !self.save() {
            return;
        }
        let report = if self.agent.restore.is_empty() {
            hook::Report {
                ok: true,
                exit_status: None,
                detail: "no restore hook configured (agent.restore is empty)".into(),
                output: String::new(),
            }
        } else {
            for id in &group {
                self.ack(zone, id, drill, Action::Restore, &Stage::Running)
                    .await;
            }
            let payload =
                serde_json::to_string(&RequestMessage::Cancelled(c.clone())).unwrap_or_default();
            let env = self.env(zone, lead, "", drill, "restore", payload);
            hook::run(&self.agent.restore, &env, self.agent.timeout, &self.cancel).await
        };
        for id in &group {
            self.finish(zone, id, drill, Action::Restore, report.clone())
                .await;
        }
    }

    /// A hook was running when the agent last stopped: it is not run again.
    async fn interrupted(&mut self, zone: &str, drain_id: &str, action: Action) {
        let report = hook::Report {
            ok: false,
            exit_status: None,
            detail: format!(
                "interrupted: the agent stopped while the {} hook ran; not run again (check by hand)",
                if action == Action::Drain { "drain" } else { "restore" }
            ),
            output: String::new(),
        };
        let drill = self.state.drains.get(drain_id).is_some_and(|h| h.drill);
        self.finish(zone, drain_id, drill, action, report).await;
    }

    async fn finish(
        &mut self,
        zone: &str,
        drain_id: &str,
        drill: bool,
        action: Action,
        report: hook::Report,
    ) {
        if report.ok {
            tracing::info!(zone, drain_id, ?action, "hook done: {}", report.detail);
        } else {
            tracing::error!(zone, drain_id, ?action, "hook failed: {}", report.detail);
        }
        let stage = Stage::Finished {
            ok: report.ok,
            exit_status: report.exit_status,
            detail: report.detail,
            output: report.output,
        };
        if let Some(h) = self.state.drains.get_mut(drain_id) {
            match action {
                Action::Drain => h.drain = stage.clone(),
                Action::Restore => h.restore = stage.clone(),
            }
        }
        self.save();
        self.ack(zone, drain_id, drill, action, &stage).await;
    }

    async fn ack(&self, zone: &str, drain_id: &str, drill: bool, action: Action, stage: &Stage) {
        let (state, detail, exit_status, output) = match stage {
            Stage::NotRun => return,
            Stage::Running => (
                AckState::Started,
                "hook started".to_string(),
                None,
                String::new(),
            ),
            Stage::Finished {
                ok,
                exit_status,
                detail,
                output,
            } => (
                if *ok {
                    AckState::Done
                } else {
                    AckState::Failed
                },
                detail.clone(),
                *exit_status,
                output.clone(),
            ),
        };
        let ack = Ack {
            drain_id: drain_id.to_string(),
            agent: self.agent.id.clone(),
            state,
            detail,
            action,
            exit_status,
            output,
            drill,
        };
        let payload = match serde_json::to_vec(&ack) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("cannot encode ack: {e}");
                return;
            }
        };
        self.publisher
            .send(Outgoing::Message {
                topic: self.topics.drain_ack(zone, &self.agent.id),
                payload,
                retain: false,
            })
            .await;
    }

    fn env(
        &self,
        zone: &str,
        drain_id: &str,
        severity: &str,
        drill: bool,
        action: &str,
        request: String,
    ) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("EMBERWATCH_ZONE", zone.to_string()),
            ("EMBERWATCH_DRAIN_ID", drain_id.to_string()),
            ("EMBERWATCH_SEVERITY", severity.to_string()),
            ("EMBERWATCH_AGENT", self.agent.id.clone()),
            ("EMBERWATCH_ACTION", action.to_string()),
            ("EMBERWATCH_REQUEST", request),
        ];
        if drill {
            env.push(("EMBERWATCH_DRILL", "1".to_string()));
        }
        env
    }

    /// Persists the state; false (logged) when it cannot.
    fn save(&mut self) -> bool {
        match self.store.save(&self.state) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot persist agent state");
                false
            }
        }
    }

    fn forget_oldest(&mut self) {
        while self.state.drains.len() > REMEMBER {
            let oldest = self
                .state
                .drains
                .iter()
                .min_by_key(|(_, h)| h.seen_ms)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => {
                    self.state.drains.remove(&id);
                }
                None => break,
            }
        }
    }
}
