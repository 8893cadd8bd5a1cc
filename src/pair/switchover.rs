//! `emberwatch switchover --config FILE [--by NAME]`: asks the gateway of FILE to hand over to
//! its standby peer (maintenance), and says how it went.
//!
//! Sends `cmd/switchover` to the configuration's own gateway and waits for its `cmd/result`:
//! exit 0 when the gateway stepped down (its status then says standby, with `handover_to`, and
//! the peer takes over), non-zero with the gateway's reason when it refused (it is standby:
//! the reason names the active one; its peer is offline; no `[redundancy]`).

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};

use crate::command::Switchover;
use crate::config::Config;
use crate::message::CommandResult;
use crate::mqtt::{self, Topics};

/// How long the gateway has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttError),
    #[error("broker {url}: {reason}")]
    Broker { url: String, reason: String },
    #[error("gateway {gateway} refused the switchover: {reason}")]
    Refused { gateway: String, reason: String },
    #[error("gateway {gateway} did not answer the switchover within {within:?}; is `emberwatch run` running and connected to {url}?")]
    NoAnswer {
        gateway: String,
        within: Duration,
        url: String,
    },
}

/// Asks the gateway of `cfg` to hand over; `Ok(reason)` once it did.
pub async fn run(cfg: &Config, by: Option<String>) -> Result<String, SwitchoverError> {
    let t = Topics::new(cfg);
    let url = cfg.mqtt.url.to_string();
    let gateway = cfg.site.gateway.clone();
    let broker_err = |reason: String| SwitchoverError::Broker {
        url: url.clone(),
        reason,
    };
    let opts = mqtt::client_options(
        cfg,
        &format!("emberwatch-switchover-{gateway}-{}", std::process::id()),
    )?;
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .subscribe(t.cmd_result(), QoS::AtLeastOnce)
        .await
        .map_err(|e| broker_err(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    let mut sent = false;
    loop {
        let ev = tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                return Err(SwitchoverError::NoAnswer { gateway, within: ANSWER_WITHIN, url });
            }
            ev = events.poll() => ev.map_err(|e| broker_err(e.to_string()))?,
        };
        match ev {
            Event::Incoming(Packet::SubAck(_)) if !sent => {
                let body = serde_json::to_vec(&Switchover { by: by.clone() }).unwrap_or_default();
                client
                    .publish(t.cmd("switchover"), QoS::AtLeastOnce, false, body)
                    .await
                    .map_err(|e| broker_err(e.to_string()))?;
                sent = true;
            }
            Event::Incoming(Packet::Publish(p)) if sent && !p.retain => {
                let Ok(r) = serde_json::from_slice::<CommandResult>(&p.payload) else {
                    continue;
                };
                if r.command != "switchover" {
                    continue;
                }
                let _ = client.disconnect().await;
                let reason = r.reason.unwrap_or_default();
                return if r.ok {
                    Ok(reason)
                } else {
                    Err(SwitchoverError::Refused { gateway, reason })
                };
            }
            _ => {}
        }
    }
}
