//! `emberwatch discover`: the network side. Connects to a Modbus TCP address, finds the SunSpec
//! marker, walks the model chain ([`super::chain`]) and reads the battery models, then prints
//! the models and a profile block ([`super::profile`]).
//!
//! Its own small client on the gateway's framing ([`crate::fieldbus::mbap`]) rather than a
//! poller's: discovery reads addresses nobody configured, one question at a time, and every
//! answer (an exception, silence, a malformed reply) must end in a sentence for the operator.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chain::{self, ChainError, Model, Walk};
use super::models;
use super::profile::{self, Found};
use crate::decode::Table;
use crate::fieldbus::frame::Payload;
use crate::fieldbus::{exception_name, mbap};

/// `emberwatch discover` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct DiscoverArgs {
    /// The device's (or Modbus gateway's) Modbus TCP address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub address: String,
    /// The Modbus unit id to ask (behind a gateway: the device's address on its bus).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub unit: u8,
    /// How long to wait for the connection and for each answer.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The id of the profile printed (`[a-z0-9-]+`), what devices name with `profile = ...`.
    #[arg(long, value_name = "ID", default_value = "sunspec-battery", value_parser = profile_id)]
    pub profile: String,
}

fn profile_id(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a profile id ([a-z0-9-]+)"))
    }
}

/// Why discovery failed; each says what was asked of whom.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("{address} unit {unit}: no SunSpec marker \"SunS\" (0x53756E53) in holding registers 40000, 50000 or 0 ({tried})")]
    NoMarker {
        address: String,
        unit: u8,
        tried: String,
    },
    #[error("{address} unit {unit}: {what}: {reason}")]
    Read {
        address: String,
        unit: u8,
        what: String,
        reason: String,
    },
    #[error("{address} unit {unit}: {source}")]
    Chain {
        address: String,
        unit: u8,
        source: ChainError,
    },
}

/// Why one read failed.
#[derive(Debug)]
enum ReadFail {
    /// The device answered with an exception: it is there, the registers are not.
    Exception(u8),
    /// Anything else: silence, a broken connection, a malformed reply; the connection is
    /// not to be used again.
    Link(String),
}

impl std::fmt::Display for ReadFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadFail::Exception(c) => {
                write!(f, "Modbus exception {c} ({})", exception_name(*c))
            }
            ReadFail::Link(r) => f.write_str(r),
        }
    }
}

struct Client {
    stream: TcpStream,
    unit: u8,
    transaction: u16,
    timeout: Duration,
}

impl Client {
    async fn read(&mut self, start: u16, count: u16) -> Result<Vec<u16>, ReadFail> {
        self.transaction = self.transaction.wrapping_add(1);
        let t = self.transaction;
        let unit = self.unit;
        let stream = &mut self.stream;
        let exchange = async move {
            let io = |e: std::io::Error| ReadFail::Link(e.to_string());
            let req = mbap::read_request(t, unit, Table::Holding, start, count);
            stream.write_all(&req).await.map_err(io)?;
            let mut head = [0u8; mbap::HEADER];
            stream.read_exact(&mut head).await.map_err(io)?;
            let len = mbap::header(&head, t, unit)
                .map_err(|p| ReadFail::Link(format!("malformed reply: {p}")))?;
            let mut pdu = [0u8; mbap::MAX_PDU];
            let pdu = &mut pdu[..len];
            stream.read_exact(pdu).await.map_err(io)?;
            match mbap::reply(pdu, Table::Holding, count) {
                Ok(Payload::Words(w)) => Ok(w),
                Ok(Payload::Exception(c)) => Err(ReadFail::Exception(c)),
                Ok(Payload::Bits(_)) => Err(ReadFail::Link("bits in a register reply".into())),
                Err(p) => Err(ReadFail::Link(format!("malformed reply: {p}"))),
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ReadFail::Link(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    /// `count` registers from `start`, in reads of at most 125.
    async fn read_long(&mut self, start: u16, count: u16) -> Result<Vec<u16>, ReadFail> {
        let mut out = Vec::with_capacity(usize::from(count));
        let mut at = u32::from(start);
        let end = u32::from(start) + u32::from(count);
        while at < end {
            let n = (end - at).min(125) as u16;
            out.extend(self.read(at as u16, n).await?);
            at += u32::from(n);
        }
        Ok(out)
    }
}

/// What discovery found.
#[derive(Debug)]
pub struct Discovered {
    pub base: u16,
    pub models: Vec<Model>,
    pub end: Option<u16>,
    /// Model 1's manufacturer, model and serial number, when there is a model 1.
    pub common: Option<[String; 3]>,
    pub batteries: Vec<Found>,
}

/// Finds the marker, walks the chain and reads the battery models of `unit` at `address`.
pub async fn discover(
    address: &str,
    unit: u8,
    timeout: Duration,
) -> Result<Discovered, DiscoverError> {
    let connect = |reason: String| DiscoverError::Connect {
        address: address.to_string(),
        reason,
    };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| {
            connect(format!(
                "no connection within {}",
                humantime::format_duration(timeout)
            ))
        })?
        .map_err(|e| connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let mut c = Client {
        stream,
        unit,
        transaction: 0,
        timeout,
    };
    let read_err = |what: String, e: ReadFail| DiscoverError::Read {
        address: address.to_string(),
        unit,
        what,
        reason: e.to_string(),
    };
    // The marker: an exception at one base is "not here"; silence or garbage ends the search.
    let mut tried = Vec::new();
    let mut base = None;
    for b in chain::BASES {
        match c.read(b, 2).await {
            Ok(w) if chain::is_marker(&w) => {
                base = Some(b);
                break;
            }
            Ok(w) => tried.push(format!("{b}: {:#06x} {:#06x}", w[0], w[1])),
            Err(e @ ReadFail::Exception(_)) => tried.push(format!("{b}: {e}")),
            Err(e) => {
                return Err(read_err(
                    format!("reading holding registers {b}-{}", u32::from(b) + 1),
                    e,
                ))
            }
        }
    }
    let Some(base) = base else {
        return Err(DiscoverError::NoMarker {
            address: address.to_string(),
            unit,
            tried: tried.join("; "),
        });
    };
    let mut walk = Walk::after_marker(base);
    let chain_err = |source| DiscoverError::Chain {
        address: address.to_string(),
        unit,
        source,
    };
    while let Some(at) = walk.next_header().map_err(chain_err)? {
        let w = c.read(at, 2).await.map_err(|e| {
            read_err(
                format!(
                    "reading the model header at register {at} (after {} models, no end marker 0xFFFF yet)",
                    walk.models().len()
                ),
                e,
            )
        })?;
        walk.header(w[0], w[1]).map_err(chain_err)?;
    }
    let mut common = None;
    let mut batteries = Vec::new();
    for m in walk.models() {
        if m.id == 1 && m.len >= models::COMMON_LEN {
            let w = c
                .read_long(m.start, models::COMMON_LEN + 2)
                .await
                .map_err(|e| read_err(format!("reading model 1 at register {}", m.start), e))?;
            let s =
                |(off, n): (u16, u16)| chain::string(&w[usize::from(off)..usize::from(off + n)]);
            common = Some([
                s(models::COMMON_MN),
                s(models::COMMON_MD),
                s(models::COMMON_SN),
            ]);
        }
        if let Some(n) = profile::body_len(m) {
            let words = c.read_long(m.start, n).await.map_err(|e| {
                read_err(format!("reading model {} at register {}", m.id, m.start), e)
            })?;
            batteries.push(Found {
                model: m.clone(),
                words,
            });
        }
    }
    Ok(Discovered {
        base,
        end: walk.end(),
        models: walk.models().to_vec(),
        common,
        batteries,
    })
}

/// What `discover` prints: the models, then the profile block (last, ready to paste).
pub fn report(args: &DiscoverArgs, d: &Discovered) -> String {
    let mut out = String::new();
    let origin = format!("{} unit {}", args.address, args.unit);
    let _ = writeln!(
        out,
        "# SunSpec map of {origin}: marker \"SunS\" at holding register {}",
        d.base
    );
    if let Some([mn, md, sn]) = &d.common {
        let _ = writeln!(
            out,
            "# manufacturer {mn:?}, model {md:?}, serial number {sn:?}"
        );
    }
    let _ = writeln!(
        out,
        "# {:>6}  {:<28} {:>6} {:>6}",
        "model", "name", "start", "length"
    );
    for m in &d.models {
        let _ = writeln!(
            out,
            "# {:>6}  {:<28} {:>6} {:>6}",
            m.id,
            models::name(m.id),
            m.start,
            m.len
        );
    }
    if let Some(end) = d.end {
        let _ = writeln!(out, "# end marker 0xFFFF at register {end}");
    }
    match profile::block(&args.profile, &origin, &d.batteries) {
        Some(block) => {
            let _ = writeln!(out, "\n{block}");
        }
        None => {
            let _ = writeln!(
                out,
                "# no battery model (802, 803, 804, 805) with a point to read: no profile to write"
            );
        }
    }
    out
}

/// `emberwatch discover`.
pub async fn run_cli(args: DiscoverArgs) -> Result<(), DiscoverError> {
    let d = discover(&args.address, args.unit, args.timeout).await?;
    print!("{}", report(&args, &d));
    Ok(())
}
