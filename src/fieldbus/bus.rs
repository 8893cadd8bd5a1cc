//! The bus owner: one task per RS-485 bus (a local serial port, or a serial device server reached
//! over TCP) that every Modbus RTU device on that bus goes through.
//!
//! RS-485 is half duplex and RTU has no transaction ids: two requests in flight at once collide on
//! the wire, and an answer arriving after its timeout would be taken for the answer to the next
//! request. So one owner sends one request at a time, keeps the line silent for 3.5 characters
//! between frames, drains stray bytes before each request, and decides which device goes next
//! ([`Schedule`], shared with the Modbus TCP gateways: earliest due first, so a device polled every second is not starved by one
//! polled every 100 ms). A port that disappears (a USB adapter unplugged, a device server
//! rebooting) fails every device on it with [`LinkError::Port`] until it can be opened again,
//! which is tried whenever a device is due: no restart needed.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::clock::Now;
use crate::config::{Device, Parity, SerialPort, Transport};
use crate::decode::{plan_reads, ReadSpan};
use crate::fieldbus::counters::{Counters, LinkCounters};
use crate::fieldbus::frame::{self, Fault, Payload, Scan, Seen};
pub use crate::fieldbus::schedule::Schedule;
use crate::fieldbus::{span_points, LinkError, PointReading, Reading, SpanAnswer};

/// After a failed exchange the line must be quiet this long (not just 3.5 characters) before the
/// next request: a slave that answers a little after its timeout would otherwise have that late
/// answer read as the reply to the next request for the same registers. Long enough to cover
/// a slave that overshoots its answer by a scheduling hiccup (on the slave, a device server or
/// this host); failures are rare, so the wait costs little.
pub const SETTLE_AFTER_FAILURE: Duration = Duration::from_millis(100);

/// Where a bus is reached. Devices with equal endpoints share one owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    /// A local serial port (RS-485 adapter).
    Serial(SerialPortKey),
    /// A serial device server: RTU frames, CRC and all, over a TCP connection.
    Tcp(String),
}

/// A serial port's settings, ordered so that endpoints can key a map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SerialPortKey {
    pub path: String,
    pub baud: u32,
    /// 0 none, 1 odd, 2 even.
    parity: u8,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl Endpoint {
    /// The bus a device is on, if its transport is a Modbus RTU one.
    pub fn of(t: &Transport) -> Option<Endpoint> {
        match t {
            Transport::ModbusRtu { serial } => Some(Endpoint::Serial(SerialPortKey::new(serial))),
            Transport::ModbusRtuOverTcp { address } => Some(Endpoint::Tcp(address.clone())),
            _ => None,
        }
    }

    /// The port path or address, for messages.
    pub fn name(&self) -> &str {
        match self {
            Endpoint::Serial(s) => &s.path,
            Endpoint::Tcp(a) => a,
        }
    }
}

impl SerialPortKey {
    pub fn new(s: &SerialPort) -> SerialPortKey {
        SerialPortKey {
            path: s.port.clone(),
            baud: s.baud,
            parity: match s.parity {
                Parity::None => 0,
                Parity::Odd => 1,
                Parity::Even => 2,
            },
            data_bits: s.data_bits,
            stop_bits: s.stop_bits,
        }
    }

    pub fn parity(&self) -> Parity {
        match self.parity {
            0 => Parity::None,
            1 => Parity::Odd,
            _ => Parity::Even,
        }
    }
}

/// Opens a serial port with the given settings, ready for async I/O.
pub fn open_serial(key: &SerialPortKey) -> Result<tokio_serial::SerialStream, String> {
    let parity = match key.parity() {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    };
    let data_bits = match key.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let stop_bits = match key.stop_bits {
        2 => tokio_serial::StopBits::Two,
        _ => tokio_serial::StopBits::One,
    };
    let builder = tokio_serial::new(&key.path, key.baud)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None);
    tokio_serial::SerialStream::open(&builder).map_err(|e| format!("cannot open: {e}"))
}

/// A byte stream to the bus, whatever carries it.
trait Line: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Line for T {}

/// A device as the bus owner polls it: its configuration and its read plan.
#[derive(Debug, Clone)]
pub struct BusDevice {
    pub device: Device,
    plan: Vec<ReadSpan>,
}

impl BusDevice {
    pub fn new(device: Device) -> BusDevice {
        let plan = plan_reads(&device.points, device.max_gap);
        BusDevice { device, plan }
    }
}

/// Why one exchange failed; turned into a [`LinkError`] naming the device and register.
enum ExchangeError {
    /// The line itself is gone: close it, the next due device reopens it.
    Lost(String),
    /// This request failed; the line is fine for the next one.
    Failed(String),
}

/// One bus and its (possibly closed) line.
pub struct Bus {
    endpoint: Endpoint,
    counters: Counters,
    line: Option<Box<dyn Line>>,
    /// Whether the last attempt to open failed, so the log says "lost" and "back" once each.
    down: bool,
    /// One character's time on the wire (zero over TCP: the device server does the timing).
    char_time: Duration,
    /// The silence to keep between frames.
    gap: Duration,
    /// When the line last carried a byte either way.
    last_activity: Instant,
    /// The last exchange failed: wait [`SETTLE_AFTER_FAILURE`] of silence before the next.
    settle: bool,
}

impl Bus {
    pub fn new(endpoint: Endpoint, counters: Counters) -> Bus {
        let (char_time, gap) = match &endpoint {
            Endpoint::Serial(s) => {
                let c =
                    frame::char_time(s.baud, s.data_bits, s.parity() != Parity::None, s.stop_bits);
                (c, frame::inter_frame(s.baud, c))
            }
            Endpoint::Tcp(_) => (Duration::ZERO, Duration::ZERO),
        };
        Bus {
            endpoint,
            counters,
            line: None,
            down: false,
            char_time,
            gap,
            last_activity: Instant::now(),
            settle: false,
        }
    }

    /// Polls `devices` (config index, device) until `cancel`, each on its own interval.
    pub async fn run(
        mut self,
        devices: Vec<(usize, Device)>,
        tx: mpsc::Sender<Reading>,
        cancel: CancellationToken,
    ) {
        let devices: Vec<(usize, BusDevice)> = devices
            .into_iter()
            .map(|(i, d)| (i, BusDevice::new(d)))
            .collect();
        let mut schedule = Schedule::new(
            devices.iter().map(|(_, d)| d.device.poll_interval),
            Instant::now(),
        );
        tracing::info!(
            port = %self.endpoint.name(),
            devices = devices.len(),
            "bus owner started"
        );
        while let Some((slot, due)) = schedule.next_due() {
            let Some((index, dev)) = devices.get(slot) else {
                break;
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
            let reading = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.poll(*index, dev) => r,
            };
            schedule.served(slot, Instant::now());
            if let Err(e) = &reading.outcome {
                tracing::debug!(device = %dev.device.id, error = %e, "poll failed");
            }
            if tx.send(reading).await.is_err() {
                break; // the engine is gone: shutting down
            }
        }
        self.close().await;
        tracing::debug!(port = %self.endpoint.name(), "bus owner stopped");
    }

    /// Polls one device: every read of its plan, one after the other.
    pub async fn poll(&mut self, index: usize, dev: &BusDevice) -> Reading {
        let start = std::time::Instant::now();
        let outcome = self.poll_points(index, dev).await;
        Reading {
            device: index,
            at: Now::system(),
            latency: start.elapsed(),
            outcome,
        }
    }

    pub async fn close(&mut self) {
        if let Some(mut line) = self.line.take() {
            let _ = tokio::time::timeout(Duration::from_millis(200), line.shutdown()).await;
        }
    }

    async fn poll_points(
        &mut self,
        index: usize,
        dev: &BusDevice,
    ) -> Result<Vec<PointReading>, LinkError> {
        let device = &dev.device;
        let counters = self.counters.clone();
        let c = counters.device(index);
        self.ensure_open(device, c).await?;
        let mut out = Vec::with_capacity(device.points.len());
        for span in &dev.plan {
            match self.exchange(device, span, c).await {
                Ok(payload) => {
                    let answer = match &payload {
                        Payload::Words(w) => SpanAnswer::Words(w),
                        Payload::Bits(b) => SpanAnswer::Bits(b),
                        Payload::Exception(code) => SpanAnswer::Exception(*code),
                    };
                    span_points(device, span, answer, &mut out);
                }
                Err(ExchangeError::Failed(problem)) => {
                    return Err(LinkError::Rtu {
                        device: device.id.clone(),
                        port: self.endpoint.name().to_string(),
                        unit: device.unit,
                        table: span.table.as_str(),
                        register: span.start,
                        problem,
                    });
                }
                Err(ExchangeError::Lost(reason)) => {
                    self.line = None;
                    self.down = true;
                    LinkCounters::add(&c.port_errors, 1);
                    tracing::warn!(port = %self.endpoint.name(), %reason, "bus lost; reopening when the next device is due");
                    return Err(LinkError::Port {
                        device: device.id.clone(),
                        port: self.endpoint.name().to_string(),
                        reason,
                    });
                }
            }
        }
        out.sort_by_key(|p| p.point);
        Ok(out)
    }

    /// Opens the line if it is closed. Failing is the device's link error.
    async fn ensure_open(&mut self, device: &Device, c: &LinkCounters) -> Result<(), LinkError> {
        if self.line.is_some() {
            return Ok(());
        }
        let opened: Result<Box<dyn Line>, String> = match &self.endpoint {
            Endpoint::Serial(key) => open_serial(key).map(|s| Box::new(s) as Box<dyn Line>),
            Endpoint::Tcp(address) => {
                match tokio::time::timeout(
                    device.timeout,
                    tokio::net::TcpStream::connect(address.as_str()),
                )
                .await
                {
                    Err(_) => Err(format!("no connection within {:?}", device.timeout)),
                    Ok(Err(e)) => Err(format!("cannot connect: {e}")),
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        Ok(Box::new(s) as Box<dyn Line>)
                    }
                }
            }
        };
        match opened {
            Ok(line) => {
                if self.down {
                    tracing::info!(port = %self.endpoint.name(), "bus back: port open again");
                }
                self.down = false;
                self.line = Some(line);
                self.last_activity = Instant::now();
                Ok(())
            }
            Err(reason) => {
                LinkCounters::add(&c.port_errors, 1);
                if !self.down {
                    tracing::warn!(port = %self.endpoint.name(), %reason, "bus unavailable; retrying as devices fall due");
                }
                self.down = true;
                Err(LinkError::Port {
                    device: device.id.clone(),
                    port: self.endpoint.name().to_string(),
                    reason,
                })
            }
        }
    }

    /// Waits until the line has been silent for the inter-frame gap, discarding (and counting)
    /// whatever arrives meanwhile: a late answer to an earlier request must never be read as the
    /// answer to the next one.
    async fn quiet(&mut self, c: &LinkCounters) -> Result<(), ExchangeError> {
        let Some(line) = self.line.as_mut() else {
            return Err(ExchangeError::Lost("port closed".into()));
        };
        let mut scratch = [0u8; 256];
        let mut stray = 0usize;
        let gap = if self.settle {
            self.gap.max(SETTLE_AFTER_FAILURE)
        } else {
            self.gap
        };
        self.settle = false;
        loop {
            let until = self.last_activity + gap;
            // Give pending bytes a chance to show up even when the gap is already over.
            match timeout_at(until.max(Instant::now()), line.read(&mut scratch)).await {
                Err(_) => break,
                Ok(Ok(0)) => return Err(ExchangeError::Lost("end of file".into())),
                Ok(Ok(n)) => {
                    stray += n;
                    self.last_activity = Instant::now();
                    if stray > 64 * frame::MAX_FRAME {
                        // A babbling line (wrong baud rate, a second master): go on regardless.
                        break;
                    }
                }
                Ok(Err(e)) => return Err(ExchangeError::Lost(e.to_string())),
            }
        }
        if stray > 0 {
            LinkCounters::add(&c.garbage, 1);
            tracing::debug!(port = %self.endpoint.name(), bytes = stray, "discarded stray bytes between frames");
        }
        Ok(())
    }

    /// One request and its answer.
    async fn exchange(
        &mut self,
        device: &Device,
        span: &ReadSpan,
        c: &LinkCounters,
    ) -> Result<Payload, ExchangeError> {
        self.quiet(c).await?;
        let Some(line) = self.line.as_mut() else {
            return Err(ExchangeError::Lost("port closed".into()));
        };
        let request = frame::read_request(device.unit, span.table, span.start, span.count);
        LinkCounters::add(&c.requests, 1);
        let sent = async {
            line.write_all(&request).await?;
            line.flush().await
        };
        if let Err(e) = sent.await {
            return Err(ExchangeError::Lost(e.to_string()));
        }
        // The timeout starts once the request is on the wire, not when it enters the UART.
        let on_wire = self.char_time * request.len() as u32;
        let deadline = Instant::now() + on_wire + device.timeout;
        let mut buf: Vec<u8> = Vec::with_capacity(frame::MAX_FRAME);
        let mut chunk = [0u8; 256];
        let mut seen = Seen::default();
        loop {
            match timeout_at(deadline, line.read(&mut chunk)).await {
                Err(_) => break,
                Ok(Ok(0)) => return Err(ExchangeError::Lost("end of file".into())),
                Ok(Ok(n)) => {
                    self.last_activity = Instant::now();
                    buf.extend_from_slice(&chunk[..n]);
                    seen = Seen::default();
                    match frame::scan(&buf, device.unit, span.table, span.count, &mut seen) {
                        Scan::Reply { payload, skipped } => {
                            if skipped > 0 {
                                LinkCounters::add(&c.garbage, 1);
                            }
                            LinkCounters::add(&c.wrong_unit, seen.wrong_unit.len() as u64);
                            return Ok(payload);
                        }
                        Scan::Incomplete if buf.len() > 4 * frame::MAX_FRAME => break,
                        Scan::Incomplete => {}
                    }
                }
                Ok(Err(e)) => return Err(ExchangeError::Lost(e.to_string())),
            }
        }
        self.last_activity = Instant::now();
        self.settle = true;
        LinkCounters::add(&c.wrong_unit, seen.wrong_unit.len() as u64);
        let timeout = device.timeout;
        Err(ExchangeError::Failed(
            match frame::classify_leftover(&buf, device.unit, span.table) {
                Fault::Silent if !seen.wrong_unit.is_empty() => {
                    format!(
                        "answered by unit {} instead of {} (duplicate unit id on the bus?)",
                        seen.wrong_unit[0], device.unit
                    )
                }
                Fault::Silent => {
                    LinkCounters::add(&c.timeouts, 1);
                    format!("no answer within {timeout:?}")
                }
                Fault::Crc => {
                    LinkCounters::add(&c.crc_errors, 1);
                    "reply failed its CRC check (noise, or a baud/parity mismatch)".to_string()
                }
                Fault::Short => {
                    LinkCounters::add(&c.short_frames, 1);
                    format!("reply cut short ({} bytes, then nothing)", buf.len())
                }
                Fault::Garbage => {
                    LinkCounters::add(&c.garbage, 1);
                    format!("{} bytes of garbage and no reply", buf.len())
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake slave behind a TCP "device server": answers the first request late with 111
    /// (150 ms after it: ~45 ms after the 100 ms timeout, ~55 ms before the settle time ends,
    /// margins that hold on a loaded machine), every later one at once with 222.
    async fn late_slave() -> (String, tokio::task::JoinHandle<()>) {
        use crate::decode::Table;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut req = [0u8; 8];
            let mut first = true;
            while s.read_exact(&mut req).await.is_ok() {
                let value = if first { 111 } else { 222 };
                if first {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                first = false;
                let f = frame::reply_frame(req[0], Table::Holding, &Payload::Words(vec![value]));
                if s.write_all(&f).await.is_err() {
                    return;
                }
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_late_answer_is_never_taken_for_the_next_one() {
        let (addr, slave) = late_slave().await;
        let text = format!(
            "[site]\nid = \"s\"\ngateway = \"g\"\n[[devices]]\nid = \"r\"\nzone = \"z\"\n\
             transport = \"modbus-rtu-over-tcp\"\naddress = \"{addr}\"\ntimeout = \"100ms\"\n\
             [[devices.points]]\nid = \"t\"\naddress = 116\n"
        );
        let cfg =
            crate::config::Config::from_toml(&text, crate::config::Role::Gateway).expect("config");
        let endpoint = Endpoint::of(&cfg.devices[0].transport).expect("rtu");
        let counters = Counters::new(1);
        let mut bus = Bus::new(endpoint, counters.clone());
        let dev = BusDevice::new(cfg.devices[0].clone());
        let first = bus.poll(0, &dev).await;
        assert!(
            matches!(&first.outcome, Err(LinkError::Rtu { problem, .. }) if problem.contains("no answer")),
            "{:?}",
            first.outcome
        );
        let second = bus.poll(0, &dev).await;
        let value = second
            .outcome
            .as_ref()
            .ok()
            .and_then(|p| p.first())
            .and_then(|p| p.result.as_ref().ok())
            .map(|d| d.value);
        assert_eq!(value, Some(222.0), "{:?}", second.outcome);
        let s = counters.stats(0);
        assert_eq!((s.requests, s.timeouts, s.garbage), (2, 1, 1), "{s}");
        bus.close().await;
        slave.abort();
    }
}
