//! Busy answers: the `cmd/result` refusal of a command that arrived while the daemon's command
//! queue was full, sent by the broker loop that received it.
//!
//! The README promises a `cmd/result` for every command, and a flood must neither stall the
//! broker loop (keep-alives, alarm delivery) nor grow the command queue without bound. So a
//! command without room is refused on the spot, and the refusal is kept cheap:
//! - it never reaches the outbox: it changed nothing, so there is nothing to make durable, and
//!   a thousand fsynced answers a second would queue ahead of alarm events in the journal;
//! - it goes out at QoS 0, outside the QoS 1 window the outbox feeds, so it never takes an
//!   alarm event's place in flight; the loop caps how many wait in rumqttc's request channel
//!   ([`BUSY_SLOTS`](super::BUSY_SLOTS)) and keeps the rest here, in order.
//!
//! No I/O here: the loop hands answers to rumqttc; this is the queue and its log throttle.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::mqtt::payload::Publication;

/// Busy answers waiting for room in rumqttc's request channel. A flood that outruns the socket
/// for this long is dropped beyond it (and counted in the log): memory stays bounded.
pub(super) const BACKLOG: usize = 4096;

/// At most one warning per this long while commands are being refused as busy; the answers
/// themselves say the rest.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(super) struct BusyAnswers {
    queue: VecDeque<Publication>,
    /// Refused as busy since the last warning, and dropped for want of backlog.
    refused: u64,
    dropped: u64,
    last_warning: Option<Instant>,
}

/// What the loop should log after a [`BusyAnswers::push`].
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Warning {
    pub refused: u64,
    pub dropped: u64,
}

impl BusyAnswers {
    /// Queues one answer (or drops it past [`BACKLOG`]). Returns a summary to log when a
    /// warning is due: the first busy answer, then at most one every [`WARN_EVERY`].
    pub fn push(&mut self, answer: Publication, now: Instant) -> Option<Warning> {
        if self.queue.len() < BACKLOG {
            self.queue.push_back(answer);
        } else {
            self.dropped += 1;
        }
        self.refused += 1;
        let due = self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY);
        if !due {
            return None;
        }
        self.last_warning = Some(now);
        Some(Warning {
            refused: std::mem::take(&mut self.refused),
            dropped: std::mem::take(&mut self.dropped),
        })
    }

    pub fn pop(&mut self) -> Option<Publication> {
        self.queue.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::payload::Class;

    fn answer(n: usize) -> Publication {
        Publication {
            topic: "p/cmd/result".into(),
            payload: n.to_string().into_bytes(),
            qos: rumqttc::QoS::AtMostOnce,
            retain: false,
            class: Class::Telemetry,
        }
    }

    #[test]
    fn answers_leave_in_order() {
        let now = Instant::now();
        let mut b = BusyAnswers::default();
        for n in 0..3 {
            b.push(answer(n), now);
        }
        let order: Vec<_> = std::iter::from_fn(|| b.pop()).map(|p| p.payload).collect();
        assert_eq!(order, [b"0".to_vec(), b"1".to_vec(), b"2".to_vec()]);
    }

    #[test]
    fn the_backlog_is_bounded_and_the_log_throttled() {
        let t0 = Instant::now();
        let mut b = BusyAnswers::default();
        assert_eq!(
            b.push(answer(0), t0),
            Some(Warning {
                refused: 1,
                dropped: 0
            })
        );
        for n in 1..BACKLOG + 5 {
            assert_eq!(b.push(answer(n), t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(b.queue.len(), BACKLOG);
        assert_eq!(
            b.push(answer(0), t0 + WARN_EVERY),
            Some(Warning {
                refused: BACKLOG as u64 + 5,
                dropped: 6
            })
        );
    }
}
