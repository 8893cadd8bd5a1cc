//! `emberwatch drain-agent` for the tests: a configuration written for the test, the real
//! binary, and shell hooks that log each run to a file the test reads back.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::{report_if_panicking, Output};

/// `emberwatch drain-agent` on a configuration the test wrote.
pub struct Agent {
    pub id: String,
    pub config: PathBuf,
    child: Option<Child>,
    pub log: Output,
}

impl Agent {
    /// `drain`/`restore` are TOML arrays (argv). The agent keeps its state in `state`.
    pub fn start(port: u16, state: &Path, id: &str, drain: &str, restore: &str) -> Agent {
        let config = state.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[site]
id = "test-site"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
topic_prefix = "emberwatch"
keep_alive = "5s"
[storage]
dir = '{dir}'
[agent]
id = "{id}"
zones = ["room-1"]
drain = {drain}
restore = {restore}
timeout = "20s"
"#,
                dir = state.display()
            ),
        )
        .expect("write agent config");
        let mut a = Agent {
            id: id.to_string(),
            config,
            child: None,
            log: Output::default(),
        };
        a.spawn();
        a
    }

    pub fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_emberwatch"));
        cmd.arg("drain-agent")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("EMBERWATCH") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn emberwatch drain-agent");
        self.log.collect(child.stderr.take().expect("stderr"));
        self.log.collect(child.stdout.take().expect("stdout"));
        self.child = Some(child);
    }

    /// SIGKILL: the agent dies mid-whatever; the broker publishes its last will.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        report_if_panicking(&format!("agent {}", self.id), &self.log);
    }
}

/// A `sh -c` hook that appends a line to `file` (so the test can count runs and see the
/// environment), then runs `then`.
pub fn hook(file: &Path, then: &str) -> String {
    format!(
        r#"["sh", "-c", "echo \"$EMBERWATCH_ACTION $EMBERWATCH_DRAIN_ID $EMBERWATCH_ZONE $EMBERWATCH_SEVERITY drill=${{EMBERWATCH_DRILL:-0}}\" >> '{}'; {then}"]"#,
        file.display()
    )
}

/// The lines of a hook's log file (empty if it was never written).
pub fn runs(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `file` has `n` lines.
pub async fn wait_runs(file: &Path, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let r = runs(file);
        if r.len() >= n {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, expected {n}: {r:?}",
            file.display(),
            r.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
