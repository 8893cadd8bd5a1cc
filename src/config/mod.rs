//! The configuration, as the rest of the daemon sees it: typed, validated, with defaults applied.
//!
//! Loading goes in two steps so that an operator sees every mistake at once rather than one per
//! restart: the file (plus `EMBERWATCH__SECTION__KEY` overrides) is read into loosely typed
//! raw structs, then validation converts them into these types, collecting every error with
//! its key path (`devices[0].points[2].type: ...`).

mod alarms;
mod console;
mod devices;
mod drain;
mod metrics;
mod points;
mod profiles;
mod redundancy;
mod rules;
mod site;
mod storage;
#[cfg(test)]
mod tests;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use alarms::AlarmPolicy;
pub use console::Console;
pub use devices::{Device, Parity, SerialPort, Transport};
pub use drain::{Agent, Drain};
pub use metrics::Metrics;
pub use profiles::Profile;
pub use redundancy::Redundancy;
pub use rules::{Rule, RuleBody};
pub use site::{BrokerUrl, Mqtt, Site};
pub use storage::Storage;

// Owned by the code that uses them (decode plans and decodes a point's reads, rules evaluate
// their definitions); re-exported so `crate::config::X` keeps naming every config type.
pub use crate::decode::{Point, PointKind};
pub use crate::rules::rate::RateOfRise;
pub use crate::rules::threshold::{Direction, Threshold};
pub use crate::rules::vote::Vote;

/// One validation problem, located by its key path in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// `devices[0].points[1].type`, or the file name for syntax errors.
    pub path: String,
    /// What is wrong there, and where it helps, what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration was refused: every problem found, not just the first.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The configuration file that was refused.
    pub file: PathBuf,
    /// Every problem found, in file order within each section.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} error{}",
            self.file.display(),
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// The whole daemon configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[site]`: who this gateway is.
    pub site: Site,
    /// `[mqtt]`: the broker(s) it publishes to.
    pub mqtt: Mqtt,
    /// `[storage]`: where its state and outbox live, and how much disk they may use.
    pub storage: Storage,
    /// `[[devices]]`: what it polls (none for a drain agent).
    pub devices: Vec<Device>,
    /// `[[rules]]`: what turns readings into alarms.
    pub rules: Vec<Rule>,
    /// `[metrics]`: the Prometheus endpoint, if the section is present.
    pub metrics: Option<Metrics>,
    /// `[drain]`: when and from whom to request a traffic drain, if the section is present.
    pub drain: Option<Drain>,
    /// `[agent]`: a drain agent's own settings (required by `emberwatch agent`).
    pub agent: Option<Agent>,
    /// `[alarms]`: site-wide alarm management policy.
    pub alarms: AlarmPolicy,
    /// `[[profiles]]`, from the file and its `include`s, by id: the point lists devices name
    /// with `profile`. Their points are already in each device's `points`.
    pub profiles: Vec<Profile>,
    /// `[console]`: the site console's own settings (required by `emberwatch console`).
    pub console: Option<Console>,
    /// `[redundancy]`: the other gateway of a hot-standby pair, if this gateway is one of two.
    pub redundancy: Option<Redundancy>,
}

/// Which configuration a command needs; a drain agent has no devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    DrainAgent,
    /// `emberwatch console`: `[console]` and `[mqtt]`; no devices, `[site]` optional.
    Console,
}

impl Role {
    /// The role a file is written for, judged by its sections: `[console]` makes a console
    /// file, `[agent]` a drain agent's, anything else a gateway's (`check-config` uses this).
    pub fn of_text(text: &str) -> Role {
        match text.parse::<toml::Table>() {
            Ok(t) if t.contains_key("console") => Role::Console,
            Ok(t) if t.contains_key("agent") && !t.contains_key("devices") => Role::DrainAgent,
            _ => Role::Gateway,
        }
    }
}

impl Config {
    /// Reads and validates `path` with `EMBERWATCH__SECTION__KEY` overrides from the process
    /// environment.
    pub fn load(path: &Path, role: Role) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, role, env)
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: &Path,
        role: Role,
        env: Vec<(String, String)>,
    ) -> Result<Config, ConfigError> {
        let text =
            crate::files::read_text_at_most(path, crate::files::MAX_CONFIG).map_err(|e| {
                ConfigError {
                    file: path.to_path_buf(),
                    problems: vec![Problem {
                        path: path.display().to_string(),
                        message: format!("cannot read: {e}"),
                    }],
                }
            })?;
        let base = path.parent().unwrap_or(Path::new(""));
        validate::parse_at(&text, env, role, base).map_err(|problems| ConfigError {
            file: path.to_path_buf(),
            problems,
        })
    }

    /// Parses configuration text without touching the file system (tests, the demo).
    pub fn from_toml(text: &str, role: Role) -> Result<Config, Vec<Problem>> {
        validate::parse(text, Vec::new(), role)
    }

    /// As [`Config::from_toml`] for each of `roles`, the text read once (for the fuzzer).
    pub(crate) fn from_toml_each(text: &str, roles: &[Role]) -> Vec<Result<Config, Vec<Problem>>> {
        validate::parse_each(text, roles)
    }

    /// Every point, with its device, in configuration order.
    pub fn points(&self) -> impl Iterator<Item = (&Device, &Point)> {
        self.devices
            .iter()
            .flat_map(|d| d.points.iter().map(move |p| (d, p)))
    }

    /// What this valid configuration does that its author may not expect (`check-config`
    /// prints these, the daemon logs them); see `devices::warnings`.
    pub fn warnings(&self) -> Vec<Problem> {
        devices::warnings(&self.devices)
    }

    /// The distinct zones, in the order they first appear.
    pub fn zones(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.devices
            .iter()
            .filter(|d| seen.insert(d.zone.as_str()))
            .map(|d| d.zone.clone())
            .collect()
    }
}

/// Parses `"500ms"`, `"1s"`, `"15m"`, `"1h 30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"5s\", \"15m\"")
    })
}

/// Parses `"64MB"`, `"512KB"`, `"1GB"` or a plain byte count. Units are binary (1KB = 1024
/// bytes), as disk quotas usually are.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => {
            return Err(format!(
                "{s:?} is not a size; write e.g. \"64MB\", \"512KB\""
            ))
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write e.g. \"64MB\", \"512KB\""))?;
    n.checked_mul(1u64 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}
