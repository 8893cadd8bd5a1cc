//! Redundant gateways (issue 13, SPEC "Redundant gateways") as an operator lives them: two
//! gateways for one room, gw-b1 (priority 1) and gw-b2 (priority 2), the real binary twice
//! against a real mosquitto and `emberwatch sim`. One is active and publishes; the other
//! watches warm and takes over when the first dies, without raising again what was raised.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::*;
use serde_json::Value;

const ALARM: &str = "emberwatch/test-site/alarms/room-1/rack-01/cell_temp_max/cell-overtemp";
const KEY: &str = "rack-01/cell_temp_max/cell-overtemp";
const ZONE: &str = "emberwatch/test-site/zones/room-1/status";
const SOON: Duration = Duration::from_secs(10);
/// keep_alive 2 s: the SPEC's bound for a takeover is 1.5 × 2 s + 2 s.
const TAKEOVER: Duration = Duration::from_secs(5);

fn status(gw: &str) -> String {
    format!("{P}/gateways/{gw}/status")
}

fn cmd(gw: &str, name: &str) -> String {
    format!("{P}/gateways/{gw}/cmd/{name}")
}

/// A status that changes the role after the start (a start's own standby excluded).
fn flap(topic: &str, j: &Value, active: &str, standby: &str) -> bool {
    let starting = j["role_reason"]
        .as_str()
        .is_some_and(|r| r.starts_with("starting"));
    !starting
        && ((topic == status(active) && j["role"] != "active")
            || (topic == status(standby) && j["role"] == "active"))
}

fn result(gw: &str) -> String {
    cmd(gw, "result")
}

/// The harness's gateway, as `name` of the pair, with keep_alive 2 s, on `mqtt_port`.
fn pair_config(name: &str, priority: i64, mqtt_port: u16, sim_port: u16, dir: &Path) -> String {
    let peer = if name == "gw-b1" { "gw-b2" } else { "gw-b1" };
    gateway_config(
        mqtt_port,
        sim_port,
        dir,
        &format!("\n[redundancy]\npeer = \"{peer}\"\npriority = {priority}\n"),
    )
    .replace("gateway = \"gw-t\"", &format!("gateway = \"{name}\""))
    .replace("keep_alive = \"5s\"", "keep_alive = \"2s\"")
}

struct Pair {
    /// Appended to both gateways' configurations (a `[drain]` section).
    extra: String,
    sub: Subscriber,
    sim: Sim,
    broker: Mosquitto,
    b1: Option<Daemon>,
    b2: Option<Daemon>,
    dir1: tempfile::TempDir,
    dir2: tempfile::TempDir,
    /// gw-b1's broker port (a relay's, for the split brain).
    b1_port: u16,
    /// Both gateways' `mqtt.keep_alive` (2 s unless a test needs a longer silence).
    keep_alive: &'static str,
}

impl Pair {
    async fn start(relay_for_b1: Option<&Relay>, broker: Mosquitto) -> Pair {
        Pair::start_with(relay_for_b1, broker, "").await
    }

    async fn start_with(relay_for_b1: Option<&Relay>, broker: Mosquitto, extra: &str) -> Pair {
        Pair::start_opts(relay_for_b1, broker, extra, "2s").await
    }

    async fn start_opts(
        relay_for_b1: Option<&Relay>,
        broker: Mosquitto,
        extra: &str,
        keep_alive: &'static str,
    ) -> Pair {
        let sim = Sim::start("normal", 1).await;
        let sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
        let b1_port = relay_for_b1.map_or(broker.port(), Relay::port);
        let mut p = Pair {
            extra: extra.to_string(),
            sub,
            sim,
            b1: None,
            b2: None,
            dir1: tempfile::tempdir().expect("tempdir"),
            dir2: tempfile::tempdir().expect("tempdir"),
            b1_port,
            broker,
            keep_alive,
        };
        p.b1 = Some(Daemon::start(&p.config("gw-b1")));
        p.b2 = Some(Daemon::start(&p.config("gw-b2")));
        p
    }

    fn config(&self, gw: &str) -> String {
        let c = match gw {
            "gw-b1" => pair_config(gw, 1, self.b1_port, self.sim.port(), self.dir1.path()),
            _ => pair_config(gw, 2, self.broker.port(), self.sim.port(), self.dir2.path()),
        };
        c.replace(
            "keep_alive = \"2s\"",
            &format!("keep_alive = \"{}\"", self.keep_alive),
        ) + &self.extra
    }

    /// The next status of `gw` that says `role` once decided (not the standby of a start).
    async fn role(&mut self, gw: &str, role: &str, within: Duration) -> Value {
        self.sub
            .expect_where(
                &status(gw),
                |j| {
                    j["role"] == role
                        && !j["role_reason"]
                            .as_str()
                            .is_some_and(|r| r.starts_with("starting"))
                },
                within,
            )
            .await
    }

    async fn command(&mut self, gw: &str, name: &str, body: &str) -> Value {
        publish(self.broker.port(), &cmd(gw, name), body.as_bytes(), false).await;
        self.sub
            .expect_where(&result(gw), |j| j["command"] == name, SOON)
            .await
    }

    /// Once the pair has settled (gw-b1 active, gw-b2 standby), raises the off-gas alarm and
    /// checks that gw-b1 published it.
    async fn b1_raises_offgas(&mut self) {
        self.role("gw-b1", "active", SOON).await;
        self.role("gw-b2", "standby", SOON).await;
        self.sim.write(116, 600).await;
        let raised = self
            .sub
            .expect_where(ALARM, |j| j["state"] == "active", SOON)
            .await;
        assert_eq!(raised["gateway"], "gw-b1");
    }

    /// Alarm events of `gw` for the cell-overtemp alarm within `within`.
    /// Asserts that for `within` neither gateway changes role: `active` stays active and
    /// `standby` does not become active.
    async fn no_flap(&mut self, active: &str, standby: &str, within: Duration) {
        let seen = self
            .sub
            .next_matching(|t, j| flap(t, j, active, standby), within)
            .await;
        assert!(seen.is_none(), "the pair flapped: {seen:?}");
    }

    async fn events_of(&mut self, gw: &str, within: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        let end = Instant::now() + within;
        while let Some(m) = self
            .sub
            .next_matching(
                |t, j| t == ALARM && j["gateway"] == gw,
                end.saturating_duration_since(Instant::now()),
            )
            .await
        {
            got.push(m.json());
        }
        got
    }

    /// Runs `emberwatch switchover` on `gw`'s configuration.
    fn switchover(&self, gw: &str, by: &str) -> std::process::Output {
        let file = if gw == "gw-b1" {
            self.dir1.path().join("switchover.toml")
        } else {
            self.dir2.path().join("switchover.toml")
        };
        std::fs::write(&file, self.config(gw)).expect("write config");
        std::process::Command::new(env!("CARGO_BIN_EXE_emberwatch"))
            .args(["switchover", "--config"])
            .arg(&file)
            .args(["--by", by])
            .output()
            .expect("run emberwatch switchover")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pair_settles_by_priority_and_only_the_active_one_publishes() {
    let broker = Mosquitto::start().await;
    let mut p = Pair::start(None, broker).await;
    let s1 = p.role("gw-b1", "active", SOON).await;
    let s2 = p.role("gw-b2", "standby", SOON).await;
    assert_eq!(s1["state"], "online");
    assert_eq!(s1["peer"], "gw-b2");
    assert_eq!(s1["priority"], 1);
    assert!(s1["role_since"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(s2["peer"], "gw-b1");
    let why2 = s2["role_reason"].as_str().unwrap_or_default().to_string();
    assert!(
        why2 == "peer gw-b1 is active" || why2 == "peer gw-b1 is standby and wins by priority 1",
        "{s2}"
    );

    // A critical temperature: one event, from gw-b1; gw-b2 (warm, evaluating too) is silent.
    p.sim.write(116, 600).await;
    let raised = p
        .sub
        .expect_where(ALARM, |j| j["state"] == "active", SOON)
        .await;
    assert_eq!(raised["gateway"], "gw-b1");
    assert_eq!(raised["severity"], "critical");
    assert!(p
        .events_of("gw-b2", Duration::from_secs(3))
        .await
        .is_empty());

    // The standby refuses the alarm table's commands, naming the active gateway.
    let refused = p
        .command("gw-b2", "ack", &format!(r#"{{"alarm":"{KEY}"}}"#))
        .await;
    assert_eq!(refused["ok"], false);
    assert_eq!(
        refused["reason"],
        "gw-b2 is standby; send commands to the active gateway gw-b1"
    );
    // Neither flapped.
    p.no_flap("gw-b1", "gw-b2", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_a_dead_gateway_and_a_switchover_hands_back() {
    let broker = Mosquitto::start().await;
    let mut p = Pair::start(None, broker).await;
    p.b1_raises_offgas().await;
    let acked = p
        .command(
            "gw-b1",
            "ack",
            &format!(r#"{{"alarm":"{KEY}","by":"alice"}}"#),
        )
        .await;
    assert_eq!(acked["ok"], true, "{acked}");
    p.sub
        .expect_where(ALARM, |j| j["acked"] == true, SOON)
        .await;
    // Let the standby see the ack in the pair's picture.
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.sub.forget();

    // gw-b1 dies without a word: the broker's last will, then gw-b2 is active.
    let killed = Instant::now();
    p.b1.as_mut().expect("gw-b1").kill().await;
    p.sub
        .expect_where(&status("gw-b1"), |j| j["state"] == "offline", SOON)
        .await;
    let s2 = p.role("gw-b2", "active", SOON).await;
    let took = killed.elapsed();
    assert_eq!(s2["role_reason"], "peer gw-b1 offline (last will)");
    eprintln!("takeover {took:?} after SIGKILL (SPEC bound {TAKEOVER:?}; measured in benches/redundancy.rs)");
    // It says where the zone stands, and raises nothing again: the alarm stays acked.
    let zone = p.sub.expect(ZONE, SOON).await;
    assert_eq!(zone["level"], "critical");
    assert_eq!(zone["active"][0], KEY);
    assert!(
        p.events_of("gw-b2", Duration::from_secs(2))
            .await
            .is_empty(),
        "gw-b2 re-raised what gw-b1 had raised; seen:\n{}",
        p.sub.seen_list()
    );
    // A change after the takeover: gw-b2's own gateway and seq.
    p.sim.write(116, 700).await;
    let worse = p
        .sub
        .expect_where(ALARM, |j| j["severity"] == "emergency", SOON)
        .await;
    assert_eq!(worse["gateway"], "gw-b2");
    assert_eq!(worse["seq"], 1, "gw-b2's first event: {worse}");
    assert_eq!(worse["event_id"], "gw-b2-1");
    assert_eq!(worse["acked"], false);

    // gw-b1 comes back: standby, and the pair does not flap.
    p.b1 = Some(Daemon::start(&p.config("gw-b1")));
    let back = p
        .sub
        .expect_where(
            &status("gw-b1"),
            |j| j["state"] == "online" && j["role_reason"] == "peer gw-b2 is active",
            SOON,
        )
        .await;
    assert_eq!(back["role"], "standby");
    p.no_flap("gw-b2", "gw-b1", Duration::from_secs(4)).await;
    assert!(p
        .events_of("gw-b1", Duration::from_millis(10))
        .await
        .is_empty());

    // A switchover asked of the standby is refused, naming the active one.
    let out = p.switchover("gw-b1", "alice");
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "gateway gw-b1 refused the switchover: gw-b1 is standby; send the switchover to the active gateway gw-b2"
    );
    // Asked of the active one, it hands over: gw-b2 says why, gw-b1 takes over.
    p.sub.forget();
    let out = p.switchover("gw-b2", "alice");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s2 = p.role("gw-b2", "standby", SOON).await;
    assert_eq!(s2["role_reason"], "switchover requested by alice");
    let s1 = p.role("gw-b1", "active", SOON).await;
    assert_eq!(
        s1["role_reason"],
        "peer gw-b2 handed over (switchover requested by alice)"
    );
    // Nothing raised twice by the new active; the next change is gw-b1's.
    assert!(p
        .events_of("gw-b1", Duration::from_secs(2))
        .await
        .is_empty());
    p.sim.write(116, 250).await;
    let cleared = p
        .sub
        .expect_where(ALARM, |j| j["state"] == "cleared", SOON)
        .await;
    assert_eq!(cleared["gateway"], "gw-b1");
    assert!(p
        .events_of("gw-b2", Duration::from_secs(1))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_split_brain_leaves_one_active_by_priority() {
    let broker = Mosquitto::start().await;
    let relay = Relay::start(broker.port()).await;
    let mut p = Pair::start(Some(&relay), broker).await;
    p.role("gw-b1", "active", SOON).await;
    p.role("gw-b2", "standby", SOON).await;

    // gw-b1 loses the broker (its link is cut) but lives: gw-b2 takes over.
    p.sub.forget();
    relay.cut();
    let s2 = p.role("gw-b2", "active", SOON).await;
    assert_eq!(s2["role_reason"], "peer gw-b1 offline (last will)");
    // While apart, both publish: gw-b2 on the broker, gw-b1 into its outbox.
    p.sim.write(116, 600).await;
    let raised = p
        .sub
        .expect_where(ALARM, |j| j["state"] == "active", SOON)
        .await;
    assert_eq!(raised["gateway"], "gw-b2");

    // Healed: gw-b1 is back, still active; gw-b2 loses by priority and steps down.
    p.sub.forget();
    relay.restore();
    let s2 = p.role("gw-b2", "standby", Duration::from_secs(20)).await;
    assert_eq!(s2["role_reason"], "both active: gw-b1 wins by priority 1");
    let s1 = p
        .sub
        .expect_where(&status("gw-b1"), |j| j["state"] == "online", SOON)
        .await;
    assert_eq!(s1["role"], "active");
    p.no_flap("gw-b1", "gw-b2", Duration::from_secs(3)).await;
}

/// `emberwatch drain-agent` `id` for room-1, whose drain hook appends the drain_id to `log`.
fn agent(port: u16, dir: &Path, id: &str, log: &Path) -> tokio::process::Child {
    let hook = dir.join(format!("{id}-drain.sh"));
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$EMBERWATCH_DRAIN_ID\" >> '{}'\n",
            log.display()
        ),
    )
    .expect("write hook");
    let _ = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status();
    let config = dir.join(format!("{id}.toml"));
    std::fs::write(
        &config,
        format!(
            "[site]\nid = \"test-site\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n\
             topic_prefix = \"emberwatch\"\nkeep_alive = \"2s\"\n[storage]\ndir = '{dir}'\n\
             [agent]\nid = \"{id}\"\nzones = [\"room-1\"]\ndrain = ['{hook}']\n\
             restore = [\"/bin/true\"]\ntimeout = \"20s\"\n",
            dir = dir.display(),
            hook = hook.display()
        ),
    )
    .expect("write agent config");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_emberwatch"))
        .args(["drain-agent", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn emberwatch drain-agent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_in_progress_is_carried_on_with_the_same_drain_id() {
    const REQUEST: &str = "emberwatch/test-site/drain/room-1/request";
    const DRAIN_STATUS: &str = "emberwatch/test-site/drain/room-1/status";
    let broker = Mosquitto::start().await;
    let port = broker.port();
    let agents = tempfile::tempdir().expect("tempdir");
    let hooks = agents.path().join("hooks.log");
    // lb-2 never comes: the drain stays open (until its 60 s deadline) across the takeover.
    let _lb1 = agent(port, agents.path(), "lb-1", &hooks);
    let mut p = Pair::start_with(
        None,
        broker,
        "\n[drain]\ntrigger = \"critical\"\ndeadline = \"60s\"\nagents = [\"lb-1\", \"lb-2\"]\n",
    )
    .await;
    p.role("gw-b1", "active", SOON).await;
    p.role("gw-b2", "standby", SOON).await;
    p.sim.write(116, 600).await;
    let request = p
        .sub
        .expect_where(REQUEST, |j| j["drain_id"].is_string(), SOON)
        .await;
    let id = request["drain_id"].as_str().unwrap_or_default().to_string();
    p.sub
        .expect_where(
            DRAIN_STATUS,
            |j| j["drain_id"] == id.as_str() && j["agents"]["lb-1"] == "done",
            SOON,
        )
        .await;
    p.sub.forget();

    p.b1.as_mut().expect("gw-b1").kill().await;
    p.role("gw-b2", "active", SOON).await;
    // gw-b2 says the same drain again (agents answer with what they did), never a new one.
    let again = p.sub.expect(REQUEST, SOON).await;
    assert_eq!(again["drain_id"], id.as_str(), "{again}");
    let status = p.sub.expect(DRAIN_STATUS, SOON).await;
    assert_eq!(status["drain_id"], id.as_str());
    assert_eq!(status["agents"]["lb-1"], "done", "{status}");
    assert!(p
        .sub
        .next_matching(
            |t, j| t == REQUEST && j["drain_id"] != id.as_str(),
            Duration::from_secs(3),
        )
        .await
        .is_none());
    // lb-1's hook ran once, for that drain_id.
    let ran = std::fs::read_to_string(&hooks).unwrap_or_default();
    assert_eq!(ran.lines().collect::<Vec<_>>(), [id.as_str()], "{ran}");
}

/// A status's `role_since`, on the gateway's own clock.
fn role_since(status: &Value) -> std::time::SystemTime {
    let s = status["role_since"].as_str().unwrap_or_default();
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("role_since {s:?}: {e} in {status}"))
}

/// `later`'s role_since minus `earlier`'s, in seconds.
fn between(earlier: &Value, later: &Value) -> f64 {
    role_since(later)
        .duration_since(role_since(earlier))
        .unwrap_or_else(|_| panic!("role_since went back: {earlier} then {later}"))
        .as_secs_f64()
}

/// gw-b1 started alone: its peer gw-b2 is absent, or only a retained status the test
/// published before gw-b1 connected. Fields drop in order: the gateway first, the broker last.
struct Lone {
    _b1: Daemon,
    _dir: tempfile::TempDir,
    sub: Subscriber,
    _sim: Sim,
    broker: Mosquitto,
}

impl Lone {
    async fn start(peer_status: Option<&str>) -> Lone {
        let broker = Mosquitto::start().await;
        let sim = Sim::start("normal", 1).await;
        let sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
        if let Some(peer) = peer_status {
            publish(broker.port(), &status("gw-b2"), peer.as_bytes(), true).await;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let b1 = Daemon::start(&pair_config(
            "gw-b1",
            1,
            broker.port(),
            sim.port(),
            dir.path(),
        ));
        Lone {
            _b1: b1,
            _dir: dir,
            sub,
            _sim: sim,
            broker,
        }
    }
}

/// A gateway whose peer never comes up (a dead box, a peer not yet installed) is active
/// START_WAIT (1.5 s) after connecting, not at some later look at the link: it used to look
/// once a second and count the wait from the first look that found it connected, leaving the
/// room unwatched 2 to 3 s. Measured on the gateway's own clock: from the `role_since` of its
/// starting status (taken just before it connects to the local broker, which takes
/// milliseconds) to the `role_since` of the active one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_peer_never_comes_up_is_active_1_5_s_after_connecting() {
    let mut lone = Lone::start(None).await;
    let sub = &mut lone.sub;
    let starting = sub
        .expect_where(&status("gw-b1"), |j| j["role"] == "standby", SOON)
        .await;
    assert_eq!(
        starting["role_reason"], "starting: waiting for peer gw-b2's status",
        "{starting}"
    );
    let active = sub
        .expect_where(&status("gw-b1"), |j| j["role"] == "active", SOON)
        .await;
    assert_eq!(
        active["role_reason"], "peer gw-b2 not seen within 1.5s of connecting",
        "{active}"
    );
    let waited = between(&starting, &active);
    assert!(
        (1.5..2.0).contains(&waited),
        "active {waited:.3} s after starting; the start wait is 1.5 s from the connection"
    );
}

/// A switchover nobody takes (the peer says standby but never takes the role) is taken back
/// GRACE (3 s) after it was given, not at the next once-a-second look. The peer here is only
/// its retained status, published by the test. The command is sent a quarter second past a
/// whole second of the first role change, where the old once-a-second look (in step with
/// that change) made the room wait nearly a second more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_nobody_takes_is_taken_back_when_the_grace_ends() {
    let peer = r#"{"state":"online","version":"0","started_at":"x","role":"standby","priority":2}"#;
    let mut lone = Lone::start(Some(peer)).await;
    let broker = &lone.broker;
    let sub = &mut lone.sub;
    let active = sub
        .expect_where(&status("gw-b1"), |j| j["role"] == "active", SOON)
        .await;
    assert_eq!(
        active["role_reason"], "peer gw-b2 is standby: priority 1 wins",
        "{active}"
    );
    let at = role_since(&active) + Duration::from_millis(1250);
    if let Ok(wait) = at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    publish(broker.port(), &cmd("gw-b1", "switchover"), b"{}", false).await;
    let handed = sub
        .expect_where(
            &status("gw-b1"),
            |j| j["role"] == "standby" && j["handover_to"] == "gw-b2",
            SOON,
        )
        .await;
    let back = sub
        .expect_where(&status("gw-b1"), |j| j["role"] == "active", SOON)
        .await;
    assert_eq!(
        back["role_reason"], "peer gw-b2 did not take over within 3s",
        "{back}"
    );
    let waited = between(&handed, &back);
    assert!(
        (3.0..3.5).contains(&waited),
        "taken back {waited:.3} s after handing over; the grace is 3 s"
    );
}

fn alive(gw: &str) -> String {
    format!("{P}/gateways/{gw}/alive")
}

/// A frozen active gateway (SIGSTOP: a hung host, or one whose power or network went, its
/// socket left open) is taken over by the standby on its own count of the peer's beats, not
/// when the broker's keep-alive check gets round to it (mosquitto 2.0 checks every 6 s, so
/// the last will came 3.5 to 8.3 s after the freeze). Measured on the gateway's own clock:
/// from the moment of the freeze to the `role_since` of gw-b2's active status. Then gw-b1
/// thaws: the pair settles with one active gateway in two role changes (gw-b2 up and down
/// again), and nothing is raised again by either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_active_gateway_is_taken_over_on_its_silence_and_the_thaw_settles() {
    let broker = Mosquitto::start().await;
    let mut p = Pair::start(None, broker).await;
    p.b1_raises_offgas().await;
    // The active gateway beats every half keep_alive; the standby does not.
    p.sub.forget();
    let beat = p.sub.expect(&alive("gw-b1"), SOON).await;
    assert!(
        beat["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{beat}"
    );
    let standby_beat = p
        .sub
        .next_matching(|t, _| t == alive("gw-b2"), Duration::from_secs(2))
        .await;
    assert!(standby_beat.is_none(), "the standby beat: {standby_beat:?}");

    p.sub.forget();
    let frozen = std::time::SystemTime::now();
    let b1 = p.b1.as_ref().expect("gw-b1");
    b1.signal("STOP");
    let s2 = p.role("gw-b2", "active", SOON).await;
    let why = s2["role_reason"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("peer gw-b1 silent for ") && why.ends_with(" s"),
        "gw-b2 took over for another reason: {s2}\nseen:\n{}",
        p.sub.seen_list()
    );
    let took = role_since(&s2).duration_since(frozen).unwrap_or_default();
    eprintln!("gw-b2 active {took:?} after gw-b1 froze ({why})");
    assert!(
        took <= TAKEOVER,
        "gw-b2 active {took:?} after the freeze; the SPEC's bound is {TAKEOVER:?}"
    );

    // Frozen for 8 s in all (long enough for the broker to give up on it too, mostly), then
    // it thaws and finds gw-b2 active: both active, gw-b2 loses by priority and steps down.
    let thaw = Instant::now() + Duration::from_secs(8).saturating_sub(took);
    tokio::time::sleep_until(thaw.into()).await;
    p.b1.as_ref().expect("gw-b1").signal("CONT");
    let mut roles = vec![("gw-b2", "active".to_string())];
    let end = Instant::now() + Duration::from_secs(10);
    while let Some(m) = p
        .sub
        .next_matching(
            |t, _| t == status("gw-b1") || t == status("gw-b2"),
            end.saturating_duration_since(Instant::now()),
        )
        .await
    {
        let j = m.json();
        if j["state"] != "online" {
            continue;
        }
        let gw = if m.topic == status("gw-b1") {
            "gw-b1"
        } else {
            "gw-b2"
        };
        let role = j["role"].as_str().unwrap_or_default().to_string();
        if gw == "gw-b2" && role == "standby" {
            assert_eq!(
                j["role_reason"], "both active: gw-b1 wins by priority 1",
                "{j}"
            );
        }
        roles.push((gw, role));
    }
    let changes = |gw: &str, from: &str| {
        let mut last = from.to_string();
        let mut n = 0;
        for (g, r) in &roles {
            if *g == gw && *r != last {
                n += 1;
                last = r.clone();
            }
        }
        (n, last)
    };
    assert_eq!(
        changes("gw-b1", "active"),
        (0, "active".to_string()),
        "gw-b1 changed role: {roles:?}"
    );
    // Up on the silence (before this list), down on the thaw.
    assert_eq!(
        changes("gw-b2", "active"),
        (1, "standby".to_string()),
        "gw-b2's roles after the freeze: {roles:?}"
    );
    // Nothing raised again by either gateway: the device did not change.
    let again: Vec<Value> = [
        p.events_of("gw-b1", Duration::ZERO).await,
        p.events_of("gw-b2", Duration::ZERO).await,
    ]
    .concat();
    assert!(again.is_empty(), "raised again: {again:?}");
    // And gw-b1 carries on: the next change is its own, once.
    p.sim.write(116, 700).await;
    let worse = p
        .sub
        .expect_where(ALARM, |j| j["severity"] == "emergency", SOON)
        .await;
    assert_eq!(worse["gateway"], "gw-b1", "{worse}");
    assert!(p
        .events_of("gw-b2", Duration::from_secs(2))
        .await
        .is_empty());
}

#[test]
fn check_config_accepts_the_example_pair_and_shows_it() {
    for (file, peer, priority) in [("pair-b1.toml", "gw-b2", 1), ("pair-b2.toml", "gw-b1", 2)] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(file);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_emberwatch"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run emberwatch check-config");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("pair: peer {peer}, priority {priority}")),
            "{file}: {text}"
        );
    }
}

const OFFGAS: &str = "emberwatch/test-site/alarms/room-1/rack-01/offgas/offgas-high";
const OFFGAS_RULE: &str =
    "\n[[rules]]\nid = \"offgas-high\"\npoints = [\"*/offgas\"]\nabove = { critical = 100.0 }\n";

/// Waits until `d` has logged an event of `alarm` in `state` (`Active`, `Cleared`): the line
/// the daemon writes once the event is in its outbox, fsynced (raised).
async fn raised(d: &Daemon, alarm: &str, state: &str, within: Duration) {
    let end = Instant::now() + within;
    let (key, state) = (format!("alarm={alarm} "), format!("state={state}"));
    while !d
        .stderr()
        .lines()
        .any(|l| l.contains(&key) && l.contains(&state))
    {
        assert!(
            Instant::now() < end,
            "no {state} event of {alarm} logged within {within:?}; log:\n{}",
            d.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// gw-b1 dies with alarm events in its outbox that the broker never received (its link
/// swallowed them, so they were never acknowledged), gw-b2 takes over and publishes what it
/// sees, and gw-b1 comes back standby. Its backlog is not resent blindly: an event whose change
/// gw-b2 has already published (the overtemperature, raised by both) is dropped, so subscribers
/// see that change once; the changes gw-b2 never published (the off-gas alarm raised and
/// cleared again before gw-b2 took over: gw-b2 takes what the pair never showed for normal)
/// are still published, by gw-b1. Before the fix, gw-b1 resent everything: the
/// overtemperature was raised twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_after_a_takeover_resends_only_what_its_peer_never_published() {
    let broker = Mosquitto::start().await;
    let relay = Relay::start(broker.port()).await;
    // keep_alive 5 s: gw-b2 must not take gw-b1's swallowed beats for a death before the kill.
    let mut p = Pair::start_opts(Some(&relay), broker, OFFGAS_RULE, "5s").await;
    p.role("gw-b1", "active", SOON).await;
    p.role("gw-b2", "standby", SOON).await;
    // The pair's picture is retained: let it settle before the link goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.sub.forget();

    // From here, what gw-b1 publishes never reaches the broker.
    relay.swallow();
    p.sim.write(116, 600).await;
    p.sim.write(121, 500).await;
    let b1 = p.b1.as_ref().expect("gw-b1");
    raised(b1, "rack-01/cell_temp_max/cell-overtemp", "Active", SOON).await;
    raised(b1, "rack-01/offgas/offgas-high", "Active", SOON).await;
    // gw-b2, warm, polls the same device every 100 ms: it sees the off-gas come and go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.sim.write(121, 0).await;
    raised(b1, "rack-01/offgas/offgas-high", "Cleared", SOON).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // gw-b1 is killed: the relay closes its broker side, the broker publishes the last will.
    p.b1.as_mut().expect("gw-b1").kill().await;
    let s2 = p.role("gw-b2", "active", SOON).await;
    assert_eq!(s2["role_reason"], "peer gw-b1 offline (last will)");
    let hot = p
        .sub
        .expect_where(ALARM, |j| j["gateway"] == "gw-b2", SOON)
        .await;
    assert_eq!(
        (&hot["state"], &hot["severity"]),
        (&"active".into(), &"critical".into())
    );
    // gw-b1 comes back (the link passes again) with its three events still unconfirmed.
    relay.restore();
    p.b1 = Some(Daemon::start(&p.config("gw-b1")));
    p.role("gw-b1", "standby", SOON).await;
    // Long enough for the backlog to go out (it waits at most 3 s for gw-b2's picture).
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Every event of both alarms since the link was swallowed, gw-b2's first included.
    let mut events: Vec<Value> = vec![hot];
    while let Some(m) = p
        .sub
        .next_matching(|t, _| t == ALARM || t == OFFGAS, Duration::from_millis(100))
        .await
    {
        events.push(m.json());
    }
    let count = |alarm: &str, state: &str| {
        events
            .iter()
            .filter(|e| e["alarm"] == alarm && e["state"] == state)
            .count()
    };
    let list = || {
        events
            .iter()
            .map(|e| {
                format!(
                    "  {} {} {} {}",
                    e["event_id"], e["alarm"], e["state"], e["time"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        count(KEY, "active"),
        1,
        "the overtemperature raised once (by gw-b2); events:\n{}",
        list()
    );
    // The off-gas alarm gw-b2 never published: its raise and its clear, once each, from gw-b1.
    let offgas: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["alarm"] == "rack-01/offgas/offgas-high")
        .map(|e| {
            (
                e["state"].as_str().unwrap_or_default(),
                e["gateway"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        offgas,
        [("active", "gw-b1"), ("cleared", "gw-b1")],
        "events:\n{}",
        list()
    );
    // gw-b1 says what it did not resend, and why.
    let log = p.b1.as_ref().expect("gw-b1").stderr();
    assert!(
        log.contains("not resending") && log.contains("already published by gw-b2"),
        "{log}"
    );
    p.no_flap("gw-b2", "gw-b1", Duration::from_millis(100))
        .await;
}
