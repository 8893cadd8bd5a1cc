//! Field buses: where readings come from.
//!
//! Each device is polled by its own task on its own `poll_interval`, so a device that hangs until
//! its timeout never delays another. A poll yields one [`Reading`]: either the decoded points, or
//! the reason the device could not be read at all. Both go to the rule engine; silence is never
//! reported as "normal".

pub mod modbus;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Now;
use crate::config::{Config, Device, Transport};
use crate::decode::{DecodeError, Decoded};

/// The outcome of one poll of one device.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Index of the device in the configuration.
    pub device: usize,
    /// When the poll finished.
    pub at: Now,
    /// How long the poll took (all requests, including a reconnect).
    pub latency: Duration,
    pub outcome: Result<Vec<PointReading>, LinkError>,
}

/// One point of a successful poll.
#[derive(Debug, Clone, PartialEq)]
pub struct PointReading {
    /// Index of the point in its device.
    pub point: usize,
    pub result: Result<Decoded, PointError>,
}

/// Why one point has no value although its device answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PointError {
    #[error("register {address}: Modbus exception {code} ({name})")]
    Exception {
        address: u16,
        code: u8,
        name: String,
    },
    #[error("register {address}: {source}")]
    Decode { address: u16, source: DecodeError },
}

/// Why a device could not be read at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinkError {
    #[error("device {device}: cannot connect to {address}: {reason}")]
    Connect {
        device: String,
        address: String,
        reason: String,
    },
    #[error("device {device} {table} register {register}: no answer within {timeout:?}")]
    Timeout {
        device: String,
        table: &'static str,
        register: u16,
        timeout: Duration,
    },
    #[error("device {device} {table} register {register}: {reason}")]
    Transport {
        device: String,
        table: &'static str,
        register: u16,
        reason: String,
    },
    #[error("device {device}: transport {transport} is not built yet")]
    Unsupported {
        device: String,
        transport: &'static str,
    },
}

/// Starts one polling task per device; readings go to `tx` until `cancel`.
pub fn spawn_pollers(
    cfg: &Config,
    tx: mpsc::Sender<Reading>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) {
    for (index, device) in cfg.devices.iter().enumerate() {
        let device = device.clone();
        let tx = tx.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            poll_loop(index, device, tx, cancel).await;
        });
    }
}

async fn poll_loop(
    index: usize,
    device: Device,
    tx: mpsc::Sender<Reading>,
    cancel: CancellationToken,
) {
    let mut link = modbus::ModbusDevice::new(device.clone());
    let mut ticker = tokio::time::interval(device.poll_interval);
    // A slow poll must not be followed by a burst of catch-up polls that hog a shared bus.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let reading = tokio::select! {
            _ = cancel.cancelled() => break,
            r = link.poll(index) => r,
        };
        if let Err(e) = &reading.outcome {
            tracing::debug!(device = %device.id, error = %e, "poll failed");
        }
        if tx.send(reading).await.is_err() {
            break; // the engine is gone: shutting down
        }
    }
    link.close().await;
}

/// Whether this build can poll a transport; the daemon refuses to start otherwise.
pub fn supported(t: &Transport) -> bool {
    matches!(
        t,
        Transport::ModbusTcp { .. } | Transport::ModbusRtuOverTcp { .. }
    )
}
