//! Drain coordination end to end, as a site sees it on MQTT: the real gateway (`emberwatch run`)
//! and real agents (`emberwatch drain-agent`, running shell hooks) against a real mosquitto, the
//! zone driven by writing the simulator's cell temperature over Modbus.
//!
//! Every wait is on an MQTT message, a file or a process exit, with a deadline; no fixed sleeps.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::agent::{hook, runs, wait_runs, Agent};
use common::*;
use serde_json::Value;
use tokio::process::Command;
use tokio::time::Instant;

const REQUEST: &str = "emberwatch/test-site/drain/room-1/request";
const STATUS: &str = "emberwatch/test-site/drain/room-1/status";
const CLEARANCE: &str = "emberwatch/test-site/power/room-1/clearance";
const READINESS: &str = "emberwatch/test-site/drain/readiness";

fn ack_topic(agent: &str) -> String {
    format!("emberwatch/test-site/drain/room-1/ack/{agent}")
}

fn presence_topic(agent: &str) -> String {
    format!("emberwatch/test-site/drain/agents/{agent}")
}

/// Register 116 of the simulator: max cell temperature, i16, 0.1 degC.
const CELL_TEMP_MAX: u16 = 116;
const OFFGAS: u16 = 121;

/// For things that take a poll or two; waited this long only when something is wrong.
const SOON: Duration = Duration::from_secs(15);

/// A broker, a simulated rack, a gateway with `[drain]`, and a subscriber to everything.
struct Rig {
    sub: Subscriber,
    daemon: Daemon,
    state: tempfile::TempDir,
    sim: Sim,
    broker: Mosquitto,
    gateway_config: String,
}

impl Rig {
    async fn start(agents: &[&str], deadline: &str) -> Rig {
        Rig::start_with(agents, deadline, "").await
    }

    /// As [`Rig::start`], with more configuration (`[[rules]]`) appended.
    async fn start_with(agents: &[&str], deadline: &str, extra: &str) -> Rig {
        let broker = Mosquitto::start().await;
        let sim = Sim::start("normal", 1).await;
        let state = tempfile::tempdir().expect("tempdir");
        let sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
        let agents = agents
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let drain = format!(
            "{extra}\n[drain]\ntrigger = \"critical\"\ndeadline = \"{deadline}\"\nagents = [{agents}]\n"
        );
        let gateway_config = gateway_config(broker.port(), sim.port(), state.path(), &drain);
        let daemon = Daemon::start(&gateway_config);
        let mut rig = Rig {
            sub,
            daemon,
            state,
            sim,
            broker,
            gateway_config,
        };
        rig.sub
            .expect_where(
                "emberwatch/test-site/gateways/gw-t/status",
                |v| v["state"] == "online",
                SOON,
            )
            .await;
        rig
    }

    fn port(&self) -> u16 {
        self.broker.port()
    }

    fn dir(&self) -> &Path {
        self.state.path()
    }

    async fn set_cell_temp(&self, celsius: f64) {
        self.sim
            .write(CELL_TEMP_MAX, (celsius * 10.0).round() as i16 as u16)
            .await;
    }

    /// Starts agent `id` whose hooks log each run to `{dir}/{id}.runs` (read it with [`runs`]),
    /// then run the shell snippets `drain` and `restore`; returns once the agent is online.
    async fn agent(&mut self, id: &str, drain: &str, restore: &str) -> (Agent, PathBuf) {
        let log = self.dir().join(format!("{id}.runs"));
        let agent = Agent::start(
            self.port(),
            self.dir(),
            id,
            &hook(&log, drain),
            &hook(&log, restore),
        );
        self.online(id).await;
        (agent, log)
    }

    async fn online(&mut self, agent: &str) {
        self.sub
            .expect_where(&presence_topic(agent), |v| v["state"] == "online", SOON)
            .await;
    }

    /// Waits for clearance (`clear: true`) for drain `id` and checks its reason says `why`.
    async fn cleared(&mut self, id: &str, why: &str) {
        let c = self
            .expect(CLEARANCE, |v| v["clear"] == true && v["drain_id"] == id)
            .await;
        let reason = c["reason"].as_str().unwrap_or("");
        assert!(reason.contains(why), "{c}");
    }

    async fn expect(&mut self, topic: &str, pred: impl FnMut(&Value) -> bool) -> Value {
        self.sub.expect_where(topic, pred, SOON).await
    }

    async fn expect_within(
        &mut self,
        topic: &str,
        pred: impl FnMut(&Value) -> bool,
        within: Duration,
    ) -> Value {
        self.sub.expect_where(topic, pred, within).await
    }
}

/// Two agents, one slow and one failing, and a third expected agent that never shows up: the
/// gateway waits until the deadline, then gives clearance naming who did not confirm; back to
/// normal, it cancels, withdraws clearance, and the agents restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_failing_and_missing_agents_end_in_a_timed_out_clearance_then_restore() {
    let mut rig = Rig::start(&["lb-1", "k8s-b", "dns-1"], "8s").await;
    let lb_runs = rig.dir().join("lb-1.runs");
    let k8s_runs = rig.dir().join("k8s-b.runs");
    let _lb = Agent::start(
        rig.port(),
        rig.dir(),
        "lb-1",
        &hook(&lb_runs, "sleep 2; echo lb drained"),
        &hook(&lb_runs, "echo restored"),
    );
    let _k8s = Agent::start(
        rig.port(),
        rig.dir(),
        "k8s-b",
        &hook(&k8s_runs, "echo 'error: nodes not found' >&2; exit 3"),
        &hook(&k8s_runs, "true"),
    );
    rig.online("lb-1").await;
    rig.online("k8s-b").await;

    let t0 = Instant::now();
    rig.set_cell_temp(60.0).await;
    let req = rig
        .expect(REQUEST, |v| {
            v["severity"] == "critical" && v["zone"] == "room-1"
        })
        .await;
    let id = req["drain_id"].as_str().expect("drain_id").to_string();
    assert_eq!(
        req["reason"],
        serde_json::json!(["rack-01/cell_temp_max/cell-overtemp"])
    );
    assert!(
        req.get("drill").is_none(),
        "a real drain is not marked drill"
    );
    assert_eq!(
        req["gateway"], "gw-t",
        "the request says which gateway asks (two of a pair may)"
    );
    rig.expect(STATUS, |v| {
        v["drain_id"] == id.as_str()
            && v["state"] == "requested"
            && v["agents"]["dns-1"] == "pending"
    })
    .await;

    // The failing agent says why, with its exit status and output.
    let failed = rig
        .expect(&ack_topic("k8s-b"), |v| v["state"] == "failed")
        .await;
    assert_eq!(failed["drain_id"], id.as_str());
    assert_eq!(failed["exit_status"], 3);
    assert!(
        failed["output"]
            .as_str()
            .unwrap_or("")
            .contains("nodes not found"),
        "{failed}"
    );
    // The slow one starts, then finishes.
    rig.expect(&ack_topic("lb-1"), |v| v["state"] == "started")
        .await;
    let done = rig
        .expect(&ack_topic("lb-1"), |v| v["state"] == "done")
        .await;
    assert_eq!(done["exit_status"], 0);
    assert_eq!(done["drain_id"], id.as_str());

    // An ack from an agent nobody expects changes nothing.
    publish(
        rig.port(),
        &ack_topic("intruder"),
        format!(r#"{{"drain_id":"{id}","agent":"intruder","state":"done","detail":""}}"#)
            .as_bytes(),
        false,
    )
    .await;

    // The deadline: timed out, clearance given, naming the failed and the missing agent.
    let status = rig
        .expect_within(
            STATUS,
            |v| v["state"] == "timed_out",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(status["agents"]["lb-1"], "done");
    assert_eq!(status["agents"]["k8s-b"], "failed");
    assert_eq!(status["agents"]["dns-1"], "pending");
    assert!(status["agents"].get("intruder").is_none());
    let clearance = rig.expect(CLEARANCE, |v| v["clear"] == true).await;
    let elapsed = t0.elapsed();
    assert_eq!(clearance["drain_id"], id.as_str());
    let reason = clearance["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("k8s-b failed") && reason.contains("dns-1 never answered"),
        "{reason}"
    );
    assert!(
        elapsed >= Duration::from_secs(7),
        "clearance before the 8 s deadline: {elapsed:?}"
    );
    assert!(rig.daemon.stderr().contains("unknown agent \"intruder\""));

    // The missing agent is a warning the operator sees.
    let readiness = rig
        .expect(READINESS, |v| v["missing"] == serde_json::json!(["dns-1"]))
        .await;
    assert_eq!(readiness["severity"], "warning");
    // ... and a fault alarm in the alarm table, like any other.
    let fault = rig
        .expect(
            "emberwatch/test-site/alarms/room-1/_drain/dns-1/agent-offline",
            |v| v["state"] == "active",
        )
        .await;
    assert_eq!(fault["kind"], "fault");
    assert_eq!(fault["severity"], "warning");

    // Back to normal: cancelled, clearance withdrawn, agents restore.
    rig.set_cell_temp(25.0).await;
    let cancelled = rig
        .expect(REQUEST, |v| {
            v["drain_id"] == id.as_str() && v["state"] == "cancelled"
        })
        .await;
    assert_eq!(cancelled["gateway"], "gw-t");
    rig.expect(CLEARANCE, |v| {
        v["clear"] == false && v["drain_id"] == id.as_str()
    })
    .await;
    rig.expect(&ack_topic("lb-1"), |v| {
        v["action"] == "restore" && v["state"] == "done"
    })
    .await;
    rig.expect(STATUS, |v| {
        v["state"] == "cancelled" && v["agents"]["lb-1"] == "restored"
    })
    .await;
    let lb = runs(&lb_runs);
    assert_eq!(
        lb,
        vec![
            format!("drain {id} room-1 critical drill=0"),
            format!("restore {id} room-1  drill=0"),
        ]
    );
}

/// Escalation to emergency keeps the drain; a gateway killed mid-drain comes back to the same
/// drain and learns from the agent what it missed; the hook ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_mid_drain_resumes_the_same_drain() {
    let mut rig = Rig::start(&["lb-1"], "60s").await;
    let (_lb, lb_runs) = rig.agent("lb-1", "sleep 3", "true").await;
    rig.set_cell_temp(60.0).await;
    let req = rig.expect(REQUEST, |v| v["severity"] == "critical").await;
    let id = req["drain_id"].as_str().expect("drain_id").to_string();
    rig.set_cell_temp(70.0).await;
    rig.expect(REQUEST, |v| {
        v["severity"] == "emergency" && v["drain_id"] == id.as_str()
    })
    .await;
    rig.expect(&ack_topic("lb-1"), |v| v["state"] == "started")
        .await;

    // The gateway dies while the agent drains; the agent's `done` goes unheard.
    rig.daemon.kill().await;
    rig.expect(&ack_topic("lb-1"), |v| v["state"] == "done")
        .await;
    rig.sub.forget();

    let mut daemon = Daemon::start(&rig.gateway_config);
    // The outbox may first redeliver, at least once, the request the broker had not confirmed
    // before the kill (the earlier `critical`): what matters is that every request names the
    // same drain and the resumed one says emergency.
    let req = rig.expect(REQUEST, |v| v["severity"] == "emergency").await;
    assert_eq!(req["drain_id"], id.as_str(), "same drain after restart");
    let other = rig
        .sub
        .next_matching(
            |t, v| t == REQUEST && v["drain_id"] != id.as_str(),
            Duration::ZERO,
        )
        .await;
    assert!(other.is_none(), "a new drain after restart: {other:?}");
    rig.cleared(&id, "every expected agent confirmed").await;
    rig.expect(STATUS, |v| v["state"] == "drained").await;
    assert_eq!(runs(&lb_runs).len(), 1, "the hook ran once");
    assert!(daemon.stderr().contains("resuming drain after restart"));
    let _ = daemon.terminate().await;
}

/// A broker that restarts mid-drain (losing its retained messages and sessions) loses nothing
/// that matters: the agent's ack waits in its link until the broker is back, the gateway repeats
/// its request while the drain is open, the agent answers with what it already did, and the
/// clearance comes; the hook ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_drain_still_ends_in_clearance() {
    let mut rig = Rig::start(&["lb-1"], "60s").await;
    let (_lb, lb_runs) = rig.agent("lb-1", "sleep 2", "true").await;
    rig.set_cell_temp(60.0).await;
    let req = rig.expect(REQUEST, |v| v["severity"] == "critical").await;
    let id = req["drain_id"].as_str().expect("drain_id").to_string();
    rig.expect(&ack_topic("lb-1"), |v| v["state"] == "started")
        .await;
    rig.broker.restart().await;
    rig.sub.resubscribed(SOON).await;
    let clearance = rig
        .expect_within(
            CLEARANCE,
            |v| v["clear"] == true && v["drain_id"] == id.as_str(),
            Duration::from_secs(40),
        )
        .await;
    assert!(
        clearance["reason"]
            .as_str()
            .unwrap_or("")
            .contains("every expected agent confirmed"),
        "{clearance}"
    );
    assert_eq!(runs(&lb_runs).len(), 1, "the hook ran once");
}

/// An agent killed while its hook runs never runs it again for that drain: after its restart
/// (persistent session, retained request) it reports the drain interrupted instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_never_runs_a_hook_twice() {
    let mut rig = Rig::start(&["lb-1"], "60s").await;
    let (mut lb, lb_runs) = rig.agent("lb-1", "sleep 30", "true").await;
    rig.set_cell_temp(60.0).await;
    let req = rig.expect(REQUEST, |v| v["severity"] == "critical").await;
    let id = req["drain_id"].as_str().expect("drain_id").to_string();
    rig.expect(&ack_topic("lb-1"), |v| v["state"] == "started")
        .await;
    wait_runs(&lb_runs, 1, SOON).await;

    lb.kill().await;
    rig.expect(&presence_topic("lb-1"), |v| v["state"] == "offline")
        .await;
    // The gateway sees the expected agent go missing.
    rig.expect(READINESS, |v| v["missing"] == serde_json::json!(["lb-1"]))
        .await;
    rig.expect(
        "emberwatch/test-site/alarms/room-1/_drain/lb-1/agent-offline",
        |v| v["state"] == "active",
    )
    .await;

    lb.spawn();
    let failed = rig
        .expect(&ack_topic("lb-1"), |v| v["state"] == "failed")
        .await;
    assert_eq!(failed["drain_id"], id.as_str());
    assert!(
        failed["detail"]
            .as_str()
            .unwrap_or("")
            .contains("interrupted"),
        "{failed}"
    );
    rig.expect(STATUS, |v| v["agents"]["lb-1"] == "failed")
        .await;
    rig.expect(
        "emberwatch/test-site/alarms/room-1/_drain/lb-1/agent-offline",
        |v| v["state"] == "cleared",
    )
    .await;
    assert_eq!(
        runs(&lb_runs).len(),
        1,
        "not run again: {:?}",
        runs(&lb_runs)
    );
}

/// `emberwatch drill` rehearses the whole handshake through the running gateway: every message
/// is marked as a drill, the hook sees EMBERWATCH_DRILL=1, the agents restore afterwards, and
/// the command exits 0 with the timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_runs_the_handshake_marked_and_restores() {
    let mut rig = Rig::start(&["lb-1"], "30s").await;
    let (_lb, lb_runs) = rig.agent("lb-1", "echo drained", "echo restored").await;

    let out = Command::new(env!("CARGO_BIN_EXE_emberwatch"))
        .args(["drill", "--zone", "room-1", "--config"])
        .arg(rig.daemon.config_path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("drill finishes")
        .expect("run drill");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        status_ok(out.status),
        "drill failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("drained, clearance given"), "{stdout}");
    assert!(stdout.contains("agent lb-1: restore done"), "{stdout}");

    let req = rig.expect(REQUEST, |v| v["drill"] == true).await;
    let id = req["drain_id"].as_str().expect("drain_id").to_string();
    rig.expect(&ack_topic("lb-1"), |v| {
        v["state"] == "done" && v["drill"] == true
    })
    .await;
    rig.expect(CLEARANCE, |v| v["clear"] == true && v["drill"] == true)
        .await;
    rig.expect(REQUEST, |v| v["state"] == "cancelled" && v["drill"] == true)
        .await;
    let r = runs(&lb_runs);
    assert_eq!(
        r,
        vec![
            format!("drain {id} room-1 critical drill=1"),
            format!("restore {id} room-1  drill=1"),
        ]
    );
    // Retained state after a drill: no clearance in force.
    let mut late = Subscriber::connect(rig.port(), CLEARANCE).await;
    let c = late.expect(CLEARANCE, SOON).await;
    assert_eq!(c["clear"], false);
}

/// Issue 15: a rack whose link flapped made the zone blind (`_zone/_detectors/all-faulted`,
/// critical) again and again, and each time drained and restored the room's traffic for real.
/// A blind zone is a loud alarm and a job for a technician, never a drain or a clearance; an
/// off-gas rise in the same room still drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_zone_is_loud_but_drains_nothing_while_off_gas_still_drains() {
    const OFFGAS_RULE: &str = r#"
[[rules]]
id = "offgas-high"
points = ["*/offgas"]
above = { warning = 10.0, critical = 50.0 }
"#;
    const BLIND: &str = "emberwatch/test-site/alarms/room-1/_zone/_detectors/all-faulted";
    const ZONE: &str = "emberwatch/test-site/zones/room-1/status";
    let mut rig = Rig::start_with(&["lb-1"], "30s", OFFGAS_RULE).await;
    let (_lb, lb_runs) = rig.agent("lb-1", "echo drained", "echo restored").await;

    // The rack's link flaps: silent, back, silent, back. Every detector of the zone is on it.
    let addr = rig.sim.addr().to_string();
    for _ in 0..2 {
        rig.sim.kill().await;
        let blind = rig.expect(BLIND, |v| v["state"] == "active").await;
        assert_eq!(
            (&blind["severity"], &blind["kind"]),
            (&Value::from("critical"), &Value::from("fault"))
        );
        let zone = rig.expect(ZONE, |v| v["level"] == "critical").await;
        assert_eq!(zone["evidence"], "normal", "{zone}");
        rig.sim = Sim::start_at(&addr, "normal", 1).await;
        rig.expect(BLIND, |v| v["state"] == "cleared").await;
    }
    // The coordinator sees each zone status as it is raised; give it time to (wrongly) act.
    let drain_msg = rig
        .sub
        .next_matching(
            |t, _| [REQUEST, STATUS, CLEARANCE].contains(&t),
            Duration::from_secs(2),
        )
        .await;
    assert!(
        drain_msg.is_none(),
        "a blind zone started a drain: {:?}\nseen:\n{}",
        drain_msg.map(|m| format!("{} {}", m.topic, m.text())),
        rig.sub.seen_list()
    );
    assert_eq!(runs(&lb_runs), Vec::<String>::new(), "no hook ran");

    // Electrolyte off-gas: fire evidence, drained and cleared as ever.
    rig.sim.write(OFFGAS, 200).await;
    let req = rig.expect(REQUEST, |v| v["severity"] == "critical").await;
    let id = req["drain_id"].as_str().expect("drain_id").to_string();
    assert_eq!(
        req["reason"],
        serde_json::json!(["rack-01/offgas/offgas-high"])
    );
    let zone = rig.expect(ZONE, |v| v["evidence"] == "critical").await;
    assert_eq!(zone["level"], "critical", "{zone}");
    rig.cleared(&id, "every expected agent confirmed").await;
    assert_eq!(
        runs(&lb_runs),
        vec![format!("drain {id} room-1 critical drill=0")]
    );
}

fn status_ok(s: ExitStatus) -> bool {
    s.success()
}

/// The example agent configuration shipped in config/ is valid as it stands.
#[test]
fn the_example_agent_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/drain-agent.toml");
    let cfg = emberwatch::config::Config::load_with_env(
        &path,
        emberwatch::config::Role::DrainAgent,
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let agent = cfg.agent.expect("[agent]");
    assert_eq!(agent.id, "lb-1");
    assert_eq!(agent.drain[0], "/usr/lib/emberwatch/hooks/haproxy-drain");
}
