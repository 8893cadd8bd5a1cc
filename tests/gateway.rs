//! Racks behind one Modbus TCP gateway, as a site with a Moxa MGate sees them: one simulator
//! answering several unit ids on one port plays the gateway. The daemon must use one TCP
//! connection for all of them, publish every rack's telemetry, and when the gateway dies raise
//! comm-loss for each rack with a message naming the gateway's address.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const UNITS: [u8; 4] = [1, 2, 3, 4];

/// Established TCP connections to `port` on 127.0.0.1, as `ss -tn` lists them.
fn connections_to(port: u16) -> usize {
    let out = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            "dst",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success(), "ss failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn config(mqtt: u16, gateway: &str, state: &Path) -> String {
    let profiles =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/profiles/emberwatch-sim.toml");
    let mut c = format!(
        "include = ['{}']\n[site]\nid = \"test-site\"\ngateway = \"gw-t\"\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt}\"\n[storage]\ndir = '{}'\n",
        profiles.display(),
        state.display()
    );
    for unit in UNITS {
        // Rack 1 is polled ten times as often as the others: it must not take their turns.
        let interval = if unit == 1 { "300ms" } else { "3s" };
        c.push_str(&format!(
            "[[devices]]\nid = \"rack-{unit:02}\"\nzone = \"room-1\"\naddress = \"{gateway}\"\n\
             unit = {unit}\npoll_interval = \"{interval}\"\ntimeout = \"300ms\"\n\
             profile = \"sim-rack-bms\"\n"
        ));
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racks_behind_one_gateway_share_one_connection_and_all_report() {
    let broker = Mosquitto::start().await;
    let mut sim = Sim::start_with(
        "normal",
        1,
        &["--also-unit", "2", "--also-unit", "3", "--also-unit", "4"],
    )
    .await;
    let gateway = sim.addr().to_string();
    let state = tempfile::tempdir().expect("tempdir");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let daemon = Daemon::start(&config(broker.port(), &gateway, state.path()));
    let soon = Duration::from_secs(15);
    for unit in UNITS {
        let topic = format!("{P}/telemetry/rack-{unit:02}");
        let t = sub
            .expect_where(&topic, |j| j["quality"] == "good", soon)
            .await;
        assert!(
            t["points"]["cell_temp_max"].is_number(),
            "rack-{unit:02}: {t}\n{}",
            daemon.stderr()
        );
    }
    // Every rack has reported, so the daemon is polling all four: over a second of polls
    // (rack 1 three or four times), one connection, never more.
    for _ in 0..10 {
        assert_eq!(
            connections_to(sim.port()),
            1,
            "connections to the gateway {gateway}; daemon:\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    sim.kill().await;
    for unit in UNITS {
        let alarm = format!("{P}/alarms/room-1/rack-{unit:02}/_link/comm-loss");
        let ev = sub
            .expect_where(&alarm, |j| j["state"] == "active", soon)
            .await;
        let message = ev["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!(
                "rack-{unit:02} (unit {unit} behind gateway {gateway})"
            )),
            "comm-loss of rack-{unit:02} does not name the gateway: {ev}"
        );
    }
}
