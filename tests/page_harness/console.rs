//! `emberwatch console` on a free port, with its own database and a users file made by
//! `emberwatch console-user`, watching the test site of tests/common.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::common::free_port;

/// The operator of the tests, and her password.
pub const USER: &str = "mina";
pub const PASSWORD: &str = "correct horse battery staple";

pub struct Console {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Console {
    /// Starts a console for site "test-site" on the broker at `mqtt_port`; `extra` is appended
    /// to the `[console]` section (e.g. `alertmanager = "..."`). Returns once `/healthz` is 200.
    pub async fn start(mqtt_port: u16, extra: &str) -> Console {
        let dir = tempfile::tempdir().expect("tempdir");
        let users = dir.path().join("console.users");
        add_user(&users, USER, PASSWORD).await;
        let port = free_port();
        let config = dir.path().join("console.toml");
        std::fs::write(
            &config,
            format!(
                r#"[console]
listen = "127.0.0.1:{port}"
database = '{db}'
users_file = '{users}'
sites = ["test-site"]
{extra}

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
topic_prefix = "emberwatch"
keep_alive = "5s"
"#,
                db = dir.path().join("console.db").display(),
                users = users.display(),
            ),
        )
        .expect("write console.toml");
        let log = dir.path().join("console.log");
        let logfile = std::fs::File::create(&log).expect("console log");
        let child = Command::new(env!("CARGO_BIN_EXE_emberwatch"))
            .arg("console")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().expect("log fd"))
            .stderr(logfile)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn emberwatch console");
        let mut c = Console {
            child: Some(child),
            port,
            dir,
            log,
        };
        c.wait_healthy().await;
        c
    }

    async fn wait_healthy(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if curl(&[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &self.url("/healthz"),
            ])
            .await
            .0 == "200"
            {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    panic!("emberwatch console exited ({s}):\n{}", self.log());
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "console not healthy after 15 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// GET `path` as JSON (reading needs no login on loopback).
    pub async fn get(&self, path: &str) -> Value {
        let (body, ok) = curl(&["-sf", &self.url(path)]).await;
        assert!(ok, "GET {path} failed:\n{}", self.log());
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- emberwatch console log -----\n{}----- end -----",
                self.log()
            );
        }
    }
}

/// Adds a user with the shared harness's `console-user` helper; a failure stops the test.
pub async fn add_user(users: &Path, name: &str, password: &str) {
    let out = crate::common::console::add_user(users, name, password).await;
    assert!(
        out.status.success(),
        "console-user failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs curl; returns its standard output and whether it exited 0.
pub async fn curl(args: &[&str]) -> (String, bool) {
    match Command::new("curl").args(args).output().await {
        Ok(o) => (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            o.status.success(),
        ),
        Err(e) => panic!("curl: {e} (install curl; scripts/test.sh does)"),
    }
}
