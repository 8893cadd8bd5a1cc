//! What the API asks of the database. Every query is bounded (a limit, or a fixed number of
//! trend buckets), so no request can make the console read without end.

use rusqlite::types::Value as Sql;
use serde::Serialize;
use serde_json::Value;

use super::{Reader, StoreError};
use crate::console::gaps::Ranges;

/// The filters of `/api/events`.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub site: Option<String>,
    pub gateway: Option<String>,
    pub zone: Option<String>,
    pub device: Option<String>,
    pub severity: Option<String>,
    pub from_seq: Option<u64>,
    /// Event time bounds, ms since the epoch, inclusive.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: usize,
}

/// One bucket of `/api/trends`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrendPoint {
    pub t: i64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
}

/// What the database says of one gateway at start-up.
#[derive(Debug, Clone)]
pub struct Saved {
    pub site: String,
    pub gateway: String,
    pub origin: u64,
    pub settled: bool,
    pub received: Ranges,
    pub lost: Ranges,
}

fn json_rows(c: &rusqlite::Connection, sql: &str, args: Vec<Sql>) -> rusqlite::Result<Vec<Value>> {
    let mut stmt = c.prepare(sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        // Rows were written from valid JSON; one that is not is skipped rather than fatal.
        if let Ok(v) = serde_json::from_str(&row?) {
            out.push(v);
        }
    }
    Ok(out)
}

/// What [`Reader::first_alarms`] answers.
pub struct FirstAlarms {
    /// The most urgent alarms' stored JSON, most urgent first.
    pub rows: Vec<String>,
    /// Every alarm that is not `normal`, counted by ISA-18.2 state.
    pub counts: Vec<(String, u64)>,
}

/// The page's order (console.js `renderAlarms`): ISA_ORDER's index (an unknown state first,
/// as `indexOf` gives -1), severity rank (emergency first), then `since` (or `time`) newest
/// first, compared as text like the page does.
const FIRST_ALARMS: &str = "SELECT json FROM alarms WHERE isa_state != 'normal' ORDER BY \
    CASE isa_state WHEN 'active_unacknowledged' THEN 0 WHEN 'active_acknowledged' THEN 1 \
    WHEN 'cleared_unacknowledged' THEN 2 WHEN 'shelved' THEN 3 WHEN 'out_of_service' THEN 4 \
    ELSE -1 END, \
    CASE json_extract(json, '$.severity') WHEN 'emergency' THEN 0 WHEN 'critical' THEN 1 \
    WHEN 'warning' THEN 2 ELSE 3 END, \
    CAST(COALESCE(NULLIF(json_extract(json, '$.since'), ''), json_extract(json, '$.time'), '') \
    AS TEXT) DESC LIMIT ?1";

impl Reader {
    /// Every gateway the database knows, with the seqs it holds, to resume gap tracking.
    pub fn saved_gateways(&self) -> Result<Vec<Saved>, StoreError> {
        self.with(|c| {
            let mut out: Vec<Saved> = Vec::new();
            let mut stmt =
                c.prepare("SELECT site, gateway, origin, settled, lost FROM gateways")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })?;
            for row in rows {
                let (site, gateway, origin, settled, lost) = row?;
                let mut l = Ranges::default();
                for (a, b) in serde_json::from_str::<Vec<(u64, u64)>>(&lost).unwrap_or_default() {
                    l.insert(a, b);
                }
                out.push(Saved {
                    site,
                    gateway,
                    origin: origin.max(1) as u64,
                    settled,
                    received: Ranges::default(),
                    lost: l,
                });
            }
            let mut stmt =
                c.prepare("SELECT site, gateway, seq FROM events ORDER BY site, gateway, seq")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (site, gateway, seq) = row?;
                let i = match out
                    .iter()
                    .position(|s| s.site == site && s.gateway == gateway)
                {
                    Some(i) => i,
                    None => {
                        out.push(Saved {
                            site,
                            gateway,
                            origin: 1,
                            settled: true,
                            received: Ranges::default(),
                            lost: Ranges::default(),
                        });
                        out.len() - 1
                    }
                };
                let seq = seq.max(0) as u64;
                out[i].received.insert(seq, seq);
            }
            Ok(out)
        })
    }

    /// The latest event of each alarm; `active`: only those not back to normal.
    pub fn alarms(
        &self,
        site: Option<&str>,
        zone: Option<&str>,
        active: bool,
    ) -> Result<Vec<Value>, StoreError> {
        let mut sql = "SELECT json FROM alarms WHERE 1=1".to_string();
        let mut args = Vec::new();
        if let Some(s) = site {
            sql.push_str(" AND site = ?");
            args.push(Sql::Text(s.into()));
        }
        if let Some(z) = zone {
            sql.push_str(" AND zone = ?");
            args.push(Sql::Text(z.into()));
        }
        if active {
            sql.push_str(" AND isa_state != 'normal'");
        }
        // Unacknowledged first, then the newest.
        sql.push_str(
            " ORDER BY CASE isa_state WHEN 'active_unacknowledged' THEN 0 \
             WHEN 'cleared_unacknowledged' THEN 1 WHEN 'active_acknowledged' THEN 2 ELSE 3 END, \
             time_ms DESC LIMIT 10000",
        );
        self.with(|c| json_rows(c, &sql, args))
    }

    /// The page's first screen (issue 12): the `limit` most urgent alarms in the order the page
    /// draws them (ISA-18.2 state, then severity, then the newest `since`), as their stored JSON
    /// text so `/` splices them in without parsing and re-serialising, and how many alarms are
    /// in each state that is not `normal`, so the page counts the ones it has not got yet.
    pub fn first_alarms(&self, limit: usize) -> Result<FirstAlarms, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(FIRST_ALARMS)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut rows = Vec::new();
            for row in stmt.query_map([limit], |r| r.get::<_, String>(0))? {
                let row = row?;
                // Spliced into a JSON document: a row that is not JSON is skipped, as elsewhere.
                if serde_json::from_str::<serde::de::IgnoredAny>(&row).is_ok() {
                    rows.push(row);
                }
            }
            let mut stmt = c.prepare_cached(
                "SELECT isa_state, COUNT(*) FROM alarms WHERE isa_state != 'normal' \
                 GROUP BY isa_state",
            )?;
            let counts = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(FirstAlarms { rows, counts })
        })
    }

    /// Received events, in `seq` order per gateway.
    pub fn events(&self, q: &EventQuery) -> Result<Vec<Value>, StoreError> {
        let mut sql = "SELECT json FROM events WHERE 1=1".to_string();
        let mut args = Vec::new();
        for (col, v) in [
            ("site", &q.site),
            ("gateway", &q.gateway),
            ("zone", &q.zone),
            ("device", &q.device),
            ("severity", &q.severity),
        ] {
            if let Some(v) = v {
                sql.push_str(&format!(" AND {col} = ?"));
                args.push(Sql::Text(v.clone()));
            }
        }
        if let Some(n) = q.from_seq {
            sql.push_str(" AND seq >= ?");
            args.push(Sql::Integer(n.min(i64::MAX as u64) as i64));
        }
        if let Some(t) = q.since_ms {
            sql.push_str(" AND time_ms >= ?");
            args.push(Sql::Integer(t));
        }
        if let Some(t) = q.until_ms {
            sql.push_str(" AND time_ms <= ?");
            args.push(Sql::Integer(t));
        }
        // Per gateway in seq order; this order lets either index serve a site or gateway filter.
        sql.push_str(" ORDER BY gateway, site, seq LIMIT ?");
        args.push(Sql::Integer(q.limit as i64));
        self.with(|c| json_rows(c, &sql, args))
    }

    /// Operator actions, oldest first, the latest `limit`.
    pub fn audit(&self, limit: usize) -> Result<Vec<Value>, StoreError> {
        self.with(|c| {
            let mut v = json_rows(
                c,
                "SELECT json FROM audit ORDER BY id DESC LIMIT ?",
                vec![Sql::Integer(limit as i64)],
            )?;
            v.reverse();
            Ok(v)
        })
    }

    /// A zone's drain timeline (requests, agents' acks, statuses, clearances), oldest first.
    pub fn drain_log(
        &self,
        site: &str,
        zone: &str,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT time_ms, kind, json FROM drain_log WHERE site = ?1 AND zone = ?2 \
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(rusqlite::params![site, zone, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (t, kind, json) = row?;
                let message: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
                out.push(serde_json::json!({
                    "received": crate::clock::rfc3339(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.max(0) as u64)
                    ),
                    "kind": kind,
                    "message": message,
                }));
            }
            out.reverse();
            Ok(out)
        })
    }

    /// A point's trend from `since_ms`, in at most `max_buckets` buckets of a multiple of 10 s.
    pub fn trends(
        &self,
        site: &str,
        device: &str,
        point: &str,
        since_ms: i64,
        now_ms: i64,
        max_buckets: i64,
    ) -> Result<Vec<TrendPoint>, StoreError> {
        let span = (now_ms - since_ms).max(1);
        let tens = (span + max_buckets * 10_000 - 1) / (max_buckets * 10_000);
        let bucket = tens.max(1) * 10_000;
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT t_ms, min, max, last FROM trends WHERE site = ?1 AND device = ?2 \
                 AND point = ?3 AND t_ms >= ?4 ORDER BY t_ms",
            )?;
            let rows = stmt.query_map(rusqlite::params![site, device, point, since_ms], |r| {
                Ok(TrendPoint {
                    t: r.get(0)?,
                    min: r.get(1)?,
                    max: r.get(2)?,
                    last: r.get(3)?,
                })
            })?;
            let mut out: Vec<TrendPoint> = Vec::new();
            for row in rows {
                let p = row?;
                let b = p.t - p.t.rem_euclid(bucket);
                match out.last_mut() {
                    Some(last) if last.t == b => {
                        last.min = last.min.min(p.min);
                        last.max = last.max.max(p.max);
                        last.last = p.last;
                    }
                    _ => out.push(TrendPoint { t: b, ..p }),
                }
            }
            Ok(out)
        })
    }
}
