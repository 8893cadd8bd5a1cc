//! The simulator as a poller meets it: real TCP connections from tokio-modbus's client to
//! simulators started in-process on ephemeral ports, plus the command line's parsing. Waits use
//! deadlines, never fixed sleeps, so a busy machine slows these tests down but does not fail them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use tokio::time::{timeout, Instant};
use tokio_modbus::client::{tcp, Context};
use tokio_modbus::prelude::*;
use tokio_util::sync::CancellationToken;

use super::map::*;
use super::*;

/// Longest any single wait in these tests may take before it counts as a failure.
const DEADLINE: Duration = Duration::from_secs(10);

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start_sim(
    scenario: Scenario,
    speed: f64,
) -> anyhow::Result<(RunningSim, CancellationToken)> {
    let cancel = CancellationToken::new();
    let opts = SimOptions {
        listen: any_port(),
        scenario,
        speed,
        ..SimOptions::default()
    };
    Ok((start(opts, cancel.clone()).await?, cancel))
}

async fn connect(addr: SocketAddr, unit: u8) -> anyhow::Result<Context> {
    timeout(DEADLINE, tcp::connect_slave(addr, Slave(unit)))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connect to {addr}"))
}

/// A read that must get an answer (a value or an exception) in time.
async fn read(
    ctx: &mut Context,
    addr: u16,
    count: u16,
) -> anyhow::Result<Result<Vec<u16>, ExceptionCode>> {
    Ok(timeout(DEADLINE, ctx.read_holding_registers(addr, count))
        .await
        .context("read timed out")??)
}

#[tokio::test]
async fn reads_writes_and_refusals_over_tcp() -> anyhow::Result<()> {
    let (sim, cancel) = start_sim(Scenario::Stuck, 1.0).await?;
    let mut ctx = connect(sim.local_addr, 1).await?;

    // One coalesced read across the whole rack block, gaps included.
    let words = read(&mut ctx, MODULE_TEMP_FIRST, 33).await??;
    assert_eq!(words.len(), 33);
    assert_eq!(words[16], 250, "max cell temperature, 25.0 °C");
    assert_eq!(words[17..20], [0, 0, 0], "unmapped registers read 0");
    assert_eq!(words[30], 8000, "rack voltage, 800.0 V");
    assert_eq!(words[32], 95, "state of charge");
    let input = timeout(DEADLINE, ctx.read_input_registers(MODULE_TEMP_FIRST, 33)).await???;
    assert_eq!(input, words, "FC04 reads the same map");

    // FC06 and FC16 writes override the scenario, and the in-process API sees them.
    timeout(DEADLINE, ctx.write_single_register(HYDROGEN, 55)).await???;
    assert_eq!(read(&mut ctx, HYDROGEN, 1).await??, [55]);
    assert_eq!(sim.read(HYDROGEN), Some(55));
    timeout(
        DEADLINE,
        ctx.write_multiple_registers(RACK_VOLTAGE, &[7000, 0xfff6]),
    )
    .await???;
    assert_eq!(read(&mut ctx, RACK_VOLTAGE, 3).await??, [7000, 0xfff6, 95]);
    sim.write(OFFGAS, 77);
    assert_eq!(read(&mut ctx, OFFGAS, 1).await??, [77]);
    assert_eq!(sim.read(BANK_LEN), None);

    // Refusals, each with the exception a real device sends.
    assert_eq!(
        read(&mut ctx, BANK_LEN, 1).await?,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        read(&mut ctx, BANK_LEN - 1, 2).await?,
        Err(ExceptionCode::IllegalDataAddress)
    );
    let write = timeout(DEADLINE, ctx.write_single_register(BANK_LEN, 1)).await??;
    assert_eq!(write, Err(ExceptionCode::IllegalDataAddress));
    let coils = timeout(DEADLINE, ctx.read_coils(0, 1)).await??;
    assert_eq!(coils, Err(ExceptionCode::IllegalFunction));
    ctx.set_slave(Slave(2));
    assert_eq!(
        read(&mut ctx, CELL_TEMP_MAX, 1).await?,
        Err(ExceptionCode::GatewayTargetDevice)
    );
    ctx.set_slave(Slave(1));
    assert_eq!(read(&mut ctx, CELL_TEMP_MAX, 1).await??, [250]);

    // Stopping must not wait for the client to hang up, and must close the listener.
    let addr = sim.local_addr;
    cancel.cancel();
    timeout(DEADLINE, sim.stopped())
        .await
        .context("stop with a client still connected")?;
    assert!(tcp::connect(addr).await.is_err(), "{addr} still accepts");
    Ok(())
}

#[tokio::test]
async fn comm_loss_times_out_then_recovers() -> anyhow::Result<()> {
    // At speed 10 the first silence is 0.5 s..2.0 s of wall time.
    let (sim, cancel) = start_sim(Scenario::CommLoss, 10.0).await?;
    let client_timeout = Duration::from_millis(150);
    let deadline = Instant::now() + DEADLINE;
    let mut ctx = connect(sim.local_addr, 1).await?;
    let mut timed_out = false;
    loop {
        if Instant::now() > deadline {
            bail!("comm-loss: timed out = {timed_out}, but no recovery before the deadline");
        }
        match timeout(client_timeout, ctx.read_holding_registers(CELL_TEMP_MAX, 1)).await {
            Err(_elapsed) => {
                timed_out = true;
                // A fresh connection, as a poller would open: no reply is owed on it.
                ctx = connect(sim.local_addr, 1).await?;
            }
            Ok(answer) => {
                let words = answer??;
                assert_eq!(words.len(), 1);
                if timed_out {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    cancel.cancel();
    timeout(DEADLINE, sim.stopped()).await?;
    Ok(())
}

#[tokio::test]
async fn thermal_runaway_plays_out_over_the_wire() -> anyhow::Result<()> {
    // At speed 100, smoke reaches fire 1 (t = 60 s) after 0.6 s.
    let (sim, cancel) = start_sim(Scenario::ThermalRunaway, 100.0).await?;
    let mut ctx = connect(sim.local_addr, 1).await?;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let words = read(&mut ctx, CELL_TEMP_MAX, 6).await??;
        let (cell, smoke, offgas) = (words[0] as i16, words[4], words[5]);
        if smoke >= 3 {
            assert!(cell >= 640, "fire 1 but the cell is at {cell} (0.1 °C)");
            assert!(offgas >= 300, "fire 1 but off-gas is at {offgas} ppm");
            break;
        }
        if Instant::now() > deadline {
            bail!("smoke stage still {smoke} at the deadline");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    timeout(DEADLINE, sim.stopped()).await?;
    Ok(())
}

#[tokio::test]
async fn many_sims_share_a_process_without_sharing_state() -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let mut sims = Vec::new();
    for _ in 0..20 {
        let opts = SimOptions {
            listen: any_port(),
            scenario: Scenario::Stuck,
            ..SimOptions::default()
        };
        sims.push(start(opts, cancel.clone()).await?);
    }
    let ports: std::collections::HashSet<_> = sims.iter().map(|s| s.local_addr.port()).collect();
    assert_eq!(ports.len(), sims.len());
    sims[0].write(SMOKE_STAGE, 4);
    for (i, sim) in sims.iter().enumerate() {
        let mut ctx = connect(sim.local_addr, 1).await?;
        let expected = if i == 0 { 4 } else { 0 };
        assert_eq!(
            read(&mut ctx, SMOKE_STAGE, 1).await??,
            [expected],
            "sim {i}"
        );
    }
    cancel.cancel();
    for sim in sims {
        timeout(DEADLINE, sim.stopped()).await?;
    }
    Ok(())
}

#[tokio::test]
async fn dropping_a_running_sim_stops_it() -> anyhow::Result<()> {
    let (sim, _cancel) = start_sim(Scenario::Normal, 1.0).await?;
    let addr = sim.local_addr;
    drop(sim);
    let deadline = Instant::now() + DEADLINE;
    while tcp::connect(addr).await.is_ok() {
        if Instant::now() > deadline {
            bail!("{addr} still accepts after its RunningSim was dropped");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn start_errors_name_the_address() -> anyhow::Result<()> {
    let (sim, cancel) = start_sim(Scenario::Normal, 1.0).await?;
    let taken = SimOptions {
        listen: sim.local_addr,
        ..SimOptions::default()
    };
    match start(taken.clone(), cancel.clone()).await {
        Err(e @ SimError::Bind { .. }) => {
            assert!(e.to_string().contains(&sim.local_addr.to_string()), "{e}")
        }
        other => bail!("expected a bind error, got {other:?}"),
    }
    for speed in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let opts = SimOptions {
            speed,
            ..taken.clone()
        };
        let e = start(opts, cancel.clone())
            .await
            .err()
            .context("bad speed accepted")?;
        assert!(matches!(e, SimError::Speed { .. }), "{e}");
    }
    let opts = SimOptions { unit: 0, ..taken };
    let e = start(opts, cancel.clone())
        .await
        .err()
        .context("unit 0 accepted")?;
    assert!(matches!(e, SimError::Unit { .. }), "{e}");
    cancel.cancel();
    timeout(DEADLINE, sim.stopped()).await?;
    Ok(())
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    sim: SimArgs,
}

fn parse(args: &[&str]) -> Result<SimArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("sim").chain(args.iter().copied())).map(|cli| cli.sim)
}

#[test]
fn command_line_defaults_are_the_spec_ones() -> anyhow::Result<()> {
    let opts = parse(&[])?.options()?;
    assert_eq!(opts, SimOptions::default());
    assert_eq!(opts.listen.to_string(), "127.0.0.1:5020");
    let args = parse(&[
        "--scenario",
        "thermal-runaway",
        "--speed",
        "2.5",
        "--unit",
        "7",
    ])?;
    let opts = args.options()?;
    assert_eq!(
        (opts.scenario, opts.speed, opts.unit),
        (Scenario::ThermalRunaway, 2.5, 7)
    );
    Ok(())
}

#[test]
fn command_line_refusals() {
    let bad: &[&[&str]] = &[
        &["--speed", "0"],
        &["--speed", "-2"],
        &["--speed", "fast"],
        &["--unit", "0"],
        &["--unit", "300"],
        &["--scenario", "meltdown"],
        &["--listen", "localhost"],
        &["--baud", "9600"],
        &["--parity", "odd"],
        &["--units", "0-10"],
        &["--units", "5-2"],
        &["--units", "1-248"],
        &["--units", "7"],
        &["--units", "1-10", "--unit", "3"],
    ];
    for args in bad {
        assert!(parse(args).is_err(), "accepted {args:?}");
    }
}

#[test]
fn rtu_options_reach_the_bus() -> anyhow::Result<()> {
    let args = parse(&[
        "--rtu",
        "/dev/ttyUSB0",
        "--baud",
        "9600",
        "--parity",
        "none",
        "--also-unit",
        "2",
        "--also-unit",
        "3",
    ])?;
    let bus = args.bus();
    assert_eq!(bus.also_units, vec![2, 3]);
    let rtu = bus.rtu.context("no RTU port")?;
    assert_eq!(
        (rtu.path.to_string_lossy().as_ref(), rtu.baud, rtu.parity),
        ("/dev/ttyUSB0", 9600, Parity::None)
    );
    Ok(())
}

/// `--units 1-100` is one address answering 100 unit ids, as a Modbus TCP gateway does.
#[test]
fn a_unit_range_is_every_unit_of_the_bus() -> anyhow::Result<()> {
    let args = parse(&["--units", "1-100", "--also-unit", "200"])?;
    assert_eq!(args.options()?.unit, 1);
    let also = args.bus().also_units;
    assert_eq!(also.len(), 100);
    assert_eq!((also[0], also[98], also[99]), (2, 100, 200));
    Ok(())
}

#[tokio::test]
async fn a_missing_serial_port_is_named() {
    let bus = SimBus {
        also_units: vec![],
        sunspec: false,
        rtu: Some(RtuPort {
            path: "/nonexistent/tty-emberwatch".into(),
            baud: 19200,
            parity: Parity::None,
        }),
    };
    let opts = SimOptions {
        listen: any_port(),
        ..SimOptions::default()
    };
    let e = start_with(opts, bus, CancellationToken::new())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("/nonexistent/tty-emberwatch"), "{e}");
}

#[test]
fn banner_is_the_line_scripts_parse() {
    let opts = SimOptions {
        scenario: Scenario::CommLoss,
        speed: 10.0,
        ..SimOptions::default()
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], 40123));
    assert_eq!(
        banner(&opts, addr),
        "emberwatch sim: listening on 127.0.0.1:40123 (unit 1, scenario comm-loss, speed 10)"
    );
}
