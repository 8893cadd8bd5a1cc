//! Modbus TCP devices: connect, read the coalesced plan, decode.
//!
//! Any transport error, timeout or malformed reply drops the connection: a late answer to a
//! timed-out request would otherwise be taken as the answer to the next one, and after a
//! malformed reply nothing on the stream can be trusted. The next poll reconnects. The framing
//! is ours (`mbap`), so every malformed reply is a [`LinkError::Protocol`] that says in plain
//! words what the device got wrong, and bytes a device sends that nobody asked for (after a
//! reply, or between polls) are caught instead of being mistaken for the next answer.
//!
//! RTU over TCP is not here: a serial device server fronts one RS-485 bus, so its devices share
//! one bus owner and its framing and error counting (`bus`), like a local serial port.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clock::Now;
use crate::config::Device;
use crate::decode::{plan_reads, ReadSpan};
use crate::fieldbus::counters::LinkCounters;
use crate::fieldbus::frame::Payload;
use crate::fieldbus::mbap::{self, Problem};
use crate::fieldbus::{span_points, Counters, LinkError, PointReading, Reading, SpanAnswer};

/// The most unexpected bytes read to count them before the connection is dropped: the count
/// goes in the message, the memory stays bounded whatever a device sends.
const MAX_COUNTED: usize = 4096;

/// One Modbus device and its (possibly absent) connection.
pub struct ModbusDevice {
    device: Device,
    /// Its `modbus-tcp` address, which the caller took from the transport it matched: no other
    /// transport can reach this client.
    address: String,
    plan: Vec<ReadSpan>,
    stream: Option<TcpStream>,
    /// The next MBAP transaction id, so a stale reply is never taken for the current one.
    transaction: u16,
    /// Requests, timeouts and lost connections, as the serial buses count theirs (`read`
    /// and `/metrics` show them).
    counters: Counters,
}

/// How one exchange failed, before it is given the device's name.
enum Failure {
    Io(String),
    Protocol(Problem),
}

impl ModbusDevice {
    /// `address` is the `modbus-tcp` address of `device`'s transport.
    pub fn new(device: Device, address: String, counters: Counters) -> ModbusDevice {
        let plan = plan_reads(&device.points, device.max_gap);
        ModbusDevice {
            device,
            address,
            plan,
            stream: None,
            transaction: 0,
            counters,
        }
    }

    /// The read plan: how many requests one poll takes.
    pub fn plan(&self) -> &[ReadSpan] {
        &self.plan
    }

    /// Polls every point once.
    pub async fn poll(&mut self, index: usize) -> Reading {
        let start = std::time::Instant::now();
        let c = self.counters.clone();
        let outcome = self.poll_points(c.device(index)).await;
        match &outcome {
            Err(LinkError::Timeout { .. }) => LinkCounters::add(&c.device(index).timeouts, 1),
            Err(LinkError::Connect { .. } | LinkError::Transport { .. }) => {
                LinkCounters::add(&c.device(index).port_errors, 1);
            }
            Err(LinkError::Protocol { .. }) => LinkCounters::add(&c.device(index).garbage, 1),
            _ => {}
        }
        if outcome.is_err() {
            self.stream = None;
        }
        Reading {
            device: index,
            at: Now::system(),
            latency: start.elapsed(),
            outcome,
        }
    }

    /// Hands this device's open connection (if any) to the next device behind the same
    /// gateway address (`gateway.rs`): they share it and take turns.
    pub(crate) fn release(&mut self) -> Option<TcpStream> {
        self.stream.take()
    }

    /// Takes over the shared connection of the gateway this device sits behind; the next poll
    /// addresses this device's unit id on it (or connects, if there is none).
    pub(crate) fn adopt(&mut self, stream: Option<TcpStream>) {
        self.stream = stream;
    }

    pub async fn close(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            let _ = tokio::time::timeout(Duration::from_millis(200), stream.shutdown()).await;
        }
    }

    async fn connect(device: &Device, address: &str) -> Result<TcpStream, LinkError> {
        let err = |reason: String| LinkError::Connect {
            device: device.id.clone(),
            address: address.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(device.timeout, TcpStream::connect(address))
            .await
            .map_err(|_| {
                err(format!(
                    "no connection within {}",
                    humantime::format_duration(device.timeout)
                ))
            })?
            .map_err(|e| err(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn poll_points(
        &mut self,
        counters: &LinkCounters,
    ) -> Result<Vec<PointReading>, LinkError> {
        let timeout = self.device.timeout;
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => Self::connect(&self.device, &self.address).await?,
        };
        let mut out = Vec::with_capacity(self.device.points.len());
        for span in &self.plan {
            LinkCounters::add(&counters.requests, 1);
            let transaction = self.transaction;
            self.transaction = self.transaction.wrapping_add(1);
            let exchange = exchange(&mut stream, transaction, self.device.unit, span);
            let answer = match tokio::time::timeout(timeout, exchange).await {
                Err(_) => Err(LinkError::Timeout {
                    device: self.device.id.clone(),
                    table: span.table.as_str(),
                    register: span.start,
                    timeout,
                }),
                Ok(Err(Failure::Io(reason))) => Err(LinkError::Transport {
                    device: self.device.id.clone(),
                    table: span.table.as_str(),
                    register: span.start,
                    reason,
                }),
                Ok(Err(Failure::Protocol(problem))) => Err(LinkError::Protocol {
                    device: self.device.id.clone(),
                    address: self.address.clone(),
                    table: span.table.as_str(),
                    first: span.start,
                    count: span.count,
                    problem: problem.to_string(),
                }),
                Ok(Ok(payload)) => Ok(payload),
            }?;
            let answer = match &answer {
                Payload::Words(w) => SpanAnswer::Words(w),
                Payload::Bits(b) => SpanAnswer::Bits(b),
                Payload::Exception(code) => SpanAnswer::Exception(*code),
            };
            span_points(&self.device, span, answer, &mut out);
        }
        out.sort_by_key(|p| p.point);
        self.stream = Some(stream);
        Ok(out)
    }
}

/// One request and its reply on an open connection. Bytes waiting before the request, or
/// arriving right behind the reply, are a protocol fault: they would otherwise be read as the
/// answer to a later request.
async fn exchange(
    stream: &mut TcpStream,
    transaction: u16,
    unit: u8,
    span: &ReadSpan,
) -> Result<Payload, Failure> {
    let io = |e: std::io::Error| Failure::Io(e.to_string());
    match pending(stream) {
        Pending::None => {}
        Pending::Closed => {
            return Err(Failure::Io("the device closed the connection".into()));
        }
        Pending::Bytes(n) => return Err(Failure::Protocol(Problem::Unsolicited(n))),
    }
    let request = mbap::read_request(transaction, unit, span.table, span.start, span.count);
    stream.write_all(&request).await.map_err(io)?;
    let mut head = [0u8; mbap::HEADER];
    stream.read_exact(&mut head).await.map_err(io)?;
    let len = mbap::header(&head, transaction, unit).map_err(Failure::Protocol)?;
    let mut pdu = [0u8; mbap::MAX_PDU];
    let pdu = &mut pdu[..len];
    stream.read_exact(pdu).await.map_err(io)?;
    let payload = mbap::reply(pdu, span.table, span.count).map_err(Failure::Protocol)?;
    if let Pending::Bytes(n) = pending(stream) {
        return Err(Failure::Protocol(Problem::Trailing(n)));
    }
    Ok(payload)
}

enum Pending {
    None,
    Closed,
    Bytes(usize),
}

/// What is already waiting on the connection, without waiting for more. Reads (and so
/// discards) at most [`MAX_COUNTED`] bytes: the connection is dropped after a fault anyway.
fn pending(stream: &TcpStream) -> Pending {
    let mut buf = [0u8; 512];
    let mut seen = 0;
    while seen < MAX_COUNTED {
        match stream.try_read(&mut buf) {
            Ok(0) if seen == 0 => return Pending::Closed,
            Ok(0) => break,
            Ok(n) => seen += n,
            Err(_) => break, // WouldBlock: nothing (more) waiting; other errors surface on write
        }
    }
    if seen == 0 {
        Pending::None
    } else {
        Pending::Bytes(seen)
    }
}
