//! `emberwatch console` for the tests: its configuration and users file in a directory of its
//! own (the database too, so a restarted console finds its history), started as the real
//! binary, and its HTTP API at hand.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use super::http::{basic, request, Reply};
use super::{free_port, report_if_panicking, Output};

/// The operator the tests log in as.
pub const USER: &str = "Kim Ji-woo";
pub const PASSWORD: &str = "correct horse";

/// Adds `name` to `users` through `emberwatch console-user`, the password on stdin.
pub async fn add_user(users: &Path, name: &str, password: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_emberwatch"))
        .arg("console-user")
        .arg("--users")
        .arg(users)
        .arg(name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn emberwatch console-user");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .await
        .expect("write the password");
    drop(stdin);
    child.wait_with_output().await.expect("console-user ran")
}

/// A console process and where it keeps its files.
pub struct Console {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    out: Output,
}

/// The console's configuration: `sites`, the broker on `mqtt_port`, files under `dir`.
pub fn console_config(mqtt_port: u16, http_port: u16, dir: &Path, sites: &[&str]) -> String {
    let d = dir.display();
    let sites: Vec<String> = sites.iter().map(|s| format!("{s:?}")).collect();
    format!(
        r#"# Written by the emberwatch test harness.
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
topic_prefix = "emberwatch"
keep_alive = "5s"

[console]
listen = "127.0.0.1:{http_port}"
database = '{d}/console.db'
users_file = '{d}/console.users'
sites = [{}]
"#,
        sites.join(", ")
    )
}

impl Console {
    /// Writes the configuration and the users file (one user, [`USER`]) under `dir` and
    /// starts the console; waits until `/healthz` says 200.
    pub async fn start(mqtt_port: u16, dir: &Path, sites: &[&str]) -> Console {
        let port = free_port();
        let config = dir.join("console.toml");
        std::fs::write(&config, console_config(mqtt_port, port, dir, sites)).expect("write config");
        let users = dir.join("console.users");
        if !users.exists() {
            let out = add_user(&users, USER, PASSWORD).await;
            assert!(out.status.success(), "console-user: {out:?}");
        }
        Console::start_config(dir, &config, port).await
    }

    /// Starts the console on an existing configuration (a restart).
    pub async fn start_config(dir: &Path, config: &Path, port: u16) -> Console {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_emberwatch"));
        cmd.arg("console")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("EMBERWATCH__") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn emberwatch console");
        let out = Output::default();
        out.collect(child.stderr.take().expect("piped stderr"));
        out.collect(child.stdout.take().expect("piped stdout"));
        let c = Console {
            child: Some(child),
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
            port,
            out,
        };
        c.healthy(Duration::from_secs(15)).await;
        c
    }

    /// Waits for `/healthz` to answer 200.
    pub async fn healthy(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                drop(s);
                if self.get("/healthz").await.status == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "console not healthy within {within:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        self.out.text()
    }

    pub async fn get(&self, path: &str) -> Reply {
        request(self.port, "GET", path, &[], b"").await
    }

    /// `POST path` with a JSON body, as [`USER`] when `auth`.
    pub async fn post(&self, path: &str, body: &str, auth: bool) -> Reply {
        let b = basic(USER, PASSWORD);
        let mut headers = vec![("Content-Type", "application/json")];
        if auth {
            headers.push(("Authorization", b.as_str()));
        }
        request(self.port, "POST", path, &headers, body.as_bytes()).await
    }

    /// Polls `GET path` until `pred` holds for its JSON (deadline `within`).
    pub async fn until(
        &self,
        path: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
        within: Duration,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = self.get(path).await.json();
            if pred(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "GET {path} not as expected within {within:?}: {v:#}\nconsole log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no goodbye, nothing flushed.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        report_if_panicking("emberwatch console output", &self.out);
    }
}

/// A whole site for console tests: mosquitto, the simulator, a gateway watching it (online
/// before `start` returns) and a console watching `test-site`, each on free ports, plus a
/// subscriber to everything the site publishes.
pub struct Rig {
    pub broker: super::Mosquitto,
    pub sim: super::Sim,
    pub gateway: super::Daemon,
    /// The gateway's configuration, to start it again after a test stopped it.
    pub gateway_config: String,
    /// The gateway's storage directory.
    pub state: tempfile::TempDir,
    /// The console's directory (configuration, users, database).
    pub dir: tempfile::TempDir,
    pub console: Console,
    pub sub: super::Subscriber,
}

impl Rig {
    /// Starts the site; `within` bounds the wait for the gateway's online status.
    pub async fn start(within: Duration) -> Rig {
        let broker = super::Mosquitto::start().await;
        let sim = super::Sim::start("normal", 1).await;
        let state = tempfile::tempdir().expect("tempdir");
        let mut sub = super::Subscriber::connect(broker.port(), "emberwatch/#").await;
        let gateway_config = super::gateway_config(broker.port(), sim.port(), state.path(), "");
        let gateway = super::Daemon::start(&gateway_config);
        sub.expect_where(
            &format!("{}/gateways/gw-t/status", super::P),
            |j| j["state"] == "online",
            within,
        )
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let console = Console::start(broker.port(), dir.path(), &["test-site"]).await;
        Rig {
            broker,
            sim,
            gateway,
            gateway_config,
            state,
            dir,
            console,
            sub,
        }
    }
}
