//! The console and a redundant pair of gateways (issue 13, SPEC "Redundant gateways"): the real
//! `emberwatch console` against a real mosquitto, the pair gw-b1/gw-b2 played by this test with
//! what the gateways publish (retained statuses with `role`, `peer`, `role_since`,
//! `role_reason`; alarm events; `cmd/result` answers).
//!
//! What an operator sees: the pair side by side with the active one and why; a command on an
//! alarm the dead or standby gateway reported goes to the active one, and the audit trail says
//! so; an alarm reported by both shows the newer word by event time, never regressed by the
//! other gateway's older or same-time report, with gap tracking per gateway.

mod common;

use std::time::Duration;

use common::console::{Console, USER};
use common::http::Sse;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "rack-01/cell_temp_max/cell-overtemp";
const SOON: Duration = Duration::from_secs(15);

fn status_topic(gw: &str) -> String {
    format!("{P}/gateways/{gw}/status")
}

/// A broker, the console, and a subscriber to the pair's commands.
struct Pair {
    broker: Mosquitto,
    console: Console,
    cmds: Subscriber,
    _dir: tempfile::TempDir,
}

impl Pair {
    async fn start() -> Pair {
        let broker = Mosquitto::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let console = Console::start(broker.port(), dir.path(), &["test-site"]).await;
        let cmds = Subscriber::connect(broker.port(), &format!("{P}/gateways/+/cmd/+")).await;
        Pair {
            broker,
            console,
            cmds,
            _dir: dir,
        }
    }

    /// `gw`'s retained status as a gateway of the pair publishes it.
    /// The pair as it settles at start: gw-b1 active by priority, gw-b2 standby.
    async fn settled(&self) {
        self.status(
            "gw-b1",
            "active",
            "2026-11-29T15:00:00Z",
            "priority 1 of the pair",
        )
        .await;
        self.status(
            "gw-b2",
            "standby",
            "2026-11-29T15:00:01Z",
            "peer gw-b1 is active",
        )
        .await;
    }

    async fn status(&self, gw: &str, role: &str, since: &str, reason: &str) {
        let peer = if gw == "gw-b1" { "gw-b2" } else { "gw-b1" };
        let body = json!({"state": "online", "version": "0.1.0",
            "started_at": "2026-11-29T14:00:00Z", "role": role, "peer": peer,
            "role_since": since, "role_reason": reason});
        let topic = status_topic(gw);
        publish(
            self.broker.port(),
            &topic,
            body.to_string().as_bytes(),
            true,
        )
        .await;
    }

    /// The broker fires `gw`'s last will.
    async fn dies(&self, gw: &str) {
        let topic = status_topic(gw);
        publish(self.broker.port(), &topic, br#"{"state":"offline"}"#, true).await;
    }

    async fn event(&self, gw: &str, seq: u64, time: &str, state: &str, acked: bool) {
        let isa = match (state, acked) {
            ("active", false) => "active_unacknowledged",
            ("active", true) => "active_acknowledged",
            (_, false) => "cleared_unacknowledged",
            (_, true) => "normal",
        };
        let e = json!({"event_id": format!("{gw}-{seq}"), "seq": seq, "site": "test-site",
            "gateway": gw, "alarm": KEY, "rule": "cell-overtemp", "zone": "room-1",
            "device": "rack-01", "point": "cell_temp_max", "kind": "threshold",
            "severity": "critical", "state": state, "acked": acked, "isa_state": isa,
            "value": 57.2, "threshold": 55.0, "unit": "degC", "message": format!("{gw} {seq}"),
            "time": time, "since": "2026-11-29T15:00:00Z"});
        let topic = format!("{P}/alarms/room-1/{KEY}");
        publish(self.broker.port(), &topic, e.to_string().as_bytes(), false).await;
    }

    /// What `/api/alarms` shows for the alarm: (gateway, seq).
    async fn shown(&self) -> (String, u64) {
        let v = self.console.get("/api/alarms?state=all").await.json();
        let a = &v[0];
        (
            a["gateway"].as_str().unwrap_or("").to_string(),
            a["seq"].as_u64().unwrap_or(0),
        )
    }

    /// Plays the gateway that receives the next `cmd/{name}`: answers it ok, returns the
    /// topic it came on and its body.
    async fn answer(&mut self, name: &str) -> (String, Value) {
        let suffix = format!("/cmd/{name}");
        let m = self
            .cmds
            .next_matching(|t, _| t.ends_with(&suffix), SOON)
            .await
            .unwrap_or_else(|| panic!("no cmd/{name}; seen:\n{}", self.cmds.seen_list()));
        let gw = m.topic.split('/').nth(3).unwrap_or("").to_string();
        let result =
            json!({"command": name, "ok": true, "reason": format!("acknowledged by {gw}")});
        publish(
            self.broker.port(),
            &format!("{P}/gateways/{gw}/cmd/result"),
            result.to_string().as_bytes(),
            false,
        )
        .await;
        let body = m.json();
        (m.topic, body)
    }
}

fn gateway<'v>(list: &'v Value, gw: &str) -> &'v Value {
    list.as_array()
        .and_then(|l| l.iter().find(|g| g["gateway"] == gw))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_pair_which_is_active_since_when_and_why() {
    let p = Pair::start().await;
    p.settled().await;
    let list = p
        .console
        .until(
            "/api/gateways",
            |v| gateway(v, "gw-b2")["role"] == "standby" && gateway(v, "gw-b1")["role"] == "active",
            SOON,
        )
        .await;
    let b1 = gateway(&list, "gw-b1");
    assert_eq!(b1["peer"], "gw-b2");
    assert_eq!(b1["role_since"], "2026-11-29T15:00:00Z");
    assert_eq!(b1["role_reason"], "priority 1 of the pair");
    assert_eq!(gateway(&list, "gw-b2")["peer"], "gw-b1");

    // gw-b1 dies; gw-b2 takes over. The stream says so as it happens.
    let mut sse = Sse::open(p.console.port, "/api/stream", &[]).await;
    p.dies("gw-b1").await;
    let dead = sse
        .expect(
            "gateway",
            |g| g["gateway"] == "gw-b1" && g["state"] == "offline",
            SOON,
        )
        .await;
    assert_eq!(
        dead["peer"], "gw-b2",
        "the last will names no peer; the pair stays together"
    );
    p.status(
        "gw-b2",
        "active",
        "2026-11-29T15:03:04Z",
        "peer gw-b1 offline (last will)",
    )
    .await;
    let took = sse
        .expect(
            "gateway",
            |g| g["gateway"] == "gw-b2" && g["role"] == "active",
            SOON,
        )
        .await;
    assert_eq!(took["role_since"], "2026-11-29T15:03:04Z");
    assert_eq!(took["role_reason"], "peer gw-b1 offline (last will)");
    assert_eq!(took["state"], "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_to_the_dead_or_standby_gateway_goes_to_the_active_one_and_is_audited() {
    let mut p = Pair::start().await;
    p.settled().await;
    p.dies("gw-b1").await;
    p.status(
        "gw-b2",
        "active",
        "2026-11-29T15:03:04Z",
        "peer gw-b1 offline (last will)",
    )
    .await;
    p.console
        .until(
            "/api/gateways",
            |v| {
                gateway(v, "gw-b1")["state"] == "offline" && gateway(v, "gw-b2")["role"] == "active"
            },
            SOON,
        )
        .await;

    // The operator acks an alarm whose last event came from gw-b1, now dead.
    let body = json!({"site": "test-site", "gateway": "gw-b1", "alarm": KEY, "zone": "room-1"});
    let console_port = p.console.port;
    let post = tokio::spawn(async move {
        let b = common::http::basic(USER, common::console::PASSWORD);
        common::http::request(
            console_port,
            "POST",
            "/api/ack",
            &[("Content-Type", "application/json"), ("Authorization", &b)],
            body.to_string().as_bytes(),
        )
        .await
    });
    let (topic, cmd) = p.answer("ack").await;
    assert_eq!(topic, format!("{P}/gateways/gw-b2/cmd/ack"));
    assert_eq!(cmd["alarm"], KEY);
    assert_eq!(cmd["by"], USER);
    let reply = post.await.expect("POST ran");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(answer["answered_by"], "gw-b2");
    assert_eq!(answer["sent_to"], "gw-b2");
    assert_eq!(answer["reason"], "acknowledged by gw-b2");
    let audit = p
        .console
        .until("/api/audit", |v| v[0]["command"] == "ack", SOON)
        .await;
    assert_eq!(audit[0]["gateway"], "gw-b1", "{audit:#}");
    assert_eq!(audit[0]["answered_by"], "gw-b2", "{audit:#}");
    assert_eq!(audit[0]["ok"], true);

    // gw-b1 is back as standby: a command addressed to it still goes to gw-b2.
    p.status(
        "gw-b1",
        "standby",
        "2026-11-29T15:05:00Z",
        "peer gw-b2 is active",
    )
    .await;
    p.console
        .until(
            "/api/gateways",
            |v| gateway(v, "gw-b1")["role"] == "standby",
            SOON,
        )
        .await;
    let body = json!({"site": "test-site", "gateway": "gw-b1", "alarm": KEY, "for": "30m",
        "reason": "sensor swap"});
    let post = tokio::spawn(async move {
        let b = common::http::basic(USER, common::console::PASSWORD);
        common::http::request(
            console_port,
            "POST",
            "/api/shelve",
            &[("Content-Type", "application/json"), ("Authorization", &b)],
            body.to_string().as_bytes(),
        )
        .await
    });
    let (topic, _) = p.answer("shelve").await;
    assert_eq!(topic, format!("{P}/gateways/gw-b2/cmd/shelve"));
    assert_eq!(post.await.expect("POST ran").json()["answered_by"], "gw-b2");
    assert!(
        !p.cmds.seen_list().contains("gw-b1/cmd/"),
        "nothing was sent to gw-b1:\n{}",
        p.cmds.seen_list()
    );

    // Neither is active (gw-b2 dies too): the console says the addressed one is not online.
    p.dies("gw-b2").await;
    p.console
        .until(
            "/api/gateways",
            |v| gateway(v, "gw-b2")["state"] == "offline",
            SOON,
        )
        .await;
    p.dies("gw-b1").await;
    p.console
        .until(
            "/api/gateways",
            |v| gateway(v, "gw-b1")["state"] == "offline",
            SOON,
        )
        .await;
    let body = json!({"site": "test-site", "gateway": "gw-b1", "alarm": KEY}).to_string();
    let reply = p.console.post("/api/ack", &body, true).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("gateway gw-b1 of site test-site is offline"),
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_reported_by_both_shows_the_newer_word_by_time_never_regressed() {
    let p = Pair::start().await;
    p.status(
        "gw-b1",
        "active",
        "2026-11-29T15:00:00Z",
        "priority 1 of the pair",
    )
    .await;
    p.status(
        "gw-b2",
        "active",
        "2026-11-29T15:00:00Z",
        "peer gw-b1 unseen (split brain)",
    )
    .await;
    // gw-b1 raises the alarm and the operator's ack reaches it.
    p.event("gw-b1", 1, "2026-11-29T15:01:00.000Z", "active", false)
        .await;
    p.event("gw-b1", 2, "2026-11-29T15:02:00.000Z", "active", true)
        .await;
    p.console
        .until("/api/alarms?state=all", |v| v[0]["seq"] == 2, SOON)
        .await;

    let mut sse = Sse::open(p.console.port, "/api/stream", &[]).await;
    // gw-b2 raised it too, a little later than gw-b1 (its report arrives after the ack), and
    // says the same thing again at the ack's very millisecond: neither turns the ack back.
    // Its seqs, 1 and 2, are its own: not duplicates of gw-b1's.
    p.event("gw-b2", 1, "2026-11-29T15:01:00.300Z", "active", false)
        .await;
    p.event("gw-b2", 2, "2026-11-29T15:02:00.000Z", "active", false)
        .await;
    // Then gw-b2 sees the room back to normal: newer, it is shown.
    p.event("gw-b2", 3, "2026-11-29T15:04:00.000Z", "cleared", false)
        .await;
    let mut alarms = Vec::new();
    let mut events = Vec::new();
    while !alarms.iter().any(|(g, s)| g == "gw-b2" && *s == 3) {
        match sse.next(SOON).await {
            Some((name, v)) if name == "alarm" || name == "event" => {
                let id = (
                    v["gateway"].as_str().unwrap_or("").to_string(),
                    v["seq"].as_u64().unwrap_or(0),
                );
                if name == "alarm" {
                    alarms.push(id)
                } else {
                    events.push(id)
                }
            }
            Some(_) => {}
            None => panic!("no alarm update for gw-b2 seq 3; alarms {alarms:?} events {events:?}"),
        }
    }
    assert_eq!(
        alarms,
        vec![("gw-b2".to_string(), 3)],
        "the live stream moves the alarm only to the newer word"
    );
    assert_eq!(
        events,
        vec![
            ("gw-b2".to_string(), 1),
            ("gw-b2".to_string(), 2),
            ("gw-b2".to_string(), 3)
        ],
        "every event is still streamed and kept"
    );
    p.console
        .until(
            "/api/alarms?state=all",
            |v| v[0]["gateway"] == "gw-b2",
            SOON,
        )
        .await;
    assert_eq!(p.shown().await, ("gw-b2".to_string(), 3));
    let history = p.console.get("/api/events?limit=100").await.json();
    assert_eq!(history.as_array().map(Vec::len), Some(5), "{history:#}");

    // Gaps are counted per gateway: neither has one.
    let list = p.console.get("/api/gateways").await.json();
    assert_eq!(gateway(&list, "gw-b1")["received_through"], 2);
    assert_eq!(gateway(&list, "gw-b2")["received_through"], 3);
    assert_eq!(gateway(&list, "gw-b1")["missing"], json!([]));
    assert_eq!(gateway(&list, "gw-b2")["missing"], json!([]));
}

/// Before the merge by time, the same-millisecond report of the other gateway replaced what
/// was shown; a console restarted on its database keeps the merge too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merge_survives_a_console_restart() {
    let mut p = Pair::start().await;
    p.event("gw-b1", 1, "2026-11-29T15:02:00.000Z", "active", true)
        .await;
    p.console
        .until("/api/alarms?state=all", |v| v[0]["seq"] == 1, SOON)
        .await;
    p.console.kill().await;
    let (dir, config, port) = (
        p.console.dir.clone(),
        p.console.config.clone(),
        p.console.port,
    );
    p.console = Console::start_config(&dir, &config, port).await;
    let mut sse = Sse::open(p.console.port, "/api/stream", &[]).await;
    p.event("gw-b2", 1, "2026-11-29T15:02:00.000Z", "active", false)
        .await;
    sse.expect("event", |e| e["gateway"] == "gw-b2", SOON).await;
    p.console
        .until(
            "/api/events?limit=10",
            |v| v.as_array().map(Vec::len) == Some(2),
            SOON,
        )
        .await;
    assert_eq!(p.shown().await, ("gw-b1".to_string(), 1));
    assert!(
        sse.next(Duration::from_millis(500))
            .await
            .is_none_or(|(n, _)| n != "alarm"),
        "no alarm update for the same-time report of gw-b2"
    );
}
