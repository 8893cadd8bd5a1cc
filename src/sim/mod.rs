//! A simulated Li-ion battery rack and UPS speaking Modbus, so that emberwatch can be developed,
//! demonstrated and tested without a battery room, and so that a fire can be rehearsed on demand.
//!
//! The register map ([`map`]) is the contract in SPEC.md. What the sensors read is a pure
//! function of scenario time ([`scenario`]); the register bank with client overrides lives in
//! `bank`, and only `server` touches the network. `emberwatch sim` is [`run_cli`]; the demo,
//! tests and benchmarks use [`start`] directly. `rtu` serves the same racks as Modbus RTU on a
//! serial port (`--rtu`), several of them on one bus with `--also-unit`. `sunspec` lays the rack
//! out a second time as a SunSpec battery at 40000 (`--sunspec`).

mod bank;
pub mod map;
mod rtu;
pub mod scenario;
mod server;
pub mod sunspec;
#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use rtu::RtuPort;
pub use scenario::{RackState, Scenario};
pub use server::{start, start_with, RunningSim, SimBus, SimError, SimOptions};

/// `emberwatch sim` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Where to serve Modbus TCP. Port 0 picks a free port; the chosen one is printed on stdout.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5020")]
    pub listen: SocketAddr,
    /// Modbus unit id to answer to; requests for any other unit get exception 0x0B.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=247))]
    pub unit: u8,
    /// The story the rack plays from the moment it starts.
    #[arg(long, value_name = "NAME", value_enum, default_value_t = Scenario::Normal)]
    pub scenario: Scenario,
    /// Run scenario time N times faster than the clock (10 plays thermal-runaway in seconds).
    #[arg(long, value_name = "N", default_value_t = 1.0, value_parser = parse_speed)]
    pub speed: f64,
    /// Another unit id on the same bus, a rack of its own playing the same scenario (repeatable).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=247))]
    pub also_unit: Vec<u8>,
    /// Answer every unit id from FIRST to LAST (e.g. `1-100`), a rack each, as a Modbus TCP
    /// gateway fronting a whole RS-485 bus does (in place of --unit).
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_units, conflicts_with = "unit")]
    pub units: Option<(u8, u8)>,
    /// Also serve Modbus RTU on this serial port (the TCP listener stays, for changing registers
    /// while the serial port is busy).
    #[arg(long, value_name = "PATH")]
    pub rtu: Option<PathBuf>,
    /// Serial speed for --rtu.
    #[arg(long, value_name = "N", default_value_t = 19200, requires = "rtu")]
    pub baud: u32,
    /// Serial parity for --rtu.
    #[arg(long, value_enum, default_value_t = Parity::Even, requires = "rtu")]
    pub parity: Parity,
    /// Also serve the rack as a SunSpec battery at holding register 40000 (models 1 common,
    /// 802 battery, 804 lithium-ion string, then the end marker), for `emberwatch discover`.
    #[arg(long)]
    pub sunspec: bool,
}

/// Serial parity, for `--rtu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl SimArgs {
    /// What to serve beyond one rack over TCP: more units, RTU on a serial port.
    pub fn bus(&self) -> SimBus {
        let range = self.units.map_or(Vec::new(), |(first, last)| {
            (first.saturating_add(1)..=last).collect()
        });
        SimBus {
            also_units: range
                .into_iter()
                .chain(self.also_unit.iter().copied())
                .collect(),
            sunspec: self.sunspec,
            rtu: self.rtu.as_ref().map(|path| RtuPort {
                path: path.clone(),
                baud: self.baud,
                parity: self.parity,
            }),
        }
    }

    /// What to start.
    pub fn options(&self) -> Result<SimOptions, SimError> {
        Ok(SimOptions {
            listen: self.listen,
            unit: self.units.map_or(self.unit, |(first, _)| first),
            scenario: self.scenario,
            speed: self.speed,
        })
    }
}

/// `emberwatch sim`: serve until Ctrl-C or SIGTERM, then close every connection and return.
pub async fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    let opts = args.options()?;
    let bus = args.bus();
    let cancel = CancellationToken::new();
    let sim = start_with(opts.clone(), bus.clone(), cancel.clone()).await?;
    {
        // Scripts and tests started with `--listen 127.0.0.1:0` read the port from this line, so
        // it must leave the process now, not when a buffer fills.
        let mut line = banner(&opts, sim.local_addr);
        if let Some((first, last)) = args.units {
            line.push_str(&format!(", units {first}-{last}"));
        } else if !bus.also_units.is_empty() {
            let more: Vec<String> = bus.also_units.iter().map(|u| u.to_string()).collect();
            line.push_str(&format!(", also units {}", more.join(",")));
        }
        if bus.sunspec {
            line.push_str(", SunSpec at 40000");
        }
        if let Some(rtu) = &bus.rtu {
            line.push_str(&format!(
                ", Modbus RTU on {} at {} baud, parity {}",
                rtu.path.display(),
                rtu.baud,
                match rtu.parity {
                    Parity::None => "none",
                    Parity::Even => "even",
                    Parity::Odd => "odd",
                }
            ));
        }
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .context("sim: cannot write the listening address to stdout")?;
    }
    let signal = shutdown_signal().await;
    cancel.cancel();
    sim.stopped().await;
    signal.context("sim: cannot watch for Ctrl-C / SIGTERM")?;
    tracing::info!("sim: stopped");
    Ok(())
}

/// The one line `emberwatch sim` prints on stdout.
pub fn banner(opts: &SimOptions, local_addr: SocketAddr) -> String {
    format!(
        "emberwatch sim: listening on {local_addr} (unit {}, scenario {}, speed {})",
        opts.unit, opts.scenario, opts.speed
    )
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what systemd and `docker stop` send).
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// `--units FIRST-LAST`: Modbus device addresses (1..=247), FIRST no greater than LAST.
fn parse_units(text: &str) -> Result<(u8, u8), String> {
    let bad =
        || format!("{text:?} is not a range of unit ids FIRST-LAST within 1-247 (e.g. 1-100)");
    let (first, last) = text.split_once('-').ok_or_else(bad)?;
    let unit = |s: &str| {
        s.trim()
            .parse::<u8>()
            .ok()
            .filter(|u| (1..=247).contains(u))
    };
    match (unit(first), unit(last)) {
        (Some(first), Some(last)) if first <= last => Ok((first, last)),
        _ => Err(bad()),
    }
}

/// `--speed` must be a finite number above 0: zero would freeze time, a negative one reverse it.
fn parse_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed > 0.0 => Ok(speed),
        _ => Err(format!(
            "{text:?} is not a number above 0 (e.g. 1, 10, 0.5)"
        )),
    }
}
