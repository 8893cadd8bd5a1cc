//! The site console as the night-shift operator lives it (issue 12, steps 2-5): an alarm
//! appears in the API and on the live stream, she acknowledges it with her name, scripts and
//! strangers are told no, and history, audit and CSV export answer the questions afterwards.
//! Each test runs its own mosquitto, `emberwatch sim`, `emberwatch run` and `emberwatch
//! console` on free ports.

mod common;

use std::time::Duration;

use common::console::{Console, Rig, PASSWORD, USER};
use common::http::{basic, request, Sse};
use common::*;
use serde_json::Value;

const KEY: &str = "rack-01/cell_temp_max/cell-overtemp";
const SOON: Duration = Duration::from_secs(10);

/// The site of every test here, with the console already seeing the gateway online.
async fn rig() -> Rig {
    let rig = Rig::start(SOON).await;
    rig.console
        .until("/api/gateways", |v| v[0]["state"] == "online", SOON)
        .await;
    rig
}

impl Rig {
    /// Raises the cell-overtemp alarm and waits for the console to hold it.
    async fn hot(&mut self) -> Value {
        self.sim.write(116, 572).await;
        let alarms = self
            .console
            .until(
                "/api/alarms",
                |v| {
                    v.as_array()
                        .is_some_and(|a| a.iter().any(|x| x["alarm"] == KEY))
                },
                SOON,
            )
            .await;
        alarms[0].clone()
    }
}

fn ack_body(alarm: &str) -> String {
    format!(r#"{{"site":"test-site","gateway":"gw-t","alarm":"{alarm}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_appears_live_and_the_operator_acknowledges_it_by_name() {
    let mut rig = rig().await;
    let mut stream = Sse::open(rig.console.port, "/api/stream", &[]).await;

    let alarm = rig.hot().await;
    assert_eq!(alarm["isa_state"], "active_unacknowledged", "{alarm}");
    assert_eq!(alarm["site"], "test-site");
    assert_eq!(alarm["value"], 57.2);
    assert_eq!(alarm["threshold"], 55.0);
    let ev = stream
        .expect(
            "event",
            |v| v["alarm"] == KEY && v["state"] == "active",
            SOON,
        )
        .await;
    assert_eq!(ev["seq"], alarm["seq"]);
    let zone = stream
        .expect(
            "zone",
            |v| v["zone"] == "room-1" && v["level"] == "critical",
            SOON,
        )
        .await;
    assert_eq!(zone["active"], serde_json::json!([KEY]));

    // Strangers are told no, and nothing reaches the gateway.
    let r = rig.console.post("/api/ack", &ack_body(KEY), false).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Basic")));
    let wrong = basic(USER, "guess");
    let r = request(
        rig.console.port,
        "POST",
        "/api/ack",
        &[("Authorization", &wrong)],
        ack_body(KEY).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);

    // She acknowledges: the gateway's answer comes back, the event names her.
    let r = rig.console.post("/api/ack", &ack_body(KEY), true).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ok"], true);
    assert_eq!(r.json()["command"], "ack");
    let acked = rig
        .sub
        .expect_where(
            &format!("{P}/alarms/room-1/{KEY}"),
            |j| j["acked"] == true,
            SOON,
        )
        .await;
    assert_eq!(acked["acked_by"], USER, "{acked}");
    let live = stream
        .expect("alarm", |v| v["alarm"] == KEY && v["acked"] == true, SOON)
        .await;
    assert_eq!(live["acked_by"], USER);
    let alarms = rig.console.get("/api/alarms").await.json();
    assert_eq!(alarms[0]["isa_state"], "active_acknowledged", "{alarms}");
    assert_eq!(alarms[0]["acked_by"], USER);
    let audited = stream
        .expect("audit", |v| v["command"] == "ack", SOON)
        .await;
    assert_eq!(
        (&audited["user"], &audited["ok"]),
        (&Value::from(USER), &Value::Bool(true))
    );

    // The gateway refuses an alarm it does not have: 422 with its reason.
    let r = rig
        .console
        .post("/api/ack", &ack_body("rack-99/x/y"), true)
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["ok"], false);
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no alarm \"rack-99/x/y\""),
        "{}",
        r.body
    );

    // Bad requests are the console's to refuse, with what was wrong.
    let r = rig.console.post("/api/ack", "{not json", true).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap_or("")
        .starts_with("POST /api/ack: the body must be JSON"));
    let r = rig
        .console
        .post(
            "/api/ack",
            r#"{"site":"elsewhere","gateway":"gw-t","alarm":"*"}"#,
            true,
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "unknown site \"elsewhere\": this console watches test-site"
    );
    let r = rig
        .console
        .post(
            "/api/ack",
            r#"{"site":"test-site","gateway":"gw-t","alarm":"*","who":"x"}"#,
            true,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("unknown field `who`"), "{}", r.body);

    // Shelving goes through with her name too.
    let r = rig
        .console
        .post(
            "/api/shelve",
            &format!(r#"{{"site":"test-site","gateway":"gw-t","alarm":"{KEY}","for":"10m","reason":"sensor swap"}}"#),
            true,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let shelved = rig
        .console
        .until("/api/alarms", |v| v[0]["isa_state"] == "shelved", SOON)
        .await;
    assert_eq!(shelved[0]["shelved_by"], USER);

    // The audit trail: who, what, when, result, oldest first.
    let audit = rig.console.get("/api/audit").await.json();
    let rows: Vec<(String, String, bool, u64)> = audit
        .as_array()
        .expect("a list")
        .iter()
        .map(|a| {
            (
                a["user"].as_str().unwrap_or("").to_string(),
                a["command"].as_str().unwrap_or("").to_string(),
                a["ok"].as_bool().unwrap_or(true),
                a["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let u = USER.to_string();
    assert_eq!(
        rows,
        vec![
            (u.clone(), "ack".into(), true, 200),
            (u.clone(), "ack".into(), false, 422),
            (u.clone(), "ack".into(), false, 400),
            (u.clone(), "ack".into(), false, 400),
            (u.clone(), "ack".into(), false, 400),
            (u.clone(), "shelve".into(), true, 200),
        ],
        "{audit:#}"
    );
    assert!(audit[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(audit[0]["alarm"], KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_filtered_and_exported_as_csv_and_the_page_can_log_in() {
    let mut rig = rig().await;
    rig.hot().await;
    rig.sim.write(116, 250).await;
    let events = rig
        .console
        .until(
            "/api/events?site=test-site&zone=room-1",
            |v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|e| e["state"] == "cleared"))
            },
            SOON,
        )
        .await;
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(seqs, sorted, "in seq order");
    let none = rig.console.get("/api/events?zone=room-9").await.json();
    assert_eq!(none, serde_json::json!([]));
    let crit = rig
        .console
        .get("/api/events?severity=critical&device=rack-01")
        .await
        .json();
    assert!(crit
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(|e| e["severity"] == "critical")));
    let r = rig.console.get("/api/events?since=yesterday").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap_or("")
        .starts_with("since=\"yesterday\": expected an RFC 3339 time"));

    let csv = rig.console.get("/api/events?format=csv&zone=room-1").await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let mut lines = csv.body.lines();
    assert_eq!(
        lines.next(),
        Some("site,gateway,seq,event_id,time,since,zone,device,point,rule,alarm,kind,severity,state,isa_state,acked,acked_by,shelved_by,value,threshold,unit,message")
    );
    let first = lines.next().expect("a row");
    assert!(
        first.starts_with(&format!("test-site,gw-t,{},gw-t-{}", seqs[0], seqs[0])),
        "{first}"
    );
    assert_eq!(csv.body.lines().count(), seqs.len() + 1);

    // The login form: a cookie for the page, /api/me says who.
    let form = format!(
        "user={}&password={}",
        USER.replace(' ', "+"),
        PASSWORD.replace(' ', "+")
    );
    let ct = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = request(rig.console.port, "POST", "/login", &ct, form.as_bytes()).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/")));
    let cookie = r
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let me = request(
        rig.console.port,
        "GET",
        "/api/me",
        &[("Cookie", &session)],
        b"",
    )
    .await;
    assert_eq!(
        me.json(),
        serde_json::json!({"user": USER, "can_read": true})
    );
    let anon = rig.console.get("/api/me").await.json();
    assert_eq!(anon, serde_json::json!({"user": null, "can_read": true}));
    let r = request(
        rig.console.port,
        "POST",
        "/login",
        &ct,
        b"user=nobody&password=x",
    )
    .await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/?login=failed"))
    );
    // The session commands like Basic does.
    let r = request(
        rig.console.port,
        "POST",
        "/api/ack",
        &[("Cookie", &session), ("Content-Type", "application/json")],
        ack_body("*").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(
        rig.console.port,
        "POST",
        "/logout",
        &[("Cookie", &session)],
        b"",
    )
    .await;
    assert_eq!(r.status, 303);
    let me = request(
        rig.console.port,
        "GET",
        "/api/me",
        &[("Cookie", &session)],
        b"",
    )
    .await;
    assert_eq!(me.json()["user"], Value::Null);

    // The trend of the point: 10 s min/max/last buckets from telemetry, oldest first.
    let trend = rig
        .console
        .until(
            "/api/trends?site=test-site&device=rack-01&point=cell_temp_max&since=3600",
            |v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|b| b["max"] == 57.2))
            },
            Duration::from_secs(15),
        )
        .await;
    let buckets = trend.as_array().unwrap();
    assert!(buckets
        .windows(2)
        .all(|w| w[0]["t"].as_i64() < w[1]["t"].as_i64()));
    assert!(buckets
        .iter()
        .all(|b| b["t"].as_i64().unwrap() % 10_000 == 0
            && b["min"].as_f64() <= b["last"].as_f64()
            && b["last"].as_f64() <= b["max"].as_f64()));
    let r = rig.console.get("/api/trends?site=test-site").await;
    assert_eq!(r.status, 400);
    drop(rig.dir);
}

/// A gateway whose retained status says offline gets nothing: 503 and no command on the wire.
/// One that says online but never answers: 504 after 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_gateway_gets_nothing_and_a_silent_one_times_out() {
    let mut rig = rig().await;
    let mut cmds = Subscriber::connect(rig.broker.port(), &format!("{P}/gateways/+/cmd/+")).await;
    rig.gateway.terminate().await;
    rig.console
        .until("/api/gateways", |v| v[0]["state"] == "offline", SOON)
        .await;
    let r = rig.console.post("/api/ack", &ack_body("*"), true).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        r.json()["error"],
        "gateway gw-t of site test-site is offline (its retained status says so): nothing was \
         sent; try again when it is back online"
    );
    assert!(
        cmds.next_matching(|t, _| t.ends_with("/cmd/ack"), Duration::from_millis(500))
            .await
            .is_none(),
        "nothing was sent"
    );

    // A gateway that claims to be online but does not answer (hung, or a stale status).
    publish(
        rig.broker.port(),
        &format!("{P}/gateways/gw-ghost/status"),
        br#"{"state":"online","version":"0.1.0","started_at":"2026-11-24T13:40:00.000Z","seq":0}"#,
        true,
    )
    .await;
    rig.console
        .until(
            "/api/gateways",
            |v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|g| g["gateway"] == "gw-ghost"))
            },
            SOON,
        )
        .await;
    let started = std::time::Instant::now();
    let r = rig
        .console
        .post(
            "/api/ack",
            r#"{"site":"test-site","gateway":"gw-ghost","alarm":"*"}"#,
            true,
        )
        .await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(started.elapsed() >= Duration::from_secs(5));
    let sent = cmds
        .expect_where(&format!("{P}/gateways/gw-ghost/cmd/ack"), |_| true, SOON)
        .await;
    assert_eq!(sent, serde_json::json!({"alarm": "*", "by": USER}));
    let r = rig
        .console
        .post(
            "/api/ack",
            r#"{"site":"test-site","gateway":"gw-none","alarm":"*"}"#,
            true,
        )
        .await;
    assert_eq!(r.status, 400);
}

/// A critical alarm in a zone with `[drain]`: the zone tile carries the drain request and its
/// status, and `/api/drains` holds the zone's drain timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_shows_on_its_zone_and_in_its_timeline() {
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let drain = "\n[drain]\ntrigger = \"critical\"\ndeadline = \"60s\"\nagents = [\"lb-1\"]\n";
    let _gateway = Daemon::start(&gateway_config(
        broker.port(),
        sim.port(),
        state.path(),
        drain,
    ));
    sub.expect_where(
        &format!("{P}/gateways/gw-t/status"),
        |j| j["state"] == "online",
        SOON,
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let console = Console::start(broker.port(), dir.path(), &["test-site"]).await;
    sim.write(116, 572).await;
    let request = sub
        .expect_where(
            &format!("{P}/drain/room-1/request"),
            |j| j["drain_id"].is_string(),
            SOON,
        )
        .await;
    let zones = console
        .until(
            "/api/zones",
            |v| v[0]["drain"]["drain_id"] == request["drain_id"] && v[0]["level"] == "critical",
            SOON,
        )
        .await;
    assert_eq!(zones[0]["site"], "test-site");
    assert_eq!(zones[0]["zone"], "room-1");
    let timeline = console
        .until(
            "/api/drains?site=test-site&zone=room-1",
            |v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|e| e["kind"] == "request"))
            },
            SOON,
        )
        .await;
    assert_eq!(
        timeline[0]["message"]["drain_id"], request["drain_id"],
        "{timeline}"
    );
}
