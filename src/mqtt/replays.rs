//! The `cmd/replay` requests a broker loop is answering: each one a cursor into the journal,
//! fed to the broker a small batch at a time, after live traffic, within a share of the send
//! window.
//!
//! Before, every request put all its events on the ledger's backlog at once, each with its own
//! copy of `reply_to`: a few dozen replays with long `reply_to` topics took the gateway from
//! 12 MB to hundreds of MB, and a live critical alarm waited behind all of them (10.6 s after
//! 500 replays). Now a replay costs one cursor, and at most [`SLOTS`] replayed publications
//! (every replay of this broker together) are with the broker unconfirmed: the rest of the
//! window is live traffic's, and the loop offers live outbox records the window before asking
//! for a replay batch. Requests beyond [`MAX_RUNNING`], or for a `reply_to` already being
//! answered, are refused as busy, and a replay that cannot be finished (its events aged out
//! of the journal while it ran, the journal cannot be read, the gateway is stopping) says so
//! and how far it got.
//!
//! Pure bookkeeping like `ledger.rs`: the loop reads the journal ([`Want`] in, an
//! [`outbox::Replay`] batch out) and hands the publications over; what to read next, when a
//! replay is done and what its result says are decided here and table-tested below.

use std::collections::{HashSet, VecDeque};

use rumqttc::QoS;

use super::payload::{Class, Publication};
use crate::command::{Refused, Replay};
use crate::message::CommandResult;
use crate::outbox;

/// Replays one broker answers at a time. Few: each is a subscriber repairing a gap, and they
/// share [`SLOTS`], so more at once would only make each slower. A refused requester asks
/// again once the `cmd/result` of a running one has arrived.
pub(crate) const MAX_RUNNING: usize = 4;

/// Replayed publications (events and their results) with the broker unconfirmed, all replays
/// together: a quarter of the link's window of 64, so live traffic always finds room and is
/// never queued behind replayed events; and with `reply_to` at its longest (64 KiB), a megabyte
/// of topics at most.
pub(crate) const SLOTS: usize = 16;

/// Events one replay sends per turn before the next replay's turn: replays share fairly.
pub(crate) const TURN: usize = 8;

/// Answers (refusals, results) waiting for a slot. A busy refusal is about 150 bytes, so a
/// burst of a thousand requests is answered in full for about as much memory as one replayed
/// batch; beyond it answers are dropped (logged once per burst) rather than grow without bound.
pub(crate) const MAX_ANSWERS: usize = 1024;

/// What to read from the journal for the replay whose turn it is
/// ([`outbox::Outbox::replay_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Want {
    pub from_pos: u64,
    pub from_seq: u64,
    pub until_seq: u64,
    pub max: usize,
}

/// One replay under way.
#[derive(Debug)]
struct Running {
    reply_to: String,
    from_seq: u64,
    /// The latest `seq` when the request came: events raised since go out live, not here.
    until_seq: u64,
    /// Where the next batch starts: the next `seq` wanted, and the journal position to look
    /// from.
    next_seq: u64,
    next_pos: u64,
    /// Events handed over so far, and the first and last `seq` of them.
    sent: u64,
    range: Option<(u64, u64)>,
    /// The journal's oldest `seq` at the first batch, when the request asked for earlier ones.
    lost_before: Option<u64>,
    started: bool,
}

impl Running {
    /// "republished N event(s), seq A..=B, on T", or what was not found.
    fn sent_text(&self) -> String {
        match self.range {
            Some((a, b)) => format!(
                "republished {} event(s), seq {a}..={b}, on {}",
                self.sent, self.reply_to
            ),
            None => format!("no event with seq >= {} is held", self.from_seq),
        }
    }

    fn finished(&self) -> CommandResult {
        let mut reason = self.sent_text();
        if let Some(oldest) = self.lost_before {
            reason.push_str(&format!(
                "; events before seq {oldest} are no longer held (storage.journal_max, journal_max_age)"
            ));
        }
        result(true, reason)
    }

    fn cut_short(&self, why: &str) -> CommandResult {
        let done = match self.range {
            Some(_) => self.sent_text(),
            None => "republished nothing".to_string(),
        };
        result(false, format!("cut short: {done}; {why}"))
    }
}

fn result(ok: bool, reason: String) -> CommandResult {
    CommandResult {
        command: "replay".into(),
        ok,
        reason: Some(reason),
    }
}

/// One broker's replays: those running (in turn order), the answers waiting, and which of the
/// ledger's entries are replayed publications not yet confirmed.
#[derive(Debug, Default)]
pub(crate) struct Replays {
    running: VecDeque<Running>,
    answers: VecDeque<CommandResult>,
    /// Answers dropped since the queue was last below [`MAX_ANSWERS`].
    dropped: u64,
    unconfirmed: HashSet<u64>,
}

impl Replays {
    /// A `cmd/replay` request, as parsed: started, or refused (the answer waits for a slot).
    /// `latest_seq` is the latest event `seq` the outbox holds now.
    pub fn request(&mut self, request: Result<Replay, Refused>, latest_seq: Option<u64>) {
        let refused = match request {
            Err(refused) => refused.result(),
            Ok(req) => match self.busy(&req) {
                None => {
                    self.running.push_back(Running {
                        from_seq: req.from_seq,
                        until_seq: latest_seq.unwrap_or(0),
                        next_seq: req.from_seq,
                        next_pos: 0,
                        sent: 0,
                        range: None,
                        lost_before: None,
                        started: false,
                        reply_to: req.reply_to,
                    });
                    return;
                }
                Some(why) => result(false, why),
            },
        };
        self.answer(refused);
    }

    /// Why `req` cannot start now, naming the limit.
    fn busy(&self, req: &Replay) -> Option<String> {
        if self.running.len() >= MAX_RUNNING {
            Some(format!(
                "busy: {MAX_RUNNING} replays are already running on this broker (at most \
                 {MAX_RUNNING} at a time); ask again once one has answered"
            ))
        } else if self.running.iter().any(|r| r.reply_to == req.reply_to) {
            Some(
                "busy: a replay to this reply_to is already running (one at a time per \
                 reply_to); ask again once it has answered"
                    .to_string(),
            )
        } else {
            None
        }
    }

    fn answer(&mut self, result: CommandResult) {
        if self.answers.len() >= MAX_ANSWERS {
            if self.dropped == 0 {
                tracing::warn!(
                    "mqtt: {MAX_ANSWERS} cmd/replay answers already waiting; further requests go \
                     unanswered until they are sent ({})",
                    result.reason.as_deref().unwrap_or("")
                );
            }
            self.dropped += 1;
            return;
        }
        if self.dropped > 0 {
            tracing::warn!(
                "mqtt: {} cmd/replay request(s) went unanswered",
                self.dropped
            );
            self.dropped = 0;
        }
        self.answers.push_back(result);
    }

    /// Slots left for replayed publications.
    fn room(&self) -> usize {
        SLOTS.saturating_sub(self.unconfirmed.len())
    }

    /// The next answer to publish, if a slot is free. Answers go before further events: they
    /// are small, and a refused requester should learn it at once.
    pub fn next_answer(&mut self) -> Option<CommandResult> {
        if self.room() == 0 {
            return None;
        }
        self.answers.pop_front()
    }

    /// What to read for the replay whose turn it is, given `window` free places in the send
    /// window (what live traffic left); `None` if nothing runs or there is no room.
    pub fn want(&self, window: usize) -> Option<Want> {
        let r = self.running.front()?;
        let max = TURN.min(window).min(self.room());
        (max > 0).then_some(Want {
            from_pos: r.next_pos,
            from_seq: r.next_seq,
            until_seq: r.until_seq,
            max,
        })
    }

    /// The journal's answer to [`Replays::want`] for the replay whose turn it is: its events as
    /// publications on `reply_to`, unchanged. The replay then waits for its next turn, or is
    /// done (its result is queued behind these events) or cut short.
    pub fn batch(&mut self, want: Want, batch: Result<outbox::Replay, String>) -> Vec<Publication> {
        let Some(mut r) = self.running.pop_front() else {
            return Vec::new();
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                self.answer(r.cut_short(&format!("cannot read the journal: {e}")));
                return Vec::new();
            }
        };
        let oldest = batch.oldest_seq.unwrap_or(0);
        if !r.started {
            // seq starts at 1: asking from 0 or 1 loses nothing.
            r.lost_before = (oldest > r.from_seq.max(1)).then_some(oldest);
            r.started = true;
        } else if oldest > r.next_seq && r.next_seq <= r.until_seq {
            self.answer(r.cut_short(&format!(
                "events from seq {} aged out of the journal while the replay ran \
                 (storage.journal_max, journal_max_age)",
                r.next_seq
            )));
            return Vec::new();
        }
        let out: Vec<Publication> = batch
            .events
            .iter()
            .map(|e| Publication {
                topic: r.reply_to.clone(),
                payload: e.payload.clone(),
                qos: QoS::AtLeastOnce,
                retain: false,
                class: Class::Durable,
            })
            .collect();
        if let (Some(first), Some(last)) = (batch.events.first(), batch.events.last()) {
            r.range = Some((r.range.map_or(first.seq, |(a, _)| a), last.seq));
            r.sent += batch.events.len() as u64;
            r.next_seq = last.seq + 1;
        }
        r.next_pos = batch.next_pos;
        if batch.events.len() < want.max || r.next_seq > r.until_seq {
            self.answer(r.finished());
        } else {
            self.running.push_back(r);
        }
        out
    }

    /// The ledger gave a replayed publication the number `ledger_seq`: it holds a slot until
    /// the broker confirms it (across a reconnect too, as it is resent).
    pub fn track(&mut self, ledger_seq: u64) {
        self.unconfirmed.insert(ledger_seq);
    }

    /// The broker confirmed the ledger's entry `ledger_seq`.
    pub fn acked(&mut self, ledger_seq: u64) {
        self.unconfirmed.remove(&ledger_seq);
    }

    /// The gateway is stopping: every running replay is cut short (its answer still goes out,
    /// before the offline status).
    pub fn stop(&mut self) {
        while let Some(r) = self.running.pop_front() {
            self.answer(r.cut_short("the gateway is stopping"));
        }
    }

    /// No replay running and no answer waiting.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.answers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::outbox::{Kind, Record};

    fn req(from_seq: u64, reply_to: &str) -> Result<Replay, Refused> {
        Ok(Replay {
            from_seq,
            reply_to: reply_to.into(),
        })
    }

    fn record(seq: u64) -> Arc<Record> {
        Arc::new(Record {
            pos: seq * 2,
            kind: Kind::Event,
            seq,
            time_ms: 0,
            topic: format!("p/alarms/{seq}"),
            retain: false,
            payload: format!("{{\"seq\":{seq}}}").into_bytes(),
        })
    }

    /// A journal holding events `held`, read as the outbox would for `want`.
    fn journal(held: std::ops::RangeInclusive<u64>, want: Want) -> outbox::Replay {
        let events: Vec<Arc<Record>> = held
            .clone()
            .filter(|s| *s >= want.from_seq && *s <= want.until_seq && s * 2 >= want.from_pos)
            .take(want.max)
            .map(record)
            .collect();
        outbox::Replay {
            next_pos: events.last().map_or(want.from_pos, |r| r.pos + 1),
            oldest_seq: Some(*held.start()),
            events,
        }
    }

    /// Runs the loop's part with a window that always has `window` places and the broker
    /// confirming each publication at once; returns (topic, payload seq or result) in order.
    fn run(r: &mut Replays, held: std::ops::RangeInclusive<u64>, window: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut ledger = 0;
        loop {
            if let Some(a) = r.next_answer() {
                out.push(format!("result {} {}", a.ok, a.reason.unwrap_or_default()));
                continue;
            }
            let Some(want) = r.want(window) else { break };
            assert!(want.max <= TURN.min(window));
            for p in r.batch(want, Ok(journal(held.clone(), want))) {
                ledger += 1;
                r.track(ledger);
                r.acked(ledger);
                out.push(format!(
                    "{} {}",
                    p.topic,
                    String::from_utf8_lossy(&p.payload)
                ));
            }
        }
        out
    }

    #[test]
    fn requests_are_taken_or_refused_by_the_limits() {
        // (already running, new request, refused because)
        let long = "r/".repeat(30_000);
        let table: [(&[&str], &str, Option<&str>); 5] = [
            (&[], "a", None),
            (&["a", "b", "c"], "d", None),
            (&["a", "b", "c", "d"], "e", Some("at most 4 at a time")),
            (&["a"], "a", Some("one at a time per reply_to")),
            (&["a"], &long, None),
        ];
        for (running, new, refused) in table {
            let mut r = Replays::default();
            for t in running {
                r.request(req(1, t), Some(10));
            }
            assert!(r.answers.is_empty());
            r.request(req(1, new), Some(10));
            let answer = r.next_answer();
            match refused {
                None => assert_eq!(answer, None, "{running:?} + {new}"),
                Some(why) => {
                    let a = answer.expect("refused");
                    let reason = a.reason.unwrap_or_default();
                    assert!(
                        !a.ok && reason.starts_with("busy: ") && reason.contains(why),
                        "{reason}"
                    );
                    assert!(reason.len() < 200, "the refusal does not echo reply_to");
                }
            }
        }
        let mut r = Replays::default();
        r.request(Err(Refused::new("replay", "bad body")), None);
        assert_eq!(r.next_answer().map(|a| a.ok), Some(false));
    }

    #[test]
    fn a_replay_streams_its_events_then_its_result() {
        // (journal, from_seq, latest seq at the request, window room, what is published)
        let ev = |s: u64| format!("t {{\"seq\":{s}}}");
        let ok = |text: &str| format!("result true {text}");
        type Case = (std::ops::RangeInclusive<u64>, u64, u64, usize, Vec<String>);
        let table: Vec<Case> = vec![
            (
                1..=3,
                2,
                3,
                64,
                vec![ev(2), ev(3), ok("republished 2 event(s), seq 2..=3, on t")],
            ),
            // from_seq 0 or 1 with nothing lost: no note about lost events.
            (
                1..=2,
                0,
                2,
                64,
                vec![ev(1), ev(2), ok("republished 2 event(s), seq 1..=2, on t")],
            ),
            (
                5..=6,
                1,
                6,
                64,
                vec![
                    ev(5),
                    ev(6),
                    ok(
                        "republished 2 event(s), seq 5..=6, on t; events before seq 5 are no \
                        longer held (storage.journal_max, journal_max_age)",
                    ),
                ],
            ),
            (1..=3, 7, 3, 64, vec![ok("no event with seq >= 7 is held")]),
            // Events raised after the request are not part of it.
            (
                1..=9,
                8,
                8,
                64,
                vec![ev(8), ok("republished 1 event(s), seq 8..=8, on t")],
            ),
            // A window with one place left: one event per turn, all of them in order.
            (
                1..=3,
                1,
                3,
                1,
                vec![
                    ev(1),
                    ev(2),
                    ev(3),
                    ok("republished 3 event(s), seq 1..=3, on t"),
                ],
            ),
        ];
        for (held, from, latest, window, want) in table {
            let mut r = Replays::default();
            r.request(req(from, "t"), Some(latest));
            assert_eq!(
                run(&mut r, held.clone(), window),
                want,
                "{held:?} from {from}"
            );
            assert!(r.is_idle());
        }
    }

    #[test]
    fn replays_take_turns_and_share_a_bounded_number_of_slots() {
        let mut r = Replays::default();
        r.request(req(1, "a"), Some(100));
        r.request(req(1, "b"), Some(100));
        let mut topics = Vec::new();
        let mut handed = 0u64;
        // The broker confirms nothing: replays stop at SLOTS, whatever the window.
        while let Some(want) = r.want(64) {
            for p in r.batch(want, Ok(journal(1..=100, want))) {
                handed += 1;
                r.track(handed);
                topics.push(p.topic);
            }
        }
        assert_eq!(handed as usize, SLOTS);
        let turns: Vec<&str> = topics.chunks(TURN).map(|c| c[0].as_str()).collect();
        assert_eq!(turns, ["a", "b"], "one turn each");
        assert!(topics.chunks(TURN).all(|c| c.iter().all(|t| t == &c[0])));
        assert_eq!(r.want(64), None);
        r.acked(1);
        assert_eq!(
            r.want(64).map(|w| w.max),
            Some(1),
            "a confirmation frees one slot"
        );
        assert_eq!(r.want(0), None, "no room left by live traffic: nothing");
    }

    #[test]
    fn a_replay_that_cannot_finish_says_how_far_it_got() {
        // The journal loses events 9.. (aged out) between two turns of a replay from 1.
        let mut r = Replays::default();
        r.request(req(1, "t"), Some(20));
        let want = r.want(64).expect("a turn");
        assert_eq!(r.batch(want, Ok(journal(1..=20, want))).len(), TURN);
        let want = r.want(64).expect("a second turn");
        assert_eq!(r.batch(want, Ok(journal(12..=20, want))), Vec::new());
        let a = r.next_answer().expect("answered");
        assert!(!a.ok);
        assert_eq!(
            a.reason.as_deref(),
            Some(
                "cut short: republished 8 event(s), seq 1..=8, on t; events from seq 9 aged out \
                 of the journal while the replay ran (storage.journal_max, journal_max_age)"
            )
        );
        // A journal that cannot be read, and a stop.
        r.request(req(1, "t"), Some(20));
        let want = r.want(64).expect("a turn");
        assert!(r.batch(want, Err("disk on fire".into())).is_empty());
        let a = r.next_answer().expect("answered");
        assert_eq!(
            (a.ok, a.reason.as_deref()),
            (
                false,
                Some("cut short: republished nothing; cannot read the journal: disk on fire")
            )
        );
        r.request(req(1, "t"), Some(20));
        r.stop();
        let a = r.next_answer().expect("answered");
        assert!(
            !a.ok
                && a.reason
                    .is_some_and(|s| s.ends_with("the gateway is stopping"))
        );
        assert!(r.is_idle());
    }
}
