//! The drain agent's watchdog: systemd's `WatchdogSec=` is pinged only while the worker loop
//! and every broker loop are alive. Apart from the worker because it judges the worker from
//! outside (a hook that runs within its timeout is busy, not hung).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Pulse;
use crate::mqtt::Publisher;

/// What the watchdog knows of the worker loop: when it last came round, and since when it
/// has been handling one message (running a hook, at most `timeout`, then acking).
#[derive(Default)]
pub(super) struct WorkerPulse {
    idle: Pulse,
    busy: Pulse,
    is_busy: AtomicBool,
}

impl WorkerPulse {
    pub(super) fn idle(&self) {
        self.is_busy.store(false, Ordering::Release);
        self.idle.mark();
    }

    pub(super) fn busy(&self) {
        self.busy.mark();
        self.is_busy.store(true, Ordering::Release);
    }

    /// Why the worker looks hung, if it does: idle but not coming round for `STALL`, or busy
    /// with one message for longer than a hook may run (`timeout`) plus `STALL`.
    fn stalled(&self, timeout: Duration) -> Option<String> {
        if self.is_busy.load(Ordering::Acquire) {
            let for_ = self.busy.silent_for();
            return (for_ > timeout + STALL).then(|| {
                format!(
                    "one drain message has been handled for {}s (hook timeout {}s)",
                    for_.as_secs(),
                    timeout.as_secs()
                )
            });
        }
        let quiet = self.idle.silent_for();
        (quiet > STALL)
            .then(|| format!("the agent loop has not come round for {}s", quiet.as_secs()))
    }
}

/// Hung, rather than busy or waiting for a broker, after this long.
const STALL: Duration = Duration::from_secs(10);

/// Pings systemd's watchdog (`WatchdogSec=` in the unit) while the worker and every broker
/// loop are alive. A hook that runs is not a hang: its own timeout bounds it, so the unit's
/// WatchdogSec need not exceed the hook timeout.
pub(super) async fn watch_over(
    publisher: Publisher,
    pulse: Arc<WorkerPulse>,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stalled_links = publisher.stalled_links(STALL);
        let worker = pulse.stalled(timeout);
        if !stalled_links.is_empty() {
            tracing::error!(brokers = ?stalled_links, "MQTT broker loop stopped running: withholding the watchdog ping");
        }
        if let Some(why) = &worker {
            tracing::error!("{why}: withholding the watchdog ping");
        }
        if stalled_links.is_empty() && worker.is_none() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_hook_is_busy_not_hung_until_its_timeout_has_passed() {
        let timeout = Duration::from_secs(120);
        let mut p = WorkerPulse::default();
        p.idle();
        assert_eq!(p.stalled(timeout), None);
        // A hook started 100 s ago, within its 120 s timeout: not hung.
        p.busy();
        p.busy = Pulse::marked_ago(Duration::from_secs(100));
        assert_eq!(p.stalled(timeout), None);
        // Past its timeout and the slack: the worker is stuck.
        p.busy = Pulse::marked_ago(Duration::from_secs(200));
        assert_eq!(
            p.stalled(timeout).as_deref(),
            Some("one drain message has been handled for 200s (hook timeout 120s)")
        );
    }

    #[test]
    fn an_idle_loop_that_stops_coming_round_is_hung() {
        let p = WorkerPulse {
            idle: Pulse::marked_ago(Duration::from_secs(30)),
            ..WorkerPulse::default()
        };
        assert_eq!(
            p.stalled(Duration::from_secs(60)).as_deref(),
            Some("the agent loop has not come round for 30s")
        );
        p.idle();
        assert_eq!(p.stalled(Duration::from_secs(60)), None);
    }
}
