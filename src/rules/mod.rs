//! Rules turn decoded readings into alarm conditions.
//!
//! Everything here is a pure function of (value, now): no clock, no I/O. That is what lets the
//! edge cases a fire-safety engineer cares about (exactly at threshold, inside the deadband,
//! on/off delays) be tested as tables.

pub mod rate;
pub mod threshold;
pub mod vote;

use serde::{Deserialize, Serialize};

/// How bad an alarm is. Ordered: `Warning < Critical < Emergency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
    Emergency,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Warning, Severity::Critical, Severity::Emergency];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
            Severity::Emergency => "emergency",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
