//! The gateway daemon: wires pollers, the rule engine and MQTT together, and stops them in order.
//!
//! Shutdown order matters for an alarm system: pollers stop first, the engine finishes what it
//! was given and hands its last events to MQTT, and only then does the MQTT link publish
//! "offline" and close. Every task is tracked; nothing is left running.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alarms::{StateStore, StoreError};
use crate::clock::Now;
use crate::config::{Config, RuleBody};
use crate::engine::Engine;
use crate::fieldbus::{self, modbus::ModbusDevice};
use crate::mqtt::{self, CommandResult, Durable, Outgoing, Topics};
use crate::outbox::OutboxError;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "devices[{index}] ({device}): transport {transport} is not supported by this build yet"
    )]
    Unsupported {
        index: usize,
        device: String,
        transport: &'static str,
    },
    #[error("storage.dir: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttError),
    #[error("storage.dir: {0}")]
    Outbox(#[from] OutboxError),
    #[error("stopping so the supervisor restarts on a clean file: {0}")]
    OutboxFailed(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let cancel = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Signals)?;
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

/// Runs until `cancel`; the demo and tests use this directly.
pub async fn serve(cfg: Config, cancel: CancellationToken) -> Result<(), DaemonError> {
    for (index, d) in cfg.devices.iter().enumerate() {
        if !fieldbus::supported(&d.transport) {
            return Err(DaemonError::Unsupported {
                index,
                device: d.id.clone(),
                transport: d.transport.name(),
            });
        }
    }
    let (mut store, mut snapshot) = StateStore::open(&cfg.storage.dir)?;
    // Durable messages are on disk before they count as raised; what earlier runs left
    // unconfirmed is delivered first, to each broker from its own cursor.
    let durable = Durable::open(&cfg)?;
    // Events reach the outbox before the alarm state is saved (an event must never exist only
    // in the state file), so a crash between the two leaves the outbox ahead: numbering goes
    // on from whichever is further, and no seq is ever used twice.
    if let Some(seq) = durable.latest_seq().filter(|&s| s > snapshot.last_seq) {
        tracing::warn!(
            "alarm state ends at seq {} but the outbox holds seq {seq} (a crash between the two \
             writes); numbering goes on from {seq}",
            snapshot.last_seq
        );
        snapshot.last_seq = seq;
    }
    let last_seq = snapshot.last_seq;
    let cfg = Arc::new(cfg);
    // MQTT outlives the pollers: it gets its own token, cancelled after the engine is done.
    let mqtt_cancel = CancellationToken::new();
    let mut link = mqtt::connect_durable(&cfg, mqtt_cancel.clone(), durable).await?;
    let publisher = link.publisher.clone();
    let mut commands = std::mem::replace(&mut link.commands, mpsc::channel(1).1);
    tracing::info!(
        site = %cfg.site.id,
        gateway = %cfg.site.gateway,
        devices = cfg.devices.len(),
        broker = %cfg.mqtt.url,
        last_seq,
        "emberwatch running"
    );

    let tracker = TaskTracker::new();
    let (tx, mut rx) = mpsc::channel(1024);
    fieldbus::spawn_pollers(&cfg, tx, &cancel, &tracker);
    tracker.close();

    let mut engine = Engine::restore(cfg.clone(), snapshot);
    // Best effort here: a failure is noticed in the loop below.
    let _ = publisher
        .send_all(engine.zone_statuses(Now::system()))
        .await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let mut result = Ok(());
    let mut outbox_failure = None;
    // Pollers end on `cancel` and drop their senders, which ends this loop after the last reading.
    loop {
        let reading = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => r,
                None => break,
            },
            Some(cmd) = commands.recv() => {
                publisher.send(Outgoing::CommandResult(answer(&cmd))).await;
                continue;
            }
            reason = publisher.outbox_failed() => {
                outbox_failure = Some(reason);
                break;
            }
        };
        let out = engine.on_reading(&reading);
        // Raised: in the outbox, fsynced, before the state that numbers them is saved. If that
        // fails they were not raised, so the state is not saved either: after the restart the
        // engine sees the condition again and raises it then.
        if let Err(reason) = publisher.send_all(out.messages).await {
            outbox_failure = Some(reason);
            break;
        }
        if !out.events.is_empty() {
            // Saved before the next reading: seq never goes back, and a restart does not
            // raise these alarms again.
            if let Err(e) = store.save(&engine.snapshot()) {
                tracing::error!(error = %e, "cannot persist alarm state; stopping so systemd restarts on a clean state");
                result = Err(DaemonError::Store(e));
                cancel.cancel();
            }
        }
        for e in &out.events {
            tracing::info!(
                alarm = %e.alarm,
                seq = e.seq,
                severity = %e.severity,
                state = ?e.state,
                "{}",
                e.message
            );
        }
    }
    if let Some(reason) = outbox_failure {
        // Not retried: a failed fsync may report success the second time for data that never
        // reached the disk. Say so on every broker, then stop and let systemd restart us.
        tracing::error!("outbox: {reason}; publishing a fault and stopping");
        publisher.report_fault(&reason).await;
        result = Err(DaemonError::OutboxFailed(reason));
        cancel.cancel();
    }
    // Pollers still sending after a failure find the channel closed and end.
    drop(rx);
    tracker.wait().await;
    mqtt_cancel.cancel();
    link.closed().await;
    result
}

/// Operator commands are not built yet (issue 3); every one still gets an answer, so nobody waits
/// for an acknowledgement that will never come.
fn answer(cmd: &mqtt::Command) -> CommandResult {
    tracing::warn!(command = %cmd.name, "command not supported by this version; answered ok=false");
    CommandResult {
        command: cmd.name.clone(),
        ok: false,
        reason: Some(format!(
            "command {:?} is not supported by this version",
            cmd.name
        )),
    }
}

/// The `check-config` summary: what the daemon would watch and where it would publish.
pub fn summary(cfg: &Config) -> String {
    let mut s = String::new();
    let points: usize = cfg.devices.iter().map(|d| d.points.len()).sum();
    let (mut th, mut ror, mut vote) = (0, 0, 0);
    for r in &cfg.rules {
        match r.body {
            RuleBody::Threshold(_) => th += 1,
            RuleBody::RateOfRise(_) => ror += 1,
            RuleBody::Vote(_) => vote += 1,
        }
    }
    let _ = writeln!(
        s,
        "configuration OK: site {}, gateway {}",
        cfg.site.id, cfg.site.gateway
    );
    let _ = writeln!(
        s,
        "  {} devices, {} points, {} rules ({th} threshold, {ror} rate_of_rise, {vote} vote)",
        cfg.devices.len(),
        points,
        cfg.rules.len()
    );
    let _ = writeln!(s, "  zones: {}", cfg.zones().join(", "));
    for d in &cfg.devices {
        let reads = crate::decode::plan_reads(&d.points, d.max_gap).len();
        let _ = writeln!(
            s,
            "  device {} ({}, zone {}): {} points in {} reads every {:?}",
            d.id,
            d.transport.name(),
            d.zone,
            d.points.len(),
            reads,
            d.poll_interval
        );
    }
    let t = Topics::new(cfg);
    let _ = writeln!(s, "  broker: {}", cfg.mqtt.url);
    let _ = writeln!(s, "  topics:");
    let _ = writeln!(s, "    {}  (retained, last will offline)", t.status());
    for z in cfg.zones() {
        let _ = writeln!(s, "    {}  (retained)", t.zone_status(&z));
        let _ = writeln!(
            s,
            "    {}/#  (alarm events)",
            t.alarm(&z, "+", "+", "+").trim_end_matches("/+/+/+")
        );
    }
    for d in &cfg.devices {
        let _ = writeln!(s, "    {}", t.telemetry(&d.id));
    }
    let _ = write!(s, "    {}  (commands in)", t.cmd_filter());
    s
}

/// `emberwatch read`: one poll of each device, printed as a table. Returns whether all answered.
pub async fn read_once(cfg: &Config, only: Option<&str>) -> Result<bool, DaemonError> {
    let mut all_ok = true;
    let mut any = false;
    println!(
        "{:<16} {:<20} {:<8} {:>6} {:>14} {:<8} STATUS",
        "DEVICE", "POINT", "TABLE", "ADDR", "VALUE", "UNIT"
    );
    for (i, d) in cfg.devices.iter().enumerate() {
        if only.is_some_and(|o| o != d.id) {
            continue;
        }
        any = true;
        if !fieldbus::supported(&d.transport) {
            println!(
                "{:<16} transport {} not supported by this build yet",
                d.id,
                d.transport.name()
            );
            all_ok = false;
            continue;
        }
        let mut dev = ModbusDevice::new(d.clone());
        let reading = dev.poll(i).await;
        dev.close().await;
        match reading.outcome {
            Err(e) => {
                all_ok = false;
                println!("{:<16} {:<20} {}", d.id, "-", e);
            }
            Ok(points) => {
                for p in points {
                    let point = &d.points[p.point];
                    let (value, status) = match &p.result {
                        Ok(v) => {
                            let bad = point
                                .valid
                                .is_some_and(|(lo, hi)| v.value < lo || v.value > hi);
                            (
                                format!("{}", v.value),
                                if bad {
                                    "outside valid range".to_string()
                                } else {
                                    "ok".to_string()
                                },
                            )
                        }
                        Err(e) => {
                            all_ok = false;
                            ("-".to_string(), e.to_string())
                        }
                    };
                    println!(
                        "{:<16} {:<20} {:<8} {:>6} {:>14} {:<8} {}",
                        d.id,
                        point.id,
                        point.table.as_str(),
                        point.address,
                        value,
                        point.unit,
                        status
                    );
                }
                println!(
                    "{:<16} ({} requests, {:?})",
                    "",
                    dev.plan().len(),
                    Duration::from_micros(reading.latency.as_micros() as u64)
                );
            }
        }
    }
    if !any {
        println!("no device {:?} in the configuration", only.unwrap_or(""));
        return Ok(false);
    }
    Ok(all_ok)
}
