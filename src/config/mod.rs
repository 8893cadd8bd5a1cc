//! The configuration, as the rest of the daemon sees it: typed, validated, with defaults applied.
//!
//! Loading goes in two steps so that an operator sees every mistake at once rather than one per
//! restart: the file (plus `EMBERWATCH__SECTION__KEY` overrides) is read into loosely typed
//! raw structs, then validation converts them into these types, collecting every error with
//! its key path (`devices[0].points[2].type: ...`).

#[cfg(test)]
mod tests;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::decode::{Point, PointKind};
use crate::decode::{Table, ValueType, WordOrder};
pub use crate::rules::rate::RateOfRise;
pub use crate::rules::threshold::{Direction, Threshold};
pub use crate::rules::vote::Vote;
use crate::rules::Severity;

/// One validation problem, located by its key path in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// `devices[0].points[1].type`, or the file name for syntax errors.
    pub path: String,
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
    pub file: PathBuf,
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
    pub site: Site,
    pub mqtt: Mqtt,
    pub storage: Storage,
    pub devices: Vec<Device>,
    pub rules: Vec<Rule>,
    pub metrics: Option<Metrics>,
    pub drain: Option<Drain>,
    pub agent: Option<Agent>,
    pub alarms: AlarmPolicy,
}

/// Site-wide alarm management settings (`[alarms]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmPolicy {
    /// The longest an operator may shelve an alarm; a forgotten shelf must expire.
    pub max_shelve: Duration,
    /// More active/cleared transitions than this in a minute marks an alarm as chattering.
    pub chatter_per_minute: usize,
}

impl Default for AlarmPolicy {
    fn default() -> Self {
        AlarmPolicy {
            max_shelve: Duration::from_secs(8 * 3600),
            chatter_per_minute: 5,
        }
    }
}

/// Where this gateway sits; both ids end up in every topic.
#[derive(Debug, Clone)]
pub struct Site {
    pub id: String,
    pub gateway: String,
}

/// Which broker to reach and how.
#[derive(Debug, Clone)]
pub struct Mqtt {
    pub url: BrokerUrl,
    pub topic_prefix: String,
    pub client_id: String,
    pub username: Option<String>,
    /// The password lives in its own file so the config can be world-readable and logged.
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Redundant brokers; every message goes to each.
    pub also: Vec<BrokerUrl>,
    pub keep_alive: Duration,
    /// `heartbeat = "10s"`: how often the retained status is republished with the latest event
    /// `seq`, so a subscriber can see a gap at the tail (events it never got).
    pub heartbeat: Duration,
}

/// A parsed `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// The in-process rumqttd broker on 127.0.0.1:1883, for the demo and single-box sites.
    Embedded,
    Tcp {
        host: String,
        port: u16,
    },
    Tls {
        host: String,
        port: u16,
    },
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port]`, `mqtts://host[:port]` or `embedded`.
    pub fn parse(s: &str) -> Result<BrokerUrl, String> {
        if s == "embedded" {
            return Ok(BrokerUrl::Embedded);
        }
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!(
                "{s:?} is not a broker URL (expected mqtt://host:port, mqtts://host:port or \"embedded\")"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("{s:?}: port {p:?} is not a number 0-65535"))?;
                (h, port)
            }
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        let host = host.to_string();
        Ok(if tls {
            BrokerUrl::Tls { host, port }
        } else {
            BrokerUrl::Tcp { host, port }
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Embedded => f.write_str("embedded"),
            BrokerUrl::Tcp { host, port } => write!(f, "mqtt://{host}:{port}"),
            BrokerUrl::Tls { host, port } => write!(f, "mqtts://{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Storage {
    /// Alarm state, `seq` and the durable outbox live here.
    pub dir: PathBuf,
    /// `outbox_max = "64MB"`: disk the outbox may use. Over it, superseded zone statuses and
    /// other non-alarm messages are dropped first; alarm events never are.
    pub outbox_max: u64,
    /// `journal_max = "16MB"`: events every broker has confirmed are kept this much, for
    /// `cmd/replay` to repair a subscriber's gap.
    pub journal_max: u64,
    /// `journal_max_age = "7d"`: and for at most this long.
    pub journal_max_age: Duration,
}

/// One polled device: a rack BMS, a UPS, a detector.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    /// The fire zone this device watches; drains are per zone.
    pub zone: String,
    pub transport: Transport,
    pub unit: u8,
    pub poll_interval: Duration,
    pub timeout: Duration,
    /// Largest hole (registers, or bits for coils) a coalesced read may span to save a request.
    pub max_gap: u16,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    ModbusTcp {
        address: String,
    },
    ModbusRtu {
        serial: SerialPort,
    },
    ModbusRtuOverTcp {
        address: String,
    },
    /// A sensor printing ASCII lines. Without `pattern`, lines are `KEY=VALUE` tokens; with it,
    /// the regex's named groups are the fields (for formats like `$ASD,24.5,3*7F`).
    SerialLines {
        serial: SerialPort,
        pattern: Option<String>,
    },
}

impl Transport {
    pub fn name(&self) -> &'static str {
        match self {
            Transport::ModbusTcp { .. } => "modbus-tcp",
            Transport::ModbusRtu { .. } => "modbus-rtu",
            Transport::ModbusRtuOverTcp { .. } => "modbus-rtu-over-tcp",
            Transport::SerialLines { .. } => "serial-lines",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    pub port: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// A rule, with its `points` already resolved against the devices.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    /// (device index, point index) pairs this rule watches.
    pub targets: Vec<(usize, usize)>,
    pub body: RuleBody,
    /// The alarm stays active until acknowledged, even after its condition clears.
    pub latch: bool,
}

#[derive(Debug, Clone)]
pub enum RuleBody {
    Threshold(Threshold),
    RateOfRise(RateOfRise),
    Vote(Vote),
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub listen: String,
}

#[derive(Debug, Clone)]
pub struct Drain {
    pub trigger: Severity,
    pub deadline: Duration,
    pub agents: Vec<String>,
    /// A zone back to normal cancels its drain only once every alarm of the zone has been
    /// acknowledged (`cancel_after = "acknowledged"`), or as soon as it is normal (`"normal"`).
    pub cancel_after_ack: bool,
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    pub zones: Vec<String>,
    pub drain: Vec<String>,
    pub restore: Vec<String>,
    pub timeout: Duration,
}

/// Which configuration a command needs; a drain agent has no devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    DrainAgent,
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
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                path: path.display().to_string(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        validate::parse(&text, env, role).map_err(|problems| ConfigError {
            file: path.to_path_buf(),
            problems,
        })
    }

    /// Parses configuration text without touching the file system (tests, the demo).
    pub fn from_toml(text: &str, role: Role) -> Result<Config, Vec<Problem>> {
        validate::parse(text, Vec::new(), role)
    }

    /// Every point, with its device, in configuration order.
    pub fn points(&self) -> impl Iterator<Item = (&Device, &Point)> {
        self.devices
            .iter()
            .flat_map(|d| d.points.iter().map(move |p| (d, p)))
    }

    /// The distinct zones, in the order they first appear.
    pub fn zones(&self) -> Vec<String> {
        let mut zones: Vec<String> = Vec::new();
        for d in &self.devices {
            if !zones.contains(&d.zone) {
                zones.push(d.zone.clone());
            }
        }
        zones
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
