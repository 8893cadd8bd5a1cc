//! What the console has of one gateway's numbered events, and what it must ask again for.
//!
//! Each gateway numbers its events 1, 2, 3, ... (`seq`, never reused). The console records
//! which numbers it holds, learns the latest number from events and from the gateway's
//! retained status (republished every heartbeat, so a gap at the tail is seen too), and asks
//! for the holes with `cmd/replay`. What the gateway answers it no longer holds (its journal
//! aged out) is *lost*: listed in `missing` for good, never hidden. Pure bookkeeping, no I/O:
//! the subscriber feeds it and sends what it asks for.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a replay may take before it is asked again.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause after a refused or incomplete replay before the next try.
pub const RETRY_AFTER: Duration = Duration::from_secs(3);
/// Replays that leave the same hole before it is counted as lost.
pub const MAX_TRIES: u32 = 3;

/// A set of `seq` numbers as disjoint inclusive ranges, start → end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    pub fn contains(&self, n: u64) -> bool {
        self.0.range(..=n).next_back().is_some_and(|(_, &e)| e >= n)
    }

    /// Adds `a..=b`, merging with neighbours.
    pub fn insert(&mut self, a: u64, b: u64) {
        if a > b {
            return;
        }
        let (mut a, mut b) = (a, b);
        if let Some((&s, &e)) = self.0.range(..=a).next_back() {
            if e.saturating_add(1) >= a {
                a = s;
                b = b.max(e);
            }
        }
        let overlapping: Vec<u64> = self
            .0
            .range(a..=b.saturating_add(1))
            .map(|(&s, _)| s)
            .collect();
        for s in overlapping {
            if let Some(e) = self.0.remove(&s) {
                b = b.max(e);
            }
        }
        self.0.insert(a, b);
    }

    /// Takes `n` out (splitting its range).
    pub fn remove(&mut self, n: u64) {
        let Some((&a, &b)) = self.0.range(..=n).next_back().filter(|(_, &b)| b >= n) else {
            return;
        };
        self.0.remove(&a);
        if a < n {
            self.0.insert(a, n - 1);
        }
        if n < b {
            self.0.insert(n + 1, b);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&a, &b)| (a, b))
    }

    /// The parts of `from..=to` not in the set.
    pub fn holes(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut next = from;
        if from > to {
            return out;
        }
        for (a, b) in self.iter() {
            if b < next {
                continue;
            }
            if a > to {
                break;
            }
            if a > next {
                out.push((next, a - 1));
            }
            next = b.saturating_add(1);
            if next > to {
                return out;
            }
        }
        out.push((next, to));
        out
    }

    pub fn max(&self) -> Option<u64> {
        self.0.values().next_back().copied()
    }
}

/// One gateway's record.
#[derive(Debug, Clone)]
pub struct Record {
    /// The first `seq` the console answers for: 1, or for a gateway first met after its journal
    /// had aged out, the oldest event it still held (what came before is not the console's gap).
    pub origin: u64,
    /// Whether `origin` is settled: false until the first replay answer for a new gateway.
    pub settled: bool,
    pub received: Ranges,
    /// Holes the gateway could no longer fill.
    pub lost: Ranges,
    /// The latest `seq` known to exist (events and status).
    pub latest: u64,
    replay: Option<Asked>,
    /// When the next replay may be asked (after a refusal).
    not_before: Option<Instant>,
    /// Replays answered that left the first hole where it was.
    tries: u32,
}

#[derive(Debug, Clone, Copy)]
struct Asked {
    from: u64,
    at: Instant,
}

/// What a replay answer (`cmd/result` with `"command":"replay"`) said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Republished what it held; `held_from` is the oldest seq still held, when older ones
    /// were asked for and are gone; `none_from` when nothing from the asked seq on is held.
    Done {
        held_from: Option<u64>,
        none_from: Option<u64>,
    },
    /// Busy or cut short: ask again later.
    Retry,
}

impl Answer {
    /// Reads the gateway's `reason` text (`mqtt/replays.rs` writes it).
    pub fn parse(ok: bool, reason: &str) -> Answer {
        if !ok {
            return Answer::Retry;
        }
        let number_after = |marker: &str| {
            reason.find(marker).and_then(|i| {
                reason[i + marker.len()..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
            })
        };
        Answer::Done {
            held_from: number_after("events before seq "),
            none_from: number_after("no event with seq >= "),
        }
    }
}

impl Record {
    /// A gateway never met before.
    pub fn new() -> Record {
        Record::restored(1, false, Ranges::default(), Ranges::default())
    }

    /// As saved in the database.
    pub fn restored(origin: u64, settled: bool, received: Ranges, lost: Ranges) -> Record {
        let latest = received.max().unwrap_or(0).max(lost.max().unwrap_or(0));
        Record {
            origin: origin.max(1),
            settled,
            received,
            lost,
            latest,
            replay: None,
            not_before: None,
            tries: 0,
        }
    }

    /// An event arrived; false if it is a duplicate (dropped by the caller).
    pub fn event(&mut self, seq: u64) -> bool {
        if seq == 0 || self.received.contains(seq) {
            return false;
        }
        self.received.insert(seq, seq);
        self.latest = self.latest.max(seq);
        true
    }

    /// An event that was received but could not be stored: a hole again, to be replayed.
    pub fn unstored(&mut self, seq: u64) {
        self.received.remove(seq);
    }

    /// The retained status says the gateway's latest event is `seq`.
    pub fn status(&mut self, seq: u64) {
        self.latest = self.latest.max(seq);
    }

    /// What is not held between `origin` and `latest`, repairable or not.
    pub fn missing(&self) -> Vec<(u64, u64)> {
        let mut have = self.received.clone();
        for (a, b) in self.lost.iter() {
            have.insert(a, b);
        }
        let mut out = have.holes(self.origin, self.latest);
        out.extend(self.lost.iter().filter(|&(_, b)| b >= self.origin));
        out.sort_unstable();
        out
    }

    /// Holes a replay may still fill.
    pub fn holes(&self) -> Vec<(u64, u64)> {
        let mut have = self.received.clone();
        for (a, b) in self.lost.iter() {
            have.insert(a, b);
        }
        have.holes(self.origin, self.latest)
    }

    /// The highest `n` with every event from `origin` to `n` held or known lost.
    pub fn received_through(&self) -> u64 {
        match self.holes().first() {
            Some(&(a, _)) => a - 1,
            None => self.latest,
        }
    }

    /// The `from_seq` of a replay to ask for now, if one is needed and none is under way.
    pub fn replay_due(&mut self, now: Instant) -> Option<u64> {
        if self
            .replay
            .is_some_and(|r| now.duration_since(r.at) < REPLAY_TIMEOUT)
        {
            return None;
        }
        if self.not_before.is_some_and(|t| now < t) {
            return None;
        }
        let from = self.holes().first().map(|&(a, _)| a)?;
        self.replay = Some(Asked { from, at: now });
        Some(from)
    }

    /// The gateway answered the replay under way. Call after the replayed events (they come
    /// before the answer on the same connection).
    pub fn answered(&mut self, answer: Answer, now: Instant) {
        let Some(asked) = self.replay.take() else {
            return;
        };
        match answer {
            Answer::Retry => {
                self.not_before = Some(now + RETRY_AFTER);
            }
            Answer::Done {
                held_from,
                none_from,
            } => {
                if let Some(oldest) = held_from {
                    if !self.settled && self.received.iter().all(|(a, _)| a >= oldest) {
                        // A new acquaintance: its past before the journal is not our gap.
                        self.origin = self.origin.max(oldest);
                    } else if oldest > asked.from {
                        self.lost_upto(oldest - 1);
                    }
                }
                if let Some(n) = none_from {
                    // Nothing from `n` on is held, yet `latest` says there were such events.
                    self.lost_upto_from(n, self.latest);
                }
                self.settled = true;
                match self.holes().first() {
                    Some(&(a, b)) if a <= asked.from => {
                        self.tries += 1;
                        if self.tries >= MAX_TRIES {
                            self.lost.insert(a, b);
                            self.tries = 0;
                        } else {
                            self.not_before = Some(now + RETRY_AFTER);
                        }
                    }
                    _ => self.tries = 0,
                }
            }
        }
    }

    fn lost_upto(&mut self, to: u64) {
        self.lost_upto_from(self.origin, to);
    }

    fn lost_upto_from(&mut self, from: u64, to: u64) {
        for (a, b) in self.holes() {
            let (a, b) = (a.max(from), b.min(to));
            if a <= b {
                self.lost.insert(a, b);
            }
        }
    }
}

impl Default for Record {
    fn default() -> Self {
        Record::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(r: &[(u64, u64)]) -> Ranges {
        let mut s = Ranges::default();
        for &(a, b) in r {
            s.insert(a, b);
        }
        s
    }

    #[test]
    fn ranges_merge_and_report_holes() {
        let s = set(&[(5, 5), (1, 2), (3, 3), (7, 9), (8, 12)]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(1, 3), (5, 5), (7, 12)]);
        assert_eq!(s.holes(1, 15), vec![(4, 4), (6, 6), (13, 15)]);
        assert_eq!(s.holes(7, 12), vec![]);
        assert!(s.contains(11) && !s.contains(6));
        let mut s = set(&[(4, 6), (1, 10)]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(1, 10)]);
        s.remove(1);
        s.remove(5);
        s.remove(10);
        s.remove(42);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(2, 4), (6, 9)]);
    }

    #[test]
    fn a_gap_is_replayed_and_closed() {
        let now = Instant::now();
        let mut r = Record::restored(1, true, set(&[(1, 3)]), Ranges::default());
        assert!(r.event(6));
        assert!(!r.event(6), "a duplicate is dropped");
        assert_eq!(r.missing(), vec![(4, 5)]);
        assert_eq!(r.received_through(), 3);
        assert_eq!(r.replay_due(now), Some(4));
        assert_eq!(r.replay_due(now), None, "one at a time");
        r.event(4);
        r.event(5);
        r.answered(
            Answer::parse(true, "republished 3 event(s), seq 4..=6, on t"),
            now,
        );
        assert_eq!(r.missing(), vec![]);
        assert_eq!(r.received_through(), 6);
        assert_eq!(r.replay_due(now), None);
    }

    #[test]
    fn the_status_seq_reveals_a_gap_at_the_tail() {
        let mut r = Record::restored(1, true, set(&[(1, 3)]), Ranges::default());
        r.status(5);
        assert_eq!(r.missing(), vec![(4, 5)]);
        assert_eq!(r.replay_due(Instant::now()), Some(4));
    }

    #[test]
    fn what_the_journal_no_longer_holds_is_lost_and_stays_listed() {
        let now = Instant::now();
        let mut r = Record::restored(1, true, set(&[(1, 3)]), Ranges::default());
        r.status(20);
        assert_eq!(r.replay_due(now), Some(4));
        for s in 10..=20 {
            r.event(s);
        }
        r.answered(
            Answer::parse(
                true,
                "republished 11 event(s), seq 10..=20, on t; events before seq 10 are no longer \
                 held (storage.journal_max, journal_max_age)",
            ),
            now,
        );
        assert_eq!(r.missing(), vec![(4, 9)]);
        assert_eq!(
            r.received_through(),
            20,
            "lost is not repairable: nothing to wait for"
        );
        assert_eq!(r.replay_due(now), None);
    }

    #[test]
    fn a_new_gateway_starts_where_its_journal_does() {
        let now = Instant::now();
        let mut r = Record::new();
        r.status(50);
        assert_eq!(r.replay_due(now), Some(1));
        for s in 40..=50 {
            r.event(s);
        }
        r.answered(
            Answer::parse(true, "republished 11 event(s), seq 40..=50, on t; events before seq 40 are no longer held"),
            now,
        );
        assert_eq!((r.origin, r.missing()), (40, vec![]));
    }

    #[test]
    fn refusals_are_retried_and_a_hole_that_never_fills_is_lost_at_last() {
        let mut now = Instant::now();
        let mut r = Record::restored(1, true, set(&[(1, 1), (3, 3)]), Ranges::default());
        assert_eq!(r.replay_due(now), Some(2));
        r.answered(
            Answer::parse(false, "busy: 4 replays are already running"),
            now,
        );
        assert_eq!(r.replay_due(now), None, "waits before asking again");
        now += RETRY_AFTER;
        for _ in 0..MAX_TRIES {
            assert_eq!(r.replay_due(now), Some(2));
            r.answered(
                Answer::parse(true, "republished 1 event(s), seq 3..=3, on t"),
                now,
            );
            now += RETRY_AFTER;
        }
        assert_eq!(r.missing(), vec![(2, 2)]);
        assert_eq!(r.replay_due(now), None);
        assert_eq!(
            Answer::parse(true, "no event with seq >= 9 is held"),
            Answer::Done {
                held_from: None,
                none_from: Some(9)
            }
        );
    }
}
