//! The console's MQTT side: one connection subscribed to `P/#` of every watched site. Each
//! message is routed by topic: events are deduplicated by `seq` (hence `event_id`), stored and
//! streamed; statuses update the live state; telemetry is cut into 10 s min/max/last buckets;
//! `cmd/result` answers a waiting command or a replay. Once a second, and at once when a
//! retained status arrives (at a start or reconnect), each gateway's record is asked whether a
//! gap needs a `cmd/replay`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use serde_json::{json, Value};

use super::gaps::{Answer, Record};
use super::merge::{replaces, Latest};
use super::store::Write;
use super::{App, Update};
use crate::clock::unix_ms;
use crate::config::Mqtt;
use crate::mqtt::MqttError;

/// The width of a trend bucket.
pub const BUCKET_MS: i64 = 10_000;

/// The connection's requests queue (subscriptions, replays, commands).
const REQUESTS: usize = 256;

/// The MQTT client for the console: a clean session (what it misses while away it asks the
/// gateways' journals for), no last will (it is no one's presence).
pub fn connect(m: &Mqtt) -> Result<(AsyncClient, EventLoop), MqttError> {
    let opts = crate::mqtt::options::build(m, &m.client_id, None, true)?;
    Ok(AsyncClient::new(opts, REQUESTS))
}

/// Resumes each gateway's record, and what each alarm shows, from the database.
pub fn restore(app: &App) -> Result<(), super::store::StoreError> {
    let saved = app.reader.saved_gateways()?;
    let shown = app.reader.alarms(None, None, false)?;
    let mut live = app.live_mut();
    for e in shown {
        live.alarms.insert(alarm_key(&e), Latest::of(&e, 0));
    }
    for s in saved {
        let missing;
        {
            let g = live
                .gateways
                .entry((s.site.clone(), s.gateway.clone()))
                .or_default();
            g.record = Record::restored(s.origin, s.settled, s.received, s.lost);
            missing = g.record.missing();
        }
        tracing::info!(
            "console: {}/{}: resuming from the database, through seq {}{}",
            s.site,
            s.gateway,
            live.gateways[&(s.site.clone(), s.gateway.clone())]
                .record
                .received_through(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(", missing {missing:?}")
            }
        );
    }
    Ok(())
}

/// One open trend bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    t: i64,
    min: f64,
    max: f64,
    last: f64,
}

/// The subscriber loop: polls the connection until the console stops.
pub async fn run(app: Arc<App>, mut eventloop: EventLoop) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    let mut buckets: HashMap<(String, String, String), Bucket> = HashMap::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = app.cancel.cancelled() => break,
            _ = tick.tick() => {
                ticks += 1;
                unstored(&app);
                replays(&app).await;
                let now_ms = unix_ms(SystemTime::now()) as i64;
                flush_buckets(&app, &mut buckets, now_ms, false, ticks % 5 == 0).await;
                if ticks % 5 == 0 {
                    let _ = app.writer.tx.send(Write::Heartbeat).await;
                }
            }
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(200);
                    subscribe(&app).await;
                    app.connected.store(true, Ordering::Relaxed);
                    *app.broker_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    tracing::info!("console: connected to the broker");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    on_message(&app, &p.topic, &p.payload, &mut buckets).await;
                    if p.retain {
                        // A retained message comes with a (re)subscription: a gateway's status
                        // then tells what this console missed while away. Ask at once instead
                        // of on the next tick (that wait was most of a restart's gap repair).
                        replays(&app).await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let was = app.connected.swap(false, Ordering::Relaxed);
                    let why = e.to_string();
                    if was {
                        tracing::warn!("console: lost the broker: {why}");
                    } else {
                        tracing::debug!("console: broker: {why}");
                    }
                    *app.broker_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    tokio::select! {
                        _ = app.cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    flush_buckets(&app, &mut buckets, i64::MAX, true, false).await;
    let _ = app.mqtt.try_disconnect();
}

async fn subscribe(app: &App) {
    for site in &app.cfg.sites {
        let filter = app.topics(site, "_").everything();
        if let Err(e) = app.mqtt.subscribe(&filter, QoS::AtLeastOnce).await {
            tracing::error!("console: cannot subscribe to {filter}: {e}");
        }
    }
}

/// Events the database could not store are holes again: replayed once it can.
fn unstored(app: &App) {
    let lost = app.writer.health.take_unstored();
    if lost.is_empty() {
        return;
    }
    let mut live = app.live_mut();
    for (site, gw, seq) in lost {
        if let Some(g) = live.gateways.get_mut(&(site, gw)) {
            g.record.unstored(seq);
        }
    }
}

/// Asks each gateway with a gap (and online) to replay it.
async fn replays(app: &App) {
    // Replayed events could not be stored either; ask once both work.
    if !app.connected.load(Ordering::Relaxed) || !app.writer.health.ok() {
        return;
    }
    let now = Instant::now();
    let due: Vec<(String, String, u64)> = {
        let mut live = app.live_mut();
        live.gateways
            .iter_mut()
            .filter(|(_, g)| g.status.get("state").and_then(Value::as_str) == Some("online"))
            .filter_map(|((s, gw), g)| g.record.replay_due(now).map(|f| (s.clone(), gw.clone(), f)))
            .collect()
    };
    for (site, gw, from) in due {
        let t = app.topics(&site, &gw);
        let reply_to = t.console_replay(&app.console_id);
        tracing::info!("console: {site}/{gw}: asking for a replay from seq {from}");
        let body = json!({"from_seq": from, "reply_to": reply_to}).to_string();
        if let Err(e) = app
            .mqtt
            .publish(t.cmd("replay"), QoS::AtLeastOnce, false, body)
            .await
        {
            tracing::warn!("console: {site}/{gw}: cannot ask for a replay: {e}");
        }
    }
}

/// Where a topic under a watched site points.
#[derive(Debug, PartialEq, Eq)]
enum Kind<'t> {
    Event { replayed_for: Option<&'t str> },
    Status(&'t str),
    Result(&'t str),
    Zone(&'t str),
    Telemetry(&'t str),
    DrainRequest(&'t str),
    DrainAck(&'t str),
    DrainStatus(&'t str),
    Clearance(&'t str),
    Agent(&'t str),
    Other,
}

/// (site, kind) of a topic, or `None` when it is not under a watched site.
fn classify<'t>(app: &App, topic: &'t str) -> Option<(&'t str, Kind<'t>)> {
    let rest = topic
        .strip_prefix(app.topic_prefix.as_str())?
        .strip_prefix('/')?;
    let (site, rest) = rest.split_once('/')?;
    if !app.cfg.sites.iter().any(|s| s == site) {
        return None;
    }
    let seg: Vec<&str> = rest.split('/').collect();
    let kind = match seg.as_slice() {
        ["alarms", _, _, _, _] => Kind::Event { replayed_for: None },
        ["gateways", gw, "status"] => Kind::Status(gw),
        ["gateways", gw, "cmd", "result"] => Kind::Result(gw),
        ["gateways", gw, "console", c, "replay"] if *c == app.console_id => Kind::Event {
            replayed_for: Some(gw),
        },
        ["zones", zone, "status"] => Kind::Zone(zone),
        ["telemetry", device] => Kind::Telemetry(device),
        ["drain", "agents", agent] => Kind::Agent(agent),
        ["drain", zone, "request"] => Kind::DrainRequest(zone),
        ["drain", zone, "ack", _] => Kind::DrainAck(zone),
        ["drain", zone, "status"] => Kind::DrainStatus(zone),
        ["power", zone, "clearance"] => Kind::Clearance(zone),
        _ => Kind::Other,
    };
    Some((site, kind))
}

async fn on_message(
    app: &App,
    topic: &str,
    payload: &[u8],
    buckets: &mut HashMap<(String, String, String), Bucket>,
) {
    let Some((site, kind)) = classify(app, topic) else {
        return;
    };
    if kind == Kind::Other {
        return;
    }
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        tracing::warn!(
            "console: {topic}: not JSON ({} bytes), ignored",
            payload.len()
        );
        return;
    };
    let key = |z: &str| (site.to_string(), z.to_string());
    match kind {
        Kind::Event { replayed_for } => event(app, site, topic, replayed_for, v).await,
        Kind::Status(gw) => {
            let item = {
                let mut live = app.live_mut();
                let g = live.gateways.entry(key(gw)).or_default();
                if let Some(seq) = v.get("seq").and_then(Value::as_u64) {
                    g.record.status(seq);
                }
                if let Some(peer) = v.get("peer").and_then(Value::as_str) {
                    g.peer = Some(peer.to_string());
                }
                g.status = v;
                // The peer's item names this one as its pair too: both tiles move together.
                let peer = g.peer.clone();
                let mut items = vec![live.gateway_item(site, gw)];
                if let Some(p) = peer.filter(|p| live.gateways.contains_key(&key(p))) {
                    items.push(live.gateway_item(site, &p));
                }
                items
            };
            for item in item {
                app.send(Update::Gateway(item));
            }
        }
        Kind::Result(gw) => result(app, site, gw, v).await,
        Kind::Zone(zone) => {
            let item = {
                let mut live = app.live_mut();
                live.zones.insert(key(zone), v);
                live.zone_item(site, zone)
            };
            app.send(Update::Zone(item));
        }
        Kind::DrainRequest(zone) | Kind::DrainStatus(zone) => {
            let is_status = matches!(kind, Kind::DrainStatus(_));
            let (item, changed) = {
                let mut live = app.live_mut();
                let slot = live.drains.entry(key(zone)).or_insert(Value::Null);
                let changed = *slot != v;
                // A status says more than the request it answers; a newer request replaces it.
                let newer_request = !is_status && slot.get("drain_id") != v.get("drain_id");
                if is_status || slot.is_null() || newer_request {
                    *slot = v.clone();
                }
                (live.zone_item(site, zone), changed)
            };
            if changed {
                drain_log(
                    app,
                    site,
                    zone,
                    if is_status { "status" } else { "request" },
                    v,
                )
                .await;
            }
            app.send(Update::Zone(item));
        }
        Kind::DrainAck(zone) => drain_log(app, site, zone, "ack", v).await,
        Kind::Clearance(zone) => {
            let (item, changed) = {
                let mut live = app.live_mut();
                let changed = live.clearances.get(&key(zone)) != Some(&v);
                live.clearances.insert(key(zone), v.clone());
                (live.zone_item(site, zone), changed)
            };
            if changed {
                drain_log(app, site, zone, "clearance", v).await;
            }
            app.send(Update::Zone(item));
        }
        Kind::Agent(agent) => {
            // The tiles of the agent's zones show its presence.
            let items: Vec<Value> = {
                let mut live = app.live_mut();
                let before = live.agents.insert(key(agent), v.clone());
                let zones = |p: Option<&Value>| -> Vec<String> {
                    p.and_then(|p| p.get("zones"))
                        .and_then(Value::as_array)
                        .map(|z| {
                            z.iter()
                                .filter_map(|z| z.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let mut all = zones(before.as_ref());
                all.extend(zones(Some(&v)));
                all.sort();
                all.dedup();
                all.iter().map(|z| live.zone_item(site, z)).collect()
            };
            for item in items {
                app.send(Update::Zone(item));
            }
        }
        Kind::Telemetry(device) => telemetry(app, site, device, v, buckets).await,
        Kind::Other => {}
    }
}

async fn drain_log(app: &App, site: &str, zone: &str, kind: &'static str, json: Value) {
    let _ = app
        .writer
        .tx
        .send(Write::Drain {
            site: site.into(),
            zone: zone.into(),
            kind,
            json,
        })
        .await;
}

async fn event(app: &App, site: &str, topic: &str, replayed_for: Option<&str>, mut v: Value) {
    let (Some(gw), Some(seq)) = (
        v.get("gateway").and_then(Value::as_str).map(str::to_string),
        v.get("seq").and_then(Value::as_u64),
    ) else {
        tracing::warn!("console: {topic}: an event without gateway or seq, ignored");
        return;
    };
    if replayed_for.is_some_and(|r| r != gw) || v.get("event_id").and_then(Value::as_str).is_none()
    {
        tracing::warn!("console: {topic}: event of gateway {gw:?} seq {seq} does not fit, ignored");
        return;
    }
    let (fresh, gap_changed, item) = {
        let mut live = app.live_mut();
        let g = live
            .gateways
            .entry((site.to_string(), gw.clone()))
            .or_default();
        let before = g.record.missing();
        let fresh = g.record.event(seq);
        let changed = fresh && g.record.missing() != before;
        (
            fresh,
            changed,
            if changed {
                live.gateway_item(site, &gw)
            } else {
                Value::Null
            },
        )
    };
    if !fresh {
        tracing::debug!("console: {site}/{gw} seq {seq}: duplicate dropped");
        return;
    }
    if let Some(o) = v.as_object_mut() {
        o.entry("site").or_insert_with(|| Value::from(site));
    }
    let received_ms = unix_ms(SystemTime::now()) as i64;
    let shown = {
        let incoming = Latest::of(&v, received_ms);
        let mut live = app.live_mut();
        let slot = live.alarms.entry(alarm_key(&v));
        match slot {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let newer = replaces(o.get(), &incoming);
                if newer {
                    o.insert(incoming);
                }
                newer
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(incoming);
                true
            }
        }
    };
    let _ = app
        .writer
        .tx
        .send(Write::Event {
            event: v.clone(),
            received_ms,
        })
        .await;
    app.send(Update::Event(v.clone()));
    if shown {
        app.send(Update::Alarm(v));
    } else {
        tracing::debug!("console: {site}/{gw} seq {seq}: older than what the alarm shows; kept in the history only");
    }
    if gap_changed {
        app.send(Update::Gateway(item));
    }
}

/// (site, zone, alarm) of an event: the key alarms merge by.
fn alarm_key(e: &Value) -> (String, String, String) {
    let f = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    (f("site"), f("zone"), f("alarm"))
}

async fn result(app: &App, site: &str, gw: &str, v: Value) {
    let command = v
        .get("command")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if command == "replay" {
        let ok = v.get("ok").and_then(Value::as_bool).unwrap_or(false);
        let reason = v.get("reason").and_then(Value::as_str).unwrap_or("");
        let reply_to = app.topics(site, gw).console_replay(&app.console_id);
        // Only this console's replays: a success names the reply_to (or says nothing is held);
        // a refusal does not, but asking again later is right whoever it was for, and a
        // record with no replay under way ignores it.
        if ok && !reason.contains(&reply_to) && !reason.starts_with("no event with seq") {
            return;
        }
        let (save, item) = {
            let mut live = app.live_mut();
            let Some(g) = live.gateways.get_mut(&(site.to_string(), gw.to_string())) else {
                return;
            };
            g.record.answered(Answer::parse(ok, reason), Instant::now());
            let r = &g.record;
            let save = Write::Gateway {
                site: site.into(),
                gateway: gw.into(),
                origin: r.origin,
                settled: r.settled,
                lost: r.lost.iter().collect(),
            };
            (save, live.gateway_item(site, gw))
        };
        tracing::info!("console: {site}/{gw}: replay answered: {reason}");
        let _ = app.writer.tx.send(save).await;
        app.send(Update::Gateway(item));
        return;
    }
    super::commands::answered(app, site, gw, &command, v);
}

async fn telemetry(
    app: &App,
    site: &str,
    device: &str,
    v: Value,
    buckets: &mut HashMap<(String, String, String), Bucket>,
) {
    let t = v
        .get("time")
        .and_then(Value::as_str)
        .and_then(super::store::parse_ms)
        .unwrap_or_else(|| unix_ms(SystemTime::now()) as i64);
    let b = t - t.rem_euclid(BUCKET_MS);
    if let Some(points) = v.get("points").and_then(Value::as_object) {
        for (point, value) in points {
            let Some(x) = value.as_f64().filter(|x| x.is_finite()) else {
                continue;
            };
            let k = (site.to_string(), device.to_string(), point.clone());
            match buckets.get_mut(&k) {
                Some(cur) if cur.t == b => {
                    cur.min = cur.min.min(x);
                    cur.max = cur.max.max(x);
                    cur.last = x;
                }
                Some(cur) if cur.t > b => {} // late, out of order: its bucket is written
                _ => {
                    if let Some(old) = buckets.insert(
                        k.clone(),
                        Bucket {
                            t: b,
                            min: x,
                            max: x,
                            last: x,
                        },
                    ) {
                        write_bucket(app, &k, old).await;
                    }
                }
            }
        }
    }
    let mut item = v;
    if let Some(o) = item.as_object_mut() {
        o.insert("site".into(), Value::from(site));
        o.insert("device".into(), Value::from(device));
    }
    app.send(Update::Telemetry(item));
}

async fn write_bucket(app: &App, k: &(String, String, String), b: Bucket) {
    let _ = app
        .writer
        .tx
        .send(Write::Trend {
            site: k.0.clone(),
            device: k.1.clone(),
            point: k.2.clone(),
            t_ms: b.t,
            min: b.min,
            max: b.max,
            last: b.last,
        })
        .await;
}

/// Writes buckets whose 10 s are over (all of them when `all`); with `open`, open buckets
/// are written as they stand too, so a chart is at most a few seconds behind.
async fn flush_buckets(
    app: &App,
    buckets: &mut HashMap<(String, String, String), Bucket>,
    now_ms: i64,
    all: bool,
    open: bool,
) {
    let done: Vec<_> = buckets
        .iter()
        .filter(|(_, b)| all || b.t + 2 * BUCKET_MS <= now_ms)
        .map(|(k, _)| k.clone())
        .collect();
    for k in done {
        if let Some(b) = buckets.remove(&k) {
            write_bucket(app, &k, b).await;
        }
    }
    if open {
        let open: Vec<_> = buckets.iter().map(|(k, b)| (k.clone(), *b)).collect();
        for (k, b) in open {
            write_bucket(app, &k, b).await;
        }
    }
}
