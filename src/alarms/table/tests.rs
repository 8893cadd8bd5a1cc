//! The alarm table's tests: ISA-18.2 transitions as tables, commands, zone status, restore.

use super::*;
use crate::alarms::{Level, LinkFault, Source};

const MINUTE: Duration = Duration::from_secs(60);

fn id(point: &str, kind: AlarmKind) -> Identity {
    Identity {
        zone: "room-1".into(),
        device: "rack-01".into(),
        point: point.into(),
        rule: "r".into(),
        kind,
        unit: Some("degC".into()),
        latching: false,
    }
}

fn cond(s: Option<Severity>) -> Condition {
    Condition {
        severity: s,
        value: Some(1.0),
        threshold: Some(1.0),
        message: "m".into(),
    }
}

#[test]
fn events_only_on_change_with_consecutive_seq() {
    let now = Now::system();
    let mut t = AlarmTable::new("site", "gw", 41);
    let a = id("t", AlarmKind::Threshold);
    assert!(
        t.update(&a, cond(None), now).is_none(),
        "normal → normal is silent"
    );
    let e = t.update(&a, cond(Some(Severity::Warning)), now).unwrap();
    assert_eq!((e.seq, e.event_id.as_str()), (42, "gw-42"));
    assert_eq!(e.state, AlarmState::Active);
    assert!(t.update(&a, cond(Some(Severity::Warning)), now).is_none());
    let later = now.after(Duration::from_secs(3));
    let e = t.update(&a, cond(Some(Severity::Critical)), later).unwrap();
    assert_eq!((e.seq, e.severity), (43, Severity::Critical));
    assert_eq!(
        e.since,
        rfc3339(now.wall),
        "escalation keeps the raise time"
    );
    let e = t.update(&a, cond(None), later).unwrap();
    assert_eq!(
        (e.seq, e.state, e.severity),
        (44, AlarmState::Cleared, Severity::Critical)
    );
    assert!(t.update(&a, cond(None), later).is_none());
}

/// One step of an alarm's life: what happens, and the ISA state and event it must produce.
enum Step {
    Raise(Severity),
    Clear,
    Ack,
    Shelve(u64),
    Tick(u64),
    TakeOutOfService,
    InService,
}

/// Plays steps on one alarm and returns, per step, the ISA state published (None: no event).
fn play(latching: bool, steps: &[Step]) -> Vec<Option<IsaState>> {
    let t0 = Now::system();
    let mut now = t0;
    let mut t = AlarmTable::new("s", "gw", 0);
    let mut a = id("t", AlarmKind::Threshold);
    a.latching = latching;
    let key = a.key();
    let max = Duration::from_secs(3600);
    steps
        .iter()
        .map(|s| {
            let evs: Vec<AlarmEvent> = match s {
                Step::Raise(sev) => t.update(&a, cond(Some(*sev)), now).into_iter().collect(),
                Step::Clear => t.update(&a, cond(None), now).into_iter().collect(),
                Step::Ack => t.ack(&key, None, None, now).unwrap_or_default(),
                Step::Shelve(secs) => t
                    .shelve(
                        &key,
                        None,
                        Duration::from_secs(*secs),
                        max,
                        "maintenance",
                        None,
                        now,
                    )
                    .into_iter()
                    .collect(),
                Step::Tick(secs) => {
                    now = now.after(Duration::from_secs(*secs));
                    t.expire(now)
                }
                Step::TakeOutOfService => t
                    .set_service(&key, None, Some("detector replaced".into()), None, now)
                    .into_iter()
                    .collect(),
                Step::InService => t
                    .set_service(&key, None, None, None, now)
                    .into_iter()
                    .collect(),
            };
            evs.last().map(|e| e.detail.isa_state)
        })
        .collect()
}

#[test]
fn isa_18_2_transitions() {
    use IsaState::*;
    use Step::*;
    let w = Severity::Warning;
    type Case = (&'static str, bool, Vec<Step>, Vec<Option<IsaState>>);
    let cases: Vec<Case> = vec![
        (
            "ack while active, then clear",
            false,
            vec![Raise(w), Ack, Clear],
            vec![
                Some(ActiveUnacknowledged),
                Some(ActiveAcknowledged),
                Some(Normal),
            ],
        ),
        (
            "clear before ack waits for ack",
            false,
            vec![Raise(w), Clear, Ack],
            vec![
                Some(ActiveUnacknowledged),
                Some(ClearedUnacknowledged),
                Some(Normal),
            ],
        ),
        (
            "returns while cleared-unacknowledged",
            false,
            vec![Raise(w), Clear, Raise(w)],
            vec![
                Some(ActiveUnacknowledged),
                Some(ClearedUnacknowledged),
                Some(ActiveUnacknowledged),
            ],
        ),
        (
            "escalation needs a new ack",
            false,
            vec![Raise(w), Ack, Raise(Severity::Critical)],
            vec![
                Some(ActiveUnacknowledged),
                Some(ActiveAcknowledged),
                Some(ActiveUnacknowledged),
            ],
        ),
        (
            "ack of an acknowledged alarm is silent",
            false,
            vec![Raise(w), Ack, Ack],
            vec![Some(ActiveUnacknowledged), Some(ActiveAcknowledged), None],
        ),
        (
            "latched: stays active after clear until acked",
            true,
            vec![Raise(w), Clear, Ack],
            vec![Some(ActiveUnacknowledged), None, Some(Normal)],
        ),
        (
            "latched and acked: clears with the condition",
            true,
            vec![Raise(w), Ack, Clear],
            vec![
                Some(ActiveUnacknowledged),
                Some(ActiveAcknowledged),
                Some(Normal),
            ],
        ),
        (
            "clear while shelved, shelf expires",
            false,
            vec![Raise(w), Shelve(60), Clear, Tick(61)],
            vec![
                Some(ActiveUnacknowledged),
                Some(Shelved),
                Some(Shelved),
                Some(ClearedUnacknowledged),
            ],
        ),
        (
            "shelf not yet expired",
            false,
            vec![Raise(w), Shelve(60), Tick(30)],
            vec![Some(ActiveUnacknowledged), Some(Shelved), None],
        ),
        (
            "escalation to emergency lifts the shelf",
            false,
            vec![Raise(w), Shelve(60), Raise(Severity::Emergency)],
            vec![
                Some(ActiveUnacknowledged),
                Some(Shelved),
                Some(ActiveUnacknowledged),
            ],
        ),
        (
            "out of service and back",
            false,
            vec![Raise(w), TakeOutOfService, Clear, InService],
            vec![
                Some(ActiveUnacknowledged),
                Some(OutOfService),
                Some(OutOfService),
                Some(ClearedUnacknowledged),
            ],
        ),
    ];
    for (name, latching, steps, want) in cases {
        assert_eq!(play(latching, &steps), want, "{name}");
    }
}

#[test]
fn shelving_refuses_emergencies_unknown_keys_and_overlong_shelves() {
    let now = Now::system();
    let mut t = AlarmTable::new("s", "gw", 0);
    let a = id("t", AlarmKind::Threshold);
    t.update(&a, cond(Some(Severity::Emergency)), now);
    let max = Duration::from_secs(3600);
    let hour = Duration::from_secs(3600);
    assert_eq!(
        t.shelve(&a.key(), None, hour, max, "x", None, now),
        Err(CommandError::Emergency(a.key()))
    );
    assert_eq!(
        t.shelve("rack-99/x/y", None, hour, max, "x", None, now),
        Err(CommandError::Unknown("rack-99/x/y".into()))
    );
    t.update(&a, cond(Some(Severity::Warning)), now);
    assert!(matches!(
        t.shelve(&a.key(), None, hour * 2, max, "x", None, now),
        Err(CommandError::TooLong { .. })
    ));
    assert_eq!(
        t.ack("rack-99/x/y", None, None, now),
        Err(CommandError::Unknown("rack-99/x/y".into()))
    );
}

#[test]
fn ack_star_acknowledges_every_unacknowledged_alarm() {
    let now = Now::system();
    let mut t = AlarmTable::new("s", "gw", 0);
    t.update(
        &id("a", AlarmKind::Threshold),
        cond(Some(Severity::Warning)),
        now,
    );
    t.update(
        &id("b", AlarmKind::Threshold),
        cond(Some(Severity::Critical)),
        now,
    );
    let evs = t.ack("*", None, None, now).unwrap();
    assert_eq!(evs.len(), 2);
    assert!(evs.iter().all(|e| e.acked && e.state == AlarmState::Active));
    assert!(t.ack("*", None, None, now).unwrap().is_empty());
}

#[test]
fn ack_star_in_a_zone_needs_a_zone_that_exists() {
    let now = Now::system();
    let mut t = AlarmTable::new("s", "gw", 0);
    t.set_zones(["room-1".to_string(), "room-2".to_string()]);
    t.update(
        &id("a", AlarmKind::Threshold),
        cond(Some(Severity::Warning)),
        now,
    );
    let e = t.ack("*", Some("nope"), None, now).unwrap_err();
    assert_eq!(e.to_string(), "no zone \"nope\"");
    assert!(
        t.ack("*", Some("room-2"), None, now).unwrap().is_empty(),
        "nothing to do"
    );
    assert_eq!(t.ack("*", Some("room-1"), None, now).unwrap().len(), 1);
}

#[test]
fn chattering_is_reported_not_suppressed() {
    let mut now = Now::system();
    let mut t = AlarmTable::new("s", "gw", 0);
    let a = id("t", AlarmKind::Threshold);
    let mut last = None;
    for _ in 0..4 {
        last = t.update(&a, cond(Some(Severity::Warning)), now);
        assert!(last.is_some());
        now = now.after(Duration::from_secs(2));
        assert!(
            t.update(&a, cond(None), now).is_some(),
            "no event is dropped"
        );
        now = now.after(Duration::from_secs(2));
    }
    let e = last.unwrap();
    assert!(e.detail.chattering, "{:?}", e.detail);
    assert_eq!(e.detail.transitions_last_minute, 7);
    // A quiet minute later it is no longer chattering.
    let e = t
        .update(
            &a,
            cond(Some(Severity::Warning)),
            now.after(Duration::from_secs(120)),
        )
        .unwrap();
    assert!(!e.detail.chattering);
}

#[test]
fn zone_status_excludes_shelved_and_counts_faults() {
    let now = Now::system();
    let mut t = AlarmTable::new("site", "gw", 0);
    t.update(
        &id("t", AlarmKind::Threshold),
        cond(Some(Severity::Warning)),
        now,
    );
    let link = Source::Link {
        device: "rack-01",
        fault: LinkFault::CommLoss,
    };
    t.update(
        &link.identity("room-1"),
        cond(Some(Severity::Critical)),
        now,
    );
    let z = t.zone_status("room-1", now);
    assert_eq!(z.level, Level::Critical);
    assert_eq!(z.faults, 1);
    assert_eq!(z.active, vec!["rack-01/_link/comm-loss", "rack-01/t/r"]);
    assert_eq!(t.zone_status("room-2", now).level, Level::Normal);
    t.shelve(
        "rack-01/_link/comm-loss",
        None,
        Duration::from_secs(60),
        Duration::from_secs(60),
        "x",
        None,
        now,
    )
    .unwrap();
    let z = t.zone_status("room-1", now);
    assert_eq!((z.level, z.faults), (Level::Warning, 0));
    assert_eq!(z.shelved, vec!["rack-01/_link/comm-loss"]);
}

/// Faults (link, sensor, blind zone, missing drain agent) make the panel loud but are no
/// fire evidence: only rule and vote alarms rank in `evidence`, which drains are started on.
#[test]
fn zone_evidence_ranks_fire_alarms_only() {
    let now = Now::system();
    let mut t = AlarmTable::new("site", "gw", 0);
    let faults = [
        Source::Link {
            device: "rack-01",
            fault: LinkFault::CommLoss,
        },
        Source::BlindZone,
        Source::DrainAgent { agent: "lb-1" },
    ];
    for f in faults {
        t.update(&f.identity("room-1"), cond(Some(Severity::Critical)), now);
    }
    let z = t.zone_status("room-1", now);
    assert_eq!((z.level, z.evidence), (Level::Critical, Level::Normal));
    assert_eq!(z.faults, 3);
    let hot = id("t", AlarmKind::Threshold);
    t.update(&hot, cond(Some(Severity::Warning)), now);
    let z = t.zone_status("room-1", now);
    assert_eq!((z.level, z.evidence), (Level::Critical, Level::Warning));
    let vote = Source::Vote { rule: "fire" }.identity("room-1");
    t.update(&vote, cond(Some(Severity::Emergency)), now);
    let z = t.zone_status("room-1", now);
    assert_eq!((z.level, z.evidence), (Level::Emergency, Level::Emergency));
    // A shelved rule alarm counts in neither.
    t.update(&vote, cond(None), now);
    t.shelve(&hot.key(), None, MINUTE, MINUTE, "x", None, now)
        .unwrap();
    let z = t.zone_status("room-1", now);
    assert_eq!((z.level, z.evidence), (Level::Critical, Level::Normal));
}

#[test]
fn restore_keeps_acks_and_shelves() {
    let now = Now::system();
    let mut t = AlarmTable::new("s", "gw", 0);
    let a = id("t", AlarmKind::Threshold);
    t.update(&a, cond(Some(Severity::Warning)), now);
    t.ack(&a.key(), None, None, now).unwrap();
    let b = id("u", AlarmKind::Threshold);
    t.update(&b, cond(Some(Severity::Warning)), now);
    t.shelve(
        &b.key(),
        None,
        Duration::from_secs(60),
        Duration::from_secs(60),
        "x",
        None,
        now,
    )
    .unwrap();
    let snap: Snapshot =
        serde_json::from_str(&serde_json::to_string(&t.snapshot()).unwrap()).unwrap();
    let mut r = AlarmTable::restore("s", "gw", snap);
    assert_eq!(r.last_seq(), 4);
    assert!(
        r.update(&a, cond(Some(Severity::Warning)), now).is_none(),
        "not raised again"
    );
    assert!(
        r.ack(&a.key(), None, None, now).unwrap().is_empty(),
        "ack kept"
    );
    assert_eq!(r.zone_status("room-1", now).shelved, vec![b.key()]);
}

#[test]
fn a_gateway_alarm_is_one_per_zone_and_commands_can_name_the_zone() {
    let now = Now::system();
    let mut t = AlarmTable::new("s", "gw", 0);
    let vote = |zone: &str| {
        Source::Vote {
            rule: "confirmed-fire",
        }
        .identity(zone)
    };
    let key = vote("room-1").key();
    assert!(t
        .update(&vote("room-1"), cond(Some(Severity::Critical)), now)
        .is_some());
    assert!(t
        .update(&vote("room-2"), cond(Some(Severity::Critical)), now)
        .is_some());
    assert_eq!(t.zones_with_condition(&key), ["room-1", "room-2"]);
    // Clearing one zone leaves the other.
    let e = t.update(&vote("room-2"), cond(None), now).unwrap();
    assert_eq!((e.zone.as_str(), e.state), ("room-2", AlarmState::Cleared));
    assert!(t.condition("room-1", &key));
    assert!(!t.condition("room-2", &key));
    // A shelf must name one alarm.
    let hour = Duration::from_secs(3600);
    let err = t
        .shelve(&key, None, hour, hour, "x", None, now)
        .expect_err("ambiguous");
    assert_eq!(
        err.to_string(),
        "alarm \"_zone/_vote/confirmed-fire\" exists in zones room-1, room-2: add \"zone\" to say which"
    );
    let e = t
        .shelve(&key, Some("room-1"), hour, hour, "x", None, now)
        .unwrap();
    assert_eq!(e.zone, "room-1");
    assert_eq!(
        t.shelve(&key, Some("room-9"), hour, hour, "x", None, now)
            .expect_err("not there")
            .to_string(),
        "no alarm \"_zone/_vote/confirmed-fire\" in zone \"room-9\""
    );
    // An ack without a zone acknowledges it wherever it waits.
    let acked = t.ack(&key, None, None, now).unwrap();
    let zones: Vec<&str> = acked.iter().map(|e| e.zone.as_str()).collect();
    assert_eq!(zones, ["room-1", "room-2"]);
    assert_eq!(t.zone_status("room-1", now).shelved, vec![key.clone()]);
    assert!(t.zone_status("room-2", now).active.is_empty());
}

/// The operator's name from `"by"` is in the events (`acked_by`, `shelved_by`), survives a
/// restore from the snapshot, and is forgotten when the alarm needs the operator again.
#[test]
fn who_acked_and_shelved_is_in_the_events_and_the_snapshot() {
    let now = Now::system();
    let mut t = AlarmTable::new("s", "gw", 0);
    let a = id("t", AlarmKind::Threshold);
    let raised = t.update(&a, cond(Some(Severity::Warning)), now).unwrap();
    assert_eq!(
        (raised.acked_by.as_deref(), raised.shelved_by.as_deref()),
        (None, None)
    );
    let acked = t.ack(&a.key(), None, Some("Kim"), now).unwrap();
    assert_eq!(acked[0].acked_by.as_deref(), Some("Kim"));
    assert_eq!(acked[0].message, "rack-01/t/r acknowledged by Kim");
    let json = serde_json::to_value(&acked[0]).unwrap();
    assert_eq!(json["acked_by"], "Kim");
    assert!(
        json.get("shelved_by").is_none(),
        "omitted when none: {json}"
    );
    let shelved = t
        .shelve(&a.key(), None, MINUTE, MINUTE, "swap", Some("Lee"), now)
        .unwrap();
    assert_eq!(
        (shelved.acked_by.as_deref(), shelved.shelved_by.as_deref()),
        (Some("Kim"), Some("Lee"))
    );

    let snap: Snapshot =
        serde_json::from_str(&serde_json::to_string(&t.snapshot()).unwrap()).unwrap();
    let mut r = AlarmTable::restore("s", "gw", snap);
    let later = now.after(2 * MINUTE);
    let expired = r.expire(later);
    assert_eq!(
        (
            expired[0].acked_by.as_deref(),
            expired[0].shelved_by.as_deref()
        ),
        (Some("Kim"), None),
        "acked_by kept across the restore; shelved_by gone with the shelf"
    );
    // Escalation needs a new acknowledgement: the old name no longer applies.
    let worse = r.update(&a, cond(Some(Severity::Critical)), later).unwrap();
    assert_eq!((worse.acked, worse.acked_by.as_deref()), (false, None));
}
