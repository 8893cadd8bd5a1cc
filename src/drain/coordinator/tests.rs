//! The coordinator's rules as tables: each case is a list of steps (zone level, ack, presence,
//! time passing, drill) and, after each, the messages it must publish, matched field by field.
//! `$id` in an expectation stands for the zone's current `drain_id`.

use serde_json::{json, Value};

use super::*;

const P: &str = "emberwatch/pangyo-a";

#[derive(Debug, Clone)]
enum Step {
    /// The zone's level and active alarm keys, every one of them fire evidence.
    Zone(Level, &'static [&'static str]),
    /// A zone with faults: (level, evidence, active keys).
    Faulted(Level, Level, &'static [&'static str]),
    /// The zone's level with this many alarms not yet acknowledged.
    Unacked(Level, u32),
    /// An ack for the zone's current drain from `agent`: (agent, state, action).
    Ack(&'static str, &'static str, &'static str),
    /// An ack for a drain id that is not the current one.
    StaleAck(&'static str),
    Presence(&'static str, &'static str, &'static [&'static str]),
    /// Seconds pass.
    After(u64),
    Drill,
    /// The gateway restarts: state from `persisted()`, then `resume`.
    Restart,
}

/// (topic suffix after `P/`, fields the body must have)
type Expect = (&'static str, Value);

struct Bench {
    c: Coordinator,
    t0: Now,
    at: Duration,
    drain: config::Drain,
}

impl Bench {
    fn new(agents: &[&str]) -> Bench {
        Bench::new_with(agents, false)
    }

    fn new_with(agents: &[&str], cancel_after_ack: bool) -> Bench {
        Bench::with_drain(config::Drain {
            trigger: Severity::Critical,
            deadline: Duration::from_secs(120),
            agents: agents.iter().map(|s| s.to_string()).collect(),
            cancel_after_ack,
        })
    }

    fn with_drain(drain: config::Drain) -> Bench {
        let t0 = Now::system();
        let c = Coordinator::new(
            Topics::from_parts("emberwatch", "pangyo-a", "gw-b1"),
            &drain,
            vec!["room-1".into(), "room-2".into()],
            Persisted::default(),
            t0,
        );
        Bench {
            c,
            t0,
            at: Duration::ZERO,
            drain,
        }
    }

    fn now(&self) -> Now {
        self.t0.after(self.at)
    }

    fn id(&self) -> String {
        self.c
            .persisted()
            .zones
            .get("room-1")
            .map(|r| r.drain_id.clone())
            .unwrap_or_default()
    }

    fn zone(&mut self, level: Level, evidence: Level, active: &[&str], now: Now) -> Effects {
        let z = ZoneStatus {
            zone: "room-1".into(),
            level,
            active: active.iter().map(|s| s.to_string()).collect(),
            faults: active.iter().filter(|k| k.contains("/_")).count() as u32,
            time: "t".into(),
            shelved: vec![],
            unacknowledged: 0,
            evidence,
        };
        self.c.on_zone(&z, now)
    }

    fn run(&mut self, step: &Step) -> Vec<(String, Value)> {
        let now = self.now();
        let fx = match step {
            Step::Zone(level, active) => self.zone(*level, *level, active, now),
            Step::Faulted(level, evidence, active) => self.zone(*level, *evidence, active, now),
            Step::Unacked(level, n) => {
                let z = ZoneStatus {
                    zone: "room-1".into(),
                    level: *level,
                    active: vec![],
                    faults: 0,
                    time: "t".into(),
                    shelved: vec![],
                    unacknowledged: *n,
                    evidence: *level,
                };
                self.c.on_zone(&z, now)
            }
            Step::Ack(agent, state, action) => {
                let body = json!({"drain_id": self.id(), "agent": agent, "state": state,
                    "detail": format!("{agent} {state}"), "action": action});
                let topic = format!("{P}/drain/room-1/ack/{agent}");
                self.c.on_inbound(&topic, body.to_string().as_bytes(), now)
            }
            Step::StaleAck(agent) => {
                let body =
                    json!({"drain_id": "room-1-1", "agent": agent, "state": "done", "detail": ""});
                let topic = format!("{P}/drain/room-1/ack/{agent}");
                self.c.on_inbound(&topic, body.to_string().as_bytes(), now)
            }
            Step::Presence(agent, state, zones) => {
                let body = json!({"state": state, "zones": zones});
                let topic = format!("{P}/drain/agents/{agent}");
                self.c.on_inbound(&topic, body.to_string().as_bytes(), now)
            }
            Step::After(s) => {
                self.at += Duration::from_secs(*s);
                self.c.tick(self.now())
            }
            Step::Drill => match self.c.drill("room-1", now) {
                Ok((_, fx)) => fx,
                Err(e) => {
                    return vec![("refused".into(), json!({"reason": e.to_string()}))];
                }
            },
            Step::Restart => {
                let persisted = self.c.persisted().clone();
                self.c = Coordinator::new(
                    Topics::from_parts("emberwatch", "pangyo-a", "gw-b1"),
                    &self.drain,
                    vec!["room-1".into(), "room-2".into()],
                    persisted,
                    now,
                );
                self.c.resume(now)
            }
        };
        fx.messages
            .into_iter()
            .map(|m| match m {
                Outgoing::Message {
                    topic,
                    payload,
                    retain,
                } => {
                    assert!(retain, "{topic}: drain messages are retained");
                    let suffix = topic
                        .strip_prefix(&format!("{P}/"))
                        .unwrap_or(&topic)
                        .to_string();
                    (suffix, serde_json::from_slice(&payload).unwrap())
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }
}

/// `want`'s fields are all in `got` with equal values (`$id` = the current drain id; a string
/// starting with `~` means "contains").
fn fits(got: &Value, want: &Value, id: &str) -> bool {
    match (got, want) {
        (_, Value::String(w)) if w == "$id" => got.as_str() == Some(id),
        (Value::String(g), Value::String(w)) if w.starts_with('~') => g.contains(&w[1..]),
        (Value::Object(g), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| g.get(k).is_some_and(|gv| fits(gv, wv, id))),
        _ => got == want,
    }
}

/// Runs the steps; after each, every expectation must be met, in order, by what was published
/// (other messages may come between).
fn play(agents: &[&str], steps: &[(Step, Vec<Expect>)]) -> Bench {
    play_on(Bench::new(agents), steps)
}

/// As [`play`], on a bench set up by the caller.
fn play_on(mut b: Bench, steps: &[(Step, Vec<Expect>)]) -> Bench {
    for (i, (step, want)) in steps.iter().enumerate() {
        let got = b.run(step);
        let id = b.id();
        let mut it = got.iter();
        for (topic, body) in want {
            let found = it.any(|(t, v)| t == topic && fits(v, body, &id));
            assert!(
                found,
                "step {i} {step:?}: expected {topic} {body} in order; got:\n{}",
                got.iter()
                    .map(|(t, v)| format!("  {t} {v}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        if want.is_empty() {
            let drain_msgs: Vec<_> = got.iter().filter(|(t, _)| t != "drain/readiness").collect();
            assert!(
                drain_msgs.is_empty(),
                "step {i} {step:?}: expected no drain messages, got {drain_msgs:?}"
            );
        }
    }
    b
}

use Step::*;

#[test]
fn a_critical_zone_is_drained_and_cleared_once_every_agent_is_done() {
    play(
        &["lb-1", "k8s-b"],
        &[
            (Zone(Level::Warning, &["rack-01/offgas/offgas"]), vec![]),
            (
                Zone(Level::Critical, &["rack-01/offgas/offgas"]),
                vec![
                    (
                        "drain/room-1/request",
                        json!({"drain_id": "$id", "zone": "room-1", "severity": "critical",
                               "reason": ["rack-01/offgas/offgas"]}),
                    ),
                    (
                        "drain/room-1/status",
                        json!({"drain_id": "$id", "state": "requested",
                               "agents": {"lb-1": "pending", "k8s-b": "pending"}}),
                    ),
                    (
                        "power/room-1/clearance",
                        json!({"clear": false, "drain_id": "$id"}),
                    ),
                ],
            ),
            (
                Ack("lb-1", "started", "drain"),
                vec![(
                    "drain/room-1/status",
                    json!({"state": "draining", "agents": {"lb-1": "started", "k8s-b": "pending"}}),
                )],
            ),
            (
                Ack("lb-1", "done", "drain"),
                vec![(
                    "drain/room-1/status",
                    json!({"state": "draining", "agents": {"lb-1": "done"}}),
                )],
            ),
            // A resent `started` does not move progress back.
            (Ack("lb-1", "started", "drain"), vec![]),
            (
                Ack("k8s-b", "done", "drain"),
                vec![
                    ("drain/room-1/status", json!({"state": "drained"})),
                    (
                        "power/room-1/clearance",
                        json!({"zone": "room-1", "clear": true, "drain_id": "$id",
                               "reason": "~every expected agent confirmed"}),
                    ),
                ],
            ),
            // Still critical: nothing new, no second drain.
            (Zone(Level::Critical, &["rack-01/offgas/offgas"]), vec![]),
            (After(200), vec![]),
        ],
    );
}

#[test]
fn escalation_keeps_the_same_drain() {
    let b = play(
        &["lb-1"],
        &[
            (
                Zone(Level::Critical, &["a"]),
                vec![("drain/room-1/request", json!({"severity": "critical"}))],
            ),
            (
                Zone(Level::Emergency, &["a", "b"]),
                vec![(
                    "drain/room-1/request",
                    json!({"drain_id": "$id", "severity": "emergency", "reason": ["a", "b"]}),
                )],
            ),
            // Back down to critical, still above the trigger: the drain stays, unchanged.
            (Zone(Level::Critical, &["a"]), vec![]),
            // Below the trigger but not normal: the room is not safe yet; the drain stays.
            (Zone(Level::Warning, &["a"]), vec![]),
        ],
    );
    assert_eq!(b.c.persisted().zones.len(), 1);
}

#[test]
fn the_deadline_gives_clearance_naming_who_did_not_confirm() {
    play(
        &["lb-1", "k8s-b", "dns"],
        &[
            (
                Zone(Level::Critical, &["a"]),
                vec![("drain/room-1/request", json!({}))],
            ),
            (
                Ack("lb-1", "done", "drain"),
                vec![("drain/room-1/status", json!({}))],
            ),
            // A failure does not end the wait: the deadline still gives time to fix it by hand.
            (
                Ack("k8s-b", "failed", "drain"),
                vec![(
                    "drain/room-1/status",
                    json!({"state": "draining", "agents": {"k8s-b": "failed"}}),
                )],
            ),
            (
                After(119),
                vec![("drain/room-1/request", json!({"drain_id": "$id"}))],
            ),
            (
                After(1),
                vec![
                    (
                        "drain/room-1/status",
                        json!({"state": "timed_out",
                        "agents": {"lb-1": "done", "k8s-b": "failed", "dns": "pending"}}),
                    ),
                    (
                        "power/room-1/clearance",
                        json!({"clear": true, "reason": "~dns never answered; k8s-b failed: k8s-b failed"}),
                    ),
                ],
            ),
            // A late done is recorded and shown, the clearance stands.
            (
                Ack("dns", "done", "drain"),
                vec![(
                    "drain/room-1/status",
                    json!({"state": "timed_out", "agents": {"dns": "done"}}),
                )],
            ),
        ],
    );
}

#[test]
fn back_to_normal_cancels_withdraws_clearance_and_collects_restores() {
    let b = play(
        &["lb-1"],
        &[
            (
                Zone(Level::Critical, &["a"]),
                vec![("drain/room-1/request", json!({}))],
            ),
            (
                Ack("lb-1", "done", "drain"),
                vec![("power/room-1/clearance", json!({"clear": true}))],
            ),
            (
                Zone(Level::Normal, &[]),
                vec![
                    (
                        "drain/room-1/request",
                        json!({"drain_id": "$id", "state": "cancelled"}),
                    ),
                    ("drain/room-1/status", json!({"state": "cancelled"})),
                    (
                        "power/room-1/clearance",
                        json!({"clear": false, "reason": "~zone back to normal"}),
                    ),
                ],
            ),
            (
                Ack("lb-1", "done", "restore"),
                vec![(
                    "drain/room-1/status",
                    json!({"state": "cancelled", "agents": {"lb-1": "restored"}}),
                )],
            ),
            (After(500), vec![]),
        ],
    );
    let first = b.id();
    // Critical again later: a new drain with a new id.
    let mut b = b;
    let got = b.run(&Zone(Level::Critical, &["a"]));
    assert!(got.iter().any(|(t, _)| t == "drain/room-1/request"));
    assert_ne!(b.id(), first);
}

#[test]
fn acks_that_do_not_belong_are_ignored() {
    play(
        &["lb-1"],
        &[
            (
                Zone(Level::Critical, &["a"]),
                vec![("drain/room-1/request", json!({}))],
            ),
            (Ack("intruder", "done", "drain"), vec![]),
            (StaleAck("lb-1"), vec![]),
            // A restore ack while the drain is in force means nothing.
            (Ack("lb-1", "done", "restore"), vec![]),
            (
                Ack("lb-1", "done", "drain"),
                vec![("drain/room-1/status", json!({"state": "drained"}))],
            ),
        ],
    );
}

#[test]
fn a_missing_agent_is_a_warning_fault_and_shows_in_the_status() {
    let mut b = Bench::new(&["lb-1", "k8s-b"]);
    // Within the grace nobody is missing yet.
    assert!(b
        .run(&After(1))
        .iter()
        .all(|(_, v)| v["missing"] == json!([])));
    b.run(&Presence("lb-1", "online", &["room-1"]));
    b.at += PRESENCE_GRACE;
    let fx = b.c.tick(b.now());
    // Every readiness change reports each expected agent; the one that is missing is active.
    assert!(fx.faults.iter().any(|f| f.agent == "lb-1" && !f.active));
    assert_eq!(
        fx.faults.into_iter().filter(|f| f.active).collect::<Vec<_>>(),
        vec![AgentFault {
            agent: "k8s-b".into(),
            active: true,
            severity: Severity::Warning,
            detail: "drain agent k8s-b is not announced: drains it takes part in will wait for their deadline".into(),
            // Never announced which zones it serves: shown in every zone it could hold up.
            zones: vec!["room-1".into(), "room-2".into()],
        }]
    );
    let got = b.run(&Zone(Level::Critical, &["a"]));
    let status = got
        .iter()
        .find(|(t, _)| t == "drain/room-1/status")
        .unwrap();
    assert_eq!(status.1["offline"], json!(["k8s-b"]));
    // lb-1's last will: now it is missing too, in the zone it serves only.
    let fx = b.c.on_inbound(
        &format!("{P}/drain/agents/lb-1"),
        br#"{"state":"offline","zones":["room-1"]}"#,
        b.now(),
    );
    let lb = fx.faults.iter().find(|f| f.agent == "lb-1" && f.active);
    assert_eq!(
        lb.map(|f| f.zones.clone()),
        Some(vec!["room-1".to_string()])
    );
    let r = readiness(&fx);
    assert_eq!(r["missing"], json!(["k8s-b", "lb-1"]));
    assert_eq!(r["severity"], "warning");
    // Both back: the faults clear.
    b.run(&Presence("lb-1", "online", &["room-1"]));
    let fx = b.c.on_inbound(
        &format!("{P}/drain/agents/k8s-b"),
        br#"{"state":"online","zones":["room-1"]}"#,
        b.now(),
    );
    assert!(fx.faults.iter().any(|f| f.agent == "k8s-b" && !f.active));
    let r = readiness(&fx);
    assert_eq!(r["missing"], json!([]));
    assert!(r.get("severity").is_none());
}

/// The `P/drain/readiness` message among the effects.
fn readiness(fx: &Effects) -> Value {
    fx.messages
        .iter()
        .find_map(|m| match m {
            Outgoing::Message { topic, payload, .. } if topic.ends_with("readiness") => {
                serde_json::from_slice::<Value>(payload).ok()
            }
            _ => None,
        })
        .expect("a readiness message")
}

#[test]
fn agents_serving_other_zones_are_not_waited_for() {
    play(
        &["lb-1", "lb-2"],
        &[
            (Presence("lb-2", "online", &["room-2"]), vec![]),
            (
                Zone(Level::Critical, &["a"]),
                vec![(
                    "drain/room-1/status",
                    json!({"agents": {"lb-1": "pending"}}),
                )],
            ),
            (Ack("lb-2", "done", "drain"), vec![]),
            (
                Ack("lb-1", "done", "drain"),
                vec![("drain/room-1/status", json!({"state": "drained"}))],
            ),
        ],
    );
}

#[test]
fn a_drain_started_before_presence_stops_waiting_for_agents_of_other_zones() {
    play(
        &["lb-1", "lb-2"],
        &[
            (
                Zone(Level::Critical, &["a"]),
                vec![(
                    "drain/room-1/status",
                    json!({"agents": {"lb-1": "pending", "lb-2": "pending"}}),
                )],
            ),
            (
                Ack("lb-1", "done", "drain"),
                vec![("drain/room-1/status", json!({"state": "draining"}))],
            ),
            (
                Presence("lb-2", "online", &["room-2"]),
                vec![
                    (
                        "drain/room-1/status",
                        json!({"state": "drained", "agents": {"lb-1": "done"}}),
                    ),
                    ("power/room-1/clearance", json!({"clear": true})),
                ],
            ),
        ],
    );
}

#[test]
fn a_restart_mid_drain_resumes_the_same_drain() {
    let mut b = play(
        &["lb-1", "k8s-b"],
        &[
            (
                Zone(Level::Critical, &["a"]),
                vec![("drain/room-1/request", json!({}))],
            ),
            (
                Ack("lb-1", "done", "drain"),
                vec![("drain/room-1/status", json!({}))],
            ),
            (
                Restart,
                vec![
                    (
                        "drain/room-1/request",
                        json!({"drain_id": "$id", "severity": "critical"}),
                    ),
                    (
                        "drain/room-1/status",
                        json!({"drain_id": "$id", "state": "draining",
                        "agents": {"lb-1": "done", "k8s-b": "pending"}}),
                    ),
                    ("power/room-1/clearance", json!({"clear": false})),
                ],
            ),
            // The engine's start-up zone status: still critical, same drain.
            (Zone(Level::Critical, &["a"]), vec![]),
            (
                Ack("k8s-b", "done", "drain"),
                vec![("power/room-1/clearance", json!({"clear": true}))],
            ),
        ],
    );
    let id = b.id();
    // A restart after the deadline passed while down: timed out at once on resume.
    b.run(&Zone(Level::Normal, &[]));
    b.run(&Zone(Level::Critical, &["a"]));
    assert_ne!(b.id(), id);
    b.at += Duration::from_secs(300);
    let got = b.run(&Restart);
    assert!(got
        .iter()
        .any(|(t, v)| t == "drain/room-1/status" && v["state"] == "timed_out"));
}

#[test]
fn a_drill_runs_the_handshake_marked_and_then_restores() {
    let b = play(
        &["lb-1"],
        &[
            (
                Drill,
                vec![
                    (
                        "drain/room-1/request",
                        json!({"drain_id": "$id", "drill": true, "reason": ["drill"]}),
                    ),
                    (
                        "drain/room-1/status",
                        json!({"state": "requested", "drill": true}),
                    ),
                    (
                        "power/room-1/clearance",
                        json!({"clear": false, "drill": true}),
                    ),
                ],
            ),
            (
                Drill,
                vec![("refused", json!({"reason": "~already running drill"}))],
            ),
            // Normal statuses do not cancel a drill.
            (Zone(Level::Normal, &[]), vec![]),
            (
                Ack("lb-1", "done", "drain"),
                vec![
                    (
                        "drain/room-1/status",
                        json!({"state": "drained", "drill": true}),
                    ),
                    (
                        "power/room-1/clearance",
                        json!({"clear": true, "drill": true}),
                    ),
                    (
                        "drain/room-1/request",
                        json!({"state": "cancelled", "drill": true}),
                    ),
                    (
                        "power/room-1/clearance",
                        json!({"clear": false, "drill": true, "reason": "~drill over"}),
                    ),
                ],
            ),
        ],
    );
    assert!(b.id().starts_with("drill-room-1-"));
}

#[test]
fn a_real_trigger_supersedes_a_drill_and_refuses_new_ones() {
    let mut b = play(
        &["lb-1"],
        &[
            (
                Drill,
                vec![("drain/room-1/request", json!({"drill": true}))],
            ),
            (
                Zone(Level::Critical, &["a"]),
                vec![
                    (
                        "drain/room-1/request",
                        json!({"state": "cancelled", "drill": true}),
                    ),
                    (
                        "drain/room-1/request",
                        json!({"drain_id": "$id", "severity": "critical"}),
                    ),
                ],
            ),
            (
                Drill,
                vec![("refused", json!({"reason": "~real drain in progress"}))],
            ),
        ],
    );
    assert!(!b.id().starts_with("drill"));
    assert!(b.c.drill("room-9", b.now()).is_err());
}

#[test]
fn no_expected_agents_means_drained_at_once() {
    play(
        &[],
        &[(
            Zone(Level::Critical, &["a"]),
            vec![
                ("drain/room-1/request", json!({})),
                (
                    "drain/room-1/status",
                    json!({"state": "drained", "agents": {}}),
                ),
                (
                    "power/room-1/clearance",
                    json!({"clear": true, "reason": "~no agents expected"}),
                ),
            ],
        )],
    );
}

#[test]
fn an_open_drain_repeats_its_request_so_lost_acks_are_answered_again() {
    let mut b = Bench::new(&["lb-1"]);
    b.run(&Zone(Level::Critical, &["a"]));
    let requests = |got: &[(String, Value)]| {
        got.iter()
            .filter(|(t, _)| t == "drain/room-1/request")
            .count()
    };
    assert_eq!(requests(&b.run(&After(5))), 0);
    assert_eq!(requests(&b.run(&After(5))), 1);
    assert_eq!(requests(&b.run(&After(1))), 0);
    b.run(&Ack("lb-1", "done", "drain"));
    // Drained: nothing left to ask.
    assert_eq!(requests(&b.run(&After(30))), 0);
}

#[test]
fn drain_ids_are_new_even_within_one_millisecond() {
    let mut b = Bench::new(&["lb-1"]);
    b.run(&Zone(Level::Critical, &["a"]));
    let first = b.id();
    b.run(&Zone(Level::Normal, &[]));
    b.run(&Zone(Level::Critical, &["a"]));
    assert_ne!(b.id(), first);
}

#[test]
fn with_cancel_after_acknowledged_a_normal_zone_waits_for_every_ack() {
    let mut b = Bench::new_with(&["lb-1"], true);
    b.run(&Zone(Level::Critical, &["a"]));
    b.run(&Ack("lb-1", "done", "drain"));
    let out = b.run(&Unacked(Level::Normal, 2));
    assert!(
        out.iter().all(|(t, _)| t != "drain/room-1/request"),
        "cancelled while alarms were unacknowledged: {out:?}"
    );
    let out = b.run(&Unacked(Level::Normal, 0));
    assert!(
        out.iter()
            .any(|(t, v)| t == "drain/room-1/request" && v["state"] == "cancelled"),
        "not cancelled once everything was acknowledged: {out:?}"
    );
}

const BLIND: &[&str] = &["_zone/_detectors/all-faulted", "rack-01/_link/comm-loss"];
const LINK_DOWN: &[&str] = &["rack-01/_link/comm-loss"];

/// Issue 15: a detector whose link flapped made the zone blind (critical) again and again, and
/// each time a real drain and restore of the room's traffic. Faults make the zone loud, never
/// a drain; fire evidence still drains, whatever faults are around it.
#[test]
fn a_flapping_blind_zone_never_drains_but_fire_evidence_does() {
    let flap = [
        (Faulted(Level::Critical, Level::Normal, BLIND), vec![]),
        (Faulted(Level::Warning, Level::Normal, LINK_DOWN), vec![]),
        (Zone(Level::Normal, &[]), vec![]),
    ];
    let mut steps: Vec<(Step, Vec<Expect>)> = flap.iter().cycle().take(9).cloned().collect();
    steps.push((
        Faulted(
            Level::Critical,
            Level::Critical,
            &["rack-01/_link/comm-loss", "rack-01/offgas/offgas-high"],
        ),
        vec![(
            "drain/room-1/request",
            json!({"drain_id": "$id", "severity": "critical"}),
        )],
    ));
    let b = play(&["lb-1"], &steps);
    assert!(b.id().starts_with("room-1-"), "{}", b.id());
}

/// With `drain.trigger = "warning"`, a fault (a warning) would once have drained; and a drain
/// running on fire evidence would have escalated on a blind zone. Neither any more: a drain's
/// severity is the fire's. Nor is a drain cancelled while faults keep the zone from normal:
/// sensors that went blind in a room where fire was seen prove nothing about the fire, so the
/// traffic stays away until the zone reads normal again.
#[test]
fn faults_neither_start_escalate_nor_cancel_a_drain() {
    let b = Bench::with_drain(config::Drain {
        trigger: Severity::Warning,
        deadline: Duration::from_secs(120),
        agents: vec!["lb-1".into()],
        cancel_after_ack: false,
    });
    const OFFGAS: &str = "rack-01/offgas/offgas-high";
    play_on(
        b,
        &[
            (
                Faulted(Level::Warning, Level::Normal, &["rack-01/offgas/stuck"]),
                vec![],
            ),
            (Faulted(Level::Warning, Level::Normal, LINK_DOWN), vec![]),
            (Zone(Level::Normal, &[]), vec![]),
            (
                Zone(Level::Warning, &[OFFGAS]),
                vec![(
                    "drain/room-1/request",
                    json!({"severity": "warning", "reason": [OFFGAS]}),
                )],
            ),
            (
                Ack("lb-1", "done", "drain"),
                vec![("power/room-1/clearance", json!({"clear": true}))],
            ),
            // The off-gas detector's link goes: the zone is blind, the fire unknown.
            (Faulted(Level::Critical, Level::Warning, BLIND), vec![]),
            (Faulted(Level::Critical, Level::Normal, BLIND), vec![]),
            (Faulted(Level::Warning, Level::Normal, LINK_DOWN), vec![]),
            (After(300), vec![]),
            (
                Zone(Level::Normal, &[]),
                vec![
                    (
                        "drain/room-1/request",
                        json!({"drain_id": "$id", "state": "cancelled"}),
                    ),
                    (
                        "power/room-1/clearance",
                        json!({"clear": false, "reason": "~zone back to normal"}),
                    ),
                ],
            ),
        ],
    );
}
