//! The simulated rack on the network: a Modbus TCP server in front of the register bank, and
//! optionally the same racks as Modbus RTU on a serial port (`rtu`).
//!
//! This is the only part of `sim` that owns sockets, tasks and a clock. The demo, the integration
//! tests and the benchmarks start simulators in-process through [`start`] (many per process, on
//! ephemeral ports), so the server is a handle ([`RunningSim`]) plus one task, stopped through a
//! `CancellationToken` like every other long-lived task in emberwatch.
//!
//! tokio-modbus's TCP server spawns one task per connection on its own. To still account for
//! every task, each connection's service carries a [`TaskTrackerToken`]: the token is dropped
//! when the library's connection task ends, and [`RunningSim::stopped`] waits for all of them.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::bank::Bank;
use super::scenario::Scenario;

/// Modbus device addresses a unit may take (0 is broadcast, 248..=255 reserved).
pub const UNIT_RANGE: std::ops::RangeInclusive<u8> = 1..=247;

/// After a failed accept (typically: out of file descriptors) the listener is retried after this
/// pause rather than given up, as a real device's stack would.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How to start one simulated rack.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    /// Where to serve Modbus TCP; port 0 lets the OS pick (see [`RunningSim::local_addr`]).
    pub listen: SocketAddr,
    /// The unit id the rack answers to; other unit ids get exception 0x0B.
    pub unit: u8,
    /// The story the rack plays.
    pub scenario: Scenario,
    /// Time compression: scenario time runs this many times faster than the wall clock.
    pub speed: f64,
}

impl Default for SimOptions {
    /// The command line's defaults, so in-process users only spell out what differs.
    fn default() -> Self {
        SimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 5020)),
            unit: 1,
            scenario: Scenario::Normal,
            speed: 1.0,
        }
    }
}

/// Why a simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("sim on {listen}: speed {speed} is not a number above 0")]
    Speed { listen: SocketAddr, speed: f64 },
    #[error("sim on {listen}: unit {unit} is not a Modbus device address (1..=247)")]
    Unit { listen: SocketAddr, unit: u8 },
    #[error("sim: cannot listen on {listen}")]
    Bind {
        listen: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("sim: listening on {listen} but cannot learn the bound address")]
    LocalAddr {
        listen: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("sim on {listen}: unit {unit} given twice; every rack on a bus needs its own unit id")]
    DuplicateUnit { listen: SocketAddr, unit: u8 },
    #[error("sim: cannot serve Modbus RTU on {}: {reason}", path.display())]
    Rtu {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// What a simulator serves beyond one rack over TCP: more racks (unit ids) on the same bus, and
/// the same bus as Modbus RTU on a serial port.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimBus {
    /// More unit ids, each a rack of its own playing the same scenario.
    pub also_units: Vec<u8>,
    /// Serve RTU on this serial port too.
    pub rtu: Option<super::rtu::RtuPort>,
    /// Serve the SunSpec battery map at 40000 too (`--sunspec`).
    pub sunspec: bool,
}

/// A simulator that is serving. Dropping it stops the server too, so a failing test cannot
/// leave one behind.
#[derive(Debug)]
pub struct RunningSim {
    /// Where it actually listens (the real port when asked for port 0).
    pub local_addr: SocketAddr,
    rack: Arc<Rack>,
    units: Arc<Units>,
    server: JoinHandle<()>,
    rtu: Option<JoinHandle<()>>,
    connections: TaskTracker,
    _stop_on_drop: DropGuard,
}

/// Binds and starts serving; returns once the listener accepts connections. Cancelling `cancel`
/// stops the server and closes every client connection.
pub async fn start(opts: SimOptions, cancel: CancellationToken) -> Result<RunningSim, SimError> {
    start_with(opts, SimBus::default(), cancel).await
}

/// As [`start`], with more racks on the bus and/or RTU on a serial port. The TCP listener is
/// served either way: over RTU it is the maintenance port through which tests and operators
/// change registers while the serial port is busy with the client under test.
pub async fn start_with(
    opts: SimOptions,
    bus: SimBus,
    cancel: CancellationToken,
) -> Result<RunningSim, SimError> {
    let listen = opts.listen;
    if !(opts.speed.is_finite() && opts.speed > 0.0) {
        return Err(SimError::Speed {
            listen,
            speed: opts.speed,
        });
    }
    if !UNIT_RANGE.contains(&opts.unit) {
        return Err(SimError::Unit {
            listen,
            unit: opts.unit,
        });
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| SimError::Bind { listen, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| SimError::LocalAddr { listen, source })?;

    let mut racks: Vec<(u8, Arc<Rack>)> = Vec::new();
    let started = Instant::now();
    for unit in std::iter::once(opts.unit).chain(bus.also_units.iter().copied()) {
        if !UNIT_RANGE.contains(&unit) {
            return Err(SimError::Unit { listen, unit });
        }
        if racks.iter().any(|(u, _)| *u == unit) {
            return Err(SimError::DuplicateUnit { listen, unit });
        }
        racks.push((
            unit,
            Arc::new(Rack {
                local_addr,
                scenario: opts.scenario,
                speed: opts.speed,
                started,
                bank: Mutex::new(if bus.sunspec {
                    Bank::with_sunspec(opts.scenario, unit)
                } else {
                    Bank::new(opts.scenario)
                }),
                silent: AtomicBool::new(false),
            }),
        ));
    }
    let rack = Arc::clone(&racks[0].1);
    let units = Arc::new(Units(racks));
    let connections = TaskTracker::new();
    let stop = cancel.child_token();
    let rtu = match &bus.rtu {
        None => None,
        Some(port) => {
            let serial = super::rtu::open(port)?;
            Some(tokio::spawn(super::rtu::serve(
                serial,
                port.clone(),
                Arc::clone(&units),
                stop.clone(),
            )))
        }
    };
    let server = tokio::spawn(serve(
        listener,
        Arc::clone(&units),
        connections.clone(),
        stop.clone(),
    ));
    info!(
        sim = %local_addr,
        unit = opts.unit,
        scenario = %opts.scenario,
        speed = opts.speed,
        "simulated rack serving Modbus TCP"
    );
    Ok(RunningSim {
        local_addr,
        rack,
        units,
        server,
        rtu,
        connections,
        _stop_on_drop: stop.drop_guard(),
    })
}

impl RunningSim {
    /// Waits, after the token given to [`start`] is cancelled, until the listener is closed and
    /// every client connection has ended.
    pub async fn stopped(self) {
        let RunningSim {
            local_addr,
            server,
            rtu,
            connections,
            _stop_on_drop,
            ..
        } = self;
        if let Err(e) = server.await {
            error!(sim = %local_addr, "simulator server task failed: {e}");
        }
        if let Some(rtu) = rtu {
            if let Err(e) = rtu.await {
                error!(sim = %local_addr, "simulator RTU task failed: {e}");
            }
        }
        connections.close();
        connections.wait().await;
        debug!(sim = %local_addr, "simulator stopped");
    }

    /// Sets a register as a client's FC06 would: it overrides the scenario from now on.
    /// Addresses outside the bank are ignored (and logged), as a device would refuse them.
    pub fn write(&self, addr: u16, value: u16) {
        if let Err(e) = self.rack.bank().write(addr, &[value]) {
            warn!(sim = %self.local_addr, "in-process write to register {addr} refused: {e}");
        }
    }

    /// As [`RunningSim::write`], on the rack of another unit on the bus (ignored if no such unit).
    pub fn write_unit(&self, unit: u8, addr: u16, value: u16) {
        match self.units.get(unit) {
            Some(rack) => {
                if let Err(e) = rack.bank().write(addr, &[value]) {
                    warn!(sim = %self.local_addr, "in-process write to unit {unit} register {addr} refused: {e}");
                }
            }
            None => warn!(sim = %self.local_addr, "in-process write to unit {unit}: no such unit"),
        }
    }

    /// The register as a client would read it now, or `None` outside the bank. Works during a
    /// comm-loss silence too: the silence is on the wire, not in the rack.
    pub fn read(&self, addr: u16) -> Option<u16> {
        self.rack.bank().get(self.rack.scenario_time(), addr)
    }

    /// Seconds of scenario time played so far (wall time since start × speed), for narrating
    /// the scenario's timeline.
    pub fn scenario_time(&self) -> f64 {
        self.rack.scenario_time()
    }
}

/// Every rack on the simulated bus, by unit id.
#[derive(Debug)]
pub(super) struct Units(Vec<(u8, Arc<Rack>)>);

impl Units {
    pub(super) fn get(&self, unit: u8) -> Option<&Arc<Rack>> {
        self.0.iter().find(|(u, _)| *u == unit).map(|(_, r)| r)
    }
}

/// The state every connection of one simulated rack shares.
#[derive(Debug)]
pub(super) struct Rack {
    local_addr: SocketAddr,
    scenario: Scenario,
    speed: f64,
    /// tokio's clock rather than std's, so a test that pauses time also holds the scenario.
    started: Instant,
    bank: Mutex<Bank>,
    /// Whether comm-loss is currently silent; only kept to log each transition once.
    silent: AtomicBool,
}

impl Rack {
    fn scenario_time(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * self.speed
    }

    /// A panic while holding the lock cannot leave the bank half-written (writes are checked
    /// before they start), so a poisoned lock is still good to use.
    fn bank(&self) -> MutexGuard<'_, Bank> {
        self.bank.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answers(&self, t: f64) -> bool {
        let answers = self.scenario.answers(t);
        let was_silent = self.silent.swap(!answers, Ordering::Relaxed);
        if was_silent == answers {
            let t = format!("{t:.1}s");
            if answers {
                info!(sim = %self.local_addr, %t, "comm-loss: answering again");
            } else {
                info!(sim = %self.local_addr, %t, "comm-loss: going silent");
            }
        }
        answers
    }
}

/// The accept loop, until `stop` is cancelled. Dropping tokio-modbus's `serve` future cancels the
/// connection tasks it spawned.
async fn serve(
    listener: TcpListener,
    units: Arc<Units>,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    let Some(local_addr) = units.0.first().map(|(_, r)| r.local_addr) else {
        return;
    };
    let server = Server::new(listener);
    let on_connected = |stream: TcpStream, peer: SocketAddr| {
        debug!(sim = %local_addr, %peer, "client connected");
        let device = Device {
            units: Arc::clone(&units),
            peer: peer.to_string(),
            rtu: false,
            _connection: Some(connections.token()),
        };
        async move { io::Result::Ok(Some((device, stream))) }
    };
    let on_process_error = move |e: io::Error| {
        debug!(sim = %local_addr, "client connection failed: {e}");
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            result = server.serve(&on_connected, on_process_error) => {
                if let Err(e) = result {
                    warn!(sim = %local_addr, "accepting connections failed, retrying: {e}");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_RETRY) => {}
                }
            }
        }
    }
    info!(sim = %local_addr, "simulated rack stopped serving");
}

/// One client connection's (or the serial port's) view of the racks.
#[derive(Debug)]
pub(super) struct Device {
    pub(super) units: Arc<Units>,
    /// The TCP peer or the serial port, for logs.
    pub(super) peer: String,
    /// On a serial bus a request for another unit is none of our business: no answer at all.
    /// Over TCP the simulator acts as a gateway and answers exception 0x0B.
    pub(super) rtu: bool,
    /// Held for as long as tokio-modbus's task for this TCP connection lives.
    pub(super) _connection: Option<TaskTrackerToken>,
}

impl Device {
    /// `Ok(None)` means no reply at all: how a silent device looks to its poller.
    fn answer(&self, req: SlaveRequest<'static>) -> Result<Option<Response>, ExceptionCode> {
        let Some(rack) = self.units.get(req.slave) else {
            if self.rtu {
                return Ok(None);
            }
            return Err(ExceptionCode::GatewayTargetDevice);
        };
        let t = rack.scenario_time();
        if !rack.answers(t) {
            debug!(sim = %rack.local_addr, peer = %self.peer, "comm-loss: request dropped");
            return Ok(None);
        }
        let response = match req.request {
            Request::ReadHoldingRegisters(addr, count) => {
                Response::ReadHoldingRegisters(rack.bank().read(t, addr, count)?)
            }
            Request::ReadInputRegisters(addr, count) => {
                Response::ReadInputRegisters(rack.bank().read(t, addr, count)?)
            }
            Request::WriteSingleRegister(addr, value) => {
                rack.bank().write(addr, &[value])?;
                self.log_write(rack, addr, &[value]);
                Response::WriteSingleRegister(addr, value)
            }
            Request::WriteMultipleRegisters(addr, values) => {
                rack.bank().write(addr, &values)?;
                self.log_write(rack, addr, &values);
                // The bank accepted at most MAX_WRITE values, so the count fits.
                let count =
                    u16::try_from(values.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
                Response::WriteMultipleRegisters(addr, count)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        Ok(Some(response))
    }

    /// Overrides change what every poller sees from then on; the operator should find out why
    /// a value froze in the log.
    fn log_write(&self, rack: &Rack, addr: u16, values: &[u16]) {
        info!(
            sim = %rack.local_addr,
            peer = %self.peer,
            "register {addr} overridden by a client: {values:?}"
        );
    }
}

impl Service for Device {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(self.answer(req))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        debug!(peer = %self.peer, "client disconnected");
    }
}
