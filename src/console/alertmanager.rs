//! Pages people through the Prometheus Alertmanager they already run: with
//! `[console] alertmanager = "http://..."`, every active alarm the console sees is pushed to
//! Alertmanager's API v2 (`POST {url}/api/v2/alerts`), re-sent while it stays active, and
//! resolved (`endsAt` = now) when it clears, so routing, silences, e-mail and paging stay
//! Alertmanager's job.
//!
//! Split as everywhere else: [`Alerts`] is the pure part (which alarms are active, what to send
//! when, given `now`), table-tested; [`run`] is the thin async shell fed from the console's
//! broadcast of updates, with a minimal HTTP/1.1 client (one `POST` per flush, `Connection:
//! close`), because one request every few seconds does not justify an HTTP client dependency.
//! A slow or absent Alertmanager never holds anything up: the shell is a side consumer of the
//! broadcast, every request has a deadline, and what could not be sent is retried.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::Update;
use crate::clock;

/// Alertmanager's clients re-send active alerts every 30 s to 3 min; we re-send every minute.
pub const RESEND: Duration = Duration::from_secs(60);
/// An active alert we stop re-sending (the console died) ends this long after the last send,
/// instead of waiting for Alertmanager's own `resolve_timeout`.
pub const ENDS_AFTER: Duration = Duration::from_secs(4 * 60);
/// How often pending sends are retried after a failure.
const RETRY: Duration = Duration::from_secs(5);
/// Connect + write + read of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AlertmanagerError {
    #[error("console.alertmanager {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("alertmanager {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("alertmanager {addr}: no answer within {0:?}", REQUEST_TIMEOUT)]
    Timeout { addr: String },
    #[error("alertmanager {addr}: POST /api/v2/alerts answered {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("alertmanager {addr}: not an HTTP answer: {line:?}")]
    Garbled { addr: String, line: String },
}

/// Where alerts go: `http://host:port[/path-prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    host: String,
    port: u16,
    /// Without a trailing slash; "" for Alertmanager at the root.
    prefix: String,
}

impl Target {
    /// Parses the `console.alertmanager` URL. Only plain `http://` is spoken; put a TLS proxy
    /// (or Alertmanager's own listener) on the loopback side of the console host for https.
    pub fn parse(url: &str) -> Result<Target, AlertmanagerError> {
        let bad = |why: &str| AlertmanagerError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            bad("only http:// URLs are supported (https: put a local TLS proxy in front)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("expected http://host:port"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number from 1 to 65535"))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() || host.contains([':', '[', ']']) || port == 0 {
            return Err(bad("expected http://host:port (a name or an IPv4 address)"));
        }
        Ok(Target {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// What this module reads of an alarm: the event JSON as the gateway sent it (plus `site`), or
/// an item of `/api/alarms`. Unknown fields are ignored; missing optional ones default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AlarmView {
    pub site: String,
    pub gateway: String,
    pub alarm: String,
    pub rule: String,
    pub zone: String,
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub point: String,
    pub severity: String,
    pub state: String,
    #[serde(default)]
    pub isa_state: Option<String>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub acked_by: Option<String>,
}

impl AlarmView {
    /// Should people be paged for it: the condition is present and nobody took it out of the
    /// operator's view on purpose (a shelved or out-of-service alarm is resolved).
    fn pages(&self) -> bool {
        self.state == "active"
            && !matches!(
                self.isa_state.as_deref(),
                Some("shelved" | "out_of_service" | "normal" | "cleared_unacknowledged")
            )
    }

    fn labels(&self) -> BTreeMap<String, String> {
        [
            ("alertname", &self.rule),
            ("site", &self.site),
            ("zone", &self.zone),
            ("alarm", &self.alarm),
            ("severity", &self.severity),
            ("device", &self.device),
            ("point", &self.point),
            ("gateway", &self.gateway),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
    }
}

/// One alert as Alertmanager API v2 takes it (`postableAlert`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    pub ends_at: String,
}

/// One alarm being paged for.
#[derive(Debug, Clone)]
struct Paged {
    view: AlarmView,
    /// Not yet accepted by Alertmanager in its current form.
    unsent: bool,
}

/// The pure part: which alarms are paged for, which resolutions are still to deliver.
#[derive(Debug, Default)]
pub struct Alerts {
    /// Keyed by (site, alarm): the same alarm from either gateway of a pair is one alert.
    active: BTreeMap<(String, String), Paged>,
    /// Alerts that ended (cleared, shelved, or whose labels changed) and are not delivered yet.
    resolved: Vec<AlarmView>,
    last_full: Option<SystemTime>,
}

impl Alerts {
    /// Takes an alarm's latest state; returns true when something is now waiting to be sent.
    pub fn observe(&mut self, view: AlarmView) -> bool {
        let key = (view.site.clone(), view.alarm.clone());
        let old = self.active.remove(&key);
        if view.pages() {
            let unsent = match &old {
                Some(o) if o.view.labels() != view.labels() => {
                    // Severity (or gateway) changed: a new alert identity; end the old one.
                    self.resolved.push(o.view.clone());
                    true
                }
                Some(o) => o.unsent || annotations(&o.view) != annotations(&view),
                None => true,
            };
            self.active.insert(key, Paged { view, unsent });
            unsent
        } else if let Some(o) = old {
            self.resolved.push(o.view);
            true
        } else {
            false
        }
    }

    /// What to send now: resolutions and changed alerts always; every active alert when
    /// `RESEND` has passed since the last full send.
    pub fn due(&mut self, now: SystemTime) -> Vec<PostableAlert> {
        let full = self
            .last_full
            .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= RESEND);
        let ends = clock::rfc3339(now + ENDS_AFTER);
        let mut out: Vec<PostableAlert> = self
            .resolved
            .iter()
            .map(|v| PostableAlert {
                labels: v.labels(),
                annotations: annotations(v),
                starts_at: v.since.clone(),
                ends_at: clock::rfc3339(now),
            })
            .collect();
        for p in self.active.values() {
            if full || p.unsent {
                out.push(PostableAlert {
                    labels: p.view.labels(),
                    annotations: annotations(&p.view),
                    starts_at: p.view.since.clone(),
                    ends_at: ends.clone(),
                });
            }
        }
        if full {
            self.last_full = Some(now);
        }
        out
    }

    /// Alertmanager accepted what `due` returned.
    pub fn sent(&mut self) {
        self.resolved.clear();
        for p in self.active.values_mut() {
            p.unsent = false;
        }
    }

    /// Alertmanager did not take it: everything is sent again on the next try.
    pub fn failed(&mut self) {
        self.last_full = None;
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }
}

fn annotations(v: &AlarmView) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert("message".to_string(), v.message.clone());
    if let Some(by) = &v.acked_by {
        a.insert("acked_by".to_string(), by.clone());
    }
    a
}

/// `POST {prefix}/api/v2/alerts` with `alerts` as the JSON body; Ok on a 2xx answer.
pub async fn post(target: &Target, alerts: &[PostableAlert]) -> Result<(), AlertmanagerError> {
    let addr = target.addr();
    let body = serde_json::to_vec(alerts).map_err(|e| AlertmanagerError::Io {
        addr: addr.clone(),
        source: std::io::Error::other(e),
    })?;
    let exchange = async {
        let mut s = TcpStream::connect((target.host.as_str(), target.port)).await?;
        let head = format!(
            "POST {}/api/v2/alerts HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: emberwatch/{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            target.prefix,
            crate::VERSION,
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(&body).await?;
        // The status line and the start of the body are all we need; read at most 4 KiB.
        let mut answer = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        while answer.len() < 4096 {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok::<Vec<u8>, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Err(_) => return Err(AlertmanagerError::Timeout { addr }),
        Ok(Err(source)) => return Err(AlertmanagerError::Io { addr, source }),
        Ok(Ok(a)) => a,
    };
    let text = String::from_utf8_lossy(&answer);
    let line = text.lines().next().unwrap_or_default();
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| AlertmanagerError::Garbled {
            addr: addr.clone(),
            line: line.chars().take(80).collect(),
        })?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().chars().take(300).collect())
        .unwrap_or_default();
    Err(AlertmanagerError::Status { addr, status, body })
}

/// The latest state of an alarm, when an update is one: `alarm`, the event the console shows
/// for the alarm key after merging the gateways of a pair (`merge.rs`). A plain `event` may be
/// the other gateway's older word on it, so it is not one.
fn alarm_view(u: &Update) -> Option<AlarmView> {
    match u {
        Update::Alarm(v) => serde_json::from_value(v.clone()).ok(),
        _ => None,
    }
}

/// Pushes alarms to Alertmanager until `shutdown`. Started by the console when
/// `console.alertmanager` is set; never returns an error after a good URL (Alertmanager being
/// away is logged once per outage and retried).
pub async fn run(
    url: String,
    mut rx: broadcast::Receiver<Update>,
    shutdown: CancellationToken,
) -> Result<(), AlertmanagerError> {
    let target = Target::parse(&url)?;
    let mut alerts = Alerts::default();
    let mut tick = tokio::time::interval(RETRY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    tracing::info!(%url, "console: pushing active alarms to Alertmanager");
    loop {
        let wants_send = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => true,
            msg = rx.recv() => match msg {
                Ok(u) => match alarm_view(&u) {
                    // After a failure, wait for the retry tick instead of a request per update.
                    Some(v) => alerts.observe(v) && healthy,
                    None => false,
                },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "console: the Alertmanager pusher fell behind; \
                        some alarm changes may reach Alertmanager only when the alarm next changes");
                    false
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        if !wants_send {
            continue;
        }
        let batch = alerts.due(SystemTime::now());
        if batch.is_empty() {
            continue;
        }
        match post(&target, &batch).await {
            Ok(()) => {
                alerts.sent();
                if !healthy {
                    tracing::info!(%url, active = alerts.active_count(), "console: Alertmanager reachable again");
                }
                healthy = true;
            }
            Err(e) => {
                alerts.failed();
                if healthy {
                    tracing::warn!("console: cannot push alarms: {e}; retrying every {RETRY:?}");
                }
                healthy = false;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
