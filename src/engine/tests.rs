//! The engine driven end to end with made-up readings and commands: what it raises, clears,
//! publishes and restores.

use super::*;
use crate::alarms::{AlarmKind, AlarmState, IsaState, Level};
use crate::config::Role;
use crate::decode::{Decoded, Raw};
use crate::fieldbus::{LinkError, PointReading};
use std::time::Duration;

/// The site and the one device every test configuration starts with; its points and the rules
/// follow.
const RACK_01: &str = r#"
[site]
id = "s"
gateway = "gw"
[[devices]]
id = "rack-01"
zone = "room-1"
address = "127.0.0.1:5020"
"#;

/// One temperature point with a two-level threshold.
const CFG: &str = r#"
  [[devices.points]]
  id = "t"
  address = 116
  type = "i16"
  scale = 0.1
  unit = "degC"
  valid = [-40.0, 150.0]
[[rules]]
id = "hot"
points = ["*/t"]
above = { warning = 45.0, critical = 55.0 }
"#;

/// `RACK_01` followed by `points_and_rules`.
fn config(points_and_rules: &str) -> Arc<Config> {
    let text = format!("{RACK_01}{points_and_rules}");
    Arc::new(Config::from_toml(&text, Role::Gateway).expect("valid"))
}

fn engine_with(points_and_rules: &str) -> Engine {
    Engine::new(config(points_and_rules), 0)
}

fn engine() -> Engine {
    engine_with(CFG)
}

fn reading(at: Now, v: Option<f64>) -> Reading {
    Reading {
        device: 0,
        at,
        latency: Duration::ZERO,
        outcome: match v {
            Some(v) => Ok(vec![PointReading {
                point: 0,
                result: Ok(Decoded {
                    raw: Raw::Float(v),
                    value: v,
                }),
            }]),
            None => Err(LinkError::Timeout {
                device: "rack-01".into(),
                table: "holding",
                register: 116,
                timeout: Duration::from_millis(500),
            }),
        },
    }
}

#[test]
fn a_hot_reading_raises_one_event_and_a_zone_status() {
    let mut e = engine();
    let now = Now::system();
    let out = e.on_reading(&reading(now, Some(57.2)));
    assert_eq!(out.events.len(), 1);
    let ev = &out.events[0];
    assert_eq!(ev.alarm, "rack-01/t/hot");
    assert_eq!(ev.severity, Severity::Critical);
    assert_eq!(ev.message, "t 57.2 degC above critical 55.0");
    assert!(matches!(
        &out.messages[1],
        Outgoing::Zone(z) if z.level == Level::Critical && z.active == vec!["rack-01/t/hot"]
    ));
    assert!(
        matches!(&out.messages[2], Outgoing::Telemetry { body, .. } if body.quality == Quality::Good)
    );
    assert!(e.on_reading(&reading(now, Some(57.3))).events.is_empty());
}

#[test]
fn silence_is_a_fault_after_two_misses_and_never_clears_a_threshold() {
    let mut e = engine();
    let t0 = Now::system();
    e.on_reading(&reading(t0, Some(50.0)));
    assert!(
        e.on_reading(&reading(t0, None)).events.is_empty(),
        "one miss"
    );
    let out = e.on_reading(&reading(t0, None));
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].alarm, "rack-01/_link/comm-loss");
    assert_eq!(out.events[0].kind, AlarmKind::Fault);
    assert!(
        e.on_reading(&reading(t0, None)).events.is_empty(),
        "raised once"
    );
    let out = e.on_reading(&reading(t0.after(Duration::from_secs(1)), Some(50.0)));
    assert_eq!(out.events.len(), 1, "the warning was never cleared");
    assert_eq!(out.events[0].state, AlarmState::Cleared);
    assert_eq!(out.events[0].alarm, "rack-01/_link/comm-loss");
}

#[test]
fn out_of_range_is_a_sensor_fault_not_an_alarm() {
    let mut e = engine();
    let now = Now::system();
    let out = e.on_reading(&reading(now, Some(3276.7)));
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].alarm, "rack-01/t/out-of-range");
    let out = e.on_reading(&reading(now, Some(25.0)));
    assert_eq!(out.events[0].state, AlarmState::Cleared);
}

/// A value that is not a number (whatever produced it) gives no evidence: a sensor fault and
/// telemetry quality fault, never a reading of quality good that no rule can compare.
#[test]
fn a_value_that_is_not_a_number_is_a_sensor_fault() {
    let mut e = engine();
    let now = Now::system();
    for v in [f64::NAN, f64::INFINITY] {
        let out = e.on_reading(&reading(now, Some(v)));
        let keys: Vec<&str> = out.events.iter().map(|e| e.alarm.as_str()).collect();
        assert_eq!(keys, ["rack-01/t/unreadable"], "{v}");
        assert_eq!(out.events[0].kind, AlarmKind::Fault);
        assert!(
            matches!(out.messages.last(), Some(Outgoing::Telemetry { body, .. }) if body.quality == Quality::Fault && body.points.is_empty()),
            "{v}: {:?}",
            out.messages.last()
        );
        let out = e.on_reading(&reading(now, Some(25.0)));
        assert_eq!(out.events[0].state, AlarmState::Cleared, "{v}");
    }
}

/// An off-gas and a smoke point, each with a threshold, and a vote that needs both.
const VOTE_CFG: &str = r#"
  [[devices.points]]
  id = "offgas"
  kind = "offgas"
  address = 121
  [[devices.points]]
  id = "smoke_stage"
  kind = "smoke"
  address = 120
[[rules]]
id = "offgas-high"
points = ["*/offgas"]
above = { warning = 20.0 }
[[rules]]
id = "smoke"
points = ["*/smoke_stage"]
above = { warning = 1.0 }
[[rules]]
id = "confirmed-fire"
vote = { alarms = ["*/offgas/*", "*/smoke/*"], need = 2, at_least = "warning", severity = "emergency" }
"#;

fn two_points(at: Now, offgas: f64, smoke: f64) -> Reading {
    let pr = |point, v: f64| PointReading {
        point,
        result: Ok(Decoded {
            raw: Raw::Float(v),
            value: v,
        }),
    };
    Reading {
        device: 0,
        at,
        latency: Duration::ZERO,
        outcome: Ok(vec![pr(0, offgas), pr(1, smoke)]),
    }
}

#[test]
fn two_distinct_sensors_confirm_a_fire_by_vote() {
    let mut e = engine_with(VOTE_CFG);
    let now = Now::system();
    let out = e.on_reading(&two_points(now, 50.0, 0.0));
    assert_eq!(out.events.len(), 1, "one sensor alone does not confirm");
    let out = e.on_reading(&two_points(now, 50.0, 1.0));
    let keys: Vec<&str> = out.events.iter().map(|e| e.alarm.as_str()).collect();
    assert_eq!(
        keys,
        vec!["rack-01/smoke_stage/smoke", "_zone/_vote/confirmed-fire"]
    );
    let vote = &out.events[1];
    assert_eq!(
        (vote.kind, vote.severity),
        (AlarmKind::Vote, Severity::Emergency)
    );
    assert_eq!(
        vote.message,
        "2 of 2 sensors in room-1 agree: rack-01/offgas, rack-01/smoke_stage"
    );
    assert!(matches!(&out.messages[2], Outgoing::Zone(z) if z.level == Level::Emergency));
    let out = e.on_reading(&two_points(now, 0.0, 1.0));
    assert_eq!(out.events[1].state, AlarmState::Cleared);
}

/// Two zones with the same vote rule: each zone's vote is its own alarm. A quiet room-2
/// must never clear room-1's confirmed fire.
#[test]
fn each_zone_votes_for_itself() {
    let text = VOTE_CFG.replace(
        "[[rules]]\nid = \"offgas-high\"",
        "[[devices]]\nid = \"rack-02\"\nzone = \"room-2\"\naddress = \"127.0.0.1:5021\"\n  [[devices.points]]\n  id = \"offgas\"\n  kind = \"offgas\"\n  address = 121\n  [[devices.points]]\n  id = \"smoke_stage\"\n  kind = \"smoke\"\n  address = 120\n[[rules]]\nid = \"offgas-high\"",
    );
    let mut e = engine_with(&text);
    let now = Now::system();
    let fire = e.on_reading(&two_points(now, 50.0, 1.0));
    let vote = fire
        .events
        .iter()
        .find(|ev| ev.kind == AlarmKind::Vote)
        .expect("room-1 confirms");
    assert_eq!(
        (vote.zone.as_str(), vote.state),
        ("room-1", AlarmState::Active)
    );
    // room-2 reads quiet, then one sensor there alarms: room-1's vote stands.
    let mut quiet = two_points(now, 0.0, 0.0);
    quiet.device = 1;
    let out = e.on_reading(&quiet);
    assert!(out.events.is_empty(), "{:?}", out.events);
    let mut one = two_points(now, 50.0, 0.0);
    one.device = 1;
    let out = e.on_reading(&one);
    assert!(
        out.events.iter().all(|ev| ev.kind != AlarmKind::Vote),
        "{:?}",
        out.events
    );
    let levels: Vec<(String, Level)> = e
        .zone_statuses(now)
        .into_iter()
        .filter_map(|m| match m {
            Outgoing::Zone(z) => Some((z.zone, z.level)),
            _ => None,
        })
        .collect();
    assert_eq!(
        levels,
        [
            ("room-1".to_string(), Level::Emergency),
            ("room-2".to_string(), Level::Warning)
        ]
    );
    // Both zones confirm: two vote alarms, one per zone, same key.
    let mut both = two_points(now, 50.0, 1.0);
    both.device = 1;
    let out = e.on_reading(&both);
    let vote = out
        .events
        .iter()
        .find(|ev| ev.kind == AlarmKind::Vote)
        .expect("room-2 confirms too");
    assert_eq!(
        (vote.zone.as_str(), vote.alarm.as_str()),
        ("room-2", "_zone/_vote/confirmed-fire")
    );
    // room-1 calms down: only its vote clears.
    let out = e.on_reading(&two_points(now, 0.0, 0.0));
    let cleared: Vec<(&str, AlarmState)> = out
        .events
        .iter()
        .filter(|ev| ev.kind == AlarmKind::Vote)
        .map(|ev| (ev.zone.as_str(), ev.state))
        .collect();
    assert_eq!(cleared, [("room-1", AlarmState::Cleared)]);
    assert_eq!(
        e.alarms()
            .active_severity_in("room-2", "_zone/_vote/confirmed-fire"),
        Some(Severity::Emergency)
    );
}

#[test]
fn a_fast_climb_raises_rate_of_rise() {
    let text = CFG.replace(
        "above = { warning = 45.0, critical = 55.0 }",
        "rate_of_rise = { per_minute = 8.3, window = \"10s\", severity = \"critical\" }",
    );
    let mut e = engine_with(&text);
    let t0 = Now::system();
    let mut raised = None;
    for i in 0..20u64 {
        let out = e.on_reading(&reading(
            t0.after(Duration::from_secs(i)),
            Some(25.0 + 0.5 * i as f64),
        ));
        if let Some(ev) = out.events.first() {
            raised.get_or_insert((i, ev.clone()));
        }
    }
    let (i, ev) = raised.expect("raised");
    assert_eq!(i, 5, "after half the window");
    assert_eq!(
        (ev.kind, ev.value, ev.unit.as_deref()),
        (AlarmKind::RateOfRise, Some(30.0), Some("degC/min"))
    );
}

#[test]
fn a_restart_does_not_raise_active_alarms_again() {
    let cfg = config(CFG);
    let mut e = Engine::new(cfg.clone(), 0);
    let now = Now::system();
    assert_eq!(e.on_reading(&reading(now, Some(57.2))).events.len(), 1);
    let snap = e.snapshot();
    assert_eq!((snap.last_seq, snap.alarms.len()), (1, 1));
    let mut again = Engine::restore(cfg, snap);
    assert!(again
        .on_reading(&reading(now, Some(57.2)))
        .events
        .is_empty());
    let out = again.on_reading(&reading(now, Some(20.0)));
    assert_eq!(
        (out.events[0].seq, out.events[0].state),
        (2, AlarmState::Cleared)
    );
}

/// Restore reads every persisted alarm back to its source: a vote survives a restart while its
/// rule is configured; once it is not, it is retired with a `cleared` event saying why, its
/// zone's status follows, and it leaves the table.
#[test]
fn a_restart_keeps_the_alarms_the_configuration_still_has() {
    let mut e = engine_with(VOTE_CFG);
    e.on_reading(&two_points(Now::system(), 50.0, 1.0));
    let keys =
        |e: &Engine| -> Vec<String> { e.alarms().alarms().map(|a| a.identity.key()).collect() };
    let all = [
        "_zone/_vote/confirmed-fire",
        "rack-01/offgas/offgas-high",
        "rack-01/smoke_stage/smoke",
    ];
    assert_eq!(keys(&e), all);
    assert_eq!(keys(&Engine::restore(config(VOTE_CFG), e.snapshot())), all);
    let without_vote = VOTE_CFG
        .split("[[rules]]\nid = \"confirmed-fire\"")
        .next()
        .unwrap_or_default();
    let mut fewer = Engine::restore(config(without_vote), e.snapshot());
    let last = e.alarms().last_seq();
    let out = fewer.retire_orphans(Now::system());
    assert_eq!(keys(&fewer), all[1..]);
    assert_eq!(out.events.len(), 1, "{:?}", out.events);
    let ev = &out.events[0];
    assert_eq!(
        (ev.alarm.as_str(), ev.state, ev.seq, ev.detail.isa_state),
        (all[0], AlarmState::Cleared, last + 1, IsaState::Normal)
    );
    assert_eq!(
        ev.message,
        "cleared: vote rule confirmed-fire removed from the configuration; no longer watched"
    );
    let zone = out.messages.iter().find_map(|m| match m {
        Outgoing::Zone(z) => Some(z),
        _ => None,
    });
    assert!(
        zone.is_some_and(|z| !z.active.iter().any(|k| k == all[0])),
        "{zone:?}"
    );
    // Once only.
    assert!(fewer.retire_orphans(Now::system()).events.is_empty());
}

/// Each way an alarm's source can leave the file gives its own reason in the retiring event.
#[test]
fn a_retired_alarm_says_what_left_the_configuration() {
    let mut e = engine();
    e.on_reading(&reading(Now::system(), Some(57.2)));
    let cases = [
        (
            CFG.replace("id = \"t\"", "id = \"u\"")
                .replace("*/t", "*/u"),
            "cleared: point rack-01/t removed from the configuration; no longer watched",
        ),
        (
            CFG.replace("id = \"hot\"", "id = \"warm\""),
            "cleared: rule hot removed from the configuration; no longer watched",
        ),
        (
            format!("{CFG}  [[devices.points]]\n  id = \"u\"\n  address = 117\n")
                .replace("points = [\"*/t\"]", "points = [\"*/u\"]"),
            "cleared: rule hot no longer watches rack-01/t in the configuration; no longer watched",
        ),
    ];
    for (points_and_rules, want) in cases {
        let mut after = Engine::restore(config(&points_and_rules), e.snapshot());
        let events = after.retire_orphans(Now::system()).events;
        assert_eq!(
            events
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>(),
            [want],
            "{points_and_rules}"
        );
    }
    // The device itself renamed.
    let renamed = format!("{RACK_01}{CFG}").replace("rack-01", "rack-07");
    let cfg = Arc::new(Config::from_toml(&renamed, Role::Gateway).expect("valid"));
    let events = Engine::restore(cfg, e.snapshot())
        .retire_orphans(Now::system())
        .events;
    assert_eq!(
        events[0].message,
        "cleared: rack-01 removed from the configuration; no longer watched"
    );
}

fn cmd(e: &mut Engine, name: &str, body: &str) -> (Vec<AlarmEvent>, CommandResult) {
    let out = e.on_command(Command::parse(name, body.as_bytes()), Now::system());
    let result = out
        .messages
        .iter()
        .find_map(|m| match m {
            Outgoing::CommandResult(r) => Some(r.clone()),
            _ => None,
        })
        .expect("every command is answered");
    (out.events, result)
}

#[test]
fn bad_commands_are_answered_and_change_nothing() {
    let mut e = engine();
    e.on_reading(&reading(Now::system(), Some(57.2)));
    let cases = [
        ("ack", "not json", "cmd/ack: not valid JSON"),
        (
            "ack",
            r#"{"alarm":"rack-99/x/y"}"#,
            "no alarm \"rack-99/x/y\"",
        ),
        (
            "shelve",
            r#"{"alarm":"rack-01/t/hot","reason":"x"}"#,
            "\"for\" is required",
        ),
        (
            "shelve",
            r#"{"alarm":"rack-01/t/hot","for":"30m"}"#,
            "\"reason\" is required",
        ),
        (
            "shelve",
            r#"{"alarm":"rack-01/t/hot","for":"soon","reason":"x"}"#,
            "is not a duration",
        ),
        (
            "shelve",
            r#"{"alarm":"rack-01/t/hot","for":"9h","reason":"x"}"#,
            "exceeds the maximum of 8h",
        ),
        ("reboot", "{}", "unknown command \"reboot\""),
        // Answered ok with nothing done, these read as "done" to the operator.
        ("ack", r#"{"alarm":"*","zone":"nope"}"#, "no zone \"nope\""),
        (
            "shelve",
            r#"{"alarm":"rack-01/t/hot","for":"1ns","reason":"x"}"#,
            "cmd/shelve: \"for\" must be at least 1s",
        ),
    ];
    for (name, body, want) in cases {
        let (events, r) = cmd(&mut e, name, body);
        assert!(events.is_empty(), "{name} {body}");
        assert!(!r.ok, "{name} {body}");
        let reason = r.reason.unwrap_or_default();
        assert!(reason.contains(want), "{name} {body}: {reason}");
    }
    assert_eq!(e.snapshot().last_seq, 1, "nothing was numbered");
}

#[test]
fn ack_and_shelve_by_command() {
    let mut e = engine();
    e.on_reading(&reading(Now::system(), Some(57.2)));
    let (events, r) = cmd(&mut e, "ack", r#"{"alarm":"*"}"#);
    assert!(r.ok);
    assert!(events[0].acked);
    let (events, r) = cmd(
        &mut e,
        "shelve",
        r#"{"alarm":"rack-01/t/hot","for":"30m","reason":"sensor swap"}"#,
    );
    assert!(r.ok, "{r:?}");
    assert_eq!(events[0].detail.isa_state, crate::alarms::IsaState::Shelved);
    assert!(events[0].detail.shelved_until.is_some());
}

#[test]
fn stuck_and_trouble_are_faults_that_freeze_evaluation() {
    let text = CFG.replace(
        "valid = [-40.0, 150.0]",
        "valid = [-40.0, 150.0]\n  stuck_after = \"10s\"\n  trouble = [6553.5]",
    );
    let mut e = engine_with(&text);
    let t0 = Now::system();
    e.on_reading(&reading(t0, Some(50.0)));
    let out = e.on_reading(&reading(t0.after(Duration::from_secs(10)), Some(50.0)));
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].alarm, "rack-01/t/stuck");
    // While stuck, a value that would clear the threshold alarm cannot (it is the same value).
    let out = e.on_reading(&reading(t0.after(Duration::from_secs(11)), Some(20.0)));
    let keys: Vec<&str> = out.events.iter().map(|e| e.alarm.as_str()).collect();
    assert_eq!(
        keys,
        vec!["rack-01/t/stuck", "rack-01/t/hot"],
        "unstuck, then evaluated"
    );
    let out = e.on_reading(&reading(t0.after(Duration::from_secs(12)), Some(6553.5)));
    assert_eq!(out.events[0].alarm, "rack-01/t/trouble");
    assert!(
        matches!(&out.messages.last(), Some(Outgoing::Telemetry { body, .. }) if body.quality == Quality::Fault)
    );
}

#[test]
fn a_zone_with_every_detector_silent_is_blind() {
    let text = CFG.replace("  id = \"t\"\n", "  id = \"t\"\n  kind = \"temperature\"\n");
    let mut e = engine_with(&text);
    let t0 = Now::system();
    e.on_reading(&reading(t0, None));
    let out = e.on_reading(&reading(t0, None));
    let keys: Vec<&str> = out.events.iter().map(|e| e.alarm.as_str()).collect();
    assert_eq!(
        keys,
        vec!["rack-01/_link/comm-loss", "_zone/_detectors/all-faulted"]
    );
    assert_eq!(out.events[1].severity, Severity::Critical);
    let out = e.on_reading(&reading(t0, Some(25.0)));
    assert_eq!(out.events.len(), 2, "both clear");
}
