//! The one task that writes the database: [`Write`]s in on a bounded channel, committed in
//! batches, and the database's health for `/healthz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{parse_ms, TREND_KEEP};
use crate::clock::unix_ms;
use crate::console::merge::{replaces, Latest};

/// Writes that may wait for the writer. A second of a storm at 5,000 events/s; when full, the
/// subscriber waits (the broker holds what follows) rather than memory growing.
pub const CHANNEL: usize = 8192;
/// Writes committed in one transaction at most.
const BATCH: usize = 2048;
/// Heartbeats between two prunings of old rows (heartbeats come every 5 s: hourly).
const PRUNE_EVERY: u64 = 720;

/// One thing to store.
#[derive(Debug)]
pub enum Write {
    /// A received alarm event (already deduplicated), the gateway's JSON plus `site`.
    Event { event: Value, received_ms: i64 },
    /// What the console holds and lost of a gateway.
    Gateway {
        site: String,
        gateway: String,
        origin: u64,
        settled: bool,
        lost: Vec<(u64, u64)>,
    },
    /// An operator action (an item of /api/audit).
    Audit(Value),
    /// A drain message of a zone: request, an agent's ack, status or clearance.
    Drain {
        site: String,
        zone: String,
        kind: &'static str,
        json: Value,
    },
    /// One 10 s bucket of a point.
    Trend {
        site: String,
        device: String,
        point: String,
        t_ms: i64,
        min: f64,
        max: f64,
        last: f64,
    },
    /// Proves the database is still writable when nothing else happens.
    Heartbeat,
}

/// Whether the last commit worked, and if not, why: `/healthz` reads it.
#[derive(Debug, Default)]
pub struct Health {
    ok: AtomicBool,
    why: Mutex<Option<String>>,
    /// Events received but lost with a failed commit: (site, gateway, seq). The subscriber
    /// takes them back out of its records, so they are replayed once the database works.
    unstored: Mutex<Vec<(String, String, u64)>>,
}

/// Unstored events remembered at most; past it the oldest are forgotten (and a restart of the
/// console, which rebuilds its records from the database, still finds them missing).
const MAX_UNSTORED: usize = 100_000;

impl Health {
    pub fn ok(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn why(&self) -> Option<String> {
        self.why.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The events lost with failed commits since the last call.
    pub fn take_unstored(&self) -> Vec<(String, String, u64)> {
        std::mem::take(&mut *self.unstored.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn lost(&self, batch: &[Write]) {
        let mut u = self.unstored.lock().unwrap_or_else(|p| p.into_inner());
        for w in batch {
            if let Write::Event { event, .. } = w {
                if u.len() >= MAX_UNSTORED {
                    u.remove(0);
                }
                u.push((
                    text(event, "site"),
                    text(event, "gateway"),
                    event.get("seq").and_then(Value::as_u64).unwrap_or(0),
                ));
            }
        }
    }

    fn set(&self, result: Result<(), String>) {
        let was = self.ok.swap(result.is_ok(), Ordering::Relaxed);
        let mut why = self.why.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                if !was && why.is_some() {
                    tracing::info!("console: the database is writable again");
                }
                *why = None;
            }
            Err(e) => {
                if was || why.is_none() {
                    tracing::error!(
                        "console: cannot write the database: {e}; /healthz fails until it works \
                         again (events are replayed from the gateways' journals after a restart)"
                    );
                }
                *why = Some(e);
            }
        }
    }
}

/// The writer's handle: where writes go, and the health it reports.
#[derive(Debug, Clone)]
pub struct Writer {
    pub tx: mpsc::Sender<Write>,
    pub health: Arc<Health>,
}

impl Writer {
    /// Starts the writer thread on `conn`; it ends when every sender is dropped, after
    /// committing what it was given.
    pub fn spawn(conn: Connection, history: Duration) -> (Writer, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let health = Arc::new(Health::default());
        health.set(Ok(()));
        let h = health.clone();
        let join = std::thread::Builder::new()
            .name("console-db".into())
            .spawn(move || run(conn, rx, &h, history))
            .unwrap_or_else(|e| {
                // Without a thread there is no writer: report it as the database's health.
                tracing::error!("console: cannot start the database writer: {e}");
                std::thread::spawn(|| ())
            });
        (Writer { tx, health }, join)
    }
}

fn run(mut conn: Connection, mut rx: mpsc::Receiver<Write>, health: &Health, history: Duration) {
    let mut beats = 0u64;
    prune(&conn, history, health);
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        if batch.iter().any(|w| matches!(w, Write::Heartbeat)) {
            beats += 1;
            if beats % PRUNE_EVERY == 0 {
                prune(&conn, history, health);
            }
        }
        let result = commit(&mut conn, &batch).map_err(|e| e.to_string());
        if result.is_err() {
            health.lost(&batch);
        }
        health.set(result);
        batch.clear();
    }
}

fn commit(conn: &mut Connection, batch: &[Write]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for w in batch {
        apply(&tx, w)?;
    }
    tx.commit()
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

fn apply(tx: &rusqlite::Transaction<'_>, w: &Write) -> rusqlite::Result<()> {
    match w {
        Write::Event { event, received_ms } => {
            let time_ms = parse_ms(&text(event, "time")).unwrap_or(*received_ms);
            let seq = event.get("seq").and_then(Value::as_u64).unwrap_or(0) as i64;
            let json = event.to_string();
            let added = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO events (event_id, site, gateway, seq, zone, device, \
                     point, alarm, severity, state, time_ms, received_ms, json) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )?
                .execute(params![
                    text(event, "event_id"),
                    text(event, "site"),
                    text(event, "gateway"),
                    seq,
                    text(event, "zone"),
                    text(event, "device"),
                    text(event, "point"),
                    text(event, "alarm"),
                    text(event, "severity"),
                    text(event, "state"),
                    time_ms,
                    received_ms,
                    json,
                ])?;
            if added == 1 {
                // The latest event of each alarm wins (`console::merge`): within a gateway by
                // seq, between the two of a pair by time; a replayed older one does not.
                let (site, zone, alarm) = (
                    text(event, "site"),
                    text(event, "zone"),
                    text(event, "alarm"),
                );
                let stored = tx
                    .prepare_cached(
                        "SELECT gateway, seq, time_ms FROM alarms WHERE site = ?1 AND zone = ?2 \
                         AND alarm = ?3",
                    )?
                    .query_row(params![site, zone, alarm], |r| {
                        Ok(Latest {
                            gateway: r.get(0)?,
                            seq: r.get::<_, i64>(1)?.max(0) as u64,
                            time_ms: r.get(2)?,
                        })
                    })
                    .optional()?;
                let incoming = Latest {
                    gateway: text(event, "gateway"),
                    seq: seq.max(0) as u64,
                    time_ms,
                };
                if stored.is_none_or(|s| replaces(&s, &incoming)) {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO alarms (site, zone, alarm, gateway, seq, time_ms, \
                         isa_state, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?
                    .execute(params![
                        site,
                        zone,
                        alarm,
                        incoming.gateway,
                        seq,
                        time_ms,
                        text(event, "isa_state"),
                        json,
                    ])?;
                }
            }
        }
        Write::Gateway {
            site,
            gateway,
            origin,
            settled,
            lost,
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO gateways (site, gateway, origin, settled, lost) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                site,
                gateway,
                *origin as i64,
                *settled,
                serde_json::to_string(lost).unwrap_or_else(|_| "[]".into()),
            ])?;
        }
        Write::Audit(item) => {
            let time_ms = parse_ms(&text(item, "time")).unwrap_or(0);
            tx.prepare_cached("INSERT INTO audit (time_ms, json) VALUES (?1, ?2)")?
                .execute(params![time_ms, item.to_string()])?;
        }
        Write::Drain {
            site,
            zone,
            kind,
            json,
        } => {
            tx.prepare_cached(
                "INSERT INTO drain_log (site, zone, time_ms, kind, json) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                site,
                zone,
                unix_ms(SystemTime::now()) as i64,
                kind,
                json.to_string()
            ])?;
        }
        Write::Trend {
            site,
            device,
            point,
            t_ms,
            min,
            max,
            last,
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO trends (site, device, point, t_ms, min, max, last) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![site, device, point, t_ms, min, max, last])?;
        }
        Write::Heartbeat => {
            tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('heartbeat', ?1)")?
                .execute(params![unix_ms(SystemTime::now()).to_string()])?;
        }
    }
    Ok(())
}

/// Deletes what is older than the history (events, audit, drain log) or a week and a day
/// (trends).
fn prune(conn: &Connection, history: Duration, health: &Health) {
    let now = unix_ms(SystemTime::now()) as i64;
    let cut = now - history.as_millis() as i64;
    let trend_cut = now - TREND_KEEP.as_millis() as i64;
    let r = conn.execute_batch(&format!(
        "DELETE FROM events WHERE time_ms < {cut}; DELETE FROM audit WHERE time_ms < {cut}; \
         DELETE FROM drain_log WHERE time_ms < {cut}; DELETE FROM trends WHERE t_ms < {trend_cut};"
    ));
    if let Err(e) = r {
        health.set(Err(e.to_string()));
    }
}
