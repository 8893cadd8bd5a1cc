//! One notion of "now" for the whole pipeline.
//!
//! Rules and alarm state are pure functions of (reading, now): they never read a clock themselves,
//! so tests can play hours of sensor history in microseconds. Delays are measured on the monotonic
//! clock (a wall-clock step from NTP must not shorten an on-delay); timestamps in payloads come from
//! the wall clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// A moment, seen on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// For durations: delays, windows, timeouts.
    pub mono: Instant,
    /// For payload timestamps only.
    pub wall: SystemTime,
}

impl Now {
    /// Reads both clocks; the only place outside tests that does.
    pub fn system() -> Self {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The same moment shifted forward, on both clocks; for tests and simulated time.
    pub fn after(self, d: Duration) -> Self {
        Now {
            mono: self.mono + d,
            wall: self.wall + d,
        }
    }
}

/// When a long-running loop last showed it was alive, readable from another task or thread
/// without a lock: the loop marks it, a supervisor (the systemd watchdog) asks how long ago.
#[derive(Debug)]
pub struct Pulse {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last mark.
    at_ms: AtomicU64,
}

impl Default for Pulse {
    fn default() -> Self {
        Self::new()
    }
}

impl Pulse {
    /// Marked now.
    pub fn new() -> Pulse {
        Pulse {
            epoch: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }

    /// As if last marked `ago` (tests of stalls).
    #[cfg(test)]
    pub fn marked_ago(ago: Duration) -> Pulse {
        let now = Instant::now();
        Pulse {
            epoch: now.checked_sub(ago).unwrap_or(now),
            at_ms: AtomicU64::new(0),
        }
    }

    pub fn mark(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the last mark.
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.at_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// Milliseconds since the Unix epoch: how the outbox journal, `drain.json` and the agents'
/// state files store a wall-clock time. A clock set before 1970 reads as 0, never a panic.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// RFC 3339 with milliseconds and a `Z`, as every payload carries it.
///
/// humantime writes neither a year past 9999 (its `Display` fails, so `to_string` panicked: a
/// `deadline_ms` from a damaged `drain.json`, found by the `drain_json` fuzz target) nor a time
/// before 1970 (it panics): such times are written as the nearest one it can write.
pub fn rfc3339(t: SystemTime) -> String {
    const LATEST: Duration = Duration::from_millis(253_402_300_799_999);
    let t = t.clamp(std::time::UNIX_EPOCH, std::time::UNIX_EPOCH + LATEST);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod rfc3339_tests {
    use super::*;

    /// Found by the `drain_json` fuzz target (corpus: drain_json/crash-deadline-past-year-9999).
    #[test]
    fn times_humantime_cannot_write_are_written_as_the_nearest_it_can() {
        let far = std::time::UNIX_EPOCH + Duration::from_millis(1_288_888_885_935_933_423);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999Z");
        let before = std::time::UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
    }
}
