//! The console pages people through Alertmanager (issue 12, step 6): a real gateway, simulator,
//! mosquitto and console with `alertmanager = "http://..."`, and Debian's
//! `prometheus-alertmanager` on a free port. An off-gas alarm must show up in Alertmanager's
//! `GET /api/v2/alerts` with the labels people route on, and be resolved when it clears.

mod common;
mod page_harness;

use std::process::Stdio;
use std::time::Duration;

use common::{free_port, gateway_config, Daemon, Mosquitto, Sim};
use page_harness::console::{curl, Console};
use serde_json::Value;
use tokio::process::{Child, Command};

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// The off-gas rule of config/emberwatch.toml, on the harness's `offgas` point (register 121).
const OFFGAS_RULE: &str = r#"
[[rules]]
id = "offgas"
points = ["*/offgas"]
above = { warning = 20.0, critical = 100.0 }
deadband = 5.0
"#;

/// Alertmanager with a route to nowhere (the test reads its API, no one is notified), its own
/// storage, and clustering off (it would bind port 9094).
struct Alertmanager {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    async fn start() -> Alertmanager {
        Alertmanager::start_on(free_port()).await
    }

    async fn start_on(port: u16) -> Alertmanager {
        assert!(
            std::path::Path::new(ALERTMANAGER).exists(),
            "{ALERTMANAGER} missing: apt-get install prometheus-alertmanager (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n",
        )
        .expect("write alertmanager.yml");
        let child = Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn prometheus-alertmanager");
        let am = Alertmanager {
            child,
            port,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !curl(&["-sf", &am.url("/-/ready")]).await.1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "alertmanager not ready on {port} after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        am
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `GET /api/v2/alerts`: the alerts Alertmanager holds as active (resolved ones are not
    /// listed).
    async fn alerts(&self) -> Vec<Value> {
        let (body, ok) = curl(&["-sf", &self.url("/api/v2/alerts")]).await;
        assert!(ok, "GET /api/v2/alerts failed");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("alerts: {e}: {body}"))
    }

    /// Waits for an alert whose `alarm` label is `alarm` and that satisfies `pred`.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let alerts = self.alerts().await;
            if pred(&alerts) {
                return alerts;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not seen within 20 s; Alertmanager holds {alerts:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn offgas_alerts(alerts: &[Value]) -> Vec<&Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alarm"] == "rack-01/offgas/offgas")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offgas_alarm_pages_through_alertmanager_and_resolves_when_it_clears() {
    let am = Alertmanager::start().await;
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let storage = tempfile::tempdir().expect("tempdir");
    let _gateway = Daemon::start(&gateway_config(
        broker.port(),
        sim.port(),
        storage.path(),
        OFFGAS_RULE,
    ));
    let console =
        Console::start(broker.port(), &format!("alertmanager = \"{}\"", am.url(""))).await;
    assert!(am.alerts().await.is_empty(), "nothing is wrong yet");

    // Electrolyte vapour: 150 ppm, above the critical 100.
    sim.write(121, 150).await;
    let alerts = am
        .wait_for("the critical off-gas alert", |a| {
            offgas_alerts(a)
                .iter()
                .any(|x| x["labels"]["severity"] == "critical")
        })
        .await;
    let critical = offgas_alerts(&alerts)
        .into_iter()
        .find(|x| x["labels"]["severity"] == "critical")
        .expect("critical")
        .clone();
    assert_eq!(
        critical["labels"],
        serde_json::json!({
            "alertname": "offgas",
            "site": "test-site",
            "zone": "room-1",
            "alarm": "rack-01/offgas/offgas",
            "severity": "critical",
            "device": "rack-01",
            "point": "offgas",
            "gateway": "gw-t",
        }),
        "{critical:#}"
    );
    assert_eq!(critical["status"]["state"], "active");
    let message = critical["annotations"]["message"].as_str().unwrap_or("");
    assert!(message.contains("offgas 150"), "{message}");

    // Back to clean air: the alarm clears and the alert is resolved at once, not when its
    // endsAt (4 minutes after the last send) runs out.
    sim.write(121, 0).await;
    am.wait_for("the off-gas alert resolved", |a| {
        offgas_alerts(a).is_empty()
    })
    .await;
    let log = console.log();
    assert!(
        !log.contains("cannot push alarms"),
        "the console had trouble pushing:\n{log}"
    );
}

/// Alertmanager away: the console says so in its log (naming the URL), keeps serving, and
/// pages as soon as Alertmanager is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_down_is_logged_and_retried() {
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let storage = tempfile::tempdir().expect("tempdir");
    let _gateway = Daemon::start(&gateway_config(
        broker.port(),
        sim.port(),
        storage.path(),
        OFFGAS_RULE,
    ));
    let am_port = free_port();
    let console = Console::start(
        broker.port(),
        &format!("alertmanager = \"http://127.0.0.1:{am_port}\""),
    )
    .await;
    sim.write(121, 150).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !console.log().contains("cannot push alarms") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no word of the unreachable Alertmanager:\n{}",
            console.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(console
        .log()
        .contains(&format!("alertmanager 127.0.0.1:{am_port}")));
    // The console itself is fine.
    let zones = console.get("/api/zones").await;
    assert!(zones.as_array().is_some_and(|z| !z.is_empty()), "{zones}");

    // Alertmanager comes up: the alarm that is still active reaches it on the next retry.
    let am = Alertmanager::start_on(am_port).await;
    am.wait_for("the off-gas alert after Alertmanager came back", |a| {
        !offgas_alerts(a).is_empty()
    })
    .await;
}
