//! Who polls next when several devices share one line: an RS-485 bus (`bus.rs`) or the one
//! connection to a Modbus TCP gateway that answers many unit ids (`gateway.rs`). Both send one
//! request at a time, so both need the same fairness, written once here.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::time::Instant;

/// Who polls next on a shared bus: the device whose poll is due earliest, ties to the one served
/// longest ago.
///
/// After a poll a device is next due one interval after it was last due, or now if the bus is
/// behind. A bus that cannot keep up therefore serves its overdue devices in turn rather than
/// letting the fastest-polled device take every slot, and never bursts to catch up.
///
/// The order is kept in a heap: a gateway of 100 unit ids asks for the next one 100 times a
/// second, and scanning every device each time was 2 % of the gateway's CPU at 1,000 devices.
#[derive(Debug, Clone)]
pub struct Schedule {
    due: Vec<Instant>,
    interval: Vec<Duration>,
    served: Vec<u64>,
    turn: u64,
    /// (due, served, slot) of every slot, earliest first; an entry whose due or served no
    /// longer matches its slot's is stale (the slot was served since) and is skipped.
    order: BinaryHeap<Reverse<(Instant, u64, usize)>>,
}

impl Schedule {
    pub fn new(intervals: impl IntoIterator<Item = Duration>, start: Instant) -> Schedule {
        let interval: Vec<Duration> = intervals.into_iter().collect();
        Schedule {
            due: vec![start; interval.len()],
            served: vec![0; interval.len()],
            order: (0..interval.len())
                .map(|i| Reverse((start, 0, i)))
                .collect(),
            interval,
            turn: 0,
        }
    }

    /// The slot to poll next and when; `None` for an empty bus.
    pub fn next_due(&mut self) -> Option<(usize, Instant)> {
        while let Some(&Reverse((due, served, slot))) = self.order.peek() {
            if self.due.get(slot) == Some(&due) && self.served.get(slot) == Some(&served) {
                return Some((slot, due));
            }
            self.order.pop();
        }
        None
    }

    /// Records that `slot` was polled, finishing at `now`.
    pub fn served(&mut self, slot: usize, now: Instant) {
        let (Some(due), Some(interval)) = (self.due.get(slot).copied(), self.interval.get(slot))
        else {
            return;
        };
        self.turn += 1;
        self.served[slot] = self.turn;
        self.due[slot] = (due + *interval).max(now);
        self.order.push(Reverse((self.due[slot], self.turn, slot)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays a bus where every poll takes `cost`, for `span`; returns polls per device.
    fn play(intervals: &[u64], cost: u64, span: u64) -> Vec<u32> {
        let t0 = Instant::now();
        let mut s = Schedule::new(intervals.iter().map(|&ms| Duration::from_millis(ms)), t0);
        let mut now = t0;
        let mut polls = vec![0u32; intervals.len()];
        while now < t0 + Duration::from_millis(span) {
            let (slot, due) = s.next_due().expect("devices");
            now = now.max(due) + Duration::from_millis(cost);
            polls[slot] += 1;
            s.served(slot, now);
        }
        polls
    }

    #[test]
    fn a_bus_with_room_polls_every_device_at_its_interval() {
        // 100 ms, 100 ms and 1 s devices, 20 ms a poll: 0.42 of the bus.
        let polls = play(&[100, 100, 1000], 20, 10_000);
        for (got, want) in polls.iter().zip([100, 100, 10]) {
            assert!((want..=want + 2).contains(got), "{polls:?}");
        }
    }

    #[test]
    fn an_overloaded_bus_shares_its_time_and_starves_nobody() {
        // 100 ms, 100 ms and 1 s devices, 80 ms a poll: asks for 1.68 of the bus.
        let polls = play(&[100, 100, 1000], 80, 10_000);
        // The slow device still gets its 10 polls; the fast ones split the rest evenly.
        assert!(polls[2] >= 10, "{polls:?}");
        assert!(polls[0].abs_diff(polls[1]) <= 1, "{polls:?}");
        let total: u32 = polls.iter().sum();
        assert!(total >= 124, "the bus idled: {polls:?}");
    }

    #[test]
    fn an_empty_bus_has_nothing_to_do() {
        assert!(Schedule::new([], Instant::now()).next_due().is_none());
    }
}
