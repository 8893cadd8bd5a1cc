//! `emberwatch console`: the subscriber people use. One process per site (or fleet) listens to
//! every gateway of the sites it watches, keeps the history in SQLite, repairs gaps in each
//! gateway's numbered events with `cmd/replay`, and serves a web page and a JSON API; operator
//! commands go to the gateways with the operator's name (`"by"`) and are audited.
//!
//! Tasks (ARCHITECTURE.md has the table): the subscriber (`subscriber.rs`, owns the MQTT
//! connection and the live state), the database writer thread (`store/`), the HTTP server
//! (`api.rs`, `auth.rs`, `commands.rs`, `stream.rs`). Live changes fan out on one
//! `broadcast` channel of [`Update`]s: the SSE stream and (optionally) the Alertmanager pusher
//! listen to it.

pub mod alertmanager;
pub mod api;
pub mod auth;
pub mod commands;
pub mod gaps;
pub mod merge;
pub mod page;
pub mod store;
pub mod stream;
pub mod subscriber;
pub mod users;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Console};

/// Live updates buffered for slow listeners; one that falls further behind is told so
/// (`lagged`) and reloads.
pub const UPDATES: usize = 4096;

/// One live change, as the SSE stream names it (`event:` line) and sends it (`data:` JSON).
#[derive(Debug, Clone)]
pub enum Update {
    /// An alarm event as the gateway sent it (it carries `site`).
    Event(Value),
    /// The latest state of one alarm: an item of `/api/alarms`.
    Alarm(Value),
    /// An item of `/api/zones`.
    Zone(Value),
    /// An item of `/api/gateways`.
    Gateway(Value),
    /// `{"site","device","time","points":{..},"quality"}`.
    Telemetry(Value),
    /// An item of `/api/audit`.
    Audit(Value),
}

impl Update {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Update::Event(_) => "event",
            Update::Alarm(_) => "alarm",
            Update::Zone(_) => "zone",
            Update::Gateway(_) => "gateway",
            Update::Telemetry(_) => "telemetry",
            Update::Audit(_) => "audit",
        }
    }

    pub fn data(&self) -> &Value {
        match self {
            Update::Event(v)
            | Update::Alarm(v)
            | Update::Zone(v)
            | Update::Gateway(v)
            | Update::Telemetry(v)
            | Update::Audit(v) => v,
        }
    }
}

/// What the console knows now, from retained messages and its own bookkeeping.
#[derive(Debug, Default)]
pub struct Live {
    /// (site, gateway) → the gateway's retained status and the console's record of its events.
    pub gateways: BTreeMap<(String, String), GatewayLive>,
    /// (site, zone) → the retained zone status.
    pub zones: BTreeMap<(String, String), Value>,
    /// (site, zone) → the retained drain status (or request, until a status comes).
    pub drains: BTreeMap<(String, String), Value>,
    /// (site, zone) → the retained power-cut clearance.
    pub clearances: BTreeMap<(String, String), Value>,
    /// (site, agent) → an agent's presence.
    pub agents: BTreeMap<(String, String), Value>,
    /// (site, zone, alarm) → the event shown for it, to merge the two gateways of a pair
    /// (`merge.rs`) before the live stream, as the database does.
    pub alarms: HashMap<(String, String, String), merge::Latest>,
}

/// One gateway as the console sees it.
#[derive(Debug, Default)]
pub struct GatewayLive {
    /// The retained status, `Value::Null` until one has come.
    pub status: Value,
    pub record: gaps::Record,
    /// The other gateway of its redundant pair, from the last status that named one (the
    /// last will, `{"state":"offline"}`, does not, and the pair must stay together).
    pub peer: Option<String>,
}

impl Live {
    /// An item of `/api/gateways`.
    pub fn gateway_item(&self, site: &str, gateway: &str) -> Value {
        let Some(g) = self.gateways.get(&(site.to_string(), gateway.to_string())) else {
            return Value::Null;
        };
        let s = &g.status;
        json!({
            "site": site,
            "gateway": gateway,
            "state": s.get("state").cloned().unwrap_or(Value::from("unknown")),
            "role": s.get("role").cloned().unwrap_or(Value::Null),
            "seq": g.record.latest,
            "received_through": g.record.received_through(),
            "missing": g.record.missing(),
            "version": s.get("version").cloned().unwrap_or(Value::Null),
            "started_at": s.get("started_at").cloned().unwrap_or(Value::Null),
            "outbox": s.get("outbox").cloned().unwrap_or(Value::Null),
            "reason": s.get("reason").cloned().unwrap_or(Value::Null),
            "peer": g.peer.clone().or_else(|| self.peer_naming(site, gateway)),
            "role_since": s.get("role_since").cloned().unwrap_or(Value::Null),
            "role_reason": s.get("role_reason").cloned().unwrap_or(Value::Null),
        })
    }

    /// A gateway of `site` whose status names `gateway` as its peer.
    fn peer_naming(&self, site: &str, gateway: &str) -> Option<String> {
        self.gateways
            .iter()
            .find(|((s, _), g)| s == site && g.peer.as_deref() == Some(gateway))
            .map(|((_, gw), _)| gw.clone())
    }

    /// Where a command addressed to `gateway` goes: to it, unless it is the standby of a pair
    /// or not online and its peer is online and active (as the retained statuses say); then to
    /// the peer, which holds the pair's shared acks, shelves and service settings.
    pub fn command_target(&self, site: &str, gateway: &str) -> String {
        let standing = |gw: &str| {
            self.gateways
                .get(&(site.to_string(), gw.to_string()))
                .map(|g| {
                    let st = |k: &str| g.status.get(k).and_then(Value::as_str).map(str::to_string);
                    (st("state"), st("role"))
                })
        };
        let stands_in = matches!(
            standing(gateway),
            Some((Some(state), role)) if state != "online" || role.as_deref() == Some("standby")
        );
        if !stands_in {
            return gateway.to_string();
        }
        let peer = self
            .gateways
            .get(&(site.to_string(), gateway.to_string()))
            .and_then(|g| g.peer.clone())
            .or_else(|| self.peer_naming(site, gateway));
        match peer {
            Some(p) if matches!(standing(&p), Some((Some(s), Some(r))) if s == "online" && r == "active") => {
                p
            }
            _ => gateway.to_string(),
        }
    }

    /// The drain agents that serve `zone`, by their retained presence:
    /// `[{"agent","state"}]`.
    pub fn agents_of(&self, site: &str, zone: &str) -> Value {
        self.agents
            .iter()
            .filter(|((s, _), p)| {
                s == site
                    && p.get("zones")
                        .and_then(Value::as_array)
                        .is_some_and(|z| z.iter().any(|z| z == zone))
            })
            .map(|((_, a), p)| json!({"agent": a, "state": p.get("state").cloned().unwrap_or(Value::Null)}))
            .collect()
    }

    /// An item of `/api/zones`.
    pub fn zone_item(&self, site: &str, zone: &str) -> Value {
        let key = (site.to_string(), zone.to_string());
        let z = self.zones.get(&key).cloned().unwrap_or(Value::Null);
        let field = |k: &str, default: Value| z.get(k).cloned().unwrap_or(default);
        json!({
            "site": site,
            "zone": zone,
            "level": field("level", Value::from("normal")),
            "active": field("active", json!([])),
            "unacknowledged": field("unacknowledged", Value::from(0)),
            "faults": field("faults", Value::from(0)),
            "shelved": field("shelved", json!([])),
            "time": field("time", Value::Null),
            "drain": self.drains.get(&key).cloned().unwrap_or(Value::Null),
            "agents": self.agents_of(site, zone),
            "clearance": self.clearances.get(&key).cloned().unwrap_or(Value::Null),
        })
    }
}

/// Held while a command to one gateway waits for its answer.
pub type GatewayLock = Arc<tokio::sync::Mutex<()>>;

/// Everything the tasks share.
pub struct App {
    pub cfg: Console,
    pub topic_prefix: String,
    /// Names this console in its replay topics (`mqtt.client_id`).
    pub console_id: String,
    pub writer: store::Writer,
    pub reader: store::Reader,
    pub live: RwLock<Live>,
    pub updates: broadcast::Sender<Update>,
    pub mqtt: rumqttc::AsyncClient,
    pub connected: AtomicBool,
    /// Why the broker connection is down, for `/healthz`.
    pub broker_error: Mutex<Option<String>>,
    /// A command waiting for its `cmd/result`, per (site, gateway).
    pub pending: Mutex<HashMap<(String, String), commands::Waiting>>,
    /// One command at a time per gateway (results carry no id, so the next result of the same
    /// command name is the answer).
    pub gateway_locks: Mutex<HashMap<(String, String), GatewayLock>>,
    pub auth: auth::Auth,
    pub cancel: CancellationToken,
}

impl App {
    pub fn send(&self, u: Update) {
        // No listener is fine: the update is in the database or the live state already.
        let _ = self.updates.send(u);
    }

    pub fn live(&self) -> std::sync::RwLockReadGuard<'_, Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn live_mut(&self) -> std::sync::RwLockWriteGuard<'_, Live> {
        self.live.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The topics of one gateway.
    pub fn topics(&self, site: &str, gateway: &str) -> crate::mqtt::Topics {
        crate::mqtt::Topics::from_parts(&self.topic_prefix, site, gateway)
    }
}

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the configuration has no [console] section")]
    NoSection,
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
    #[error("console.listen {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// What `check-config` prints for a console file.
pub fn summary(cfg: &Config) -> String {
    let Some(c) = &cfg.console else {
        return "no [console] section".into();
    };
    format!(
        "console: listening on {} ({}), database {}, users {}\nwatching sites: {}\nbroker: {} \
         (topics under {}/SITE/)\nhistory kept {}, trends 8 days{}",
        c.listen,
        if c.listen.ip().is_loopback() {
            "loopback: reading needs no login"
        } else {
            "not loopback: every request needs a user; put TLS in front"
        },
        c.database.display(),
        c.users_file.display(),
        c.sites.join(", "),
        cfg.mqtt.url,
        cfg.mqtt.topic_prefix,
        humantime::format_duration(c.history),
        c.alertmanager
            .as_ref()
            .map(|u| format!("\nalertmanager: {u}"))
            .unwrap_or_default()
    )
}

/// Runs the console until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), ConsoleError> {
    use tokio::signal::unix::{signal, SignalKind};
    let cancel = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).map_err(ConsoleError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ConsoleError::Signals)?;
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("console: stopping");
        stop.cancel();
    });
    serve(cfg, cancel).await
}

/// Runs the console until `cancel` (the demo and tests start it this way too).
pub async fn serve(cfg: Config, cancel: CancellationToken) -> Result<(), ConsoleError> {
    let console = cfg.console.clone().ok_or(ConsoleError::NoSection)?;
    let conn = store::open_writer(&console.database)?;
    let reader = store::Reader::open(&console.database)?;
    let (writer, writer_thread) = store::Writer::spawn(conn, console.history);
    let listener = tokio::net::TcpListener::bind(console.listen)
        .await
        .map_err(|e| ConsoleError::Listen {
            addr: console.listen.to_string(),
            reason: e.to_string(),
        })?;
    if !console.listen.ip().is_loopback() {
        tracing::warn!(
            "console: listening on {}, which is not loopback: the console speaks plain HTTP, so \
             passwords and session cookies cross the network in clear unless TLS (a reverse \
             proxy such as haproxy or nginx) is in front of it",
            console.listen
        );
    }
    let users = users::Users::load(&console.users_file);
    match &users {
        Ok(u) if u.is_empty() => tracing::warn!(
            "console: no users in {}: no one can send commands (add one with emberwatch \
             console-user --users {} NAME)",
            console.users_file.display(),
            console.users_file.display()
        ),
        Ok(u) => tracing::info!(
            "console: {} user(s) in {}",
            u.len(),
            console.users_file.display()
        ),
        Err(e) => tracing::error!("console: {e}; no one can log in until it is fixed"),
    }
    let (client, eventloop) = subscriber::connect(&cfg.mqtt)?;
    let (updates, _) = broadcast::channel(UPDATES);
    let app = Arc::new(App {
        topic_prefix: cfg.mqtt.topic_prefix.clone(),
        console_id: cfg.mqtt.client_id.clone(),
        auth: auth::Auth::new(
            console.users_file.clone(),
            console.listen.ip().is_loopback(),
        ),
        cfg: console,
        writer,
        reader,
        live: RwLock::new(Live::default()),
        updates,
        mqtt: client,
        connected: AtomicBool::new(false),
        broker_error: Mutex::new(Some("not connected yet".into())),
        pending: Mutex::new(HashMap::new()),
        gateway_locks: Mutex::new(HashMap::new()),
        cancel: cancel.clone(),
    });
    subscriber::restore(&app)?;
    let sub = tokio::spawn(subscriber::run(app.clone(), eventloop));
    let pager = app.cfg.alertmanager.clone().map(|url| {
        tokio::spawn(alertmanager::run(
            url,
            app.updates.subscribe(),
            cancel.clone(),
        ))
    });
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        "console: serving http://{addr}/ for sites {}",
        app.cfg.sites.join(", ")
    );
    let router = api::router(app.clone());
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(cancel.clone().cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!("console: HTTP server: {e}");
    }
    cancel.cancel();
    let _ = sub.await;
    if let Some(p) = pager {
        if let Ok(Err(e)) = p.await {
            tracing::error!("console: {e}");
        }
    }
    // The last sender goes with the app: the writer commits what it has and ends.
    drop(app);
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    Ok(())
}
