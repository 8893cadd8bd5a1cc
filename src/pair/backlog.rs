//! What a gateway of a pair does with the messages it saved but never saw confirmed before it
//! stopped (its outbox backlog), when it comes back standby and its peer is active.
//!
//! A gateway killed (SIGKILL, power, a crash) may leave events in its outbox that the broker
//! never acknowledged: some reached subscribers, some did not. Its peer took over meanwhile
//! and published, under its own `gateway` and `seq`, the state it saw, knowing nothing of
//! them. Resent blindly at the restart, they would report again a change subscribers already
//! have from the peer (the same alarm raised twice) or put back an older retained zone status
//! over the peer's. So each is judged against what the pair has published ([`Published`]: the
//! active peer's retained picture and the events it has published since): dropped when the
//! peer has already shown it, published otherwise. Fire safety prefers a duplicate to a loss,
//! so whatever cannot be judged is published. Pure: a record in, a verdict out; `service.rs`
//! decides when, and the outbox drops (acknowledges locally) what is not resent.

use std::time::SystemTime;

use super::Published;
use crate::alarms::{AlarmEvent, AlarmState, SharedAlarm};
use crate::outbox::Kind;

/// What becomes of one record of the backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Publish,
    /// Not resent, and why (for the log).
    Drop(String),
}

/// Judges one backlog record (`kind`, `payload`, appended at `appended`) against `view`,
/// what the pair has published, for a standby whose active peer is `peer`:
/// - an alarm event up to `delivered` (the `last_seq` of this gateway's own retained picture,
///   as the broker holds it) is dropped: it went to the broker before that picture, so
///   subscribers have it, though its acknowledgement was lost with the process;
/// - an alarm event is dropped when the peer's picture, at least as new as the event, shows
///   the alarm as the event does (the change is already published), or in a state it entered
///   after the event and after the peer began publishing every change (`publishing_since`):
///   a later change the peer published, so the event's is old news to subscribers. A state
///   the peer entered earlier, while it was still standby, may hide a change it never
///   published (a raise gone again before it took over): that event is published;
/// - a zone status is dropped when the peer began publishing after it was appended: the peer
///   published every zone's status then, and the retained one must stay the peer's;
/// - anything else (drain messages, command answers, this gateway's own picture), anything
///   not readable, and anything judged against a picture older than it or not the peer's is
///   published.
pub fn judge(
    kind: Kind,
    payload: &[u8],
    appended: SystemTime,
    view: &Published,
    peer: &str,
    delivered: Option<u64>,
) -> Verdict {
    let event = match kind {
        Kind::Event => match serde_json::from_slice::<AlarmEvent>(payload) {
            Ok(ev) => Some(ev),
            Err(_) => return Verdict::Publish,
        },
        Kind::Zone | Kind::Message => None,
    };
    if let Some(ev) = event
        .as_ref()
        .filter(|e| delivered.is_some_and(|d| e.seq <= d))
    {
        return Verdict::Drop(format!(
            "{} ({} {}): already delivered (the broker holds this gateway's picture published \
             after it)",
            ev.event_id,
            ev.alarm,
            word(ev.state)
        ));
    }
    let Some((from, time, publishing_since)) = view.picture() else {
        return Verdict::Publish;
    };
    if from != peer {
        return Verdict::Publish;
    }
    match kind {
        Kind::Event => match event {
            Some(ev) => judge_event(&ev, view, time, publishing_since, peer),
            None => Verdict::Publish,
        },
        Kind::Zone if publishing_since.is_some_and(|s| s >= appended) => Verdict::Drop(format!(
            "a zone status from before the restart: {peer} has published every zone's status \
             since"
        )),
        Kind::Zone | Kind::Message => Verdict::Publish,
    }
}

fn judge_event(
    ev: &AlarmEvent,
    view: &Published,
    time: SystemTime,
    publishing_since: Option<SystemTime>,
    peer: &str,
) -> Verdict {
    let Some(at) = parse(&ev.time) else {
        return Verdict::Publish;
    };
    if time < at {
        return Verdict::Publish;
    }
    let what = format!("{} ({} {})", ev.event_id, ev.alarm, word(ev.state));
    let mine = SharedAlarm::from_event(ev, None);
    match view.get(&ev.zone, &ev.alarm) {
        None if mine.is_normal() => Verdict::Drop(format!("{what}: already published by {peer}")),
        None => Verdict::Publish,
        Some(p) if p.visible() == mine.visible() => {
            Verdict::Drop(format!("{what}: already published by {peer}"))
        }
        Some(p) => {
            let since = parse(&p.since);
            let later = since.is_some_and(|s| s > at && publishing_since.is_some_and(|ps| s > ps));
            if later {
                Verdict::Drop(format!(
                    "{what}: superseded, {peer} has published it {} since {}",
                    word(p.state),
                    p.since
                ))
            } else {
                Verdict::Publish
            }
        }
    }
}

fn parse(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// The state as events spell it.
fn word(s: AlarmState) -> &'static str {
    match s {
        AlarmState::Active => "active",
        AlarmState::Cleared => "cleared",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::alarms::{AlarmKind, AlarmTable, Condition, Identity};
    use crate::clock::{rfc3339, Now};
    use crate::rules::Severity;

    fn id(point: &str) -> Identity {
        Identity {
            zone: "room-1".into(),
            device: "rack-01".into(),
            point: point.into(),
            rule: "r".into(),
            kind: AlarmKind::Threshold,
            unit: None,
            latching: false,
        }
    }

    fn cond(s: Option<Severity>) -> Condition {
        Condition {
            severity: s,
            value: None,
            threshold: None,
            message: "m".into(),
        }
    }

    fn at(base: Now, ms: u64) -> Now {
        base.after(Duration::from_millis(ms))
    }

    /// gw-b2's picture at `now`, publishing since `since`.
    fn view(b2: &AlarmTable, now: Now, since: Now) -> Published {
        let mut shared = b2.shared(now);
        shared.publishing_since = Some(rfc3339(since.wall));
        let mut v = Published::default();
        assert_eq!(v.on_shared(&serde_json::to_vec(&shared).unwrap()), Ok(true));
        v
    }

    fn verdict(ev: &AlarmEvent, v: &Published) -> Verdict {
        let payload = serde_json::to_vec(ev).unwrap();
        judge(
            Kind::Event,
            &payload,
            SystemTime::UNIX_EPOCH,
            v,
            "gw-b2",
            None,
        )
    }

    fn dropped(v: &Verdict) -> bool {
        matches!(v, Verdict::Drop(_))
    }

    /// gw-b1 raised "t" just before it died; gw-b2, taking over at 200 ms, raised it too.
    #[test]
    fn a_change_the_peer_published_too_is_dropped() {
        let t0 = Now::system();
        let mut b1 = AlarmTable::new("s", "gw-b1", 0);
        let mut b2 = AlarmTable::new("s", "gw-b2", 0);
        let e = b1
            .update(&id("t"), cond(Some(Severity::Critical)), t0)
            .unwrap();
        b2.update(&id("t"), cond(Some(Severity::Critical)), at(t0, 200));
        let v = view(&b2, at(t0, 250), at(t0, 200));
        assert_eq!(
            verdict(&e, &v),
            Verdict::Drop("gw-b1-1 (rack-01/t/r active): already published by gw-b2".into())
        );
        // The peer has since seen it clear (after it began publishing): old news.
        b2.update(&id("t"), cond(None), at(t0, 600));
        let v = view(&b2, at(t0, 700), at(t0, 200));
        assert!(dropped(&verdict(&e, &v)), "{:?}", verdict(&e, &v));
    }

    /// gw-b1 raised "t" and it cleared again before gw-b2 took over: gw-b2 published only
    /// "cleared", so the raise still goes out; the clear is gw-b2's too and does not.
    #[test]
    fn a_change_the_peer_never_published_is_published() {
        let t0 = Now::system();
        let mut b1 = AlarmTable::new("s", "gw-b1", 0);
        let mut b2 = AlarmTable::new("s", "gw-b2", 0);
        let raise = b1
            .update(&id("t"), cond(Some(Severity::Critical)), t0)
            .unwrap();
        let clear = b1.update(&id("t"), cond(None), at(t0, 300)).unwrap();
        b2.update(&id("t"), cond(Some(Severity::Critical)), at(t0, 20));
        b2.update(&id("t"), cond(None), at(t0, 320));
        let v = view(&b2, at(t0, 600), at(t0, 500));
        assert_eq!(verdict(&raise, &v), Verdict::Publish);
        assert!(dropped(&verdict(&clear, &v)));
        // A raise the peer never saw at all (normal there since before it): published.
        let other = b1
            .update(&id("u"), cond(Some(Severity::Warning)), at(t0, 400))
            .unwrap();
        assert_eq!(verdict(&other, &v), Verdict::Publish);
    }

    /// An event the broker had before this gateway's own latest retained picture is dropped
    /// whatever the peer shows (a redelivery); a later one is judged as usual.
    #[test]
    fn an_event_the_broker_already_had_is_not_resent() {
        let t0 = Now::system();
        let mut b1 = AlarmTable::new("s", "gw-b1", 0);
        let b2 = AlarmTable::new("s", "gw-b2", 0);
        let first = b1
            .update(&id("t"), cond(Some(Severity::Critical)), t0)
            .unwrap();
        let second = b1.update(&id("t"), cond(None), at(t0, 300)).unwrap();
        let v = view(&b2, at(t0, 600), at(t0, 500));
        let judged = |ev: &AlarmEvent| {
            let payload = serde_json::to_vec(ev).unwrap();
            judge(Kind::Event, &payload, t0.wall, &v, "gw-b2", Some(first.seq))
        };
        assert_eq!(
            judged(&first),
            Verdict::Drop(
                "gw-b1-1 (rack-01/t/r active): already delivered (the broker holds this \
                 gateway's picture published after it)"
                    .into()
            )
        );
        assert_eq!(judged(&second), Verdict::Publish);
    }

    /// In doubt, publish: a picture older than the event, the gateway's own picture, no
    /// picture at all, an unreadable payload.
    #[test]
    fn what_cannot_be_judged_is_published() {
        let t0 = Now::system();
        let mut b1 = AlarmTable::new("s", "gw-b1", 0);
        let mut b2 = AlarmTable::new("s", "gw-b2", 0);
        b2.update(&id("t"), cond(Some(Severity::Critical)), t0);
        let e = b1
            .update(&id("t"), cond(Some(Severity::Critical)), at(t0, 100))
            .unwrap();
        assert_eq!(verdict(&e, &view(&b2, at(t0, 50), t0)), Verdict::Publish);
        assert_eq!(verdict(&e, &view(&b1, at(t0, 500), t0)), Verdict::Publish);
        assert_eq!(verdict(&e, &Published::default()), Verdict::Publish);
        let v = view(&b2, at(t0, 500), t0);
        let garbage = judge(
            Kind::Event,
            b"{",
            SystemTime::UNIX_EPOCH,
            &v,
            "gw-b2",
            Some(9),
        );
        assert_eq!(garbage, Verdict::Publish);
        // Drain messages and command answers are not the pair's to judge.
        let msg = judge(
            Kind::Message,
            b"{}",
            SystemTime::UNIX_EPOCH,
            &v,
            "gw-b2",
            None,
        );
        assert_eq!(msg, Verdict::Publish);
    }

    /// A zone status appended before the peer began publishing is dropped (the peer's retained
    /// one is newer); one appended after it is published.
    #[test]
    fn an_older_zone_status_does_not_replace_the_peers() {
        let t0 = Now::system();
        let b2 = AlarmTable::new("s", "gw-b2", 0);
        let v = view(&b2, at(t0, 500), at(t0, 200));
        assert!(dropped(&judge(
            Kind::Zone,
            b"{}",
            t0.wall,
            &v,
            "gw-b2",
            None
        )));
        let later = at(t0, 300).wall;
        assert_eq!(
            judge(Kind::Zone, b"{}", later, &v, "gw-b2", None),
            Verdict::Publish
        );
        // A peer that does not say when it began publishing: published.
        let mut old = Published::default();
        old.on_shared(&serde_json::to_vec(&b2.shared(at(t0, 500))).unwrap())
            .unwrap();
        assert_eq!(
            judge(Kind::Zone, b"{}", t0.wall, &old, "gw-b2", None),
            Verdict::Publish
        );
    }
}
