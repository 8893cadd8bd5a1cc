//! One drain per zone when both gateways of a redundant pair ask (SPEC "Redundant gateways",
//! split brain): the real `emberwatch drain-agent` with shell hooks against a real mosquitto,
//! the two coordinators played by this test publishing what each gateway would (retained
//! requests and cancellations naming their gateway, retained gateway statuses).
//!
//! The agent handles its messages one at a time, in order, so "nothing happened" is asserted
//! after a later message's answer has arrived: every wait has a deadline, no fixed sleeps.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::agent::{hook, runs, wait_runs, Agent};
use common::*;
use serde_json::{json, Value};

const REQUEST: &str = "emberwatch/test-site/drain/room-1/request";
const ACK: &str = "emberwatch/test-site/drain/room-1/ack/lb-1";
const SOON: Duration = Duration::from_secs(15);

fn status_topic(gw: &str) -> String {
    format!("emberwatch/test-site/gateways/{gw}/status")
}

/// A broker, a subscriber to the agent's acks, and agent lb-1 whose hooks log to `runs`.
struct Rig {
    sub: Subscriber,
    _agent: Agent,
    runs: PathBuf,
    _dir: tempfile::TempDir,
    broker: Mosquitto,
}

impl Rig {
    async fn start() -> Rig {
        let broker = Mosquitto::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
        let runs = dir.path().join("lb-1.runs");
        let agent = Agent::start(
            broker.port(),
            dir.path(),
            "lb-1",
            &hook(&runs, "true"),
            &hook(&runs, "true"),
        );
        sub.expect_where(
            "emberwatch/test-site/drain/agents/lb-1",
            |v| v["state"] == "online",
            SOON,
        )
        .await;
        Rig {
            sub,
            _agent: agent,
            runs,
            _dir: dir,
            broker,
        }
    }

    /// Gateway `gw` asks for drain `id` of room-1 (retained, as its coordinator does).
    async fn request(&self, gw: &str, id: &str) {
        let body = json!({
            "drain_id": id, "zone": "room-1", "severity": "critical",
            "reason": ["rack-01/cell_temp_max/cell-overtemp"],
            "requested_at": "2026-11-29T15:00:00Z", "deadline": "2026-11-29T15:02:00Z",
            "gateway": gw,
        });
        publish(
            self.broker.port(),
            REQUEST,
            body.to_string().as_bytes(),
            true,
        )
        .await;
    }

    async fn cancel(&self, gw: &str, id: &str) {
        let body = json!({"drain_id": id, "state": "cancelled", "gateway": gw});
        publish(
            self.broker.port(),
            REQUEST,
            body.to_string().as_bytes(),
            true,
        )
        .await;
    }

    async fn status(&self, gw: &str, role: &str) {
        let body = json!({"state": "online", "role": role, "peer": "x",
            "role_since": "2026-11-29T15:00:00Z", "role_reason": "test"});
        publish(
            self.broker.port(),
            &status_topic(gw),
            body.to_string().as_bytes(),
            true,
        )
        .await;
    }

    /// The agent's next ack for `id` (drain or restore) in `state`.
    async fn ack(&mut self, id: &str, action: &str, state: &str) -> Value {
        self.sub
            .expect_where(
                ACK,
                |v| {
                    v["drain_id"] == id
                        && v["state"] == state
                        && v["action"].as_str().unwrap_or("drain") == action
                },
                SOON,
            )
            .await
    }

    /// Proves the agent has handled everything published so far: `id` (already drained) is
    /// asked again by `gw` and the agent repeats its `done`.
    async fn settled(&mut self, gw: &str, id: &str) {
        self.request(gw, id).await;
        self.ack(id, "drain", "done").await;
    }

    fn runs(&self) -> Vec<String> {
        runs(&self.runs)
    }
}

fn drain_runs(runs: &[String]) -> Vec<&String> {
    runs.iter().filter(|l| l.starts_with("drain ")).collect()
}

fn restore_runs(runs: &[String]) -> Vec<&String> {
    runs.iter().filter(|l| l.starts_with("restore ")).collect()
}

/// Split brain: gw-b1 and gw-b2 both active, both ask for a drain of room-1 under their own
/// ids. The hook runs once; the second id is answered `done`, naming the drain it joined. One
/// gateway's cancellation does not bring traffic back while the other still asks; the second
/// cancellation does, once, answered to both ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_asking_for_one_zone_drain_it_once_and_restore_it_once() {
    let mut rig = Rig::start().await;
    rig.status("gw-b1", "active").await;
    rig.status("gw-b2", "active").await;

    rig.request("gw-b1", "room-1-100").await;
    rig.ack("room-1-100", "drain", "started").await;
    rig.ack("room-1-100", "drain", "done").await;
    rig.request("gw-b2", "room-1-101").await;
    let joined = rig.ack("room-1-101", "drain", "done").await;
    assert_eq!(
        joined["detail"]
            .as_str()
            .unwrap_or("")
            .split(':')
            .next()
            .unwrap_or(""),
        "joined drain room-1-100 already under way for zone room-1",
        "{joined}"
    );
    assert_eq!(joined["agent"], "lb-1");
    assert_eq!(
        drain_runs(&rig.runs()),
        vec!["drain room-1-100 room-1 critical drill=0"],
        "the drain hook ran once, for the first id"
    );

    // gw-b1 sees the room back to normal; gw-b2 still asks: traffic stays away.
    rig.cancel("gw-b1", "room-1-100").await;
    rig.settled("gw-b2", "room-1-101").await;
    assert_eq!(restore_runs(&rig.runs()), Vec::<&String>::new());
    assert!(
        rig.sub
            .next_matching(
                |t, v| t == ACK && v["action"] == "restore",
                Duration::from_millis(0)
            )
            .await
            .is_none(),
        "no restore ack while gw-b2 still asks:\n{}",
        rig.sub.seen_list()
    );

    // gw-b2 cancels too: the restore hook runs once, answered to both drains.
    rig.cancel("gw-b2", "room-1-101").await;
    rig.ack("room-1-101", "restore", "done").await;
    rig.ack("room-1-100", "restore", "done").await;
    let runs = wait_runs(&rig.runs, 2, SOON).await;
    assert_eq!(
        restore_runs(&runs),
        vec!["restore room-1-100 room-1  drill=0"]
    );
    assert_eq!(drain_runs(&runs).len(), 1);
}

/// gw-b2 cancels the drain it joined while gw-b1's is still asked for; then the pair sees each
/// other again and gw-b1 becomes standby: gw-b2, the active one, said the room is normal, so
/// the held restore runs. A gateway that merely dies mid-drain restores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_held_for_the_other_gateway_runs_when_it_stands_by() {
    let mut rig = Rig::start().await;
    rig.request("gw-b1", "room-1-200").await;
    rig.ack("room-1-200", "drain", "done").await;
    rig.request("gw-b2", "room-1-201").await;
    rig.ack("room-1-201", "drain", "done").await;

    rig.cancel("gw-b2", "room-1-201").await;
    rig.settled("gw-b1", "room-1-200").await;
    assert_eq!(restore_runs(&rig.runs()), Vec::<&String>::new(), "held");

    // gw-b2 dies: its drain is cancelled already, gw-b1's still asked: nothing.
    publish(
        rig.broker.port(),
        &status_topic("gw-b2"),
        br#"{"state":"offline"}"#,
        true,
    )
    .await;
    rig.settled("gw-b1", "room-1-200").await;
    assert_eq!(restore_runs(&rig.runs()), Vec::<&String>::new(), "held");

    // gw-b2 is back as the active one, gw-b1 stands by: no drain is asked for any more.
    rig.status("gw-b2", "active").await;
    rig.status("gw-b1", "standby").await;
    rig.ack("room-1-201", "restore", "done").await;
    rig.ack("room-1-200", "restore", "done").await;
    let runs = wait_runs(&rig.runs, 2, SOON).await;
    assert_eq!(
        restore_runs(&runs),
        vec!["restore room-1-200 room-1  drill=0"]
    );
}

/// With one gateway (no pair, no `gateway` in its requests) nothing changes: a new drain after
/// a restore runs the hook again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_drain_after_a_restore_runs_the_hook_again() {
    let mut rig = Rig::start().await;
    let old = |id: &str| {
        json!({"drain_id": id, "zone": "room-1", "severity": "critical", "reason": [],
            "requested_at": "t", "deadline": "t"})
        .to_string()
    };
    let port = rig.broker.port();
    publish(port, REQUEST, old("room-1-300").as_bytes(), true).await;
    rig.ack("room-1-300", "drain", "done").await;
    publish(
        port,
        REQUEST,
        br#"{"drain_id":"room-1-300","state":"cancelled"}"#,
        true,
    )
    .await;
    rig.ack("room-1-300", "restore", "done").await;
    publish(port, REQUEST, old("room-1-301").as_bytes(), true).await;
    rig.ack("room-1-301", "drain", "done").await;
    let runs = wait_runs(&rig.runs, 3, SOON).await;
    assert_eq!(
        runs,
        vec![
            "drain room-1-300 room-1 critical drill=0",
            "restore room-1-300 room-1  drill=0",
            "drain room-1-301 room-1 critical drill=0",
        ]
    );
}
