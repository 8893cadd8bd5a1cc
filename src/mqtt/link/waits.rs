//! What a broker loop's `select!` waits on besides rumqttc: timers and watches that may be
//! absent (a link without heartbeats, a gateway without a pair, no stop yet), each a future
//! that never resolves when absent. Apart from `broker.rs` to keep that file to its loop.

use tokio::time::{sleep_until, Instant};

/// Resolves when the gateway's role changed; never without a role to watch.
pub(super) async fn role_changed(
    role: &mut Option<tokio::sync::watch::Receiver<crate::pair::RoleStatus>>,
) {
    let alive = match role {
        Some(r) => r.changed().await.is_ok(),
        None => false,
    };
    if !alive {
        std::future::pending::<()>().await;
    }
}

/// When the stop grace runs out; never, before cancellation.
pub(super) async fn grace_over(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The next beat of a pair's gateway; never, for a gateway alone.
pub(super) async fn beat_tick(beat: &mut Option<(String, tokio::time::Interval)>) {
    match beat {
        Some((_, i)) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next heartbeat tick; never, for a link without heartbeats.
pub(super) async fn tick(heartbeat: &mut Option<tokio::time::Interval>) {
    match heartbeat {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
