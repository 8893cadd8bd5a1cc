//! A simulated Li-ion battery rack and UPS speaking Modbus, so that emberwatch can be developed,
//! demonstrated and tested without a battery room, and so that a fire can be rehearsed on demand.
//!
//! The register map ([`map`]) is the contract in SPEC.md. What the sensors read is a pure
//! function of scenario time ([`scenario`]); the register bank with client overrides lives in
//! `bank`, and only `server` touches the network. `emberwatch sim` is [`run_cli`]; the demo,
//! tests and benchmarks use [`start`] directly.

mod bank;
pub mod map;
pub mod scenario;
mod server;
#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use scenario::{RackState, Scenario};
pub use server::{start, RunningSim, SimError, SimOptions};

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
    /// Serve Modbus RTU on this serial port instead of TCP (not built yet).
    #[arg(long, value_name = "PATH")]
    pub rtu: Option<PathBuf>,
    /// Serial speed for --rtu.
    #[arg(long, value_name = "N", default_value_t = 19200, requires = "rtu")]
    pub baud: u32,
    /// Serial parity for --rtu.
    #[arg(long, value_enum, default_value_t = Parity::Even, requires = "rtu")]
    pub parity: Parity,
}

/// Serial parity, for `--rtu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl SimArgs {
    /// What to start, or why the command line asks for something this build cannot serve.
    pub fn options(&self) -> Result<SimOptions, SimError> {
        if let Some(path) = &self.rtu {
            return Err(SimError::RtuNotBuilt { path: path.clone() });
        }
        Ok(SimOptions {
            listen: self.listen,
            unit: self.unit,
            scenario: self.scenario,
            speed: self.speed,
        })
    }
}

/// `emberwatch sim`: serve until Ctrl-C or SIGTERM, then close every connection and return.
pub async fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    let opts = args.options()?;
    let cancel = CancellationToken::new();
    let sim = start(opts.clone(), cancel.clone()).await?;
    {
        // Scripts and tests started with `--listen 127.0.0.1:0` read the port from this line, so
        // it must leave the process now, not when a buffer fills.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", banner(&opts, sim.local_addr))
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

/// `--speed` must be a finite number above 0: zero would freeze time, a negative one reverse it.
fn parse_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed > 0.0 => Ok(speed),
        _ => Err(format!(
            "{text:?} is not a number above 0 (e.g. 1, 10, 0.5)"
        )),
    }
}
