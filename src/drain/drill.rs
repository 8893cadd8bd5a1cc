//! `emberwatch drill --config FILE --zone ZONE`: rehearse a drain, end to end, without a fire.
//!
//! Like NUT's `upsmon -c fsd`, a drill exercises the real path: this command sends `cmd/drill`
//! to the running gateway, whose coordinator publishes a request marked `"drill": true`; the
//! real agents run their real hooks (with `EMBERWATCH_DRILL=1`, so a hook may choose to only
//! pretend); the gateway gives the (drill) clearance and then cancels, so agents restore. This
//! command only watches and narrates what crosses the broker, with times, so a site learns how
//! long its drain really takes, and exits 0 only if every expected agent confirmed.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::Value;
use tokio::time::{sleep_until, Instant};

use super::messages::{Ack, AckState, Action, Clearance, RequestMessage, Status};
use crate::command::Drill;
use crate::config::Config;
use crate::mqtt::{self, Topics};

/// After the drill is over (cancelled), how long restores may take to be reported.
const RESTORE_GRACE: Duration = Duration::from_secs(30);

/// Beyond `drain.deadline`, how long the whole drill may take.
const SLACK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("no [drain] section in the configuration: nothing to drill")]
    NoDrain,
    #[error("zone {zone:?} is not in the configuration (zones: {known})")]
    UnknownZone { zone: String, known: String },
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttError),
    #[error("broker {url}: {reason}")]
    Broker { url: String, reason: String },
    #[error("gateway {gateway} refused the drill: {reason}")]
    Refused { gateway: String, reason: String },
    #[error("gateway {gateway} did not answer the drill command within {within:?}; is `emberwatch run` running and connected to {url}?")]
    NoAnswer {
        gateway: String,
        within: Duration,
        url: String,
    },
    #[error("drill {drain_id} did not finish within {within:?}")]
    Unfinished { drain_id: String, within: Duration },
}

/// Runs a drill of `zone` through the gateway of `cfg`. `Ok(true)`: every expected agent
/// confirmed before the deadline.
pub async fn run(cfg: &Config, zone: &str) -> Result<bool, DrillError> {
    let drain = cfg.drain.as_ref().ok_or(DrillError::NoDrain)?;
    let zones = cfg.zones();
    if !zones.iter().any(|z| z == zone) {
        return Err(DrillError::UnknownZone {
            zone: zone.to_string(),
            known: zones.join(", "),
        });
    }
    let t = Topics::new(cfg);
    let url = cfg.mqtt.url.to_string();
    let broker_err = |reason: String| DrillError::Broker {
        url: url.clone(),
        reason,
    };
    let opts = mqtt::client_options(
        cfg,
        &format!(
            "emberwatch-drill-{}-{}",
            cfg.site.gateway,
            std::process::id()
        ),
    )?;
    let (client, mut events) = AsyncClient::new(opts, 64);
    let filters = [
        format!("{}/drain/{zone}/#", t.root()),
        t.power_clearance(zone),
        t.cmd_result(),
    ];
    client
        .subscribe_many(
            filters
                .iter()
                .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
        )
        .await
        .map_err(|e| broker_err(e.to_string()))?;

    let t0 = Instant::now();
    let answer_within = Duration::from_secs(10);
    let end = t0 + drain.deadline + SLACK;
    let mut watch = Watch::new(zone, &t);
    let mut sent = false;
    loop {
        let ev = tokio::select! {
            () = sleep_until(end) => {
                return Err(DrillError::Unfinished { drain_id: watch.drain_id.unwrap_or_default(), within: end - t0 });
            }
            () = sleep_until(t0 + answer_within), if !watch.answered => {
                return Err(DrillError::NoAnswer { gateway: cfg.site.gateway.clone(), within: answer_within, url });
            }
            () = sleep_until(watch.restore_until.unwrap_or(end)), if watch.restore_until.is_some() => break,
            ev = events.poll() => ev.map_err(|e| broker_err(e.to_string()))?,
        };
        match ev {
            Event::Incoming(Packet::SubAck(_)) if !sent => {
                let body = serde_json::to_vec(&Drill {
                    zone: zone.to_string(),
                })
                .unwrap_or_default();
                client
                    .publish(t.cmd("drill"), QoS::AtLeastOnce, false, body)
                    .await
                    .map_err(|e| broker_err(e.to_string()))?;
                sent = true;
                println!("drill of zone {zone}: asked gateway {}", cfg.site.gateway);
            }
            // Retained messages are the state before this drill.
            Event::Incoming(Packet::Publish(p)) if !p.retain => {
                let at = t0.elapsed();
                if let Some(refusal) = watch.observe(at, &p.topic, &p.payload) {
                    return Err(DrillError::Refused {
                        gateway: cfg.site.gateway.clone(),
                        reason: refusal,
                    });
                }
                if watch.finished() {
                    break;
                }
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    Ok(watch.summary())
}

/// What the drill has seen so far.
struct Watch {
    zone: String,
    request_topic: String,
    status_topic: String,
    clearance_topic: String,
    result_topic: String,
    ack_prefix: String,
    answered: bool,
    drain_id: Option<String>,
    state: Option<String>,
    agents: BTreeMap<String, String>,
    cleared_at: Option<Duration>,
    cleared_state: Option<String>,
    cancelled: bool,
    restore_until: Option<Instant>,
}

impl Watch {
    fn new(zone: &str, t: &Topics) -> Watch {
        Watch {
            zone: zone.to_string(),
            request_topic: t.drain_request(zone),
            status_topic: t.drain_status(zone),
            clearance_topic: t.power_clearance(zone),
            result_topic: t.cmd_result(),
            ack_prefix: t.drain_ack(zone, ""),
            answered: false,
            drain_id: None,
            state: None,
            agents: BTreeMap::new(),
            cleared_at: None,
            cleared_state: None,
            cancelled: false,
            restore_until: None,
        }
    }

    fn mine(&self, id: &str) -> bool {
        self.drain_id.as_deref() == Some(id)
    }

    /// Narrates one message; returns the gateway's refusal, if it was one.
    fn observe(&mut self, at: Duration, topic: &str, payload: &[u8]) -> Option<String> {
        let ts = format!("[+{:6.2}s]", at.as_secs_f64());
        if topic == self.result_topic {
            let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
            if v["command"] == "drill" && !self.answered {
                self.answered = true;
                let reason = v["reason"].as_str().unwrap_or("").to_string();
                if v["ok"] != true {
                    return Some(reason);
                }
                println!("{ts} gateway: {reason}");
            }
        } else if topic == self.request_topic {
            match serde_json::from_slice::<RequestMessage>(payload) {
                Ok(RequestMessage::Request(r)) if r.drill && self.drain_id.is_none() => {
                    println!(
                        "{ts} request {} published (deadline {})",
                        r.drain_id, r.deadline
                    );
                    self.drain_id = Some(r.drain_id);
                }
                Ok(RequestMessage::Cancelled(c)) if self.mine(&c.drain_id) => {
                    println!("{ts} drill over: request cancelled, agents restore");
                    self.cancelled = true;
                    self.restore_until = Some(Instant::now() + RESTORE_GRACE);
                }
                _ => {}
            }
        } else if let Some(agent) = topic.strip_prefix(&self.ack_prefix) {
            if let Ok(a) = serde_json::from_slice::<Ack>(payload) {
                if self.mine(&a.drain_id) {
                    let what = match a.action {
                        Action::Drain => "drain",
                        Action::Restore => "restore",
                    };
                    let state = match a.state {
                        AckState::Started => "started",
                        AckState::Done => "done",
                        AckState::Failed => "FAILED",
                    };
                    println!("{ts} agent {agent}: {what} {state}: {}", a.detail);
                }
            }
        } else if topic == self.status_topic {
            if let Ok(s) = serde_json::from_slice::<Status>(payload) {
                if self.mine(&s.drain_id) {
                    let state = serde_json::to_value(s.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    if self.state.as_deref() != Some(&state) {
                        println!("{ts} drain status: {state}");
                        self.state = Some(state);
                    }
                    self.agents = s
                        .agents
                        .iter()
                        .map(|(a, p)| {
                            let v = serde_json::to_value(p).unwrap_or(Value::Null);
                            (a.clone(), v.as_str().unwrap_or("?").to_string())
                        })
                        .collect();
                }
            }
        } else if topic == self.clearance_topic {
            if let Ok(c) = serde_json::from_slice::<Clearance>(payload) {
                if self.mine(&c.drain_id) && c.clear && self.cleared_at.is_none() {
                    println!("{ts} power-cut clearance (drill): {}", c.reason);
                    self.cleared_at = Some(at);
                    self.cleared_state = self.state.clone();
                }
            }
        }
        None
    }

    /// Over once cancelled and every agent that drained has reported its restore.
    fn finished(&self) -> bool {
        self.cancelled
            && self
                .agents
                .values()
                .all(|p| !matches!(p.as_str(), "done" | "started"))
    }

    fn summary(&self) -> bool {
        let drained = self.cleared_state.as_deref() == Some("drained");
        let id = self.drain_id.as_deref().unwrap_or("?");
        let agents = self
            .agents
            .iter()
            .map(|(a, p)| format!("{a} {p}"))
            .collect::<Vec<_>>()
            .join(", ");
        match self.cleared_at {
            Some(at) => println!(
                "drill {id} of zone {}: {} after {:.2} s; agents: {agents}",
                self.zone,
                if drained {
                    "drained, clearance given"
                } else {
                    "NOT drained; clearance given at the deadline"
                },
                at.as_secs_f64()
            ),
            None => println!("drill {id} of zone {}: no clearance seen", self.zone),
        }
        drained
    }
}
