//! The gateway daemon: wires pollers, the rule engine and MQTT together, and stops them in order.
//!
//! Shutdown order matters for an alarm system: pollers stop first, the engine finishes what it
//! was given and hands its last events to MQTT, and only then does the MQTT link publish
//! "offline" (or "fault" after a failed write, or nothing on a reload) and close. Every task is
//! tracked; nothing is left running.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alarms::{Snapshot, StateStore, StoreError};
use crate::clock::Now;
use crate::command::Command;
use crate::config::Config;
use crate::drain::{DrainHandle, DrainService};
use crate::engine::{Engine, Output};
use crate::fieldbus;
use crate::message::CommandResult;
use crate::message::Outgoing;
use crate::metrics::{Metrics, SeverityLabel, ZoneLabel};
use crate::mqtt::{self, DurableOutbox, Farewell};
use crate::outbox::OutboxError;
use crate::pair::service::{Resend, Roles};
use crate::pair::{self, Change, Role};
use crate::supervision::{Supervision, LINK_STALL};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Alarm or drain state under storage.dir.
    #[error("storage.dir: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttError),
    #[error("{0}")]
    Metrics(String),
    #[error("storage.dir: {0}")]
    Outbox(#[from] OutboxError),
    #[error("stopping so the supervisor restarts on a clean file: {0}")]
    OutboxFailed(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs until SIGTERM or SIGINT. SIGHUP reloads `path`: the new file is validated first; a bad
/// one is refused with its errors logged and the running configuration carries on. A good one
/// restarts the pipeline on it (alarm state, acknowledgements, shelves and `seq` carry over
/// through `storage.dir`, so nothing is raised twice; alarms whose device, point or rule the
/// new file no longer has are cleared with an event saying so). The MQTT link reconnects
/// without saying `offline` in between: the retained status goes from online to online.
pub async fn run(cfg: Config, path: std::path::PathBuf) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut cfg = cfg;
    loop {
        // At start and after each reload: what the file does that its author may not expect.
        for w in cfg.warnings() {
            tracing::warn!(problem = %w, "configuration warning");
        }
        let cancel = CancellationToken::new();
        let reload = CancellationToken::new();
        let generation = serve_generation(cfg.clone(), cancel.clone(), reload.clone());
        tokio::pin!(generation);
        let next = loop {
            tokio::select! {
                r = &mut generation => return r,
                _ = term.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    cancel.cancel();
                    return generation.await;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: stopping");
                    cancel.cancel();
                    return generation.await;
                }
                _ = hup.recv() => match Config::load(&path, crate::config::Role::Gateway) {
                    Ok(new) => {
                        tracing::info!(file = %path.display(), "SIGHUP: configuration valid, reloading");
                        break new;
                    }
                    Err(e) => {
                        for p in &e.problems {
                            tracing::error!(file = %path.display(), problem = %p, "SIGHUP: reload refused");
                        }
                        tracing::error!(file = %path.display(), "SIGHUP: reload refused; still running the previous configuration");
                    }
                },
            }
        };
        reload.cancel();
        cancel.cancel();
        generation.await?;
        cfg = next;
    }
}

/// Runs until `cancel`: the demo's whole gateway.
pub async fn serve(cfg: Config, cancel: CancellationToken) -> Result<(), DaemonError> {
    serve_generation(cfg, cancel, CancellationToken::new()).await
}

/// Opens the alarm state and the outbox, and makes them agree. The outbox is the truth: an
/// event is fsynced there before `state.json` is saved, and from there it is delivered, so
/// when the save failed (a full disk, a crash between the two writes) subscribers may have
/// seen events the state does not have. The state is rolled forward over them and saved, and
/// the zone statuses published at start then say what the events said.
fn open_storage(cfg: &Config) -> Result<(StateStore, Snapshot, Arc<DurableOutbox>), DaemonError> {
    let (mut store, mut snapshot) = StateStore::open(&cfg.storage.dir)?;
    let durable = DurableOutbox::open(cfg)?;
    // Damage that removed events the state says were raised is a loss, not a torn write.
    durable.assess(snapshot.last_seq);
    let latching = |rule: &str| cfg.rules.iter().any(|r| r.id == rule && r.latch);
    if let Some((from, to)) = durable.roll_forward(&mut snapshot, latching)? {
        tracing::warn!(
            "state.json was behind the outbox (a failed save or a crash between the two \
             writes): rolled forward over events seq {from}..={to} already raised; the outbox \
             is the truth"
        );
        // If this fails too the disk is still full: stop before anything is raised on a
        // state that would go back again.
        store.save(&snapshot)?;
    }
    // Events the journal no longer holds cannot be rolled forward (aged out, or lost: the
    // outbox's own check says which); numbering never goes back all the same.
    if let Some(seq) = durable.latest_seq().filter(|&s| s > snapshot.last_seq) {
        tracing::warn!(
            "alarm state ends at seq {} but the outbox has held seq {seq}; numbering goes on \
             from {seq}",
            snapshot.last_seq
        );
        snapshot.last_seq = seq;
    }
    Ok((store, snapshot, durable))
}

/// One generation of [`run`]: until `cancel`. `reload` is cancelled first when the stop is
/// for a reload (the link then leaves the status topic as it is: the next generation says
/// `online` again at once).
async fn serve_generation(
    cfg: Config,
    cancel: CancellationToken,
    reload: CancellationToken,
) -> Result<(), DaemonError> {
    let (mut store, snapshot, durable) = open_storage(&cfg)?;
    let last_seq = snapshot.last_seq;
    // The heartbeat reports it even when the journal that held it has aged out.
    durable.note_seq(last_seq);
    let cfg = Arc::new(cfg);
    let mut engine = Engine::restore(cfg.clone(), snapshot);
    // Alone: active. Of a pair: standby until the peer's status (or its absence) decides;
    // the very first status the link publishes says so.
    let mut roles = Roles::new(&cfg, &engine, Now::system());
    durable.set_role(roles.status());
    // A gateway of a pair back from a crash: what the broker never confirmed waits until the
    // pair is known (`Roles::backlog_due`), so what the peer published meanwhile is not
    // published again.
    if let Some(newest) = durable.held_newest() {
        roles.hold_backlog(newest);
    }
    // MQTT outlives the pollers: it gets its own token, cancelled after the engine is done.
    let mqtt_cancel = CancellationToken::new();
    let mut opts = crate::drain::service::link_options(&cfg);
    pair::service::subscribe(&cfg, &mut opts);
    let link = mqtt::connect_durable(&cfg, opts, mqtt_cancel.clone(), durable).await?;
    // Drain coordination (issue 5): sees every zone status, takes cmd/drill and the
    // acks/presence arriving on the link (`incoming`); stopped after the engine, before MQTT.
    let (publisher, mut commands, incoming, link) = link.into_parts();
    // A gateway of a redundant pair: the peer's status and what the pair published come to
    // this loop, the drain's acks and presence to the drain task.
    let (incoming, mut pair_in) = pair::service::split(&cfg, incoming);
    // Missing drain agents become alarms in the engine's table (`_drain/{agent}/agent-offline`).
    let (fault_tx, mut agent_faults) = mpsc::channel(64);
    let (drain, drain_service) =
        DrainService::start(&cfg, publisher.clone(), incoming, Some(fault_tx))?;
    tracing::info!(
        site = %cfg.site.id,
        gateway = %cfg.site.gateway,
        devices = cfg.devices.len(),
        broker = %cfg.mqtt.url,
        last_seq,
        "emberwatch running"
    );

    // `[metrics]`: the endpoint lives as long as the pollers.
    let metrics = Metrics::new();
    let metrics_task = match &cfg.metrics {
        Some(m) => {
            let addr = m.listen.parse().map_err(|_| {
                DaemonError::Metrics(format!("metrics.listen {:?} is not an address", m.listen))
            })?;
            Some(
                metrics
                    .serve(addr, cancel.clone())
                    .await
                    .map_err(|e| DaemonError::Metrics(e.to_string()))?,
            )
        }
        None => None,
    };

    let tracker = TaskTracker::new();
    let (tx, mut rx) = mpsc::channel(1024);
    // Alone, every device is polled from the start. Of a pair, Modbus TCP devices are polled
    // whatever the role (warm standby); serial buses (one master) only while active.
    let counters = fieldbus::Counters::new(cfg.devices.len());
    let masters = if cfg.redundancy.is_some() {
        fieldbus::Masters::Shared
    } else {
        fieldbus::Masters::All
    };
    fieldbus::spawn_masters(&cfg, tx.clone(), &cancel, &tracker, &counters, masters);
    // Weak: the loop below ends when the pollers drop their senders.
    let serial_tx = tx.downgrade();
    drop(tx);
    let mut serial: Option<CancellationToken> = None;
    tracker.close();

    // Alarms whose source left the configuration end with an event saying so, then every
    // zone says where it stands.
    let mut first = engine.retire_orphans(Now::system());
    first.messages.extend(engine.zone_statuses(Now::system()));
    drain.set_active(roles.role() == Role::Active);
    let mut supervision = Supervision::new(&cfg);

    let mut result = Ok(());
    // A write that failed (outbox or state): why, and the error to exit with.
    let mut fatal: Option<(String, DaemonError)> = None;
    // Shelves expire on time even when no reading changes anything.
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = Some(first);
    // A pair acts on the link coming up (its start wait counts from the CONNACK) and on its
    // own deadlines (`Roles::due`) when they happen, not at the next tick.
    let mut link_events = publisher.link_events();
    // Pollers end on `cancel` and drop their senders, which ends this loop after the last reading.
    loop {
        // A change of role decided by this turn's input (pair only).
        let mut change: Option<Change> = None;
        let due = roles.due();
        let mut out = match pending.take() {
            Some(out) => out,
            None => tokio::select! {
                r = rx.recv() => match r {
                    Some(reading) => {
                        supervision.saw(&reading);
                        // Nobody scrapes without `[metrics]`: a histogram and two counters per
                        // device would be memory and a lookup per poll for nothing.
                        if metrics_task.is_some() {
                            metrics.observe(&cfg.devices[reading.device].id, &reading);
                        }
                        engine.on_reading(&reading)
                    }
                    None => break,
                },
                Some(cmd) = commands.recv() => match cmd {
                    Ok(Command::Switchover(s)) => {
                        let result = match roles.switchover(s.by.as_deref(), Now::system()) {
                            Ok(c) => {
                                let reason = format!("{} hands over to its peer: {}", cfg.site.gateway, c.reason);
                                change = Some(c);
                                CommandResult { command: "switchover".into(), ok: true, reason: Some(reason) }
                            }
                            Err(reason) => {
                                tracing::warn!(command = "switchover", %reason, "command refused");
                                CommandResult { command: "switchover".into(), ok: false, reason: Some(reason) }
                            }
                        };
                        Output { events: Vec::new(), messages: vec![Outgoing::CommandResult(result)] }
                    }
                    // A standby publishes nothing of the alarm table or the drain: refused,
                    // naming the active gateway.
                    Ok(cmd) if roles.refusal().is_some() => {
                        let reason = roles.refusal().unwrap_or_default();
                        tracing::warn!(command = %cmd.name(), %reason, "command refused");
                        let result = CommandResult { command: cmd.name().into(), ok: false, reason: Some(reason) };
                        Output { events: Vec::new(), messages: vec![Outgoing::CommandResult(result)] }
                    }
                    Ok(Command::Drill(drill)) => {
                        drain.drill(drill).await;
                        continue;
                    }
                    // The alarm table's commands, and every refusal (answered on `cmd/result`).
                    cmd => engine.on_command(cmd, Now::system()),
                },
                Some(m) = pair_in.recv() => {
                    change = roles.on_inbound(&m, &mut engine, Now::system());
                    Output::default()
                }
                Ok(()) = link_events.changed() => {
                    change = roles.tick(publisher.is_connected(), Now::system());
                    Output::default()
                }
                () = sleep_until_due(due) => {
                    change = roles.tick(publisher.is_connected(), Now::system());
                    Output::default()
                }
                Some(f) = agent_faults.recv() => engine.agent_fault(&f.agent, f.active.then_some(f.severity), &f.zones, &f.detail, Now::system()),
                _ = ticker.tick() => {
                    supervision.tick(&cfg, &publisher.stalled_links(LINK_STALL));
                    change = roles.tick(publisher.is_connected(), Now::system());
                    // Nobody scrapes without `[metrics]`: skip the refresh (it walks every zone,
                    // device and drain each second).
                    if metrics_task.is_some() {
                        update_gauges(&metrics, &cfg, &engine, &publisher, &drain, &counters);
                    }
                    engine.tick(Now::system())
                }
                reason = publisher.outbox_failed() => {
                    fatal = Some((reason.clone(), DaemonError::OutboxFailed(reason)));
                    break;
                }
            },
        };
        if let Some(c) = &change {
            let now = Now::system();
            tracing::info!(role = c.role.as_str(), reason = %c.reason, "pair: role changed");
            roles.became(c, &engine, now);
            if let Some(o) = publisher.outbox() {
                o.set_role(roles.status());
            }
            match c.role {
                Role::Active => {
                    // Serial buses are this gateway's now; alarms are published once every
                    // device has been read again (`Roles::takeover_due`, below).
                    if let Some(tx) = serial_tx.upgrade() {
                        let token = cancel.child_token();
                        fieldbus::spawn_masters(
                            &cfg,
                            tx,
                            &token,
                            &tracker,
                            &counters,
                            fieldbus::Masters::Single,
                        );
                        serial = Some(token);
                    }
                }
                Role::Standby => {
                    drain.set_active(false);
                    if let Some(token) = serial.take() {
                        token.cancel();
                    }
                }
            }
        }
        // The backlog held from before this start, once the pair says what becomes of it.
        if let (Some(resend), Some(o)) = (roles.backlog_due(Now::system()), publisher.outbox()) {
            let skip = match resend {
                Resend::All(why) => {
                    tracing::info!("pair: resending what the broker had not confirmed before the restart ({why})");
                    Default::default()
                }
                Resend::Judge => roles.judge_backlog(&o.backlog()),
            };
            metrics.outbox_superseded.inc_by(skip.len() as u64);
            o.release(skip);
        }
        // What this turn produced while still active goes out with the step-down.
        let stepped_down = change.as_ref().is_some_and(|c| c.role == Role::Standby);
        if let Some(seq) = roles.standby_seq().filter(|_| !stepped_down) {
            // Standby: the warm table's events were seen by nobody; only command answers go out.
            engine.rewind_seq(seq);
            out.events.clear();
            out.messages
                .retain(|m| matches!(m, Outgoing::CommandResult(_)));
        }
        // A takeover, once every device has been read again: the alarm table says, once, what
        // differs from what the pair had published, then every zone's status; the drain task
        // carries on the pair's drains before it sees them.
        let took_over = roles.takeover_due(Now::system());
        if took_over {
            drain.set_active(true);
            let reconciled = engine.reconcile(&roles.published(), Now::system());
            out.events.extend(reconciled.events);
            out.messages.extend(reconciled.messages);
        }
        if !out.events.is_empty() || change.is_some() || took_over {
            // Active in a pair: the picture the standby follows (nothing while standby).
            out.messages.extend(roles.picture(&engine, Now::system()));
        }
        metrics.alarm_events.inc_by(out.events.len() as u64);
        metrics
            .chattering_events
            .inc_by(out.events.iter().filter(|e| e.detail.chattering).count() as u64);
        // The drain coordinator sees the zone statuses once they are raised.
        let zones: Vec<Outgoing> = out
            .messages
            .iter()
            .filter(|m| matches!(m, Outgoing::Zone(_)))
            .cloned()
            .collect();
        // Raised: in the outbox, fsynced, before the state that numbers them is saved. If that
        // fails they were not raised, so the state is not saved either: after the restart the
        // engine sees the condition again and raises it then.
        if let Err(reason) = publisher.send_all(out.messages).await {
            fatal = Some((reason.clone(), DaemonError::OutboxFailed(reason)));
            break;
        }
        for e in &out.events {
            tracing::info!(
                alarm = %e.alarm,
                seq = e.seq,
                severity = %e.severity,
                state = ?e.state,
                isa_state = ?e.detail.isa_state,
                "{}",
                e.message
            );
        }
        // A change of role saves too: at a takeover the state reconciled with the pair's, at a
        // step-down what this gateway published up to here (what a restart must know); never
        // a standby's (or a settling takeover's) unpublished states.
        if !out.events.is_empty() || stepped_down || took_over {
            // Saved before the next reading: seq never goes back, and a restart neither
            // raises these alarms again nor forgets an acknowledgement or a shelf. If the
            // save fails, the events are raised all the same (they are in the outbox, and
            // on their way): the restart rolls the state forward over them.
            if let Err(e) = store.save(&engine.snapshot()) {
                fatal = Some((format!("alarm state: {e}"), DaemonError::Store(e)));
                break;
            }
        }
        for msg in &zones {
            drain.observe(msg).await;
        }
    }
    if let Some((reason, error)) = fatal {
        // Not retried: a failed fsync may report success the second time for data that never
        // reached the disk. Say so on every broker (the fault status replaces the offline one
        // and the last will), then stop and let systemd restart us.
        tracing::error!("{reason}; publishing a fault status and stopping so the supervisor restarts on a clean file");
        publisher.report_fault(&reason);
        result = Err(error);
        cancel.cancel();
    } else if reload.is_cancelled() {
        publisher.farewell(Farewell::Silent);
    }
    // Pollers still sending after a failure find the channel closed and end.
    drop(rx);
    tracker.wait().await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    drop(drain);
    drain_service.stopped().await;
    mqtt_cancel.cancel();
    link.closed().await;
    result
}

/// Gauges that describe state rather than count events, and the counters other parts keep
/// for themselves (outbox, field-bus links), refreshed once a second.
fn update_gauges(
    metrics: &Metrics,
    cfg: &Config,
    engine: &Engine,
    publisher: &mqtt::Publisher,
    drain: &DrainHandle,
    counters: &fieldbus::Counters,
) {
    let counts = engine.alarms().active_by_severity();
    for (sev, n) in crate::rules::Severity::ALL.iter().zip(counts) {
        metrics
            .alarms_active
            .get_or_create(&SeverityLabel {
                severity: sev.to_string(),
            })
            .set(n as i64);
    }
    for msg in engine.zone_statuses(Now::system()) {
        if let Outgoing::Zone(z) = msg {
            metrics
                .zone_level
                .get_or_create(&ZoneLabel { zone: z.zone })
                .set(z.level as i64);
        }
    }
    metrics
        .broker_connected
        .set(i64::from(publisher.is_connected()));
    metrics.set_brokers(&publisher.brokers());
    metrics
        .telemetry_dropped
        .set(i64::try_from(publisher.telemetry_dropped()).unwrap_or(i64::MAX));
    metrics
        .last_seq
        .set(i64::try_from(engine.alarms().last_seq()).unwrap_or(i64::MAX));
    if let Some(outbox) = publisher.outbox() {
        metrics.set_outbox(&outbox.pressure(), std::time::SystemTime::now());
        metrics
            .outbox_lost_events
            .set(i64::try_from(outbox.lost_events()).unwrap_or(i64::MAX));
    }
    metrics.set_drain(&cfg.zones(), &drain.snapshot());
    for (i, d) in cfg.devices.iter().enumerate() {
        metrics.set_link(&d.id, &counters.stats(i));
    }
}

/// Until `due` (a pair's deadline, see `Roles::due`); forever without one.
async fn sleep_until_due(due: Option<std::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
