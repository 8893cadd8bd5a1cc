//! One notion of "now" for the whole pipeline.
//!
//! Rules and alarm state are pure functions of (reading, now): they never read a clock themselves,
//! so tests can play hours of sensor history in microseconds. Delays are measured on the monotonic
//! clock (a wall-clock step from NTP must not shorten an on-delay); timestamps in payloads come from
//! the wall clock.

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

/// RFC 3339 with milliseconds and a `Z`, as every payload carries it.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
