//! Field buses: where readings come from.
//!
//! A Modbus TCP device is polled by its own task on its own `poll_interval`, so a device that
//! hangs until its timeout never delays another; several Modbus TCP devices at one address are
//! unit ids behind one gateway, and share its connection(s) through one [`gateway`] task each. Devices that share a wire cannot work that way:
//! all `modbus-rtu` devices on one serial port, and all `modbus-rtu-over-tcp` devices behind one
//! serial device server, go through one bus owner ([`bus`]) that sends one request at a time. A
//! `serial-lines` sensor gets a reader task of its own ([`lines`]). Every poll or line yields one
//! [`Reading`]: either the decoded points, or the reason the device could not be read at all.
//! Both go to the rule engine; silence is never reported as "normal".

pub mod bus;
pub mod counters;
pub mod frame;
pub mod gateway;
pub mod lines;
pub mod mbap;
pub mod modbus;
pub mod schedule;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Now;
use crate::config::{Config, Device, Transport};
use crate::decode::{decode_bit, decode_point, DecodeError, Decoded, ReadSpan};

pub use counters::{Counters, LinkStats};

/// The outcome of one poll of one device.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Index of the device in the configuration.
    pub device: usize,
    /// When the poll finished.
    pub at: Now,
    /// How long the poll took (all requests, including a reconnect).
    pub latency: Duration,
    pub outcome: Result<Vec<PointReading>, LinkError>,
}

/// One point of a successful poll.
#[derive(Debug, Clone, PartialEq)]
pub struct PointReading {
    /// Index of the point in its device.
    pub point: usize,
    pub result: Result<Decoded, PointError>,
}

/// Why one point has no value although its device answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PointError {
    #[error("register {address}: Modbus exception {code} ({name})")]
    Exception {
        address: u16,
        code: u8,
        name: String,
    },
    #[error("register {address}: {source}")]
    Decode { address: u16, source: DecodeError },
    /// A serial-lines field that a line lacked, or that was not a number.
    #[error("field {field}: {problem}")]
    Field { field: String, problem: String },
}

/// Why a device could not be read at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinkError {
    #[error("device {device}: cannot connect to {address}: {reason}")]
    Connect {
        device: String,
        address: String,
        reason: String,
    },
    #[error("device {device} {table} register {register}: no answer within {timeout:?}")]
    Timeout {
        device: String,
        table: &'static str,
        register: u16,
        timeout: Duration,
    },
    #[error("device {device} {table} register {register}: {reason}")]
    Transport {
        device: String,
        table: &'static str,
        register: u16,
        reason: String,
    },
    /// A Modbus TCP device answered with something that is not a valid reply to what was asked
    /// (a wrong header, length, function or register count, or bytes nobody asked for). Over
    /// TCP this is never line noise: the device (or something posing as it) is misbehaving.
    #[error("device {device} at {address}: {table} {} {}: {problem}", span_noun(table), span_range(*.first, *.count))]
    Protocol {
        device: String,
        address: String,
        table: &'static str,
        first: u16,
        count: u16,
        problem: String,
    },
    /// The serial port (or the device server's TCP connection) is missing, cannot be opened, or
    /// was lost: every device on it gets this until it is back.
    #[error("device {device}: port {port}: {reason}")]
    Port {
        device: String,
        port: String,
        reason: String,
    },
    /// One RTU exchange failed; the bus goes on with the next request.
    #[error("device {device} (unit {unit} on {port}) {table} register {register}: {problem}")]
    Rtu {
        device: String,
        port: String,
        unit: u8,
        table: &'static str,
        register: u16,
        problem: String,
    },
    /// A device behind a Modbus TCP gateway shared with other devices could not be read; the
    /// gateway's address is named, because when it is down every device behind it says so.
    #[error("device {device} (unit {unit} behind gateway {address}): {reason}")]
    Gateway {
        device: String,
        address: String,
        unit: u8,
        reason: String,
    },
    /// A serial-lines sensor printed no readable line for too long.
    #[error("device {device} on {port}: no readable line for {silent:?}{}", malformed_note(*.malformed))]
    Silent {
        device: String,
        port: String,
        silent: Duration,
        malformed: u64,
    },
}

/// `registers` or `coils` (discrete inputs are bits too), as a span of the table is named.
fn span_noun(table: &str) -> &'static str {
    match table {
        "coil" | "discrete" => "bits",
        _ => "registers",
    }
}

/// `100-109`, or `100` for one register.
fn span_range(first: u16, count: u16) -> String {
    match count {
        0 | 1 => first.to_string(),
        n => format!("{first}-{}", u32::from(first) + u32::from(n) - 1),
    }
}

fn malformed_note(n: u64) -> String {
    match n {
        0 => String::new(),
        1 => " (1 malformed line)".into(),
        n => format!(" ({n} malformed lines)"),
    }
}

/// What one read request brought back, whichever client made it.
pub(crate) enum SpanAnswer<'a> {
    Words(&'a [u16]),
    Bits(&'a [bool]),
    Exception(u8),
}

/// The name of a Modbus exception code, for messages (application protocol v1.1b3, 7).
pub(crate) fn exception_name(code: u8) -> &'static str {
    match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

/// Decodes the points one read served and appends them to `out`.
pub(crate) fn span_points(
    device: &Device,
    span: &ReadSpan,
    answer: SpanAnswer<'_>,
    out: &mut Vec<PointReading>,
) {
    for &pi in &span.points {
        let Some(point) = device.points.get(pi) else {
            continue;
        };
        let result = match answer {
            SpanAnswer::Words(w) => decode_point(point, span.start, w),
            SpanAnswer::Bits(b) => decode_bit(point, span.start, b),
            SpanAnswer::Exception(code) => {
                out.push(PointReading {
                    point: pi,
                    result: Err(PointError::Exception {
                        address: span.start,
                        code,
                        name: exception_name(code).to_string(),
                    }),
                });
                continue;
            }
        };
        out.push(PointReading {
            point: pi,
            result: result.map_err(|source| PointError::Decode {
                address: point.address,
                source,
            }),
        });
    }
}

/// Starts the tasks that read every device: one per Modbus TCP device, one bus owner per serial
/// port or serial device server, one reader per serial-lines sensor. Readings go to `tx` until
/// `cancel`. The returned counters are the link statistics of every device, live.
pub fn spawn_pollers(
    cfg: &Config,
    tx: mpsc::Sender<Reading>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Counters {
    let counters = Counters::new(cfg.devices.len());
    spawn_masters(cfg, tx, cancel, tracker, &counters, Masters::All);
    counters
}

/// Which devices to poll: a gateway of a redundant pair polls the Modbus TCP devices (they
/// take several masters) whatever its role, and opens the serial buses and RTU-over-TCP
/// servers (one master on the wire) only while it is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masters {
    All,
    /// Modbus TCP only.
    Shared,
    /// Serial buses, RTU over TCP and serial-lines sensors only.
    Single,
}

impl Masters {
    fn takes(self, t: &Transport) -> bool {
        let shared = matches!(t, Transport::ModbusTcp { .. });
        match self {
            Masters::All => true,
            Masters::Shared => shared,
            Masters::Single => !shared,
        }
    }
}

/// As [`spawn_pollers`], for the devices `which` names, counting into `counters` (made once
/// for every device).
pub fn spawn_masters(
    cfg: &Config,
    tx: mpsc::Sender<Reading>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
    counters: &Counters,
    which: Masters,
) {
    let mut buses: BTreeMap<bus::Endpoint, Vec<(usize, Device)>> = BTreeMap::new();
    let mut gateways: BTreeMap<String, Vec<(usize, Device)>> = BTreeMap::new();
    for (index, device) in cfg.devices.iter().enumerate() {
        if !which.takes(&device.transport) {
            continue;
        }
        if let Transport::ModbusTcp { address } = &device.transport {
            gateways
                .entry(address.clone())
                .or_default()
                .push((index, device.clone()));
        }
    }
    // One device alone at its address keeps a poll loop of its own.
    gateways.retain(|_, devices| devices.len() > 1);
    for (index, device) in cfg.devices.iter().enumerate() {
        if !which.takes(&device.transport) {
            continue;
        }
        let device = device.clone();
        let tx = tx.clone();
        let cancel = cancel.clone();
        match &device.transport {
            Transport::ModbusTcp { address } if gateways.contains_key(address) => {}
            Transport::ModbusTcp { address } => {
                let link =
                    modbus::ModbusDevice::new(device.clone(), address.clone(), counters.clone());
                tracker.spawn(async move {
                    poll_loop(index, device, link, tx, cancel).await;
                });
            }
            Transport::ModbusRtu { .. } | Transport::ModbusRtuOverTcp { .. } => {
                if let Some(endpoint) = bus::Endpoint::of(&device.transport) {
                    buses.entry(endpoint).or_default().push((index, device));
                }
            }
            Transport::SerialLines { .. } => {
                let counters = counters.clone();
                tracker.spawn(async move {
                    lines::run(index, device, counters, tx, cancel).await;
                });
            }
        }
    }
    for (address, devices) in gateways {
        // Every device of one address says the same (the configuration checks it).
        let connections = devices
            .first()
            .map_or(1, |(_, d)| usize::from(d.connections));
        for group in gateway::split(devices, connections) {
            let owner = gateway::Gateway::new(address.clone(), group, counters);
            let tx = tx.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                owner.run(tx, cancel).await;
            });
        }
    }
    for (endpoint, devices) in buses {
        let owner = bus::Bus::new(endpoint, counters.clone());
        let tx = tx.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            owner.run(devices, tx, cancel).await;
        });
    }
}

/// One poll of one device, outside the daemon (`emberwatch read`): the reading, and how many
/// requests it took. The device's port or connection is opened for this poll and closed after.
pub async fn poll_once(
    cfg: &Config,
    index: usize,
    counters: &Counters,
) -> Option<(Reading, usize)> {
    let device = cfg.devices.get(index)?.clone();
    Some(match &device.transport {
        Transport::ModbusTcp { address } => {
            let address = address.clone();
            let mut link = modbus::ModbusDevice::new(device, address, counters.clone());
            let reading = link.poll(index).await;
            let requests = link.plan().len();
            link.close().await;
            (reading, requests)
        }
        Transport::ModbusRtu { .. } | Transport::ModbusRtuOverTcp { .. } => {
            let endpoint = bus::Endpoint::of(&device.transport)?;
            let requests = crate::decode::plan_reads(&device.points, device.max_gap).len();
            let mut owner = bus::Bus::new(endpoint, counters.clone());
            let reading = owner.poll(index, &bus::BusDevice::new(device)).await;
            owner.close().await;
            (reading, requests)
        }
        Transport::SerialLines { .. } => (lines::read_once(index, &device, counters).await, 1),
    })
}

async fn poll_loop(
    index: usize,
    device: Device,
    mut link: modbus::ModbusDevice,
    tx: mpsc::Sender<Reading>,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(device.poll_interval);
    // A slow poll must not be followed by a burst of catch-up polls.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let reading = tokio::select! {
            _ = cancel.cancelled() => break,
            r = link.poll(index) => r,
        };
        if let Err(e) = &reading.outcome {
            tracing::debug!(device = %device.id, error = %e, "poll failed");
        }
        if tx.send(reading).await.is_err() {
            break; // the engine is gone: shutting down
        }
    }
    link.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A standby of a pair polls what takes several masters and leaves one-master wires to the
    /// active gateway.
    #[test]
    fn which_masters_a_standby_and_an_active_gateway_open() {
        let tcp = Transport::ModbusTcp {
            address: "127.0.0.1:502".into(),
        };
        let over_tcp = Transport::ModbusRtuOverTcp {
            address: "127.0.0.1:4001".into(),
        };
        assert!(Masters::Shared.takes(&tcp));
        assert!(!Masters::Shared.takes(&over_tcp));
        assert!(Masters::Single.takes(&over_tcp));
        assert!(!Masters::Single.takes(&tcp));
        assert!(Masters::All.takes(&tcp) && Masters::All.takes(&over_tcp));
    }
}
