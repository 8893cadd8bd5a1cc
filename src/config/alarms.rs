//! `[alarms]`: site-wide alarm management policy. The type, its defaults and its validator
//! side by side.

use std::time::Duration;

use serde::Deserialize;

use super::validate::Validator;

/// Default `alarms.max_shelve`: one eight-hour shift.
pub const DEFAULT_MAX_SHELVE: Duration = Duration::from_secs(8 * 3600);
/// Default `alarms.chatter_per_minute`.
pub const DEFAULT_CHATTER_PER_MINUTE: usize = 5;

/// Site-wide alarm management settings (`[alarms]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmPolicy {
    /// `max_shelve`: the longest an operator may shelve an alarm; a forgotten shelf must
    /// expire. Default [`DEFAULT_MAX_SHELVE`].
    pub max_shelve: Duration,
    /// `chatter_per_minute`: more active/cleared transitions than this in a minute marks an
    /// alarm as chattering. Default [`DEFAULT_CHATTER_PER_MINUTE`].
    pub chatter_per_minute: usize,
}

impl Default for AlarmPolicy {
    fn default() -> Self {
        AlarmPolicy {
            max_shelve: DEFAULT_MAX_SHELVE,
            chatter_per_minute: DEFAULT_CHATTER_PER_MINUTE,
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawAlarms {
    max_shelve: Option<String>,
    chatter_per_minute: Option<i64>,
}

impl Validator {
    pub(super) fn alarms(&mut self, a: RawAlarms) -> AlarmPolicy {
        AlarmPolicy {
            max_shelve: self.duration("alarms.max_shelve", a.max_shelve, DEFAULT_MAX_SHELVE),
            chatter_per_minute: self.int(
                "alarms.chatter_per_minute",
                a.chatter_per_minute,
                DEFAULT_CHATTER_PER_MINUTE,
                "0-10000",
            ),
        }
    }
}
