//! Serial-lines sensors: detectors that print a line of ASCII text now and then, such as
//! `T1=25.3 T2=25.1 SMK=0`, instead of answering Modbus requests.
//!
//! Many gas and smoke detectors (and home-built sensor boxes) only talk this way. Each point
//! names the `field` it comes from: a `KEY=VALUE` key by default, or a named group of the
//! device's `pattern` regex for sensors with a less regular format. A line that cannot be read
//! (binary noise, no fields, too long, not matching the pattern) is counted and logged and changes
//! nothing; a sensor that prints no readable line for `poll_interval + timeout` is reported like a
//! Modbus device that stops answering.
//!
//! Splitting and parsing are pure ([`Splitter`], [`Format`]); [`run`] is the thin task around them.

use std::time::Duration;

use regex::Regex;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::Now;
use crate::config::{Device, Transport};
use crate::decode::{engineering, Decoded, Raw};
use crate::fieldbus::bus::{open_serial, SerialPortKey};
use crate::fieldbus::counters::{Counters, LinkCounters};
use crate::fieldbus::{LinkError, PointError, PointReading, Reading};

/// Longer than any sensor line we know of; anything longer is noise (or a missing newline).
pub const MAX_LINE: usize = 512;

/// Why a line was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("not printable ASCII/UTF-8 text")]
    NotText,
    #[error("no KEY=VALUE fields")]
    NoFields,
    #[error("{0:?} is not KEY=VALUE")]
    BadToken(String),
    #[error("does not match the device's pattern")]
    NoMatch,
}

/// Cuts a byte stream into lines (`\n`, `\r\n` or `\r`), bounding the memory a line may take.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    /// The current line overflowed: drop everything up to the next end of line.
    overflow: bool,
}

impl Splitter {
    /// The lines completed by `bytes`. Empty lines are skipped (CR LF pairs, blank keep-alives).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<String, Malformed>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if self.overflow {
                    out.push(Err(Malformed::TooLong));
                } else if !self.buf.is_empty() {
                    out.push(text(&self.buf));
                }
                self.buf.clear();
                self.overflow = false;
            } else if self.buf.len() >= MAX_LINE {
                self.overflow = true;
            } else if !self.overflow {
                self.buf.push(b);
            }
        }
        out
    }
}

fn text(bytes: &[u8]) -> Result<String, Malformed> {
    let s = std::str::from_utf8(bytes).map_err(|_| Malformed::NotText)?;
    if s.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Malformed::NotText);
    }
    Ok(s.trim().to_string())
}

/// How a device's lines are read.
#[derive(Debug, Clone)]
pub enum Format {
    /// `KEY=VALUE` (or `KEY:VALUE`) tokens separated by spaces, commas or semicolons.
    KeyValue,
    /// A regex whose named groups are the fields.
    Pattern(Regex),
}

impl Format {
    /// The format of a device: its `pattern`, if it has one (validated when the config loaded).
    pub fn of(device: &Device) -> Result<Format, String> {
        match &device.transport {
            Transport::SerialLines {
                pattern: Some(p), ..
            } => Regex::new(p)
                .map(Format::Pattern)
                .map_err(|e| format!("pattern: {e}")),
            _ => Ok(Format::KeyValue),
        }
    }

    /// The fields of one line, as (name, text of the value).
    pub fn fields<'a>(&self, line: &'a str) -> Result<Vec<(String, &'a str)>, Malformed> {
        match self {
            Format::KeyValue => {
                let mut out = Vec::new();
                for token in line
                    .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
                    .filter(|t| !t.is_empty())
                {
                    let Some((k, v)) = token.split_once(['=', ':']) else {
                        return Err(Malformed::BadToken(token.chars().take(40).collect()));
                    };
                    if k.is_empty() {
                        return Err(Malformed::BadToken(token.chars().take(40).collect()));
                    }
                    out.push((k.to_string(), v));
                }
                if out.is_empty() {
                    return Err(Malformed::NoFields);
                }
                Ok(out)
            }
            Format::Pattern(re) => {
                let caps = re.captures(line).ok_or(Malformed::NoMatch)?;
                Ok(re
                    .capture_names()
                    .flatten()
                    .filter_map(|name| caps.name(name).map(|m| (name.to_string(), m.as_str())))
                    .collect())
            }
        }
    }
}

/// The points of a device from one readable line. A point whose field is missing or not a
/// number gets a point error: the sensor is talking, but that reading is not usable.
pub fn points(device: &Device, fields: &[(String, &str)]) -> Vec<PointReading> {
    device
        .points
        .iter()
        .enumerate()
        .map(|(pi, point)| {
            let field = point.field.as_deref().unwrap_or(&point.id);
            let result = match fields.iter().find(|(k, _)| k == field) {
                None => Err(PointError::Field {
                    field: field.to_string(),
                    problem: "missing from the line".into(),
                }),
                Some((_, v)) => match v.trim().parse::<f64>() {
                    Ok(x) if x.is_finite() => {
                        let raw = Raw::Float(x);
                        engineering(point, raw)
                            .map(|value| Decoded { raw, value })
                            .map_err(|e| PointError::Field {
                                field: field.to_string(),
                                problem: format!("{:?} with scale and offset: {e}", v.trim()),
                            })
                    }
                    _ => Err(PointError::Field {
                        field: field.to_string(),
                        problem: format!(
                            "{:?} is not a number",
                            v.chars().take(40).collect::<String>()
                        ),
                    }),
                },
            };
            PointReading { point: pi, result }
        })
        .collect()
}

/// Reads one device's lines until `cancel`, sending a Reading per readable line and a link error
/// per `poll_interval` while the port is missing or the sensor is silent.
pub async fn run(
    index: usize,
    device: Device,
    counters: Counters,
    tx: mpsc::Sender<Reading>,
    cancel: CancellationToken,
) {
    let mut reader = match Reader::new(index, &device, counters) {
        Ok(r) => r,
        Err(e) => {
            // Validation compiled the pattern already; this is a bug, not an operator error.
            tracing::error!(device = %device.id, error = %e, "serial-lines device cannot start");
            return;
        }
    };
    let mut ticker = tokio::time::interval(device.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bytes = [0u8; 256];
    loop {
        let readings = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => reader.tick(),
            r = read_some(&mut reader.port, &mut bytes) => reader.received(r.map(|n| &bytes[..n])),
        };
        for r in readings {
            if tx.send(r).await.is_err() {
                return; // the engine is gone: shutting down
            }
        }
    }
}

/// `emberwatch read` for a serial-lines device: the first readable line within
/// `poll_interval + timeout`, or why there was none.
pub async fn read_once(index: usize, device: &Device, counters: &Counters) -> Reading {
    let started = std::time::Instant::now();
    let mut reader = match Reader::new(index, device, counters.clone()) {
        Ok(r) => r,
        Err(reason) => {
            return reader_error(index, device, started, reason);
        }
    };
    let deadline = Instant::now() + reader.silence_limit;
    if let Some(r) = reader.tick().pop() {
        return r; // the port is missing
    }
    let mut bytes = [0u8; 256];
    loop {
        let r = match tokio::time::timeout_at(deadline, read_some(&mut reader.port, &mut bytes))
            .await
        {
            Ok(r) => r,
            Err(_) => break,
        };
        if let Some(reading) = reader.received(r.map(|n| &bytes[..n])).pop() {
            return reading;
        }
    }
    reader.last_good = Instant::now() - reader.silence_limit - Duration::from_millis(1);
    reader
        .tick()
        .pop()
        .unwrap_or_else(|| reader_error(index, device, started, "no line".into()))
}

fn reader_error(
    index: usize,
    device: &Device,
    started: std::time::Instant,
    reason: String,
) -> Reading {
    Reading {
        device: index,
        at: Now::system(),
        latency: started.elapsed(),
        outcome: Err(LinkError::Port {
            device: device.id.clone(),
            port: port_name(device).to_string(),
            reason,
        }),
    }
}

fn port_name(device: &Device) -> &str {
    match &device.transport {
        Transport::SerialLines { serial, .. } | Transport::ModbusRtu { serial } => &serial.port,
        Transport::ModbusTcp { address } | Transport::ModbusRtuOverTcp { address } => address,
    }
}

async fn read_some(
    port: &mut Option<tokio_serial::SerialStream>,
    bytes: &mut [u8],
) -> std::io::Result<usize> {
    match port.as_mut() {
        Some(p) => p.read(bytes).await,
        None => std::future::pending().await,
    }
}

/// The state of one serial-lines device: its port, its partial line, and when it last spoke.
struct Reader<'a> {
    index: usize,
    device: &'a Device,
    key: Option<SerialPortKey>,
    format: Format,
    counters: Counters,
    port: Option<tokio_serial::SerialStream>,
    splitter: Splitter,
    last_good: Instant,
    silence_limit: Duration,
    /// Malformed lines since the last readable one, for the silence message.
    malformed: u64,
    down: bool,
}

impl<'a> Reader<'a> {
    fn new(index: usize, device: &'a Device, counters: Counters) -> Result<Reader<'a>, String> {
        let key = match &device.transport {
            Transport::SerialLines { serial, .. } => Some(SerialPortKey::new(serial)),
            _ => None,
        };
        Ok(Reader {
            index,
            device,
            key,
            format: Format::of(device)?,
            counters,
            port: None,
            splitter: Splitter::default(),
            last_good: Instant::now(),
            silence_limit: device.poll_interval + device.timeout,
            malformed: 0,
            down: false,
        })
    }

    fn c(&self) -> &LinkCounters {
        self.counters.device(self.index)
    }

    fn reading(&self, outcome: Result<Vec<PointReading>, LinkError>) -> Reading {
        Reading {
            device: self.index,
            at: Now::system(),
            latency: Duration::ZERO,
            outcome,
        }
    }

    /// Once per poll interval: reopen a missing port, report a silent sensor.
    fn tick(&mut self) -> Vec<Reading> {
        if self.port.is_none() {
            let opened = match &self.key {
                Some(key) => open_serial(key),
                None => Err("not a serial-lines device".into()),
            };
            match opened {
                Ok(p) => {
                    if self.down {
                        tracing::info!(device = %self.device.id, port = %port_name(self.device), "serial port open again");
                    }
                    self.port = Some(p);
                    self.down = false;
                    self.splitter = Splitter::default();
                    // Silence is measured from when we could first listen.
                    self.last_good = Instant::now();
                }
                Err(reason) => {
                    LinkCounters::add(&self.c().port_errors, 1);
                    if !self.down {
                        tracing::warn!(device = %self.device.id, port = %port_name(self.device), %reason, "serial port unavailable; retrying every poll_interval");
                    }
                    self.down = true;
                    return vec![self.reading(Err(LinkError::Port {
                        device: self.device.id.clone(),
                        port: port_name(self.device).to_string(),
                        reason,
                    }))];
                }
            }
        }
        let silent = self.last_good.elapsed();
        if silent > self.silence_limit {
            return vec![self.reading(Err(LinkError::Silent {
                device: self.device.id.clone(),
                port: port_name(self.device).to_string(),
                silent: Duration::from_millis(silent.as_millis() as u64),
                malformed: self.malformed,
            }))];
        }
        Vec::new()
    }

    /// Bytes (or a read error) from the port.
    fn received(&mut self, r: std::io::Result<&[u8]>) -> Vec<Reading> {
        let bytes = match r {
            Ok([]) | Err(_) => {
                let reason = match r {
                    Err(e) => format!("lost: {e}"),
                    _ => "lost: end of file".to_string(),
                };
                self.port = None;
                self.down = true;
                LinkCounters::add(&self.c().port_errors, 1);
                tracing::warn!(device = %self.device.id, port = %port_name(self.device), %reason, "serial port lost; reopening every poll_interval");
                return vec![self.reading(Err(LinkError::Port {
                    device: self.device.id.clone(),
                    port: port_name(self.device).to_string(),
                    reason,
                }))];
            }
            Ok(b) => b,
        };
        let mut out = Vec::new();
        for line in self.splitter.push(bytes) {
            let parsed = line.and_then(|l| {
                let fields = self.format.fields(&l)?;
                Ok(points(self.device, &fields))
            });
            match parsed {
                Ok(points) => {
                    LinkCounters::add(&self.c().requests, 1);
                    self.last_good = Instant::now();
                    self.malformed = 0;
                    out.push(self.reading(Ok(points)));
                }
                Err(why) => {
                    LinkCounters::add(&self.c().malformed_lines, 1);
                    self.malformed += 1;
                    let total = self
                        .c()
                        .malformed_lines
                        .load(std::sync::atomic::Ordering::Relaxed);
                    // The first few, then one in a hundred: a babbling sensor must not flood the log.
                    if total <= 10 || total % 100 == 0 {
                        tracing::warn!(device = %self.device.id, port = %port_name(self.device), malformed_total = total, "malformed line ignored: {why}");
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Role};

    fn device(pattern: Option<&str>) -> Device {
        let pattern = pattern
            .map(|p| format!("pattern = '{p}'\n"))
            .unwrap_or_default();
        let text = format!(
            r#"
[site]
id = "s"
gateway = "g"
[[devices]]
id = "asd-1"
zone = "room-1"
transport = "serial-lines"
port = "/dev/null"
{pattern}
  [[devices.points]]
  id = "t1"
  field = "T1"
  scale = 1.0
  [[devices.points]]
  id = "smoke"
  field = "SMK"
"#
        );
        let cfg = Config::from_toml(&text, Role::Gateway).unwrap_or_else(|e| panic!("{e:?}"));
        cfg.devices[0].clone()
    }

    #[test]
    fn lines_split_on_any_end_of_line_and_bound_their_length() {
        let mut s = Splitter::default();
        assert_eq!(s.push(b"T1=1"), vec![]);
        assert_eq!(
            s.push(b" T2=2\r\nSMK=0\n\n"),
            vec![Ok("T1=1 T2=2".to_string()), Ok("SMK=0".to_string())]
        );
        let long = vec![b'x'; MAX_LINE + 10];
        assert_eq!(s.push(&long), vec![]);
        assert_eq!(
            s.push(b"yyy\nT1=3\n"),
            vec![Err(Malformed::TooLong), Ok("T1=3".to_string())]
        );
        assert_eq!(
            s.push(&[0xFF, 0xFE, b'\n', 0x01, b'a', b'\n']),
            vec![Err(Malformed::NotText), Err(Malformed::NotText)]
        );
    }

    #[test]
    fn key_value_lines_map_to_points() {
        let d = device(None);
        let f = Format::of(&d).unwrap();
        // (line, t1, smoke) — None where the point must be an error.
        let cases: &[(&str, Option<f64>, Option<f64>)] = &[
            ("T1=25.3 T2=25.1 SMK=0", Some(25.3), Some(0.0)),
            ("T1:25.3,SMK:2", Some(25.3), Some(2.0)),
            ("SMK=4; T1=-3", Some(-3.0), Some(4.0)),
            ("T1=hot SMK=1", None, Some(1.0)),
            ("T2=25.1 SMK=1", None, Some(1.0)),
            ("T1=NaN SMK=1", None, Some(1.0)),
        ];
        for (line, t1, smk) in cases {
            let fields = f.fields(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let p = points(&d, &fields);
            let v = |i: usize| p[i].result.as_ref().ok().map(|d| d.value);
            assert_eq!((v(0), v(1)), (*t1, *smk), "{line}");
        }
        for bad in ["SENSOR READY", "T1=1 garbage", "=5", ""] {
            assert!(f.fields(bad).is_err(), "{bad:?} should be malformed");
        }
    }

    /// A number on the line that scale and offset take past what a float holds is unusable,
    /// not infinity of quality good.
    #[test]
    fn a_field_scaled_beyond_a_number_is_a_point_error() {
        let mut d = device(None);
        let fields = Format::of(&d).unwrap().fields("T1=1e308 SMK=1").unwrap();
        assert_eq!(
            points(&d, &fields)[0].result.as_ref().map(|d| d.value),
            Ok(1e308)
        );
        let mut own = d.points.to_vec();
        own[0].scale = 10.0;
        d.points = own.into();
        let p = points(&d, &fields);
        let e = p[0].result.as_ref().expect_err("inf").to_string();
        assert_eq!(
            e,
            "field T1: \"1e308\" with scale and offset: value is not a number (NaN or infinite)"
        );
    }

    #[test]
    fn a_pattern_names_its_fields_by_group() {
        let d = device(Some(r"^\$ASD,(?P<T1>-?[0-9.]+),(?P<SMK>[0-9])\*"));
        let f = Format::of(&d).unwrap();
        let fields = f.fields("$ASD,24.5,3*7F").unwrap();
        let p = points(&d, &fields);
        assert_eq!(p[0].result.as_ref().map(|d| d.value), Ok(24.5));
        assert_eq!(p[1].result.as_ref().map(|d| d.value), Ok(3.0));
        assert_eq!(f.fields("T1=1"), Err(Malformed::NoMatch));
    }
}
