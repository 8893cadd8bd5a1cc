//! The file as written, loosely typed, and its validation into [`super::Config`].
//!
//! Enum-like fields are plain strings here and numbers are wide, so that a wrong value becomes a
//! located [`Problem`] collected with all the others rather than a serde error that stops at the
//! first one.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    site: site::RawSite,
    mqtt: site::RawMqtt,
    storage: storage::RawStorage,
    devices: Vec<RawDevice>,
    rules: Vec<RawRule>,
    metrics: Option<metrics::RawMetrics>,
    drain: Option<drain::RawDrain>,
    agent: Option<drain::RawAgent>,
    alarms: alarms::RawAlarms,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDevice {
    id: Option<String>,
    zone: Option<String>,
    transport: Option<String>,
    address: Option<String>,
    port: Option<String>,
    baud: Option<i64>,
    parity: Option<String>,
    data_bits: Option<i64>,
    stop_bits: Option<i64>,
    unit: Option<i64>,
    poll_interval: Option<String>,
    timeout: Option<String>,
    max_gap: Option<i64>,
    pattern: Option<String>,
    points: Vec<RawPoint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawPoint {
    id: Option<String>,
    kind: Option<String>,
    table: Option<String>,
    address: Option<i64>,
    #[serde(rename = "type")]
    value_type: Option<String>,
    word_order: Option<String>,
    scale: Option<f64>,
    offset: Option<f64>,
    unit: Option<String>,
    valid: Option<Vec<f64>>,
    stuck_after: Option<String>,
    trouble: Vec<f64>,
    field: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRule {
    id: Option<String>,
    points: Vec<String>,
    above: Option<BTreeMap<String, f64>>,
    below: Option<BTreeMap<String, f64>>,
    deadband: Option<f64>,
    on_delay: Option<String>,
    off_delay: Option<String>,
    rate_of_rise: Option<RawRateOfRise>,
    vote: Option<RawVote>,
    latch: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRateOfRise {
    per_minute: Option<f64>,
    window: Option<String>,
    severity: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawVote {
    alarms: Vec<String>,
    need: Option<i64>,
    at_least: Option<String>,
    severity: Option<String>,
}

/// Reads TOML text plus `EMBERWATCH__SECTION__KEY` overrides and validates the result.
pub(super) fn parse(
    text: &str,
    env: Vec<(String, String)>,
    role: Role,
) -> Result<Config, Vec<Problem>> {
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
    let mut v = Validator::default();
    for u in unknown {
        v.problem(
            display_path(&u),
            "unknown key (misspelt? see the example config)",
        );
    }
    let cfg = v.config(raw, role);
    if v.problems.is_empty() {
        Ok(cfg)
    } else {
        Err(v.problems)
    }
}

/// serde_ignored writes `devices.0.points.1.x`; operators read `devices[0].points[1].x`.
fn display_path(p: &str) -> String {
    let mut out = String::new();
    for seg in p.split('.') {
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

    fn config(&mut self, raw: RawConfig, role: Role) -> Config {
        let site = self.site(raw.site, role);
        let mqtt = self.mqtt(raw.mqtt, &site);
        let storage = self.storage(raw.storage);
        let mut devices = Vec::new();
        let mut seen = HashSet::new();
        for (i, d) in raw.devices.into_iter().enumerate() {
            let dev = self.device(i, d);
            if !dev.id.is_empty() && !seen.insert(dev.id.clone()) {
                self.problem(
                    format!("devices[{i}].id"),
                    format!("duplicate device id {:?}", dev.id),
                );
            }
            devices.push(dev);
        }
        self.shared_ports(&devices);
        if role == Role::Gateway && devices.is_empty() {
            self.problem("devices", "no [[devices]]: there is nothing to watch");
        }
        let mut rules = Vec::new();
        let mut seen = HashSet::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            if let Some(rule) = self.rule(i, r, &devices) {
                if !seen.insert(rule.id.clone()) {
                    self.problem(
                        format!("rules[{i}].id"),
                        format!("duplicate rule id {:?}", rule.id),
                    );
                }
                rules.push(rule);
            }
        }
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
        }
    }

    fn serial(&mut self, at: &str, d: &RawDevice) -> SerialPort {
        let port = self
            .required(&format!("{at}.port"), d.port.clone())
            .unwrap_or_default();
        let parity = match d.parity.as_deref() {
            None | Some("even") => Parity::Even,
            Some("none") => Parity::None,
            Some("odd") => Parity::Odd,
            Some(p) => {
                self.problem(
                    format!("{at}.parity"),
                    format!("unknown parity {p:?} (expected none, even or odd)"),
                );
                Parity::Even
            }
        };
        let baud: u32 = self.int(&format!("{at}.baud"), d.baud, 19200, "1-4000000");
        if baud == 0 {
            self.problem(format!("{at}.baud"), "must be positive");
        }
        let data_bits: u8 = self.int(&format!("{at}.data_bits"), d.data_bits, 8, "5-8");
        if !(5..=8).contains(&data_bits) {
            self.problem(
                format!("{at}.data_bits"),
                format!("{data_bits} is not 5, 6, 7 or 8"),
            );
        }
        let stop_bits: u8 = self.int(&format!("{at}.stop_bits"), d.stop_bits, 1, "1-2");
        if !(1..=2).contains(&stop_bits) {
            self.problem(
                format!("{at}.stop_bits"),
                format!("{stop_bits} is not 1 or 2"),
            );
        }
        SerialPort {
            port,
            baud,
            parity,
            data_bits,
            stop_bits,
        }
    }

    fn device(&mut self, i: usize, d: RawDevice) -> Device {
        let at = format!("devices[{i}]");
        let id = self.id(&format!("{at}.id"), d.id.clone(), &['-', '_']);
        let zone = self.id(&format!("{at}.zone"), d.zone.clone(), &['-']);
        let transport = match d.transport.as_deref() {
            None | Some("modbus-tcp") => Transport::ModbusTcp {
                address: self.address(&at, &d),
            },
            Some("modbus-rtu-over-tcp") => Transport::ModbusRtuOverTcp {
                address: self.address(&at, &d),
            },
            Some("modbus-rtu") => Transport::ModbusRtu {
                serial: self.serial(&at, &d),
            },
            Some("serial-lines") => Transport::SerialLines {
                serial: self.serial(&at, &d),
                pattern: d.pattern.clone(),
            },
            Some(t) => {
                self.problem(
                    format!("{at}.transport"),
                    format!(
                        "unknown transport {t:?} (expected modbus-tcp, modbus-rtu, modbus-rtu-over-tcp or serial-lines)"
                    ),
                );
                Transport::ModbusTcp {
                    address: String::new(),
                }
            }
        };
        let unit: u8 = self.int(&format!("{at}.unit"), d.unit, 1, "0-255");
        let poll_interval = self.duration(
            &format!("{at}.poll_interval"),
            d.poll_interval,
            Duration::from_secs(1),
        );
        let timeout = self.duration(
            &format!("{at}.timeout"),
            d.timeout,
            Duration::from_millis(500),
        );
        if poll_interval.is_zero() {
            self.problem(format!("{at}.poll_interval"), "must be more than 0");
        }
        if timeout.is_zero() {
            self.problem(format!("{at}.timeout"), "must be more than 0");
        }
        let max_gap: u16 = self.int(&format!("{at}.max_gap"), d.max_gap, 16, "0-124");
        let lines = matches!(transport, Transport::SerialLines { .. });
        let groups = self.pattern(&at, d.pattern.as_deref(), lines);
        let mut points = Vec::new();
        let mut seen = HashSet::new();
        for (j, p) in d.points.into_iter().enumerate() {
            let pat = format!("{at}.points[{j}]");
            let point = self.point(&pat, p, lines);
            if let (Some(groups), true) = (&groups, lines) {
                let field = point.field.as_deref().unwrap_or(&point.id);
                if !groups.iter().any(|g| g == field) {
                    self.problem(
                        format!("{pat}.field"),
                        format!("{field:?} is not a named group of {at}.pattern"),
                    );
                }
            }
            if !point.id.is_empty() && !seen.insert(point.id.clone()) {
                self.problem(
                    format!("{at}.points[{j}].id"),
                    format!("duplicate point id {:?} in device {id:?}", point.id),
                );
            }
            points.push(point);
        }
        if points.is_empty() {
            self.problem(
                format!("{at}.points"),
                format!("device {id:?} has no points"),
            );
        }
        Device {
            id,
            zone,
            transport,
            unit,
            poll_interval,
            timeout,
            max_gap,
            points,
        }
    }

    fn address(&mut self, at: &str, d: &RawDevice) -> String {
        let path = format!("{at}.address");
        let a = self.required(&path, d.address.clone()).unwrap_or_default();
        if !a.is_empty()
            && a.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
        {
            self.problem(path, format!("{a:?} is not host:port"));
        }
        a
    }

    /// Devices on one serial port share it: Modbus RTU devices must agree on its settings, and a
    /// serial-lines sensor needs the port to itself.
    fn shared_ports(&mut self, devices: &[Device]) {
        let mut first: BTreeMap<&str, (usize, &Transport)> = BTreeMap::new();
        for (i, d) in devices.iter().enumerate() {
            let serial = match &d.transport {
                Transport::ModbusRtu { serial } | Transport::SerialLines { serial, .. } => serial,
                _ => continue,
            };
            let Some(&(j, other)) = first.get(serial.port.as_str()) else {
                first.insert(&serial.port, (i, &d.transport));
                continue;
            };
            match other {
                Transport::ModbusRtu { serial: s } if matches!(d.transport, Transport::ModbusRtu { .. }) => {
                    if s != serial {
                        self.problem(
                            format!("devices[{i}].port"),
                            format!(
                                "{:?} is shared with devices[{j}] but with other settings (baud, parity, data or stop bits): one bus has one set",
                                serial.port
                            ),
                        );
                    }
                }
                _ => self.problem(
                    format!("devices[{i}].port"),
                    format!(
                        "{:?} is also used by devices[{j}]: a serial-lines sensor needs its port to itself",
                        serial.port
                    ),
                ),
            }
        }
    }

    /// serial-lines `pattern`: it must compile; returns its named groups.
    fn pattern(&mut self, at: &str, p: Option<&str>, lines: bool) -> Option<Vec<String>> {
        let p = p?;
        if !lines {
            self.problem(
                format!("{at}.pattern"),
                "only serial-lines devices have a pattern",
            );
            return None;
        }
        match regex::Regex::new(p) {
            Ok(re) => Some(re.capture_names().flatten().map(String::from).collect()),
            Err(e) => {
                self.problem(format!("{at}.pattern"), format!("not a valid regex: {e}"));
                None
            }
        }
    }

    fn point(&mut self, at: &str, p: RawPoint, lines: bool) -> Point {
        let id = self.id(&format!("{at}.id"), p.id, &['_']);
        let kind = match p.kind.as_deref() {
            None => PointKind::Generic,
            Some(k) => PointKind::ALL
                .into_iter()
                .find(|v| v.as_str() == k)
                .unwrap_or_else(|| {
                    self.problem(
                        format!("{at}.kind"),
                        format!("unknown kind {k:?} (expected temperature, smoke, offgas, hydrogen, voltage, current, soc, state or generic)"),
                    );
                    PointKind::Generic
                }),
        };
        let table = match p.table.as_deref() {
            None => Table::Holding,
            Some(t) => Table::parse(t).unwrap_or_else(|| {
                self.problem(
                    format!("{at}.table"),
                    format!("unknown table {t:?} (expected holding, input, coil or discrete)"),
                );
                Table::Holding
            }),
        };
        // A serial-lines point has a field instead of a register.
        let address: u16 = match p.address {
            None if lines => 0,
            a => match self.required(&format!("{at}.address"), a) {
                Some(a) => self.int(&format!("{at}.address"), Some(a), 0, "0-65535"),
                None => 0,
            },
        };
        if p.field.is_some() && !lines {
            self.problem(
                format!("{at}.field"),
                "only points of serial-lines devices have a field (Modbus points have an address)",
            );
        }
        let value_type = match p.value_type.as_deref() {
            None if table.is_bits() => ValueType::Bool,
            None => ValueType::U16,
            Some(t) => ValueType::parse(t).unwrap_or_else(|| {
                self.problem(
                    format!("{at}.type"),
                    format!("unknown type {t:?} (expected u16, i16, u32, i32, f32, u64, i64, f64 or bool)"),
                );
                ValueType::U16
            }),
        };
        if table.is_bits() && value_type != ValueType::Bool {
            self.problem(
                format!("{at}.type"),
                format!("{} table holds bits: type must be bool", table.as_str()),
            );
        }
        if u32::from(address) + u32::from(value_type.width()) > 65536 {
            self.problem(
                format!("{at}.address"),
                format!(
                    "{address} + {} registers runs past 65535",
                    value_type.width()
                ),
            );
        }
        let word_order = match p.word_order.as_deref() {
            None | Some("big") => WordOrder::Big,
            Some("little") => WordOrder::Little,
            Some(w) => {
                self.problem(
                    format!("{at}.word_order"),
                    format!("unknown word order {w:?} (expected big or little)"),
                );
                WordOrder::Big
            }
        };
        let scale = p.scale.unwrap_or(1.0);
        if !scale.is_finite() || scale == 0.0 {
            self.problem(format!("{at}.scale"), "must be a non-zero number");
        }
        let offset = p.offset.unwrap_or(0.0);
        let valid = match p.valid {
            None => None,
            Some(v) if v.len() == 2 && v[0] < v[1] => Some((v[0], v[1])),
            Some(v) => {
                self.problem(
                    format!("{at}.valid"),
                    format!("{v:?} must be [low, high] with low < high"),
                );
                None
            }
        };
        let stuck_after = p
            .stuck_after
            .map(|s| self.duration(&format!("{at}.stuck_after"), Some(s), Duration::ZERO));
        Point {
            id,
            kind,
            table,
            address,
            value_type,
            word_order,
            scale,
            offset,
            unit: p.unit.unwrap_or_default(),
            valid,
            stuck_after,
            trouble: p.trouble,
            field: p.field,
        }
    }

    fn rule(&mut self, i: usize, r: RawRule, devices: &[Device]) -> Option<Rule> {
        let at = format!("rules[{i}]");
        let id = self.id(&format!("{at}.id"), r.id, &['-']);
        let kinds = [
            r.above.is_some() || r.below.is_some(),
            r.rate_of_rise.is_some(),
            r.vote.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.problem(
                at,
                "a rule has exactly one of above/below, rate_of_rise or vote",
            );
            return None;
        }
        if r.above.is_some() && r.below.is_some() {
            self.problem(&at, "a rule has above or below, not both (write two rules)");
            return None;
        }
        let body = if let Some(v) = r.vote {
            if !r.points.is_empty() {
                self.problem(
                    format!("{at}.points"),
                    "a vote rule takes vote.alarms, not points",
                );
            }
            if v.alarms.is_empty() {
                self.problem(format!("{at}.vote.alarms"), "missing: which alarms vote");
            }
            for (j, pat) in v.alarms.iter().enumerate() {
                if pat.split('/').count() != 3 {
                    self.problem(
                        format!("{at}.vote.alarms[{j}]"),
                        format!("{pat:?} must be device/point/rule (each may be *)"),
                    );
                }
            }
            let need: usize = self.int(&format!("{at}.vote.need"), v.need, 2, "1-1000");
            if need == 0 {
                self.problem(format!("{at}.vote.need"), "must be at least 1");
            }
            RuleBody::Vote(Vote {
                alarms: v.alarms,
                need,
                at_least: self.severity(
                    &format!("{at}.vote.at_least"),
                    v.at_least,
                    Severity::Warning,
                ),
                severity: self.severity(
                    &format!("{at}.vote.severity"),
                    v.severity,
                    Severity::Emergency,
                ),
            })
        } else if let Some(rr) = r.rate_of_rise {
            let per_minute = self
                .required(&format!("{at}.rate_of_rise.per_minute"), rr.per_minute)
                .unwrap_or(1.0);
            if per_minute <= 0.0 || !per_minute.is_finite() {
                self.problem(
                    format!("{at}.rate_of_rise.per_minute"),
                    "must be a positive number",
                );
            }
            let window = self.duration(
                &format!("{at}.rate_of_rise.window"),
                rr.window,
                Duration::from_secs(60),
            );
            if window < Duration::from_secs(1) {
                self.problem(format!("{at}.rate_of_rise.window"), "must be at least 1s");
            }
            RuleBody::RateOfRise(RateOfRise {
                per_minute,
                window,
                severity: self.severity(
                    &format!("{at}.rate_of_rise.severity"),
                    rr.severity,
                    Severity::Critical,
                ),
            })
        } else {
            let (direction, map, key) = match (r.above, r.below) {
                (Some(m), _) => (Direction::Above, m, "above"),
                (_, Some(m)) => (Direction::Below, m, "below"),
                _ => return None,
            };
            let mut levels = Vec::new();
            for (name, value) in map {
                match Severity::parse(&name) {
                    Some(s) => levels.push((s, value)),
                    None => self.problem(
                        format!("{at}.{key}.{name}"),
                        "unknown severity (expected warning, critical or emergency)",
                    ),
                }
            }
            levels.sort_by_key(|(s, _)| *s);
            if levels.is_empty() {
                self.problem(
                    format!("{at}.{key}"),
                    "no levels: give warning, critical and/or emergency",
                );
            }
            for w in levels.windows(2) {
                let ((lo_s, lo), (hi_s, hi)) = (w[0], w[1]);
                let ordered = match direction {
                    Direction::Above => lo < hi,
                    Direction::Below => lo > hi,
                };
                if !ordered {
                    let rel = if direction == Direction::Above {
                        "below"
                    } else {
                        "above"
                    };
                    self.problem(
                        format!("{at}.{key}.{lo_s}"),
                        format!("{lo_s} {lo} must be {rel} {hi_s} {hi}"),
                    );
                }
            }
            let deadband = r.deadband.unwrap_or(0.0);
            if deadband < 0.0 || !deadband.is_finite() {
                self.problem(format!("{at}.deadband"), "must be zero or positive");
            }
            RuleBody::Threshold(Threshold {
                direction,
                levels,
                deadband,
                on_delay: self.duration(&format!("{at}.on_delay"), r.on_delay, Duration::ZERO),
                off_delay: self.duration(&format!("{at}.off_delay"), r.off_delay, Duration::ZERO),
            })
        };
        let mut targets = Vec::new();
        if !matches!(body, RuleBody::Vote(_)) {
            if r.points.is_empty() {
                self.problem(
                    format!("{at}.points"),
                    "missing: which points the rule watches",
                );
            }
            for (j, pat) in r.points.iter().enumerate() {
                let path = format!("{at}.points[{j}]");
                let Some((dev, pt)) = pat.split_once('/') else {
                    self.problem(
                        path,
                        format!("{pat:?} must be device/point (device may be *)"),
                    );
                    continue;
                };
                let before = targets.len();
                for (di, d) in devices.iter().enumerate() {
                    if dev != "*" && dev != d.id {
                        continue;
                    }
                    for (pi, p) in d.points.iter().enumerate() {
                        if p.id == pt && !targets.contains(&(di, pi)) {
                            targets.push((di, pi));
                        }
                    }
                }
                if targets.len() == before {
                    self.problem(path, format!("no point {pat:?}"));
                }
            }
        }
        Some(Rule {
            id,
            targets,
            body,
            latch: r.latch.unwrap_or(false),
        })
    }
}
