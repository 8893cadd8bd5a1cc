//! Modbus TCP devices: connect, read the coalesced plan, decode.
//!
//! Any transport error or timeout drops the connection: a late answer to a timed-out request
//! would otherwise be taken as the answer to the next one. The next poll reconnects.
//!
//! RTU over TCP is not here: a serial device server fronts one RS-485 bus, so its devices share
//! one bus owner and its framing and error counting (`bus`), like a local serial port.

use std::time::Duration;

use tokio_modbus::client::{Context, Reader};
use tokio_modbus::slave::{Slave, SlaveContext};

use crate::clock::Now;
use crate::config::Device;
use crate::decode::{plan_reads, ReadSpan, Table};
use crate::fieldbus::counters::LinkCounters;
use crate::fieldbus::{span_points, Counters, LinkError, PointReading, Reading, SpanAnswer};

/// One Modbus device and its (possibly absent) connection.
pub struct ModbusDevice {
    device: Device,
    /// Its `modbus-tcp` address, which the caller took from the transport it matched: no other
    /// transport can reach this client.
    address: String,
    plan: Vec<ReadSpan>,
    ctx: Option<Context>,
    /// Requests, timeouts and lost connections, as the serial buses count theirs (`read`
    /// and `/metrics` show them).
    counters: Counters,
}

enum SpanData {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

impl ModbusDevice {
    /// `address` is the `modbus-tcp` address of `device`'s transport.
    pub fn new(device: Device, address: String, counters: Counters) -> ModbusDevice {
        let plan = plan_reads(&device.points, device.max_gap);
        ModbusDevice {
            device,
            address,
            plan,
            ctx: None,
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
            _ => {}
        }
        if outcome.is_err() {
            self.ctx = None;
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
    pub(crate) fn release(&mut self) -> Option<Context> {
        self.ctx.take()
    }

    /// Takes over the shared connection of the gateway this device sits behind; the next poll
    /// addresses this device's unit id on it (or connects, if there is none).
    pub(crate) fn adopt(&mut self, ctx: Option<Context>) {
        self.ctx = ctx;
    }

    pub async fn close(&mut self) {
        if let Some(mut ctx) = self.ctx.take() {
            use tokio_modbus::client::Client;
            let _ = tokio::time::timeout(Duration::from_millis(200), ctx.disconnect()).await;
        }
    }

    async fn connect(device: &Device, address: &str) -> Result<Context, LinkError> {
        let err = |reason: String| LinkError::Connect {
            device: device.id.clone(),
            address: address.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(device.timeout, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| err(format!("no connection within {:?}", device.timeout)))?
            .map_err(|e| err(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let slave = Slave(device.unit);
        Ok(tokio_modbus::client::tcp::attach_slave(stream, slave))
    }

    async fn poll_points(
        &mut self,
        counters: &LinkCounters,
    ) -> Result<Vec<PointReading>, LinkError> {
        let timeout = self.device.timeout;
        let id = &self.device.id;
        let mut ctx = match self.ctx.take() {
            Some(ctx) => ctx,
            None => Self::connect(&self.device, &self.address).await?,
        };
        ctx.set_slave(Slave(self.device.unit));
        let mut out = Vec::with_capacity(self.device.points.len());
        for span in &self.plan {
            LinkCounters::add(&counters.requests, 1);
            let req = async {
                match span.table {
                    Table::Holding => ctx
                        .read_holding_registers(span.start, span.count)
                        .await
                        .map(|r| r.map(SpanData::Words)),
                    Table::Input => ctx
                        .read_input_registers(span.start, span.count)
                        .await
                        .map(|r| r.map(SpanData::Words)),
                    Table::Coil => ctx
                        .read_coils(span.start, span.count)
                        .await
                        .map(|r| r.map(SpanData::Bits)),
                    Table::Discrete => ctx
                        .read_discrete_inputs(span.start, span.count)
                        .await
                        .map(|r| r.map(SpanData::Bits)),
                }
            };
            let answer = tokio::time::timeout(timeout, req)
                .await
                .map_err(|_| LinkError::Timeout {
                    device: id.clone(),
                    table: span.table.as_str(),
                    register: span.start,
                    timeout,
                })?
                .map_err(|e| LinkError::Transport {
                    device: id.clone(),
                    table: span.table.as_str(),
                    register: span.start,
                    reason: e.to_string(),
                })?;
            let answer = match &answer {
                Ok(SpanData::Words(w)) => SpanAnswer::Words(w),
                Ok(SpanData::Bits(b)) => SpanAnswer::Bits(b),
                Err(code) => SpanAnswer::Exception(u8::from(*code)),
            };
            span_points(&self.device, span, answer, &mut out);
        }
        out.sort_by_key(|p| p.point);
        self.ctx = Some(ctx);
        Ok(out)
    }
}
