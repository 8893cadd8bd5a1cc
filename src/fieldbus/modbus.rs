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

/// Room for the largest reply frame and more: bytes that arrive behind the reply come in with
/// it, and are caught without another read.
const READ_BUF: usize = 512;

/// One request and its reply on an open connection. Bytes waiting before the request, or
/// arriving right behind the reply, are a protocol fault: they would otherwise be read as the
/// answer to a later request.
///
/// The reply is read into one buffer larger than any frame, usually in one read: a read that
/// comes back short has drained the socket (so nothing was behind the reply at that moment,
/// which is what the check for trailing bytes asks), and tokio then knows the socket is not
/// readable, so that check and the next request's costs no system call. Reading the header and
/// the PDU apart took three reads a poll (the last one only to hear "nothing more"); at 1,000
/// devices a second that was a third of the gateway's system calls.
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
    let mut buf = [0u8; READ_BUF];
    let mut have = 0;
    // The whole frame's length, once its header is in.
    let mut frame: Option<usize> = None;
    let frame = loop {
        // `have` is short of a frame (at most HEADER + MAX_PDU), so there is always room.
        let n = stream.read(&mut buf[have..]).await.map_err(io)?;
        if n == 0 {
            // What `read_exact` said here, so the message is the same.
            return Err(Failure::Io("early eof".into()));
        }
        have += n;
        if frame.is_none() && have >= mbap::HEADER {
            let mut head = [0u8; mbap::HEADER];
            head.copy_from_slice(&buf[..mbap::HEADER]);
            let len = mbap::header(&head, transaction, unit).map_err(Failure::Protocol)?;
            frame = Some(mbap::HEADER + len);
        }
        match frame {
            Some(total) if have >= total => break total,
            _ => {}
        }
    };
    let payload = mbap::reply(&buf[mbap::HEADER..frame], span.table, span.count)
        .map_err(Failure::Protocol)?;
    // Behind the reply: what came in the same read, and whatever is still waiting (read only if
    // the buffer came back full; a short read left nothing).
    let more = match pending(stream) {
        Pending::Bytes(n) => n,
        Pending::None | Pending::Closed => 0,
    };
    let trailing = have - frame + more;
    if trailing > 0 {
        return Err(Failure::Protocol(Problem::Trailing(trailing)));
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

#[cfg(test)]
mod tests {
    //! The exchange against a real loopback socket whose far end sends the reply the way a
    //! device (or a slow gateway, or a hostile one) might: in pieces, with bytes behind it, cut
    //! short, or with bytes sent later.

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::decode::Table;

    /// Holding registers 100-102 of unit 5.
    fn span() -> ReadSpan {
        ReadSpan {
            table: Table::Holding,
            start: 100,
            count: 3,
            points: Vec::new(),
        }
    }

    /// The reply to transaction `t` for `span()`: 1, 2, 3.
    fn reply(t: u16) -> Vec<u8> {
        mbap::reply_frame(t, 5, &mbap::words_pdu(Table::Holding, &[1, 2, 3]))
    }

    /// A connected pair: ours, and the device's end.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let ours = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (theirs, _) = listener.accept().await.expect("accept");
        (ours, theirs)
    }

    /// The outcome as the operator would read it.
    fn said(r: Result<Payload, Failure>) -> Result<Payload, String> {
        r.map_err(|f| match f {
            Failure::Io(reason) => format!("io: {reason}"),
            Failure::Protocol(p) => p.to_string(),
        })
    }

    /// Reads the 12-byte request, then writes each of `parts` with a pause between them.
    fn device(mut theirs: TcpStream, parts: Vec<Vec<u8>>) -> tokio::task::JoinHandle<TcpStream> {
        tokio::spawn(async move {
            let mut req = [0u8; 12];
            theirs.read_exact(&mut req).await.expect("request");
            for part in parts {
                theirs.write_all(&part).await.expect("write");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            theirs
        })
    }

    #[tokio::test]
    async fn a_reply_that_arrives_in_pieces_is_put_together() {
        let (mut ours, theirs) = pair().await;
        let r = reply(7);
        // Inside the header, at its end, inside the PDU.
        let parts = vec![
            r[..3].to_vec(),
            r[3..7].to_vec(),
            r[7..10].to_vec(),
            r[10..].to_vec(),
        ];
        let dev = device(theirs, parts);
        let got = said(exchange(&mut ours, 7, 5, &span()).await);
        assert_eq!(got, Ok(Payload::Words(vec![1, 2, 3])));
        let _ = dev.await;
    }

    #[tokio::test]
    async fn bytes_behind_the_reply_in_the_same_segment_are_counted() {
        let (mut ours, theirs) = pair().await;
        let mut r = reply(7);
        r.extend_from_slice(&[0xA5; 5]);
        let dev = device(theirs, vec![r]);
        let got = said(exchange(&mut ours, 7, 5, &span()).await);
        assert_eq!(got, Err("reply followed by 5 unexpected bytes".to_string()));
        let _ = dev.await;
    }

    #[tokio::test]
    async fn more_bytes_behind_the_reply_than_one_read_takes_are_all_counted() {
        let (mut ours, theirs) = pair().await;
        let mut r = reply(7);
        r.extend_from_slice(&[0xA5; 1000]);
        let dev = device(theirs, vec![r]);
        // Everything is waiting before the first read: the buffer comes back full and the rest
        // is counted from the socket.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = said(exchange(&mut ours, 7, 5, &span()).await);
        assert_eq!(
            got,
            Err("reply followed by 1000 unexpected bytes".to_string())
        );
        let _ = dev.await;
    }

    #[tokio::test]
    async fn bytes_sent_after_the_reply_are_caught_before_the_next_request() {
        let (mut ours, theirs) = pair().await;
        let dev = device(theirs, vec![reply(7), vec![0xA5; 3]]);
        let got = said(exchange(&mut ours, 7, 5, &span()).await);
        assert_eq!(got, Ok(Payload::Words(vec![1, 2, 3])));
        let _theirs = dev.await.expect("device");
        let got = said(exchange(&mut ours, 8, 5, &span()).await);
        assert_eq!(
            got,
            Err("3 unexpected bytes sent before any request".to_string())
        );
    }

    #[tokio::test]
    async fn a_connection_closed_inside_a_reply_is_a_transport_error() {
        let (mut ours, theirs) = pair().await;
        let r = reply(7);
        let dev = tokio::spawn(async move {
            let mut theirs = theirs;
            let mut req = [0u8; 12];
            theirs.read_exact(&mut req).await.expect("request");
            theirs.write_all(&r[..9]).await.expect("write");
            // Dropped: closed mid-PDU.
        });
        let got = said(exchange(&mut ours, 7, 5, &span()).await);
        assert_eq!(got, Err("io: early eof".to_string()));
        let _ = dev.await;
    }

    #[tokio::test]
    async fn a_wrong_header_is_refused_before_its_pdu_arrives() {
        let (mut ours, theirs) = pair().await;
        // Only the header, of another transaction; the PDU never comes.
        let dev = device(theirs, vec![reply(9)[..7].to_vec()]);
        let got = tokio::time::timeout(Duration::from_secs(5), exchange(&mut ours, 7, 5, &span()))
            .await
            .map(said);
        assert_eq!(
            got,
            Ok(Err(
                "reply to transaction 9 while transaction 7 was asked".to_string()
            ))
        );
        let _ = dev.await;
    }
}
