//! What systemd is told about the daemon: READY once the devices have answered, and watchdog
//! pings only while the poll loops, the broker loops and the engine loop all keep running.
//!
//! Kept apart from `daemon` because it is a judgement of its own (when is the gateway alive?)
//! with its own tests; the daemon only feeds it readings and ticks it once a second.

use std::time::Duration;

use crate::config::Config;
use crate::fieldbus;

/// The log target these lines had while they lived in `daemon`, kept so that what operators
/// filter (`RUST_LOG=emberwatch::daemon=...`) and search for in the journal does not change.
const TARGET: &str = "emberwatch::daemon";

/// A broker loop that has not come round for this long is hung (it beats every
/// [`crate::mqtt::PULSE`], through backoffs too); well inside `WatchdogSec=30s`.
pub(crate) const LINK_STALL: Duration = Duration::from_secs(10);

/// How long start-up may wait for every device's first good answer before telling systemd it is
/// ready anyway (a dead device is a fault alarm, not a reason to hold the whole service back).
const READY_WAIT: Duration = Duration::from_secs(30);

/// What systemd is told: READY once every device has answered (or after [`READY_WAIT`]), and
/// watchdog pings only while every poll loop keeps delivering readings, so a hung task stops
/// the pings and systemd restarts the daemon.
pub(crate) struct Supervision {
    started: std::time::Instant,
    /// Per device: when its poll loop last delivered a reading (answer or not), and whether it
    /// ever answered.
    last: Vec<Option<std::time::Instant>>,
    answered: Vec<bool>,
    ready: bool,
    watchdog: Option<Duration>,
}

impl Supervision {
    pub(crate) fn new(cfg: &Config) -> Supervision {
        Supervision {
            started: std::time::Instant::now(),
            last: vec![None; cfg.devices.len()],
            answered: vec![false; cfg.devices.len()],
            ready: false,
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// Every reading, as the engine loop takes it: its poll loop is alive.
    pub(crate) fn saw(&mut self, r: &fieldbus::Reading) {
        self.last[r.device] = Some(std::time::Instant::now());
        self.answered[r.device] |= r.outcome.is_ok();
    }

    /// Once a second from the engine loop (so a hung engine loop stops the pings too).
    /// `stalled_links` are the broker loops that stopped coming round. Returns whether the
    /// watchdog was pinged.
    pub(crate) fn tick(&mut self, cfg: &Config, stalled_links: &[String]) -> bool {
        let now = std::time::Instant::now();
        if !self.ready {
            let all = self.answered.iter().all(|a| *a);
            if all || now.duration_since(self.started) >= READY_WAIT {
                let silent: Vec<&str> = cfg
                    .devices
                    .iter()
                    .zip(&self.answered)
                    .filter(|(_, a)| !**a)
                    .map(|(d, _)| d.id.as_str())
                    .collect();
                if silent.is_empty() {
                    tracing::info!(target: TARGET, "every device answered: ready");
                } else {
                    tracing::warn!(target: TARGET, devices = ?silent, "ready, but these devices have not answered yet");
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                self.ready = true;
            }
        }
        if self.watchdog.is_none() || !self.ready {
            return false;
        }
        // A poll loop is alive if its last reading is no older than one cycle at its slowest:
        // the interval plus a timeout for each request, plus slack.
        let stale: Vec<&str> = cfg
            .devices
            .iter()
            .zip(&self.last)
            .filter(|(d, last)| {
                let requests = crate::decode::plan_reads(&d.points, d.max_gap).len() as u32 + 1;
                let bound = d.poll_interval + d.timeout * requests + Duration::from_secs(5);
                let since = last.unwrap_or(self.started);
                now.duration_since(since) > bound
            })
            .map(|(d, _)| d.id.as_str())
            .collect();
        if !stale.is_empty() {
            tracing::error!(target: TARGET, devices = ?stale, "poll loops stopped delivering readings: withholding the watchdog ping");
        }
        if !stalled_links.is_empty() {
            tracing::error!(target: TARGET, brokers = ?stalled_links, "MQTT broker loops stopped running: withholding the watchdog ping");
        }
        if stale.is_empty() && stalled_links.is_empty() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Now;

    fn watched() -> (Config, Supervision) {
        let cfg = crate::mqtt::harness::config("mqtt://127.0.0.1:1883");
        let mut s = Supervision::new(&cfg);
        s.watchdog = Some(Duration::from_secs(30));
        (cfg, s)
    }

    fn answered(device: usize) -> fieldbus::Reading {
        fieldbus::Reading {
            device,
            at: Now::system(),
            latency: Duration::from_millis(1),
            outcome: Ok(vec![]),
        }
    }

    #[test]
    fn the_watchdog_is_pinged_only_while_poll_and_broker_loops_run() {
        let (cfg, mut s) = watched();
        // Before every device answered (and before READY_WAIT) nothing is pinged.
        assert!(!s.tick(&cfg, &[]));
        s.saw(&answered(0));
        assert!(s.tick(&cfg, &[]), "ready, every loop alive: pinged");
        assert!(s.ready);
        // A hung broker loop withholds the ping even though the pollers are fine.
        assert!(!s.tick(&cfg, &["mqtt://127.0.0.1:1883".to_string()]));
        assert!(s.tick(&cfg, &[]));
        // A poll loop that stopped delivering withholds it too.
        if let Some(past) = std::time::Instant::now().checked_sub(Duration::from_secs(3600)) {
            s.last[0] = Some(past);
            assert!(!s.tick(&cfg, &[]));
        }
    }
}
