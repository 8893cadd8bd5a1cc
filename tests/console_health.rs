//! What the operator of the console itself sees: `/healthz` failing (with the log saying why)
//! while the database cannot be written, and nothing lost once it can; the warning for a
//! listener that is not loopback; `check-config` on a console file; `console-user`.

mod common;

use std::time::Duration;

use common::console::{add_user, console_config, Console};
use common::*;
use serde_json::json;

const SOON: Duration = Duration::from_secs(15);

/// A full disk under the database: `/healthz` answers 503 and says why, the log says why; once
/// there is room again it answers 200, and the events raised meanwhile are fetched from the
/// gateway's journal, so the history has no hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_be_written_fails_healthz_and_loses_nothing() {
    let top = tempfile::tempdir().expect("tempdir");
    let tiny = top.path().join("tiny");
    std::fs::create_dir(&tiny).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&tiny)
        .output();
    if !matches!(&mounted, Ok(o) if o.status.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs ({mounted:?}); run as root");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(tiny.clone());

    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let _gateway = Daemon::start(&gateway_config(broker.port(), sim.port(), state.path(), ""));
    sub.expect_where(
        &format!("{P}/gateways/gw-t/status"),
        |j| j["state"] == "online",
        SOON,
    )
    .await;
    let console = Console::start(broker.port(), &tiny, &["test-site"]).await;

    let filler = tiny.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        while f.write_all(&[0u8; 1024]).is_ok() {}
    }
    // Events while the disk is full.
    sim.write(116, 572).await;
    let raised = sub
        .expect_where(
            &format!("{P}/alarms/room-1/rack-01/cell_temp_max/cell-overtemp"),
            |j| j["state"] == "active",
            SOON,
        )
        .await;
    let deadline = tokio::time::Instant::now() + SOON;
    let health = loop {
        let r = console.get("/healthz").await;
        if r.status == 503 {
            break r.json();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz still {}: {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let why = health["why"][0].as_str().unwrap_or("");
    assert!(
        why.starts_with("the database is not writable: "),
        "{health}"
    );
    assert!(why.contains("full"), "{health}");
    assert!(
        console
            .log()
            .contains("console: cannot write the database: "),
        "{}",
        console.log()
    );

    std::fs::remove_file(&filler).expect("remove the filler");
    console.healthy(SOON).await;
    let seq = raised["seq"].as_u64().expect("seq");
    console
        .until(
            "/api/events?gateway=gw-t",
            |v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|e| e["seq"] == seq))
            },
            SOON,
        )
        .await;
    console
        .until("/api/gateways", |v| v[0]["missing"] == json!([]), SOON)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_beyond_loopback_warns_and_wants_a_user_for_reading() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("console.toml");
    let text = console_config(broker.port(), port, dir.path(), &["test-site"])
        .replace("listen = \"127.0.0.1:", "listen = \"0.0.0.0:");
    std::fs::write(&config, text).expect("config");
    let users = dir.path().join("console.users");
    assert!(
        add_user(&users, common::console::USER, common::console::PASSWORD)
            .await
            .status
            .success()
    );
    let console = Console::start_config(dir.path(), &config, port).await;
    assert!(
        console
            .log()
            .contains("which is not loopback: the console speaks plain HTTP"),
        "{}",
        console.log()
    );
    let r = console.get("/api/zones").await;
    assert_eq!(r.status, 401, "{}", r.body);
    let me = console.get("/api/me").await.json();
    assert_eq!(me, json!({"user": null, "can_read": false}));
    let auth = common::http::basic(common::console::USER, common::console::PASSWORD);
    let r =
        common::http::request(port, "GET", "/api/zones", &[("Authorization", &auth)], b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_understands_a_console_file_and_console_user_keeps_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("console.toml");
    std::fs::write(
        &config,
        console_config(1883, 8080, dir.path(), &["pangyo-a"]),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emberwatch"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("console: listening on 127.0.0.1:8080 (loopback: reading needs no login)"),
        "{stdout}"
    );
    assert!(stdout.contains("watching sites: pangyo-a"), "{stdout}");

    std::fs::write(&config, "[console]\nsites = [\"Pangyo\"]\nlisten = \"x\"\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emberwatch"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("console.listen: \"x\" is not an address like 127.0.0.1:8080"),
        "{stderr}"
    );
    assert!(
        stderr.contains("console.sites[0]: \"Pangyo\" must match [a-z0-9-]+"),
        "{stderr}"
    );

    let users = dir.path().join("console.users");
    let out = add_user(&users, "kim", "first").await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("added kim in "),
        "{out:?}"
    );
    let out = add_user(&users, "kim", "second").await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("replaced the password of kim in "),
        "{out:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&users).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(
        text.starts_with("kim:$argon2id$") && !text.contains("second"),
        "{text}"
    );
    let out = add_user(&users, "bad:name", "x").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must not contain ':'"),
        "{out:?}"
    );

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_emberwatch"))
        .args(["console-user", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("reads the password from stdin"), "{help}");
}
