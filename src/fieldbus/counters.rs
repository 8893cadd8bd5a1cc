//! Per-device link counters: what went wrong on the wire, as opposed to what the sensors said.
//!
//! A Reading says whether a poll worked; these say *how* a link is failing (a CRC error now and
//! then is a noisy cable, replies from the wrong unit are a duplicate address, steady garbage is
//! a wrong baud rate). They are shared, lock-free counters rather than fields of each Reading so
//! that every part of the daemon (the `read` table today, metrics later) sees the same totals
//! without the rule engine having to carry them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The counters of one device.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Requests sent (Modbus) or lines received (serial-lines).
    pub requests: AtomicU64,
    /// Requests that got no answer at all within the timeout.
    pub timeouts: AtomicU64,
    /// Replies of the expected length whose CRC did not match.
    pub crc_errors: AtomicU64,
    /// Replies that started but never completed.
    pub short_frames: AtomicU64,
    /// Well-formed replies from another unit id than the one asked.
    pub wrong_unit: AtomicU64,
    /// Noise on the line: stray bytes before a reply or between exchanges, counted per burst.
    pub garbage: AtomicU64,
    /// Lines from a serial-lines sensor that could not be read (not text, too long, no fields).
    pub malformed_lines: AtomicU64,
    /// Times the port (or TCP connection) was lost or could not be opened.
    pub port_errors: AtomicU64,
}

/// A copy of one device's counters at one moment, for printing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub requests: u64,
    pub timeouts: u64,
    pub crc_errors: u64,
    pub short_frames: u64,
    pub wrong_unit: u64,
    pub garbage: u64,
    pub malformed_lines: u64,
    pub port_errors: u64,
}

impl LinkCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn stats(&self) -> LinkStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LinkStats {
            requests: get(&self.requests),
            timeouts: get(&self.timeouts),
            crc_errors: get(&self.crc_errors),
            short_frames: get(&self.short_frames),
            wrong_unit: get(&self.wrong_unit),
            garbage: get(&self.garbage),
            malformed_lines: get(&self.malformed_lines),
            port_errors: get(&self.port_errors),
        }
    }
}

impl fmt::Display for LinkStats {
    /// `12 requests, 1 CRC error`: the requests, then every counter that is not zero (or
    /// `no errors`), so a healthy bus reads short and a sick one stands out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = [
            (self.timeouts, "timeout", "timeouts"),
            (self.crc_errors, "CRC error", "CRC errors"),
            (self.short_frames, "short frame", "short frames"),
            (self.wrong_unit, "wrong-unit reply", "wrong-unit replies"),
            (self.garbage, "garbage burst", "garbage bursts"),
            (self.malformed_lines, "malformed line", "malformed lines"),
            (self.port_errors, "port error", "port errors"),
        ];
        let plural =
            |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        f.write_str(&plural(self.requests, "request", "requests"))?;
        let mut clean = true;
        for (n, one, many) in errors {
            if n > 0 {
                write!(f, ", {}", plural(n, one, many))?;
                clean = false;
            }
        }
        if clean {
            f.write_str(", no errors")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_print_only_what_went_wrong() {
        let mut s = LinkStats {
            requests: 12,
            ..LinkStats::default()
        };
        assert_eq!(s.to_string(), "12 requests, no errors");
        s.crc_errors = 1;
        s.wrong_unit = 3;
        assert_eq!(
            s.to_string(),
            "12 requests, 1 CRC error, 3 wrong-unit replies"
        );
    }
}

/// The counters of every configured device, indexed like `Config::devices`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Counters(Arc<[LinkCounters]>);

impl Counters {
    pub fn new(devices: usize) -> Counters {
        Counters((0..devices).map(|_| LinkCounters::default()).collect())
    }

    /// One device's counters; a fresh, unshared set for an index out of range (never panics).
    pub fn device(&self, index: usize) -> &LinkCounters {
        static NONE: std::sync::OnceLock<LinkCounters> = std::sync::OnceLock::new();
        self.0
            .get(index)
            .unwrap_or_else(|| NONE.get_or_init(LinkCounters::default))
    }

    pub fn stats(&self, index: usize) -> LinkStats {
        self.device(index).stats()
    }
}
