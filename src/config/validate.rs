//! The file as written, loosely typed, and its validation into [`super::Config`].
//!
//! Enum-like fields are plain strings here and numbers are wide, so that a wrong value becomes a
//! located [`Problem`] collected with all the others rather than a serde error that stops at the
//! first one.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{alarms, console, devices, drain, metrics, profiles, redundancy, rules, site, storage};
use super::{parse_duration, parse_size, Config, Problem, Role};
use crate::rules::Severity;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct RawConfig {
    site: site::RawSite,
    mqtt: site::RawMqtt,
    storage: storage::RawStorage,
    devices: Vec<devices::RawDevice>,
    rules: Vec<rules::RawRule>,
    metrics: Option<metrics::RawMetrics>,
    drain: Option<drain::RawDrain>,
    agent: Option<drain::RawAgent>,
    alarms: alarms::RawAlarms,
    include: Vec<String>,
    profiles: Vec<profiles::RawProfile>,
    console: Option<console::RawConsole>,
    redundancy: Option<redundancy::RawRedundancy>,
}

/// Reads TOML text plus `EMBERWATCH__SECTION__KEY` overrides and validates the result;
/// `include` patterns are relative to the current directory.
pub(super) fn parse(
    text: &str,
    env: Vec<(String, String)>,
    role: Role,
) -> Result<Config, Vec<Problem>> {
    parse_at(text, env, role, Path::new(""))
}

/// As [`parse`], with `include` patterns relative to `base` (the configuration file's
/// directory).
pub(super) fn parse_at(
    text: &str,
    env: Vec<(String, String)>,
    role: Role,
    base: &Path,
) -> Result<Config, Vec<Problem>> {
    let (raw, unknown) = read(text, env)?;
    validate(raw, unknown, role, base)
}

/// As [`parse`] once for each of `roles`, reading the text once: a gateway and a drain agent
/// may load the same file, and the fuzzer's `config` target checks both without paying for
/// the TOML twice (the reading is most of the cost).
pub(super) fn parse_each(text: &str, roles: &[Role]) -> Vec<Result<Config, Vec<Problem>>> {
    match read(text, Vec::new()) {
        Ok((raw, unknown)) => roles
            .iter()
            .map(|&role| validate(raw.clone(), unknown.clone(), role, Path::new("")))
            .collect(),
        Err(problems) => roles.iter().map(|_| Err(problems.clone())).collect(),
    }
}

/// The text and the overrides as the file's raw sections, plus the keys nobody reads.
fn read(text: &str, env: Vec<(String, String)>) -> Result<(RawConfig, Vec<String>), Vec<Problem>> {
    // TOML syntax first, on its own, so the operator gets the line and column.
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(vec![Problem {
            path: "TOML syntax".into(),
            message: e.to_string().trim().replace('\n', "\n    "),
        }]);
    }
    let env_map: std::collections::HashMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("EMBERWATCH__"))
        .collect();
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("EMBERWATCH")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env_map)),
        )
        .build()
        .map_err(|e| {
            vec![Problem {
                path: "config".into(),
                message: e.to_string(),
            }]
        })?;
    let mut unknown = Vec::new();
    let raw: RawConfig = serde_ignored::deserialize(built, |path| unknown.push(path.to_string()))
        .map_err(|e: config::ConfigError| {
        vec![Problem {
            path: error_path(&e),
            message: error_message(&e),
        }]
    })?;
    Ok((raw, unknown))
}

/// The raw sections validated for `role`: every problem found, or the configuration.
fn validate(
    raw: RawConfig,
    unknown: Vec<String>,
    role: Role,
    base: &Path,
) -> Result<Config, Vec<Problem>> {
    let mut v = Validator::default();
    for u in unknown {
        v.problem(
            display_path(&u),
            "unknown key (misspelt? see the example config)",
        );
    }
    let cfg = v.config(raw, role, base);
    if v.problems.is_empty() {
        Ok(cfg)
    } else {
        Err(v.problems)
    }
}

/// serde_ignored writes `devices.0.points.1.x`; operators read `devices[0].points[1].x`.
pub(super) fn display_path(p: &str) -> String {
    let mut out = String::new();
    // serde_ignored writes an optional section's `Some` as a `?` segment.
    for seg in p.split('.').filter(|s| *s != "?") {
        if seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// config writes `devices[0]unit`; the path the rest of our messages use is `devices[0].unit`.
fn error_path(e: &config::ConfigError) -> String {
    let key = match e {
        config::ConfigError::Type { key: Some(k), .. } => k,
        config::ConfigError::At { key: Some(k), .. } => k,
        _ => return "config".into(),
    };
    let mut out = String::new();
    let mut prev = ' ';
    for c in key.chars() {
        if prev == ']' && c != '[' && c != '.' {
            out.push('.');
        }
        out.push(c);
        prev = c;
    }
    out
}

/// The message without config's own `for key ...` tail: the path is printed in front already.
fn error_message(e: &config::ConfigError) -> String {
    let mut m = e.to_string();
    if let Some(i) = m.find(" for key `") {
        m.truncate(i);
    }
    m
}

#[derive(Default)]
pub(super) struct Validator {
    pub(super) problems: Vec<Problem>,
}

fn is_id(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
}

impl Validator {
    pub(super) fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn required<T>(&mut self, path: &str, v: Option<T>) -> Option<T> {
        if v.is_none() {
            self.problem(path, "missing (required)");
        }
        v
    }

    /// A required id: lowercase ASCII letters, digits and the `extra` characters.
    pub(super) fn id(&mut self, path: &str, v: Option<String>, extra: &[char]) -> String {
        match self.required(path, v) {
            Some(s) if is_id(&s, extra) => s,
            Some(s) => {
                let extra: String = extra.iter().collect();
                self.problem(path, format!("{s:?} must match [a-z0-9{extra}]+"));
                s
            }
            None => String::new(),
        }
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        v: Option<String>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(&s) {
                Ok(d) => d,
                Err(e) => {
                    self.problem(path, e);
                    default
                }
            },
        }
    }

    pub(super) fn size(&mut self, path: &str, v: Option<String>, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => parse_size(&s).unwrap_or_else(|e| {
                self.problem(path, e);
                default
            }),
        }
    }

    pub(super) fn severity(
        &mut self,
        path: &str,
        v: Option<String>,
        default: Severity,
    ) -> Severity {
        match v {
            None => default,
            Some(s) => Severity::parse(&s).unwrap_or_else(|| {
                self.problem(
                    path,
                    format!("unknown severity {s:?} (expected warning, critical or emergency)"),
                );
                default
            }),
        }
    }

    pub(super) fn int<T: TryFrom<i64> + Copy>(
        &mut self,
        path: &str,
        v: Option<i64>,
        default: T,
        range: &str,
    ) -> T {
        match v {
            None => default,
            Some(n) => T::try_from(n).unwrap_or_else(|_| {
                self.problem(path, format!("{n} is out of range ({range})"));
                default
            }),
        }
    }

    fn config(&mut self, raw: RawConfig, role: Role, base: &Path) -> Config {
        let site = self.site(raw.site, role);
        let mqtt = self.mqtt(raw.mqtt, &site);
        let storage = self.storage(raw.storage);
        let mut sourced: Vec<profiles::Sourced> =
            raw.profiles.into_iter().map(|p| (p, None)).collect();
        sourced.extend(profiles::read_includes(
            &raw.include,
            base,
            &mut self.problems,
        ));
        let profiles = self.profiles(sourced);
        let devices = self.devices(raw.devices, role, &profiles);
        let rules = self.rules(raw.rules, &devices);
        let metrics = raw.metrics.map(|m| self.metrics(m));
        let drain = raw.drain.map(|d| self.drain(d));
        let agent = raw.agent.map(|a| self.agent(a));
        if role == Role::DrainAgent && agent.is_none() {
            self.problem(
                "agent",
                "missing [agent] section (id, zones, drain, restore)",
            );
        }
        let alarms = self.alarms(raw.alarms);
        let console = raw.console.map(|c| self.console(c));
        if role == Role::Console && console.is_none() {
            self.problem(
                "console",
                "missing [console] section (listen, database, users_file, sites)",
            );
        }
        let redundancy = raw.redundancy.map(|r| self.redundancy(r, &site));
        Config {
            site,
            mqtt,
            storage,
            devices,
            rules,
            metrics,
            drain,
            agent,
            alarms,
            profiles: profiles.into_values().collect(),
            console,
            redundancy,
        }
    }
}
