//! Modbus TCP devices: connect, read the coalesced plan, decode.
//!
//! Any transport error or timeout drops the connection: a late answer to a timed-out request
//! would otherwise be taken as the answer to the next one. The next poll reconnects.
//!
//! RTU over TCP is not here: a serial device server fronts one RS-485 bus, so its devices share
//! one bus owner and its framing and error counting (`bus`), like a local serial port.

use std::time::Duration;

use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::{Slave, SlaveContext};
use tokio_modbus::{Request, Response};

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

/// What a device answered to one read of the plan.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SpanData {
    Words(Vec<u16>),
    Bits(Vec<bool>),
    /// A Modbus exception code: the device refused the read.
    Exception(u8),
}

/// Reads one span of the plan over `ctx`; `Err` is a link fault, in words for an operator.
///
/// Not tokio-modbus's `Reader` methods: they check the answer's function code but not its size,
/// only `debug_assert` it, so a device answering with another number of registers than asked
/// panicked the poll task of a debug build (found by the `modbus_tcp` fuzz target) and was
/// taken silently by a release build. An answer of the wrong size is refused here, naming both
/// counts. Coils and discrete inputs come in whole bytes, so up to 7 bits of padding are fine.
pub(crate) async fn read_span(ctx: &mut Context, span: &ReadSpan) -> Result<SpanData, String> {
    let request = match span.table {
        Table::Holding => Request::ReadHoldingRegisters(span.start, span.count),
        Table::Input => Request::ReadInputRegisters(span.start, span.count),
        Table::Coil => Request::ReadCoils(span.start, span.count),
        Table::Discrete => Request::ReadDiscreteInputs(span.start, span.count),
    };
    let response = match ctx.call(request).await.map_err(|e| e.to_string())? {
        Ok(r) => r,
        Err(code) => return Ok(SpanData::Exception(u8::from(code))),
    };
    let asked = usize::from(span.count);
    let wrong = |what: &str, got: usize| {
        format!(
            "answered {got} {what} to a read of {asked} from {} {}",
            span.table.as_str(),
            span.start
        )
    };
    match response {
        Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) => {
            if w.len() == asked {
                Ok(SpanData::Words(w))
            } else {
                Err(wrong("registers", w.len()))
            }
        }
        Response::ReadCoils(mut b) | Response::ReadDiscreteInputs(mut b) => {
            if b.len() >= asked && b.len() < asked + 8 {
                b.truncate(asked);
                Ok(SpanData::Bits(b))
            } else {
                Err(wrong("bits", b.len()))
            }
        }
        // tokio-modbus refuses an answer with another function code before this.
        _ => Err(format!(
            "answered another function than a read of {} {}",
            span.table.as_str(),
            span.start
        )),
    }
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
            let answer = tokio::time::timeout(timeout, read_span(&mut ctx, span))
                .await
                .map_err(|_| LinkError::Timeout {
                    device: id.clone(),
                    table: span.table.as_str(),
                    register: span.start,
                    timeout,
                })?
                .map_err(|reason| LinkError::Transport {
                    device: id.clone(),
                    table: span.table.as_str(),
                    register: span.start,
                    reason,
                })?;
            let answer = match &answer {
                SpanData::Words(w) => SpanAnswer::Words(w),
                SpanData::Bits(b) => SpanAnswer::Bits(b),
                SpanData::Exception(code) => SpanAnswer::Exception(*code),
            };
            span_points(&self.device, span, answer, &mut out);
        }
        out.sort_by_key(|p| p.point);
        self.ctx = Some(ctx);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A device on the other end of an in-memory socket that answers the first request with
    /// `pdu` (its transaction id and unit copied from the request).
    async fn answer(span: ReadSpan, pdu: &[u8]) -> Result<SpanData, String> {
        let (client, mut device) = tokio::io::duplex(4096);
        let pdu = pdu.to_vec();
        let device = tokio::spawn(async move {
            let mut req = [0u8; 12];
            device.read_exact(&mut req).await.unwrap();
            let len = u16::try_from(pdu.len() + 1).unwrap().to_be_bytes();
            let mut adu = vec![req[0], req[1], 0, 0, len[0], len[1], req[6]];
            adu.extend_from_slice(&pdu);
            device.write_all(&adu).await.unwrap();
            device
        });
        let mut ctx = tokio_modbus::client::tcp::attach_slave(client, Slave(1));
        let got = read_span(&mut ctx, &span).await;
        drop(device.await);
        got
    }

    fn span(table: Table, count: u16) -> ReadSpan {
        ReadSpan {
            table,
            start: 116,
            count,
            points: vec![0],
        }
    }

    /// Found by the `modbus_tcp` fuzz target: tokio-modbus only debug-asserted the count, so
    /// this panicked the poll task of a debug build and was accepted by a release build.
    #[tokio::test]
    async fn more_or_fewer_registers_than_asked_is_a_link_fault_naming_both_counts() {
        let three = [3, 6, 0, 1, 0, 2, 0, 3];
        assert_eq!(
            answer(span(Table::Holding, 2), &three).await,
            Err("answered 3 registers to a read of 2 from holding 116".into())
        );
        assert_eq!(
            answer(span(Table::Holding, 4), &three).await,
            Err("answered 3 registers to a read of 4 from holding 116".into())
        );
        assert_eq!(
            answer(span(Table::Holding, 3), &three).await,
            Ok(SpanData::Words(vec![1, 2, 3]))
        );
    }

    #[tokio::test]
    async fn bits_may_carry_the_padding_of_their_last_byte_but_no_more() {
        assert_eq!(
            answer(span(Table::Coil, 3), &[1, 1, 0b101]).await,
            Ok(SpanData::Bits(vec![true, false, true]))
        );
        assert_eq!(
            answer(span(Table::Coil, 9), &[1, 1, 0xff]).await,
            Err("answered 8 bits to a read of 9 from coil 116".into())
        );
        assert_eq!(
            answer(span(Table::Holding, 1), &[0x83, 0x02]).await,
            Ok(SpanData::Exception(2))
        );
    }
}
