//! `[[devices]]`: the polled devices and how each is reached (Modbus TCP, Modbus RTU on a serial
//! port or behind a serial device server, or ASCII lines on a serial port). The types, their
//! defaults and their validators side by side; a device's points are validated in `points.rs`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::points::RawPoint;
use super::profiles::{merge, Profile};
use super::validate::Validator;
use super::Role;
use crate::decode::Point;

/// Default `transport`.
pub const DEFAULT_TRANSPORT: &str = "modbus-tcp";
/// Default `unit`: the Modbus unit (slave) id most single-unit devices answer to.
pub const DEFAULT_UNIT: u8 = 1;
/// Default `poll_interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// The shortest `poll_interval` accepted. No Modbus device answers faster (a TCP round trip
/// and the device's own scan cycle take milliseconds; one RTU frame at 19200 baud takes several),
/// so anything shorter only floods the link and the engine: `"1ns"` polled thousands of times a
/// second.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The longest `poll_interval` accepted. A device is declared lost only after
/// [`crate::engine::COMM_LOSS_AFTER`] missed polls, so the interval bounds how long a dead
/// detector goes unnoticed; off-gas gives minutes of warning before a cell burns, and beyond an
/// hour the gateway is no longer watching (`"999999999999h"` polled once, then never again).
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);
/// The shortest `timeout` accepted: no reply arrives sooner (see [`MIN_POLL_INTERVAL`]), so a
/// shorter one only turns every poll into a comm-loss.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// The longest `timeout` accepted. A device that has not answered in a minute is not answering,
/// and comm-loss waits for [`crate::engine::COMM_LOSS_AFTER`] timeouts in a row, so a longer one
/// hides a dead detector for minutes. A timeout above `poll_interval` is allowed (a fast poll
/// that tolerates a slow answer) but warned about: see [`warnings`].
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `max_gap`, in registers (or bits).
pub const DEFAULT_MAX_GAP: u16 = 16;
/// Default `baud`: the Modbus RTU norm.
pub const DEFAULT_BAUD: u32 = 19200;
/// Default `parity`: even, as the Modbus serial line specification requires by default.
pub const DEFAULT_PARITY: Parity = Parity::Even;
/// Default `data_bits`.
pub const DEFAULT_DATA_BITS: u8 = 8;
/// Default `stop_bits`.
pub const DEFAULT_STOP_BITS: u8 = 1;

/// One polled device (`[[devices]]`): a rack BMS, a UPS, a detector.
#[derive(Debug, Clone)]
pub struct Device {
    /// `id`: the device's name, `[a-z0-9-_]+`, unique in the file; the first segment of its
    /// alarm keys (`device/point/rule`) and of its topics.
    pub id: String,
    /// `zone`: the fire zone this device watches, `[a-z0-9-]+`; zone status and drains are per
    /// zone.
    pub zone: String,
    /// `transport` and its settings (`address`, or `port`, `baud`, ...): how the device is
    /// reached; default [`DEFAULT_TRANSPORT`].
    pub transport: Transport,
    /// `unit`: the Modbus unit (slave) id; default [`DEFAULT_UNIT`].
    pub unit: u8,
    /// `poll_interval`: how often the device is read; default [`DEFAULT_POLL_INTERVAL`].
    pub poll_interval: Duration,
    /// `timeout`: how long one request may take before the device counts as not answering;
    /// default [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
    /// `max_gap`: largest hole (registers, or bits for coils) a coalesced read may span to save
    /// a request; default [`DEFAULT_MAX_GAP`]. Lower it for devices that refuse reads of
    /// unmapped registers.
    pub max_gap: u16,
    /// `[[devices.points]]`: the values read from the device, its profile's first (with the
    /// device's own replacing those of the same id), then the device's own. Shared (`Arc`):
    /// the devices of one profile that add nothing to it hold one list between them, and the
    /// pollers and the engine hold it without copying (a site of 1,000 racks of 20 points).
    pub points: Arc<[Point]>,
    /// `profile`: the `[[profiles]]` entry whose points this device has; none by default.
    pub profile: Option<String>,
    /// `connections`: how many TCP connections the devices behind one `modbus-tcp` address may
    /// use together (a Modbus gateway answers one request at a time per connection and accepts
    /// only a few); default [`DEFAULT_CONNECTIONS`]. Every device of one address says the same.
    pub connections: u16,
}

/// Default `connections`: one, so a gateway's devices take turns and never overload it.
pub const DEFAULT_CONNECTIONS: u16 = 1;

/// How a device is reached (`transport`).
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// `modbus-tcp`: Modbus TCP.
    ModbusTcp {
        /// `address`: the device's `host:port`.
        address: String,
    },
    /// `modbus-rtu`: Modbus RTU on a local serial port, which several devices may share.
    ModbusRtu {
        /// `port`, `baud`, `parity`, `data_bits`, `stop_bits`: the serial line.
        serial: SerialPort,
    },
    /// `modbus-rtu-over-tcp`: Modbus RTU frames through a serial device server.
    ModbusRtuOverTcp {
        /// `address`: the serial device server's `host:port`.
        address: String,
    },
    /// `serial-lines`: a sensor printing ASCII lines. Without `pattern`, lines are `KEY=VALUE`
    /// tokens; with it, the regex's named groups are the fields (for formats like
    /// `$ASD,24.5,3*7F`).
    SerialLines {
        /// `port`, `baud`, `parity`, `data_bits`, `stop_bits`: the serial line, which the
        /// sensor has to itself.
        serial: SerialPort,
        /// `pattern`: the regex whose named groups are the fields; none by default.
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

/// A serial line's settings; devices sharing a port must agree on all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    /// `port`: the device file (`/dev/ttyUSB0`); required.
    pub port: String,
    /// `baud`: line speed; default [`DEFAULT_BAUD`].
    pub baud: u32,
    /// `parity`: `none`, `even` or `odd`; default [`DEFAULT_PARITY`].
    pub parity: Parity,
    /// `data_bits`: 5 to 8; default [`DEFAULT_DATA_BITS`].
    pub data_bits: u8,
    /// `stop_bits`: 1 or 2; default [`DEFAULT_STOP_BITS`].
    pub stop_bits: u8,
}

/// A serial line's `parity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawDevice {
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
    profile: Option<String>,
    connections: Option<i64>,
    points: Vec<RawPoint>,
}

impl Validator {
    /// Every `[[devices]]` entry, then the checks across them: unique ids, shared serial ports,
    /// and (for a gateway) at least one device.
    pub(super) fn devices(
        &mut self,
        raw: Vec<RawDevice>,
        role: Role,
        profiles: &BTreeMap<String, Profile>,
    ) -> Vec<Device> {
        let mut devices = Vec::new();
        let mut seen = HashSet::new();
        for (i, d) in raw.into_iter().enumerate() {
            let dev = self.device(i, d, profiles);
            if !dev.id.is_empty() && !seen.insert(dev.id.clone()) {
                self.problem(
                    format!("devices[{i}].id"),
                    format!("duplicate device id {:?}", dev.id),
                );
            }
            devices.push(dev);
        }
        self.shared_ports(&devices);
        self.shared_addresses(&devices);
        if role == Role::Gateway && devices.is_empty() {
            self.problem("devices", "no [[devices]]: there is nothing to watch");
        }
        devices
    }

    fn serial(&mut self, at: &str, d: &RawDevice) -> SerialPort {
        let port = self
            .required(&format!("{at}.port"), d.port.clone())
            .unwrap_or_default();
        let parity = match d.parity.as_deref() {
            None => DEFAULT_PARITY,
            Some("even") => Parity::Even,
            Some("none") => Parity::None,
            Some("odd") => Parity::Odd,
            Some(p) => {
                self.problem(
                    format!("{at}.parity"),
                    format!("unknown parity {p:?} (expected none, even or odd)"),
                );
                DEFAULT_PARITY
            }
        };
        let baud: u32 = self.int(&format!("{at}.baud"), d.baud, DEFAULT_BAUD, "1-4000000");
        if baud == 0 {
            self.problem(format!("{at}.baud"), "must be positive");
        }
        let data_bits: u8 = self.int(
            &format!("{at}.data_bits"),
            d.data_bits,
            DEFAULT_DATA_BITS,
            "5-8",
        );
        if !(5..=8).contains(&data_bits) {
            self.problem(
                format!("{at}.data_bits"),
                format!("{data_bits} is not 5, 6, 7 or 8"),
            );
        }
        let stop_bits: u8 = self.int(
            &format!("{at}.stop_bits"),
            d.stop_bits,
            DEFAULT_STOP_BITS,
            "1-2",
        );
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

    fn device(&mut self, i: usize, d: RawDevice, profiles: &BTreeMap<String, Profile>) -> Device {
        let at = format!("devices[{i}]");
        let id = self.id(&format!("{at}.id"), d.id.clone(), &['-', '_']);
        let zone = self.id(&format!("{at}.zone"), d.zone.clone(), &['-']);
        let transport = match d.transport.as_deref().unwrap_or(DEFAULT_TRANSPORT) {
            "modbus-tcp" => Transport::ModbusTcp {
                address: self.address(&at, &d),
            },
            "modbus-rtu-over-tcp" => Transport::ModbusRtuOverTcp {
                address: self.address(&at, &d),
            },
            "modbus-rtu" => Transport::ModbusRtu {
                serial: self.serial(&at, &d),
            },
            "serial-lines" => Transport::SerialLines {
                serial: self.serial(&at, &d),
                pattern: d.pattern.clone(),
            },
            t => {
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
        let unit: u8 = self.int(&format!("{at}.unit"), d.unit, DEFAULT_UNIT, "0-255");
        let poll_interval = self.duration(
            &format!("{at}.poll_interval"),
            d.poll_interval,
            DEFAULT_POLL_INTERVAL,
        );
        let timeout = self.duration(&format!("{at}.timeout"), d.timeout, DEFAULT_TIMEOUT);
        self.bounded(
            &format!("{at}.poll_interval"),
            poll_interval,
            (MIN_POLL_INTERVAL, MAX_POLL_INTERVAL),
            "a device is lost only after two missed polls, so longer leaves a dead sensor unnoticed",
        );
        self.bounded(
            &format!("{at}.timeout"),
            timeout,
            (MIN_TIMEOUT, MAX_TIMEOUT),
            "a device that has not answered in a minute is not answering",
        );
        let max_gap: u16 = self.int(
            &format!("{at}.max_gap"),
            d.max_gap,
            DEFAULT_MAX_GAP,
            "0-124",
        );
        let lines = matches!(transport, Transport::SerialLines { .. });
        let groups = self.pattern(&at, d.pattern.as_deref(), lines);
        let mut own = Vec::new();
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
            own.push(point);
        }
        let mut merged = None;
        if let Some(name) = &d.profile {
            match profiles.get(name) {
                Some(_) if lines => self.problem(
                    format!("{at}.profile"),
                    "a serial-lines sensor lists its own fields: profiles hold Modbus points",
                ),
                Some(p) => merged = Some(merge(&p.points, std::mem::take(&mut own))),
                None => {
                    let known: Vec<&str> = profiles.keys().map(String::as_str).collect();
                    self.problem(
                        format!("{at}.profile"),
                        format!(
                            "no profile {name:?}; known: {}",
                            if known.is_empty() {
                                "(none)".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
            }
        }
        let connections: u16 = self.int(
            &format!("{at}.connections"),
            d.connections,
            DEFAULT_CONNECTIONS,
            "1-64",
        );
        if d.connections.is_some() && !matches!(transport, Transport::ModbusTcp { .. }) {
            self.problem(
                format!("{at}.connections"),
                "only modbus-tcp devices share connections (a serial bus or device server is one line)",
            );
        } else if !(1..=64).contains(&connections) {
            self.problem(
                format!("{at}.connections"),
                format!("{connections} is out of range (1-64)"),
            );
        }
        let points: Arc<[Point]> = merged.unwrap_or_else(|| own.into());
        // A device naming a profile that is missing or empty has that problem reported already.
        if points.is_empty() && d.profile.is_none() {
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
            profile: d.profile,
            connections,
        }
    }

    /// `poll_interval` and `timeout`: zero is refused as before (the words an operator has
    /// seen), then the bounds, with `why` for the upper one.
    fn bounded(&mut self, path: &str, d: Duration, (min, max): (Duration, Duration), why: &str) {
        let fmt = humantime::format_duration;
        if d.is_zero() {
            self.problem(path, "must be more than 0");
        } else if d < min {
            self.problem(
                path,
                format!(
                    "must be at least {}: no Modbus device answers sooner",
                    fmt(min)
                ),
            );
        } else if d > max {
            self.problem(path, format!("must be at most {}: {why}", fmt(max)));
        }
    }

    /// `address`: `host:port`, both parts present (an empty one is never reached, and the
    /// device would only ever be a comm-loss).
    fn address(&mut self, at: &str, d: &RawDevice) -> String {
        let path = format!("{at}.address");
        let Some(a) = self.required(&path, d.address.clone()) else {
            return String::new();
        };
        let ok = a
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
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

    /// Devices behind one `modbus-tcp` address share its connections, so they must agree on
    /// how many there are; the first device that disagrees is named with the one it contradicts.
    fn shared_addresses(&mut self, devices: &[Device]) {
        let mut first: BTreeMap<&str, (usize, u16)> = BTreeMap::new();
        for (i, d) in devices.iter().enumerate() {
            let Transport::ModbusTcp { address } = &d.transport else {
                continue;
            };
            match first.get(address.as_str()) {
                None => {
                    first.insert(address, (i, d.connections));
                }
                Some(&(j, n)) if n != d.connections => self.problem(
                    format!("devices[{i}].connections"),
                    format!(
                        "{} but devices[{j}] on the same address {address:?} says {n}: the devices of one gateway share its connections and must agree",
                        d.connections
                    ),
                ),
                Some(_) => {}
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
}

/// What a valid configuration does that its author may not expect; printed by `check-config`
/// and logged when the daemon starts, never a reason to refuse the file.
///
/// A `timeout` above `poll_interval` is legitimate (a fast poll of a device that is sometimes
/// slow to answer) but the interval is then not what it promises: a slow answer delays the next
/// poll, and a silent device shows as comm-loss only after [`crate::engine::COMM_LOSS_AFTER`]
/// timeouts. A serial-lines sensor is not polled (its `timeout` is slack on its silence), so it
/// is not warned about.
pub(super) fn warnings(devices: &[Device]) -> Vec<super::Problem> {
    let fmt = humantime::format_duration;
    devices
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            d.timeout > d.poll_interval && !matches!(d.transport, Transport::SerialLines { .. })
        })
        .map(|(i, d)| super::Problem {
            path: format!("devices[{i}].timeout"),
            message: format!(
                "{} is longer than poll_interval {}: while the device takes that long it is \
                 polled every {}, not every {}, and a silent device shows as comm-loss only \
                 after {}",
                fmt(d.timeout),
                fmt(d.poll_interval),
                fmt(d.timeout),
                fmt(d.poll_interval),
                fmt(d.timeout * crate::engine::COMM_LOSS_AFTER),
            ),
        })
        .collect()
}
