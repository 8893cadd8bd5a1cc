//! SIGHUP as an operator uses it after editing /etc/emberwatch/emberwatch.toml: a good file takes
//! effect without a restart; a bad one is refused with the reason in the log, and the gateway
//! keeps watching with what it had.

mod common;

use std::time::{Duration, Instant};

use common::*;

const ALARM: &str = "emberwatch/test-site/alarms/room-1/rack-01/cell_temp_max/cell-overtemp";
const SOON: Duration = Duration::from_secs(10);

async fn wait_log(daemon: &Daemon, needle: &str) {
    let deadline = Instant::now() + SOON;
    while !daemon.stderr().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_file_and_refuses_a_bad_one() {
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let state = tempfile::tempdir().expect("tempdir");
    let config = gateway_config(broker.port(), sim.port(), state.path(), "");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let daemon = Daemon::start(&config);
    sub.expect_where(
        &format!("{P}/telemetry/rack-01"),
        |j| j["quality"] == "good",
        SOON,
    )
    .await;

    // A bad edit: refused, logged with its key path, and the old rules keep working.
    std::fs::write(
        daemon.config_path(),
        config.replace("type = \"i16\"", "type = \"u17\""),
    )
    .expect("write bad config");
    daemon.signal("HUP");
    wait_log(&daemon, "reload refused").await;
    assert!(
        daemon.stderr().contains("devices[0].points[0].type"),
        "{}",
        daemon.stderr()
    );
    sim.write(116, 460).await; // 46 °C: warning under the running rules
    sub.expect_where(ALARM, |j| j["severity"] == "warning", SOON)
        .await;

    // A good edit: warning lowered to 40 °C, so 42 °C is now an alarm where it was not.
    sim.write(116, 250).await;
    sub.expect_where(ALARM, |j| j["state"] == "cleared", SOON)
        .await;
    std::fs::write(
        daemon.config_path(),
        config.replace("warning = 45.0", "warning = 40.0"),
    )
    .expect("write good config");
    daemon.signal("HUP");
    wait_log(&daemon, "reloading").await;
    sub.forget();
    sim.write(116, 420).await;
    let ev = sub
        .expect_where(ALARM, |j| j["state"] == "active", SOON)
        .await;
    assert_eq!(ev["threshold"], 40.0, "{ev}");
}

/// Renaming a device in the file (rack-01 becomes rack-07) and reloading: rack-01's alarm can
/// never change again, so subscribers are told it ended and why, and the zone stops listing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_renames_a_device_clears_its_alarms_with_the_reason() {
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let state = tempfile::tempdir().expect("tempdir");
    let config = gateway_config(broker.port(), sim.port(), state.path(), "");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let daemon = Daemon::start(&config);
    sim.write(116, 460).await; // 46 °C: warning
    let raised = sub
        .expect_where(ALARM, |j| j["state"] == "active", SOON)
        .await;

    std::fs::write(
        daemon.config_path(),
        config.replace("id = \"rack-01\"", "id = \"rack-07\""),
    )
    .expect("write renamed config");
    daemon.signal("HUP");
    let cleared = sub
        .expect_where(ALARM, |j| j["state"] == "cleared", SOON)
        .await;
    assert!(
        cleared["message"]
            .as_str()
            .is_some_and(|m| m.contains("rack-01 removed from the configuration")),
        "{cleared}"
    );
    assert_eq!(cleared["isa_state"], "normal", "{cleared}");
    assert!(
        cleared["seq"].as_u64() > raised["seq"].as_u64(),
        "{raised} then {cleared}"
    );
    // The zone forgets rack-01 and shows rack-07's own alarm (the same 46 °C).
    let key = "rack-01/cell_temp_max/cell-overtemp";
    sub.expect_where(
        &format!("{P}/zones/room-1/status"),
        |j| {
            let active = j["active"].as_array().cloned().unwrap_or_default();
            !active.iter().any(|k| k == key)
                && active
                    .iter()
                    .any(|k| k == "rack-07/cell_temp_max/cell-overtemp")
        },
        SOON,
    )
    .await;
}

/// A reload restarts the pipeline and reconnects, but the gateway never went away: a
/// subscriber to its status topic sees online, then online again, never offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_never_shows_the_gateway_offline() {
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let state = tempfile::tempdir().expect("tempdir");
    let config = gateway_config(broker.port(), sim.port(), state.path(), "");
    let status = format!("{P}/gateways/gw-t/status");
    let mut sub = Subscriber::connect(broker.port(), &status).await;
    let daemon = Daemon::start(&config);
    let first = sub
        .expect_where(&status, |j| j["state"] == "online", SOON)
        .await;
    std::fs::write(
        daemon.config_path(),
        config.replace("warning = 45.0", "warning = 40.0"),
    )
    .expect("write good config");
    daemon.signal("HUP");
    wait_log(&daemon, "reloading").await;
    // The new generation announces itself (a new connection, a new `started_at` is not
    // promised: the process did not restart).
    wait_log(&daemon, "connected as").await;
    let deadline = Instant::now() + SOON;
    while daemon.stderr().matches("connected as").count() < 2 {
        assert!(Instant::now() < deadline, "{}", daemon.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = sub.seen_list();
    assert!(!seen.contains("offline"), "{first}\n{seen}");
    assert!(
        seen.matches(r#"{"state":"online""#).count() >= 2,
        "no online from the reloaded generation:\n{seen}"
    );
}
