//! The simulated racks on a serial port: Modbus RTU served by tokio-modbus's RTU server.
//!
//! Using a second, independent Modbus implementation here (rather than emberwatch's own framing)
//! means the daemon's RTU client is tested against someone else's idea of the protocol. A real
//! device survives its cable being pulled, so this does too: when the port errors or vanishes
//! (the test harness kills and recreates a pty pair to play an unplugged USB adapter), it is
//! reopened as soon as it is back, until the simulator is stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_modbus::server::rtu::Server;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::server::{Device, SimError, Units};
use super::Parity;

/// How often a vanished port is looked for again.
const REOPEN_EVERY: Duration = Duration::from_millis(50);

/// A serial port to serve RTU on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtuPort {
    pub path: PathBuf,
    pub baud: u32,
    pub parity: Parity,
}

/// Opens the port (8 data bits, 1 stop bit, as the Modbus serial spec's even-parity default).
pub(super) fn open(port: &RtuPort) -> Result<tokio_serial::SerialStream, SimError> {
    let parity = match port.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let builder = tokio_serial::new(port.path.to_string_lossy(), port.baud)
        .parity(parity)
        .data_bits(tokio_serial::DataBits::Eight)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None);
    tokio_serial::SerialStream::open(&builder).map_err(|e| SimError::Rtu {
        path: port.path.clone(),
        reason: e.to_string(),
    })
}

/// Serves RTU on `serial` until `stop`, reopening the port whenever it fails.
pub(super) async fn serve(
    serial: tokio_serial::SerialStream,
    port: RtuPort,
    units: Arc<Units>,
    stop: CancellationToken,
) {
    let name = port.path.display().to_string();
    info!(port = %name, baud = port.baud, parity = ?port.parity, "simulated racks serving Modbus RTU");
    let mut serial = Some(serial);
    loop {
        let Some(stream) = serial.take() else {
            // Look for the port again until it is back.
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(REOPEN_EVERY) => {}
            }
            match open(&port) {
                Ok(s) => {
                    info!(port = %name, "serial port back: serving Modbus RTU again");
                    serial = Some(s);
                }
                Err(e) => debug!("{e}"),
            }
            continue;
        };
        let service = Device {
            units: Arc::clone(&units),
            peer: name.clone(),
            rtu: true,
            _connection: None,
        };
        let result = tokio::select! {
            _ = stop.cancelled() => break,
            r = Server::new(stream).serve_forever(service) => r,
        };
        match result {
            Ok(()) => warn!(port = %name, "serial port closed; reopening"),
            Err(e) => warn!(port = %name, "serial port failed ({e}); reopening"),
        }
    }
    info!(port = %name, "simulated racks stopped serving Modbus RTU");
}
