//! The demo's redundant pair (issue 13): two real gateways, gw-b1 and gw-b2, watch the battery
//! room, and the demo kills the active one mid-drain to show the other carry on.
//!
//! Each gateway is the real daemon (`daemon::serve`) on a single-threaded tokio runtime of its
//! own, on a thread of its own, as `emberwatch run` runs one. That is what lets one process play
//! a box dying: [`Gateway::kill`] drops the runtime in the middle of whatever it was doing, every
//! task with it, so its broker connection closes without an MQTT DISCONNECT and the broker
//! publishes its last will, and none of its shutdown code runs (no offline status, nothing saved
//! beyond what it had already fsynced), as after a SIGKILL or a power cut. The demo stays one
//! process that needs nothing installed and leaves nothing running.

use std::net::SocketAddr;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The demo's site.
pub(super) const SITE: &str = "demo-site";
/// The gateway active when both start: `priority = 1`.
pub(super) const FIRST: &str = "gw-b1";
/// Its standby peer: `priority = 2`.
pub(super) const SECOND: &str = "gw-b2";

/// One gateway of the pair, running until it is stopped or killed.
pub(super) struct Gateway {
    pub(super) id: String,
    stop: CancellationToken,
    kill: CancellationToken,
    thread: JoinHandle<()>,
}

impl Gateway {
    /// Starts the daemon on `cfg` on a runtime and thread of its own.
    pub(super) fn start(cfg: Config) -> Result<Gateway, String> {
        let id = cfg.site.gateway.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("{id}: cannot start its runtime: {e}"))?;
        let (stop, kill) = (CancellationToken::new(), CancellationToken::new());
        let (stopping, killed, name) = (stop.clone(), kill.clone(), id.clone());
        let thread = std::thread::Builder::new()
            .name(format!("demo-{id}"))
            .spawn(move || {
                let served = rt.block_on(async move {
                    tokio::select! {
                        r = crate::daemon::serve(cfg, stopping) => Some(r),
                        () = killed.cancelled() => None,
                    }
                });
                // Killed: the daemon's tasks are dropped here without being polled again, their
                // sockets closed mid-session. Stopped: they have all ended already.
                rt.shutdown_background();
                if let Some(Err(e)) = served {
                    tracing::error!(gateway = %name, "demo gateway stopped: {e}");
                }
            })
            .map_err(|e| format!("{id}: cannot start its thread: {e}"))?;
        Ok(Gateway {
            id,
            stop,
            kill,
            thread,
        })
    }

    /// Kills it the way a power cut would (see the module comment); returns at once.
    pub(super) fn kill(&self) {
        self.kill.cancel();
    }

    /// Stops it cleanly (its offline status is published) and waits up to `within` for that.
    pub(super) async fn stop(self, within: Duration) {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + within;
        while !self.thread.is_finished() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The configuration of `gateway`, one of the pair: the battery room (one rack with its
/// detectors, thresholds as in config/emberwatch.toml), the pair's `[redundancy]`, and a storage
/// directory of its own under `storage`, as two boxes would each have their own disk.
pub(super) fn gateway_config(
    gateway: &str,
    broker: SocketAddr,
    sim: SocketAddr,
    storage: &Path,
) -> String {
    let (peer, priority) = if gateway == FIRST {
        (SECOND, 1)
    } else {
        (FIRST, 2)
    };
    format!(
        r#"
[site]
id = "{SITE}"
gateway = "{gateway}"

[mqtt]
url = "mqtt://{broker}"
keep_alive = "2s"                # the standby takes over within 1.5 x this + 2 s of a death

[storage]
dir = "{storage}"

[redundancy]
peer = "{peer}"
priority = {priority}

[[devices]]
id = "rack-01"
zone = "battery-room-1"
transport = "modbus-tcp"
address = "{sim}"
unit = 1
poll_interval = "250ms"
timeout = "500ms"

  [[devices.points]]
  id = "cell_temp_max"
  kind = "temperature"
  address = 116
  type = "i16"
  scale = 0.1
  unit = "degC"
  valid = [-40.0, 150.0]

  [[devices.points]]
  id = "smoke_stage"
  kind = "smoke"
  address = 120
  type = "u16"
  unit = "stage"

  [[devices.points]]
  id = "offgas"
  kind = "offgas"
  address = 121
  type = "u16"
  unit = "ppm"

  [[devices.points]]
  id = "hydrogen"
  kind = "hydrogen"
  address = 122
  type = "u16"
  scale = 0.1
  unit = "%LEL"

  [[devices.points]]
  id = "rack_voltage"
  kind = "voltage"
  address = 130
  type = "u16"
  scale = 0.1
  unit = "V"

[[rules]]
id = "offgas"
points = ["*/offgas"]
above = {{ warning = 20.0, critical = 100.0 }}
deadband = 5.0

[[rules]]
id = "hydrogen"
points = ["*/hydrogen"]
above = {{ warning = 10.0, critical = 25.0 }}
deadband = 1.0

[[rules]]
id = "smoke"
points = ["*/smoke_stage"]
above = {{ warning = 1.0, critical = 2.0, emergency = 3.0 }}

[[rules]]
id = "cell-overtemp"
points = ["*/cell_temp_max"]
above = {{ warning = 45.0, critical = 55.0, emergency = 65.0 }}
deadband = 1.0

[[rules]]
id = "cell-temp-rise"
points = ["*/cell_temp_max"]
rate_of_rise = {{ per_minute = 8.3, window = "20s", severity = "critical" }}

[[rules]]
id = "confirmed-fire"
vote = {{ alarms = ["*/offgas/*", "*/smoke/*"], need = 2, at_least = "warning", severity = "emergency" }}

[drain]
trigger = "critical"
deadline = "30s"
agents = ["{agent}"]
"#,
        agent = super::DEMO_AGENT,
        storage = storage.join(gateway).display()
    )
}
