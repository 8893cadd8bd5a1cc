//! Operator commands from the API to a gateway: `POST /api/ack`, `/api/shelve`,
//! `/api/service`. Each is checked here (known site, gateway seen and online), sent as
//! `cmd/{name}` with `"by": USER`, and answered by the gateway's next `cmd/result` for that
//! command within [`WAIT`]. Results carry no request id, so commands to one gateway go one at a
//! time. Every attempt, refused or not, is written to the audit trail.
//!
//! A command addressed to a gateway of a redundant pair that is standby or not online goes to
//! the pair's active gateway instead (`Live::command_target`, from the retained statuses): the
//! operator clicked an alarm the standby or the dead one reported last, and the pair shares
//! its acks, shelves and service settings. The audit trail and the answer say which gateway
//! was asked (`gateway`), which it was sent to (`sent_to`) and which answered (`answered_by`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use rumqttc::QoS;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::store::Write;
use super::{App, Update};
use crate::clock::rfc3339;

/// How long the gateway has to answer.
pub const WAIT: Duration = Duration::from_secs(5);

/// A command waiting for its answer.
#[derive(Debug)]
pub struct Waiting {
    pub command: String,
    pub tx: oneshot::Sender<Value>,
}

/// The body of `POST /api/{ack,shelve,service}` (strict: an unknown field is refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub site: String,
    pub gateway: String,
    pub alarm: String,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub in_service: Option<bool>,
}

/// The subscriber hands over a `cmd/result`; it answers the command waiting on that gateway.
pub fn answered(app: &App, site: &str, gateway: &str, command: &str, v: Value) {
    let mut pending = app.pending.lock().unwrap_or_else(|p| p.into_inner());
    let key = (site.to_string(), gateway.to_string());
    if pending.get(&key).is_some_and(|w| w.command == command) {
        if let Some(w) = pending.remove(&key) {
            let _ = w.tx.send(v);
        }
    }
}

fn error(status: StatusCode, message: String) -> (StatusCode, Value) {
    (status, json!({"error": message}))
}

/// Sends `name` for `user`; the HTTP status and body to answer with.
pub async fn send(app: &Arc<App>, user: &str, name: &str, body: &[u8]) -> (StatusCode, Value) {
    let parsed: Result<Request, _> = serde_json::from_slice(body);
    let (status, answer, req) = match parsed {
        Err(e) => {
            let (s, a) = error(
                StatusCode::BAD_REQUEST,
                format!(
                    "POST /api/{name}: the body must be JSON {{\"site\", \"gateway\", \"alarm\", \
                     \"zone\"?, \"for\"?, \"reason\"?, \"in_service\"?}}: {e}"
                ),
            );
            (s, a, None)
        }
        Ok(req) => {
            let (s, a) = dispatch(app, user, name, &req).await;
            (s, a, Some(req))
        }
    };
    let sent_to = answer.get("sent_to").cloned().unwrap_or(Value::Null);
    let answered_by = answer.get("answered_by").cloned().unwrap_or(Value::Null);
    let item = json!({
        "time": rfc3339(SystemTime::now()),
        "user": user,
        "command": name,
        "site": req.as_ref().map(|r| r.site.clone()),
        "gateway": req.as_ref().map(|r| r.gateway.clone()),
        "sent_to": sent_to,
        "answered_by": answered_by,
        "alarm": req.as_ref().map(|r| r.alarm.clone()),
        "zone": req.as_ref().and_then(|r| r.zone.clone()),
        "ok": status == StatusCode::OK,
        "reason": answer.get("reason").or(answer.get("error")).cloned().unwrap_or(Value::Null),
        "status": status.as_u16(),
    });
    tracing::info!(
        "console: {user} {name} {}: {} {}",
        req.as_ref()
            .map(|r| format!("{} on {}/{}", r.alarm, r.site, r.gateway))
            .unwrap_or_default(),
        status.as_u16(),
        item["reason"].as_str().unwrap_or("")
    );
    let _ = app.writer.tx.send(Write::Audit(item.clone())).await;
    app.send(Update::Audit(item));
    (status, answer)
}

/// The command's MQTT body, with the operator's name.
fn payload(name: &str, req: &Request, user: &str) -> Value {
    let mut body = json!({"alarm": req.alarm, "by": user});
    let o = body
        .as_object_mut()
        .expect("a json! object literal is an object");
    if let Some(z) = &req.zone {
        o.insert("zone".into(), Value::from(z.clone()));
    }
    match name {
        "shelve" => {
            o.insert("for".into(), json!(req.for_));
            o.insert("reason".into(), json!(req.reason));
        }
        "service" => {
            o.insert("in_service".into(), json!(req.in_service.unwrap_or(true)));
            if let Some(r) = &req.reason {
                o.insert("reason".into(), Value::from(r.clone()));
            }
        }
        _ => {}
    }
    body
}

async fn dispatch(app: &Arc<App>, user: &str, name: &str, req: &Request) -> (StatusCode, Value) {
    if !app.cfg.sites.contains(&req.site) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown site {:?}: this console watches {}",
                req.site,
                app.cfg.sites.join(", ")
            ),
        );
    }
    if name == "service" && req.in_service.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "POST /api/service needs \"in_service\": true or false".into(),
        );
    }
    let target = app.live().command_target(&req.site, &req.gateway);
    if target != req.gateway {
        tracing::info!(
            "console: {name} for {} on {}: {} is not the active gateway of its pair; sending to {target}",
            req.alarm,
            req.site,
            req.gateway
        );
    }
    let key = (req.site.clone(), target.clone());
    let state = {
        let live = app.live();
        live.gateways.get(&key).map(|g| {
            g.status
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string()
        })
    };
    match state.as_deref() {
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown gateway {:?} on site {:?}: the console has heard nothing from it",
                    req.gateway, req.site
                ),
            )
        }
        Some("online") => {}
        Some(other) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "gateway {} of site {} is {other} (its retained status says so): nothing was \
                     sent; try again when it is back online",
                    target, req.site
                ),
            )
        }
    }
    if !app.connected.load(std::sync::atomic::Ordering::Relaxed) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the console is not connected to the broker: nothing was sent".into(),
        );
    }
    let lock = {
        let mut locks = app.gateway_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(key.clone()).or_default().clone()
    };
    let _one_at_a_time = lock.lock().await;
    let (tx, rx) = oneshot::channel();
    app.pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            key.clone(),
            Waiting {
                command: name.to_string(),
                tx,
            },
        );
    let topic = app.topics(&req.site, &target).cmd(name);
    let body = payload(name, req, user).to_string();
    if let Err(e) = app.mqtt.publish(topic, QoS::AtLeastOnce, false, body).await {
        app.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot send to the broker: {e}"),
        );
    }
    let answer = tokio::time::timeout(WAIT, rx).await;
    app.pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    let (status, mut body) = match answer {
        Ok(Ok(mut result)) => {
            let ok = result.get("ok").and_then(Value::as_bool).unwrap_or(false);
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            if let Some(o) = result.as_object_mut() {
                o.insert("answered_by".into(), Value::from(target.clone()));
            }
            (status, result)
        }
        _ => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no answer from gateway {} within {} s: it may still apply the command; check \
                 the alarm before sending it again",
                target,
                WAIT.as_secs()
            ),
        ),
    };
    if let Some(o) = body.as_object_mut() {
        o.insert("sent_to".into(), Value::from(target));
    }
    (status, body)
}
