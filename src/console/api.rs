//! The console's HTTP surface: the JSON API of SPEC ("The site console") plus `/api/trends`,
//! `/api/me`, `/api/drains`, CSV export of `/api/events`, the login form's endpoints,
//! `/healthz`, and `/` (the page). Reading is open on a loopback listener; elsewhere it needs a
//! user, and commands always do ([`auth`](super::auth)).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Who, COOKIE, SESSION_TTL};
use super::store::{EventQuery, Write};
use super::{App, Update};
use crate::clock::{rfc3339, unix_ms};

/// Events one JSON answer holds at most (page with `from_seq`).
pub const MAX_EVENTS: usize = 10_000;
/// Events one CSV export holds at most.
pub const MAX_CSV: usize = 1_000_000;
/// Trend buckets one answer holds at most.
pub const MAX_BUCKETS: i64 = 2_000;

type Shared = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .merge(super::page::routes())
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/zones", get(zones))
        .route("/api/alarms", get(alarms))
        .route("/api/events", get(events))
        .route("/api/gateways", get(gateways))
        .route("/api/audit", get(audit))
        .route("/api/trends", get(trends))
        .route("/api/drains", get(drains))
        .route("/api/stream", get(stream))
        .route("/api/:command", post(command))
        .layer(axum::middleware::from_fn(super::page::unchallenged))
        .with_state(app)
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn unauthorized(message: &str) -> Response {
    let mut r = problem(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"emberwatch console\", charset=\"UTF-8\""),
    );
    r
}

/// Reading: open on loopback, otherwise a user; wrong credentials are refused everywhere.
async fn may_read(app: &App, headers: &HeaderMap) -> Result<(), Response> {
    match app.auth.who(headers).await {
        Who::Refused => Err(unauthorized(
            "wrong user name or password, or the session expired",
        )),
        Who::Nobody if !app.auth.open_reading => Err(unauthorized(
            "this console is not on loopback: reading needs a user (HTTP Basic or log in)",
        )),
        _ => Ok(()),
    }
}

fn db_error(e: super::store::StoreError) -> Response {
    tracing::error!("console: {e}");
    problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn healthz(State(app): Shared) -> Response {
    let mut why = Vec::new();
    if !app.connected.load(Ordering::Relaxed) {
        let e = app
            .broker_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        why.push(format!(
            "not connected to the broker: {}",
            e.unwrap_or_default()
        ));
    }
    if !app.writer.health.ok() {
        why.push(format!(
            "the database is not writable: {}",
            app.writer.health.why().unwrap_or_default()
        ));
    }
    if why.is_empty() {
        (StatusCode::OK, Json(json!({"ok": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ok": false, "why": why})),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

async fn login(State(app): Shared, Form(f): Form<LoginForm>) -> Response {
    let ok = app.auth.check(&f.user, &f.password).await;
    let item = json!({
        "time": rfc3339(SystemTime::now()), "user": f.user, "command": "login",
        "site": null, "gateway": null, "alarm": null, "zone": null, "ok": ok,
        "reason": if ok { "logged in" } else { "wrong user name or password" },
        "status": 303,
    });
    let _ = app.writer.tx.send(Write::Audit(item.clone())).await;
    app.send(Update::Audit(item));
    if !ok {
        tracing::warn!("console: failed login for {:?}", f.user);
        return see_other("/?login=failed");
    }
    let token = app.auth.login(&f.user);
    let mut r = see_other("/");
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(app): Shared, headers: HeaderMap) -> Response {
    if let Some(t) = super::auth::session_cookie(&headers) {
        app.auth.logout(&t);
    }
    let mut r = see_other("/");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "emberwatch_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    r
}

/// What `/api/me` answers for `who`.
fn me_item(app: &App, who: &Who) -> Value {
    let user = match who {
        Who::User(u) => Some(u.as_str()),
        _ => None,
    };
    let can_read = user.is_some() || app.auth.open_reading;
    json!({"user": user, "can_read": can_read})
}

async fn me(State(app): Shared, headers: HeaderMap) -> Response {
    let who = app.auth.who(&headers).await;
    Json(me_item(&app, &who)).into_response()
}

/// `/`: the page with its first screen inline: what `/api/me`, `/api/zones`,
/// `/api/gateways` and `/api/audit?limit=20` answer now, and of the alarms only what the
/// first screen draws: the 50 most urgent (`alarms`) and how many there are in each state
/// (`alarm_counts`); the page asks `/api/alarms` for the full list after its first frame. So
/// the board is drawn without five more round trips first, and without building, sending and
/// parsing a thousand alarms nobody sees yet (issue 12: first render ≤ 200 ms). The page then
/// follows `/api/stream` as before. Whoever may not read (or whose credentials are wrong) gets
/// the page alone, which asks `/api/me` and shows the login form.
async fn index(State(app): Shared, headers: HeaderMap) -> Response {
    let who = app.auth.who(&headers).await;
    let may = match who {
        Who::Refused => false,
        Who::Nobody => app.auth.open_reading,
        Who::User(_) => true,
    };
    if !may {
        return super::page::index(None);
    }
    let app2 = app.clone();
    let stored = tokio::task::spawn_blocking(move || {
        Ok::<_, super::store::StoreError>((
            app2.reader.first_alarms(FIRST_SCREEN_ALARMS)?,
            app2.reader.audit(FIRST_SCREEN_AUDIT)?,
        ))
    })
    .await;
    let (alarms, audit) = match stored {
        Ok(Ok(v)) => v,
        // The page asks the API itself, and shows what fails there.
        Ok(Err(e)) => {
            tracing::error!("console: the page's first screen: {e}");
            return super::page::index(None);
        }
        Err(_) => return super::page::index(None),
    };
    let counts: serde_json::Map<String, Value> = alarms
        .counts
        .into_iter()
        .map(|(state, n)| (state, Value::from(n)))
        .collect();
    let rest = json!({
        "me": me_item(&app, &who),
        "zones": zone_items(&app),
        "alarm_counts": counts,
        "gateways": gateway_items(&app),
        "audit": audit,
    })
    .to_string();
    super::page::index(Some(&splice_alarms(&rest, &alarms.rows)))
}

/// `{"alarms":[...],` then the rest of the object: the stored alarm JSON goes in as it is.
fn splice_alarms(rest: &str, rows: &[String]) -> String {
    let mut out =
        String::with_capacity(rest.len() + rows.iter().map(|r| r.len() + 1).sum::<usize>() + 16);
    out.push_str("{\"alarms\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(row);
    }
    out.push(']');
    // `rest` is a JSON object with at least one member: `{` becomes the `,` between.
    out.push(',');
    out.push_str(rest.strip_prefix('{').unwrap_or(rest));
    out
}

/// Alarm rows the page draws first (console.js `ALARMS_SHOWN`).
const FIRST_SCREEN_ALARMS: usize = 50;

/// Operator actions on the page's first screen (the page shows the latest 20).
const FIRST_SCREEN_AUDIT: usize = 20;

/// What `/api/zones` answers.
fn zone_items(app: &App) -> Vec<Value> {
    let live = app.live();
    live.zones
        .keys()
        .chain(live.drains.keys())
        .chain(live.clearances.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|(s, z)| live.zone_item(s, z))
        .collect()
}

async fn zones(State(app): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = may_read(&app, &headers).await {
        return r;
    }
    Json(zone_items(&app)).into_response()
}

type Params = Query<HashMap<String, String>>;

async fn alarms(State(app): Shared, headers: HeaderMap, Query(q): Params) -> Response {
    if let Err(r) = may_read(&app, &headers).await {
        return r;
    }
    let active = match q.get("state").map(String::as_str) {
        None | Some("active") => true,
        Some("all") => false,
        Some(other) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("state={other:?}: expected active or all"),
            )
        }
    };
    let app2 = app.clone();
    let r = tokio::task::spawn_blocking(move || {
        app2.reader.alarms(
            q.get("site").map(String::as_str),
            q.get("zone").map(String::as_str),
            active,
        )
    })
    .await;
    match r {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => db_error(e),
        Err(_) => problem(StatusCode::INTERNAL_SERVER_ERROR, "the query failed"),
    }
}

/// A time given as RFC 3339 or as milliseconds since the epoch.
/// A bad query parameter: the message of the 400 answer.
type BadParam = String;

fn bad(message: BadParam) -> Response {
    problem(StatusCode::BAD_REQUEST, message)
}

fn time_param(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, BadParam> {
    match q.get(key) {
        None => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .or_else(|| super::store::parse_ms(s))
            .map(Some)
            .ok_or_else(|| {
                format!("{key}={s:?}: expected an RFC 3339 time (2026-11-24T13:40:00Z) or Unix milliseconds")
            }),
    }
}

fn number_param<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, BadParam> {
    match q.get(key) {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{key}={s:?}: expected a whole number")),
    }
}

async fn events(State(app): Shared, headers: HeaderMap, Query(q): Params) -> Response {
    if let Err(r) = may_read(&app, &headers).await {
        return r;
    }
    let csv = match q.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(f) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("format={f:?}: expected json or csv"),
            )
        }
    };
    let parsed = (|| {
        let max = if csv { MAX_CSV } else { MAX_EVENTS };
        Ok::<_, BadParam>(EventQuery {
            site: q.get("site").cloned(),
            gateway: q.get("gateway").cloned(),
            zone: q.get("zone").cloned(),
            device: q.get("device").cloned(),
            severity: q.get("severity").cloned(),
            from_seq: number_param(&q, "from_seq")?,
            since_ms: time_param(&q, "since")?,
            until_ms: time_param(&q, "until")?,
            limit: number_param::<usize>(&q, "limit")?
                .unwrap_or(if csv { MAX_CSV } else { 1000 })
                .min(max),
        })
    })();
    let query = match parsed {
        Ok(q) => q,
        Err(m) => return bad(m),
    };
    let app2 = app.clone();
    let rows = match tokio::task::spawn_blocking(move || app2.reader.events(&query)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return db_error(e),
        Err(_) => return problem(StatusCode::INTERNAL_SERVER_ERROR, "the query failed"),
    };
    if !csv {
        return Json(rows).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"emberwatch-events.csv\"",
            ),
        ],
        to_csv(&rows),
    )
        .into_response()
}

/// The columns of the CSV export, in order.
pub const CSV_COLUMNS: [&str; 21] = [
    "site",
    "gateway",
    "seq",
    "event_id",
    "time",
    "since",
    "zone",
    "device",
    "point",
    "rule",
    "alarm",
    "kind",
    "severity",
    "state",
    "isa_state",
    "acked",
    "acked_by",
    "shelved_by",
    "value",
    "threshold",
    "unit",
];

/// Events as CSV (RFC 4180), with `message` last. Text that a spreadsheet would take for a
/// formula (`=`, `+`, `-`, `@` first) is prefixed with `'`.
pub fn to_csv(rows: &[Value]) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push_str(",message\r\n");
    for r in rows {
        let cells: Vec<String> = CSV_COLUMNS
            .iter()
            .chain(std::iter::once(&"message"))
            .map(|c| cell(r.get(*c).unwrap_or(&Value::Null)))
            .collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

fn cell(v: &Value) -> String {
    let text = match v {
        Value::Null => return String::new(),
        Value::String(s) if s.starts_with(['=', '+', '-', '@']) => format!("'{s}"),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

async fn gateways(State(app): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = may_read(&app, &headers).await {
        return r;
    }
    Json(gateway_items(&app)).into_response()
}

/// What `/api/gateways` answers.
fn gateway_items(app: &App) -> Vec<Value> {
    let live = app.live();
    live.gateways
        .keys()
        .map(|(s, g)| live.gateway_item(s, g))
        .collect()
}

async fn audit(State(app): Shared, headers: HeaderMap, Query(q): Params) -> Response {
    if let Err(r) = may_read(&app, &headers).await {
        return r;
    }
    let limit = match number_param::<usize>(&q, "limit") {
        Ok(n) => n.unwrap_or(1000).min(MAX_EVENTS),
        Err(m) => return bad(m),
    };
    let app2 = app.clone();
    match tokio::task::spawn_blocking(move || app2.reader.audit(limit)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => db_error(e),
        Err(_) => problem(StatusCode::INTERNAL_SERVER_ERROR, "the query failed"),
    }
}

async fn trends(State(app): Shared, headers: HeaderMap, Query(q): Params) -> Response {
    if let Err(r) = may_read(&app, &headers).await {
        return r;
    }
    let (Some(site), Some(device), Some(point)) = (q.get("site"), q.get("device"), q.get("point"))
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "/api/trends needs site, device and point (and since, in seconds ago; default 3600)",
        );
    };
    let since: i64 = match number_param(&q, "since") {
        Ok(s) => s.unwrap_or(3600),
        Err(m) => return bad(m),
    };
    let now = unix_ms(SystemTime::now()) as i64;
    let from = now - since.clamp(1, 10 * 24 * 3600) * 1000;
    let (site, device, point) = (site.clone(), device.clone(), point.clone());
    let app2 = app.clone();
    match tokio::task::spawn_blocking(move || {
        app2.reader
            .trends(&site, &device, &point, from, now, MAX_BUCKETS)
    })
    .await
    {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => db_error(e),
        Err(_) => problem(StatusCode::INTERNAL_SERVER_ERROR, "the query failed"),
    }
}

async fn drains(State(app): Shared, headers: HeaderMap, Query(q): Params) -> Response {
    if let Err(r) = may_read(&app, &headers).await {
        return r;
    }
    let (Some(site), Some(zone)) = (q.get("site").cloned(), q.get("zone").cloned()) else {
        return problem(StatusCode::BAD_REQUEST, "/api/drains needs site and zone");
    };
    let app2 = app.clone();
    match tokio::task::spawn_blocking(move || app2.reader.drain_log(&site, &zone, 1000)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => db_error(e),
        Err(_) => problem(StatusCode::INTERNAL_SERVER_ERROR, "the query failed"),
    }
}

async fn stream(State(app): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = may_read(&app, &headers).await {
        return r;
    }
    super::stream::stream(&app).into_response()
}

async fn command(
    State(app): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !["ack", "shelve", "service"].contains(&name.as_str()) {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no command {name:?}: POST /api/ack, /api/shelve or /api/service"),
        );
    }
    let user = match app.auth.who(&headers).await {
        Who::User(u) => u,
        Who::Refused => return unauthorized("wrong user name or password, or the session expired"),
        Who::Nobody => return unauthorized("commands need a user: HTTP Basic, or log in"),
    };
    let (status, answer) = super::commands::send(&app, &user, &name, &body).await;
    (status, Json(answer)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_screen_splices_stored_alarms_into_one_json_object() {
        let rest = json!({"me": {"user": null}, "alarm_counts": {"shelved": 3}}).to_string();
        let rows = vec![
            r#"{"alarm":"a","seq":1}"#.to_string(),
            r#"{"alarm":"b","seq":2}"#.to_string(),
        ];
        let v: Value = serde_json::from_str(&super::splice_alarms(&rest, &rows)).expect("JSON");
        assert_eq!(v["alarms"][1]["alarm"], "b");
        assert_eq!(v["alarm_counts"]["shelved"], 3);
        let v: Value = serde_json::from_str(&super::splice_alarms(&rest, &[])).expect("JSON");
        assert_eq!(v["alarms"], json!([]));
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let rows = vec![json!({"site":"s","seq":3,"acked":true,"value":-1.5,
            "message":"=cmd(\"x\"), then","unit":null})];
        let csv = to_csv(&rows);
        let mut lines = csv.split("\r\n");
        assert!(lines.next().unwrap().ends_with(",unit,message"));
        let row = lines.next().unwrap();
        assert!(row.starts_with("s,,3,"), "{row}");
        assert!(row.contains(",true,"), "{row}");
        assert!(row.contains(",-1.5,"), "numbers are not text: {row}");
        assert!(row.ends_with(",\"'=cmd(\"\"x\"\"), then\""), "{row}");
    }
}
