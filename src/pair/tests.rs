//! The pair's stories as tables of steps: what each gateway sees, and the role it ends in.

use std::time::Duration;

use super::*;

fn pair(me: &str, peer: &str, priority: i64, now: Now) -> Pair {
    Pair::new(
        me,
        &Redundancy {
            peer: peer.into(),
            priority,
        },
        SILENCE,
        now,
    )
}

/// 1.5 × a keep_alive of 2 s.
const SILENCE: Duration = Duration::from_secs(3);

fn online(role: &str, priority: i64) -> Vec<u8> {
    format!(r#"{{"state":"online","version":"0.1","started_at":"x","role":"{role}","priority":{priority}}}"#)
        .into_bytes()
}

const OFFLINE: &[u8] = br#"{"state":"offline"}"#;

fn at(t0: Now, ms: u64) -> Now {
    t0.after(Duration::from_millis(ms))
}

#[test]
fn starting_waits_for_the_peer_and_then_decides_alone() {
    let t0 = Now::system();
    let mut p = pair("gw-b1", "gw-b2", 1, t0);
    assert_eq!(p.role(), Role::Standby);
    // Not connected yet: no decision however long it takes.
    assert_eq!(p.tick(false, at(t0, 10_000)), None);
    assert_eq!(p.tick(true, at(t0, 10_000)), None);
    assert_eq!(p.tick(true, at(t0, 11_000)), None);
    let c = p.tick(true, at(t0, 11_600)).unwrap();
    assert_eq!(c.role, Role::Active);
    assert_eq!(c.reason, "peer gw-b2 not seen within 1.5s of connecting");
    assert_eq!(p.status().role, Role::Active);
}

#[test]
fn an_active_peer_keeps_a_returning_gateway_standby_whatever_the_priorities() {
    let t0 = Now::system();
    let mut p = pair("gw-b1", "gw-b2", 1, t0);
    p.tick(true, t0);
    let c = p.on_peer_status(&online("active", 2), at(t0, 50)).unwrap();
    assert_eq!(
        c,
        Change {
            role: Role::Standby,
            reason: "peer gw-b2 is active".into()
        }
    );
    // And it stays so: no flapping on heartbeats or ticks.
    for s in 1..20 {
        assert_eq!(p.tick(true, at(t0, s * 1000)), None);
        assert_eq!(
            p.on_peer_status(&online("active", 2), at(t0, s * 1000)),
            None
        );
    }
    assert_eq!(p.role(), Role::Standby);
}

#[test]
fn two_starting_gateways_settle_by_priority() {
    let t0 = Now::system();
    let mut b1 = pair("gw-b1", "gw-b2", 1, t0);
    let mut b2 = pair("gw-b2", "gw-b1", 2, t0);
    b1.tick(true, t0);
    b2.tick(true, t0);
    // Each sees the other's starting status (standby).
    assert_eq!(b1.on_peer_status(&online("standby", 2), at(t0, 100)), None);
    assert_eq!(b2.on_peer_status(&online("standby", 1), at(t0, 100)), None);
    let c1 = b1.tick(true, at(t0, 1600)).unwrap();
    let c2 = b2.tick(true, at(t0, 1600)).unwrap();
    assert_eq!(c1.role, Role::Active);
    assert_eq!(c1.reason, "peer gw-b2 is standby: priority 1 wins");
    assert_eq!(c2.role, Role::Standby);
    assert_eq!(c2.reason, "peer gw-b1 is standby and wins by priority 1");
    // gw-b2 then sees gw-b1 active: nothing changes, however long.
    assert_eq!(b2.on_peer_status(&online("active", 1), at(t0, 1700)), None);
    assert_eq!(b2.tick(true, at(t0, 60_000)), None);
    assert_eq!(b2.role(), Role::Standby);
}

#[test]
fn the_standby_takes_over_when_the_peer_dies() {
    let t0 = Now::system();
    let mut b2 = pair("gw-b2", "gw-b1", 2, t0);
    b2.tick(true, t0);
    b2.on_peer_status(&online("active", 1), at(t0, 10));
    let c = b2.on_peer_status(OFFLINE, at(t0, 5000)).unwrap();
    assert_eq!(c.role, Role::Active);
    assert_eq!(c.reason, "peer gw-b1 offline (last will)");
    let fault = br#"{"state":"fault","reason":"outbox: disk full"}"#;
    let mut b3 = pair("gw-b2", "gw-b1", 2, t0);
    b3.tick(true, t0);
    b3.on_peer_status(&online("active", 1), at(t0, 10));
    assert_eq!(
        b3.on_peer_status(fault, at(t0, 20)).unwrap().reason,
        "peer gw-b1 stopped on a fault (outbox: disk full)"
    );
}

#[test]
fn switchover_hands_over_and_nobody_takes_it_back() {
    let t0 = Now::system();
    let mut b1 = pair("gw-b1", "gw-b2", 1, t0);
    let mut b2 = pair("gw-b2", "gw-b1", 2, t0);
    b1.tick(true, t0);
    b2.tick(true, t0);
    b1.tick(true, at(t0, 2000));
    b2.on_peer_status(&b1_status(&b1), at(t0, 2010));
    b1.on_peer_status(&status_json(&b2), at(t0, 2020));
    assert_eq!((b1.role(), b2.role()), (Role::Active, Role::Standby));

    // The standby refuses and names the active gateway.
    assert_eq!(
        b2.switchover(Some("alice"), at(t0, 3000)).unwrap_err(),
        "gw-b2 is standby; send the switchover to the active gateway gw-b1"
    );
    let c = b1.switchover(Some("alice"), at(t0, 3000)).unwrap();
    assert_eq!(c.role, Role::Standby);
    assert_eq!(c.reason, "switchover requested by alice");
    assert_eq!(b1.status().handover_to.as_deref(), Some("gw-b2"));
    // gw-b2 sees the hand-over and takes over at once.
    let c = b2.on_peer_status(&b1_status(&b1), at(t0, 3010)).unwrap();
    assert_eq!(c.role, Role::Active);
    assert_eq!(
        c.reason,
        "peer gw-b1 handed over (switchover requested by alice)"
    );
    // gw-b1, before and after it sees gw-b2 active, stays standby (no flapping back).
    assert_eq!(b1.tick(true, at(t0, 3020)), None);
    assert_eq!(b1.on_peer_status(&status_json(&b2), at(t0, 3030)), None);
    assert_eq!(b1.status().handover_to, None);
    assert_eq!(b1.tick(true, at(t0, 60_000)), None);
    assert_eq!(b2.on_peer_status(&b1_status(&b1), at(t0, 60_010)), None);
    assert_eq!((b1.role(), b2.role()), (Role::Standby, Role::Active));
}

#[test]
fn a_handover_nobody_takes_is_taken_back() {
    let t0 = Now::system();
    let mut b1 = pair("gw-b1", "gw-b2", 1, t0);
    b1.tick(true, t0);
    b1.on_peer_status(&online("standby", 2), at(t0, 10));
    b1.tick(true, at(t0, 2000));
    assert_eq!(b1.role(), Role::Active);
    b1.switchover(None, at(t0, 3000)).unwrap();
    assert_eq!(b1.tick(true, at(t0, 5000)), None);
    let c = b1.tick(true, at(t0, 6100)).unwrap();
    assert_eq!(c.role, Role::Active);
    assert_eq!(c.reason, "peer gw-b2 did not take over within 3s");
}

#[test]
fn switchover_is_refused_without_a_standby_peer() {
    let t0 = Now::system();
    let mut b1 = pair("gw-b1", "gw-b2", 1, t0);
    b1.tick(true, t0);
    b1.tick(true, at(t0, 2000));
    assert_eq!(
        b1.switchover(None, at(t0, 2100)).unwrap_err(),
        "peer gw-b2 has not been seen: nobody to hand over to, gw-b1 stays active"
    );
    b1.on_peer_status(OFFLINE, at(t0, 2200));
    assert_eq!(
        b1.switchover(None, at(t0, 2300)).unwrap_err(),
        "peer gw-b2 offline (last will): nobody to hand over to, gw-b1 stays active"
    );
    assert_eq!(b1.role(), Role::Active);
}

#[test]
fn both_active_the_loser_by_priority_steps_down() {
    let t0 = Now::system();
    let mut b1 = pair("gw-b1", "gw-b2", 1, t0);
    let mut b2 = pair("gw-b2", "gw-b1", 2, t0);
    for p in [&mut b1, &mut b2] {
        p.tick(true, t0);
        p.tick(true, at(t0, 2000));
        assert_eq!(p.role(), Role::Active);
    }
    assert_eq!(b1.on_peer_status(&online("active", 2), at(t0, 3000)), None);
    let c = b2
        .on_peer_status(&online("active", 1), at(t0, 3000))
        .unwrap();
    assert_eq!(
        c,
        Change {
            role: Role::Standby,
            reason: "both active: gw-b1 wins by priority 1".into()
        }
    );
}

#[test]
fn equal_priorities_fall_to_the_lower_id() {
    let t0 = Now::system();
    let mut a = pair("gw-a", "gw-b", 5, t0);
    let mut b = pair("gw-b", "gw-a", 5, t0);
    for p in [&mut a, &mut b] {
        p.tick(true, t0);
        p.tick(true, at(t0, 2000));
    }
    assert_eq!(a.on_peer_status(&online("active", 5), at(t0, 3000)), None);
    assert_eq!(
        b.on_peer_status(&online("active", 5), at(t0, 3000))
            .unwrap()
            .role,
        Role::Standby
    );
}

#[test]
fn both_standby_the_winner_takes_over_after_the_grace() {
    let t0 = Now::system();
    let mut b1 = pair("gw-b1", "gw-b2", 1, t0);
    b1.tick(true, t0);
    // gw-b1 came back and saw gw-b2 active; then gw-b2 says standby without handing over
    // (an operator's mistake, a bug): gw-b1 waits the grace, then takes over.
    b1.on_peer_status(&online("active", 2), at(t0, 10));
    assert_eq!(b1.on_peer_status(&online("standby", 2), at(t0, 1000)), None);
    assert_eq!(b1.tick(true, at(t0, 3000)), None);
    let c = b1.tick(true, at(t0, 4100)).unwrap();
    assert_eq!(c.reason, "both standby: priority 1 wins");
    // The loser would not.
    let mut b2 = pair("gw-b2", "gw-b1", 2, t0);
    b2.tick(true, t0);
    b2.on_peer_status(&online("active", 1), at(t0, 10));
    b2.on_peer_status(&online("standby", 1), at(t0, 1000));
    assert_eq!(b2.tick(true, at(t0, 60_000)), None);
}

#[test]
fn unreadable_peer_status_is_ignored() {
    let t0 = Now::system();
    let mut b2 = pair("gw-b2", "gw-b1", 2, t0);
    b2.tick(true, t0);
    b2.on_peer_status(&online("active", 1), at(t0, 10));
    assert_eq!(b2.on_peer_status(b"not json", at(t0, 20)), None);
    assert!(matches!(b2.peer(), Peer::Online { .. }));
}

fn status_json(p: &Pair) -> Vec<u8> {
    let mut v = serde_json::to_value(p.status()).unwrap();
    v["state"] = "online".into();
    serde_json::to_vec(&v).unwrap()
}

fn b1_status(p: &Pair) -> Vec<u8> {
    status_json(p)
}

/// `due` is exactly when `tick` acts (not a millisecond before), and once acted on it moves
/// on: the daemon sleeps until it instead of looking once a second, which left a starting
/// pair silent 2 to 3 s instead of 1.5 s.
fn acts_exactly_when_due(p: &mut Pair, due: Instant, reason: &str) {
    assert_eq!(p.due(), Some(due), "{reason}");
    let t = |mono: Instant| Now {
        mono,
        wall: std::time::UNIX_EPOCH,
    };
    assert_eq!(p.tick(true, t(due - Duration::from_millis(1))), None);
    assert_eq!(p.tick(true, t(due)).map(|c| c.reason), Some(reason.into()));
    assert_eq!(p.due(), None, "acted on: nothing pending after {reason}");
}

#[test]
fn each_deadline_is_due_exactly_when_time_alone_changes_the_role() {
    let t0 = Now::system();
    let ms = |n: u64| t0.mono + Duration::from_millis(n);
    // Not connected: nothing pending, however long. Connected at 700 ms: the start wait ends
    // 1.5 s later, whatever the moment of the look.
    let mut alone = pair("gw-b1", "gw-b2", 1, t0);
    assert_eq!(alone.tick(false, at(t0, 300)), None);
    assert_eq!(alone.due(), None);
    alone.tick(true, at(t0, 700));
    acts_exactly_when_due(
        &mut alone,
        ms(2200),
        "peer gw-b2 not seen within 1.5s of connecting",
    );

    // A hand-over nobody takes: taken back GRACE after it was given.
    let mut b1 = pair("gw-b1", "gw-b2", 1, t0);
    b1.tick(true, t0);
    b1.on_peer_status(&online("standby", 2), at(t0, 10));
    b1.tick(true, at(t0, 1500));
    assert_eq!(b1.due(), None, "active: nothing pending");
    b1.switchover(None, at(t0, 2345)).unwrap();
    acts_exactly_when_due(&mut b1, ms(5345), "peer gw-b2 did not take over within 3s");

    // Both standby: the winner takes over GRACE after the later of the two became standby;
    // the loser has nothing pending.
    let mut w = pair("gw-b1", "gw-b2", 1, t0);
    let mut l = pair("gw-b2", "gw-b1", 2, t0);
    w.tick(true, t0);
    l.tick(true, t0);
    w.on_peer_status(&online("active", 2), at(t0, 10));
    l.on_peer_status(&online("active", 1), at(t0, 10));
    w.on_peer_status(&online("standby", 2), at(t0, 1234));
    l.on_peer_status(&online("standby", 1), at(t0, 1234));
    assert_eq!(l.due(), None);
    acts_exactly_when_due(&mut w, ms(4234), "both standby: priority 1 wins");
}

/// gw-b2, standby since 10 ms, its link up since 0, gw-b1 active and beating once at `beat`.
fn standby_hearing_b1(t0: Now, beat: u64) -> Pair {
    let mut b2 = pair("gw-b2", "gw-b1", 2, t0);
    b2.tick(true, t0);
    b2.on_peer_status(&online("active", 1), at(t0, 10));
    assert_eq!(b2.role(), Role::Standby);
    assert_eq!(b2.on_peer_beat(at(t0, beat)), None);
    b2
}

#[test]
fn a_silent_active_peer_is_taken_over_exactly_when_its_silence_ends() {
    let t0 = Now::system();
    let ms = |n: u64| t0.mono + Duration::from_millis(n);
    // Each beat moves the deadline: SILENCE after the last one heard.
    let mut b2 = standby_hearing_b1(t0, 1000);
    assert_eq!(b2.due(), Some(ms(4000)));
    assert_eq!(b2.on_peer_beat(at(t0, 2000)), None);
    assert_eq!(b2.tick(true, at(t0, 4500)), None);
    acts_exactly_when_due(&mut b2, ms(5000), "peer gw-b1 silent for 3.0 s");
    assert_eq!(b2.role(), Role::Active);
    // Its retained status still says active: that is no proof of life, the role stays.
    assert_eq!(b2.on_peer_status(&online("active", 1), at(t0, 6000)), None);
    assert_eq!(b2.tick(true, at(t0, 60_000)), None);
    assert_eq!(b2.role(), Role::Active);
    // Its last will confirms it: nothing changes.
    assert_eq!(b2.on_peer_status(OFFLINE, at(t0, 61_000)), None);
    assert_eq!(b2.role(), Role::Active);
}

#[test]
fn silence_is_not_counted_without_beats_a_link_or_an_active_peer() {
    let t0 = Now::system();
    // A peer never heard beating (an older version): only its last will replaces it.
    let mut b2 = pair("gw-b2", "gw-b1", 2, t0);
    b2.tick(true, t0);
    b2.on_peer_status(&online("active", 1), at(t0, 10));
    // A status it publishes live does not arm the count either (it comes every heartbeat).
    b2.note_live_status(at(t0, 500));
    assert_eq!(b2.due(), None);
    assert_eq!(b2.tick(true, at(t0, 60_000)), None);
    assert_eq!(b2.role(), Role::Standby);

    // The link goes down: silence is not counted while it cannot be heard, and after the
    // link is back it counts from the reconnection.
    let mut b2 = standby_hearing_b1(t0, 1000);
    assert_eq!(b2.tick(false, at(t0, 1500)), None);
    assert_eq!(b2.due(), None);
    assert_eq!(b2.tick(false, at(t0, 30_000)), None);
    assert_eq!(b2.tick(true, at(t0, 31_000)), None);
    acts_exactly_when_due(
        &mut b2,
        t0.mono + Duration::from_millis(34_000),
        "peer gw-b1 silent for 3.0 s",
    );

    // A peer that stopped (offline) or stepped down is not timed out; a peer that comes
    // back must beat again before its silence counts.
    let mut b2 = standby_hearing_b1(t0, 1000);
    b2.on_peer_status(&online("standby", 1), at(t0, 1200));
    assert_eq!(b2.due(), None, "a standby peer is not timed out");
    let mut b2 = standby_hearing_b1(t0, 1000);
    assert_eq!(
        b2.on_peer_status(OFFLINE, at(t0, 1200)).map(|c| c.reason),
        Some("peer gw-b1 offline (last will)".into())
    );
    let mut b2 = standby_hearing_b1(t0, 1000);
    b2.on_peer_status(b"", at(t0, 1100));
    b2.on_peer_status(&online("active", 1), at(t0, 1200));
    assert_eq!(b2.due(), None, "not heard beating since it came back");

    // An active gateway counts nothing.
    let mut b1 = pair("gw-b1", "gw-b2", 1, t0);
    b1.tick(true, t0);
    b1.tick(true, at(t0, 1600));
    assert_eq!(b1.role(), Role::Active);
    b1.on_peer_beat(at(t0, 1700));
    assert_eq!(b1.due(), None);
}

/// A freeze of several seconds then a thaw: gw-b2 takes over on the silence, gw-b1 thaws
/// still active, each hears the other, gw-b2 steps down, and beats every half second from
/// then on keep it so: two role changes in all, however long it runs.
#[test]
fn a_frozen_peer_that_thaws_ends_in_one_active_without_flapping() {
    let t0 = Now::system();
    let mut b1 = pair("gw-b1", "gw-b2", 1, t0);
    b1.tick(true, t0);
    b1.on_peer_status(&online("standby", 2), at(t0, 10));
    b1.tick(true, at(t0, 1600));
    assert_eq!(b1.role(), Role::Active);
    let mut b2 = standby_hearing_b1(t0, 1700);
    let mut changes = Vec::new();
    // Frozen from 2 s to 10 s: gw-b2 hears nothing.
    for ms in (2000..10_000).step_by(100) {
        changes.extend(b2.tick(true, at(t0, ms)).map(|c| ("gw-b2", c)));
    }
    assert_eq!(b2.role(), Role::Active);
    // The thaw: gw-b1 reads gw-b2's status (active), gw-b2 hears gw-b1 beat.
    assert_eq!(b1.on_peer_status(&status_json(&b2), at(t0, 10_000)), None);
    for ms in (10_000..70_000).step_by(500) {
        changes.extend(b2.on_peer_beat(at(t0, ms)).map(|c| ("gw-b2", c)));
        changes.extend(b2.tick(true, at(t0, ms + 250)).map(|c| ("gw-b2", c)));
        changes.extend(
            b1.on_peer_status(&status_json(&b2), at(t0, ms))
                .map(|c| ("gw-b1", c)),
        );
        changes.extend(b1.tick(true, at(t0, ms + 250)).map(|c| ("gw-b1", c)));
    }
    let reasons: Vec<_> = changes
        .iter()
        .map(|(g, c)| format!("{g}: {}", c.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            "gw-b2: peer gw-b1 silent for 3.0 s",
            "gw-b2: both active: gw-b1 wins by priority 1"
        ]
    );
    assert_eq!((b1.role(), b2.role()), (Role::Active, Role::Standby));
}

/// The winner by priority, standby after a switchover, takes over a silent loser; when the
/// loser thaws it steps down.
#[test]
fn a_silent_loser_is_taken_over_by_the_winner_and_steps_down_when_it_thaws() {
    let t0 = Now::system();
    let mut b1 = pair("gw-b1", "gw-b2", 1, t0);
    b1.tick(true, t0);
    b1.on_peer_status(&online("active", 2), at(t0, 10));
    assert_eq!(b1.on_peer_beat(at(t0, 500)), None);
    let c = b1.tick(true, at(t0, 3500)).unwrap();
    assert_eq!(c.reason, "peer gw-b2 silent for 3.0 s");
    // Heard again: both active, gw-b1 wins and stays; gw-b2 would step down on its status.
    assert_eq!(b1.on_peer_beat(at(t0, 9000)), None);
    assert_eq!(b1.role(), Role::Active);
    let mut b2 = pair("gw-b2", "gw-b1", 2, t0);
    b2.tick(true, t0);
    b2.tick(true, at(t0, 1600));
    assert_eq!(
        b2.on_peer_status(&b1_status(&b1), at(t0, 9000))
            .map(|c| c.reason),
        Some("both active: gw-b1 wins by priority 1".into())
    );
}
