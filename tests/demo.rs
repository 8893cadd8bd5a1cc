//! `emberwatch demo` as a newcomer runs it: the story told and exit 0 in under a minute, with the
//! site console up during it (its URL and a password printed); `--keep` leaves everything running
//! after the story, the console answering and taking commands, until Ctrl-C. The room is watched
//! by a redundant pair: the story tells the active gateway's death mid-drain, the standby's
//! takeover with its reason, no alarm raised twice and the same drain cleared, and the console
//! shows the pair.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The demos of this file run one at a time: each prefers ports 1883 and 8080, and the
/// assertion that the console is gone after the demo must not see the other demo's.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Demo {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        Demo::start_in(args, &std::env::temp_dir())
    }

    /// With `tmp` as its temporary directory (`TMPDIR`).
    fn start_in(args: &[&str], tmp: &std::path::Path) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_emberwatch"))
            .arg("demo")
            .args(args)
            .env("NO_COLOR", "1")
            .env("TMPDIR", tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn emberwatch demo");
        let out = Arc::new(Mutex::new(String::new()));
        for r in [
            Box::new(child.stdout.take().expect("stdout"))
                as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let out = out.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let mut o = out.lock().unwrap();
                    o.push_str(&l);
                    o.push('\n');
                }
            });
        }
        Demo { child, out }
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits for a line containing `what`; returns that line.
    async fn line(&self, what: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(l) = self.text().lines().find(|l| l.contains(what)) {
                return l.to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line with {what:?} within {within:?}:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// "site console on http://127.0.0.1:8080/ (log in as demo with password XYZ)" → (url, pw).
    async fn console(&self) -> (String, String) {
        let line = self.line("site console on ", Duration::from_secs(20)).await;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("a URL")
            .trim_end_matches('/')
            .to_string();
        let password = line
            .rsplit("password ")
            .next()
            .expect("a password")
            .trim_end_matches(')')
            .to_string();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "loopback only: {line}"
        );
        (url, password)
    }
}

/// The one line of `text` containing `what`, with its index among the lines.
fn line_with<'a>(text: &'a str, what: &str) -> (usize, &'a str) {
    let found: Vec<_> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(what))
        .collect();
    assert_eq!(found.len(), 1, "one line with {what:?} expected:\n{text}");
    found[0]
}

/// The pair's story as printed: gw-b1 active by priority, killed mid-drain, gw-b2 active after
/// its last will with the reason, nothing raised twice, the same drain cleared by gw-b2, and
/// every alarm after the takeover published by gw-b2.
fn assert_pair_story(text: &str) {
    let (active, _) = line_with(text, "gateway gw-b1 is online, ACTIVE (role_reason: ");
    let (drain, requested) = line_with(text, "DRAIN REQUESTED for battery-room-1 by gw-b1: drain ");
    let drain_id = requested
        .split("drain ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("a drain_id");
    let (kill, _) = line_with(
        text,
        "!!! KILL: the demo kills gw-b1, the active gateway, mid-drain",
    );
    let (will, _) = line_with(text, "gateway gw-b1 is offline: its last will");
    let (takeover, line) = line_with(text, "*** TAKEOVER: gw-b2 is active ");
    assert!(
        line.ends_with("(role_reason: peer gw-b1 offline (last will))"),
        "{line}"
    );
    let after_ms: u64 = line
        .split("is active ")
        .nth(1)
        .and_then(|r| r.split(" ms after gw-b1 died").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the takeover's time in {line}"));
    // SPEC "Redundant gateways": active within 1.5 x keep_alive (2 s in the demo) + 2 s.
    assert!(after_ms <= 5_000, "{line}");
    let (clearance, _) = line_with(
        text,
        &format!(
            "given by gw-b2 after the takeover, for drain {drain_id}: the drain gw-b1 requested"
        ),
    );
    let (verdict, _) = line_with(
        text,
        "no duplicate: gw-b2 raised again none of the alarms gw-b1 had raised \
         (rack-01/offgas/offgas critical)",
    );
    assert!(
        active < drain && drain < kill && kill < will && will < takeover,
        "out of order:\n{text}"
    );
    assert!(
        takeover < clearance && takeover < verdict,
        "out of order:\n{text}"
    );
    assert!(!text.contains("DUPLICATE"), "{text}");
    assert!(!text.contains("ANOTHER drain"), "{text}");
    // After the takeover, alarms come from gw-b2 under its own seq.
    let later: Vec<&str> = text
        .lines()
        .skip(takeover)
        .filter(|l| l.contains("] ALARM "))
        .collect();
    assert!(!later.is_empty(), "no alarm after the takeover:\n{text}");
    assert!(
        later.iter().all(|l| l.contains("(gw-b2 seq ")),
        "{later:#?}"
    );
    assert!(
        text.contains("The pair: gw-b1 died mid-drain at +"),
        "{text}"
    );
}

async fn curl(args: &[&str]) -> (String, bool) {
    let o = Command::new("curl")
        .args(args)
        .output()
        .await
        .expect("curl (scripts/test.sh installs it)");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.success(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tells_the_story_with_the_console_and_exits_0_within_a_minute() {
    let _one = ONE_AT_A_TIME.lock().await;
    // What a demo killed with SIGKILL left (its pid is past the kernel's pid_max: gone), and
    // what a demo running now has (this test's own pid: alive).
    let tmp = tempfile::tempdir().expect("tempdir");
    let live = std::process::id();
    let left = [
        "emberwatch-demo-4194305".to_string(),
        "emberwatch-demo-console-4194305".into(),
    ];
    let running = [
        format!("emberwatch-demo-{live}"),
        format!("emberwatch-demo-console-{live}"),
    ];
    for d in left.iter().chain(&running) {
        std::fs::create_dir(tmp.path().join(d)).expect("mkdir");
        std::fs::write(tmp.path().join(d).join("state.json"), "{}").expect("write");
    }
    let mut demo = Demo::start_in(&[], tmp.path());
    let (url, _) = demo.console().await;
    // The page is served while the story plays.
    let (page, ok) = curl(&["-sf", &format!("{url}/")]).await;
    assert!(
        ok && page.contains("<title>emberwatch console</title>"),
        "{page}"
    );
    let status = tokio::time::timeout(Duration::from_secs(60), demo.child.wait())
        .await
        .unwrap_or_else(|_| panic!("demo still running after 60 s:\n{}", demo.text()))
        .expect("wait");
    let text = demo.text();
    assert!(status.success(), "demo exited {status}:\n{text}");
    assert!(text.contains("POWER-CUT CLEARANCE"), "{text}");
    assert_pair_story(&text);
    assert!(!text.contains("--keep:"), "{text}");
    // The console is gone with the demo.
    assert!(
        !curl(&["-sf", "--max-time", "2", &format!("{url}/healthz")])
            .await
            .1
    );
    // The dead demo's directories are gone, the running one's kept, and this demo's own
    // removed as it ended.
    let mut now: Vec<String> = std::fs::read_dir(tmp.path())
        .expect("read tmp")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    now.sort();
    let mut want = running.to_vec();
    want.sort();
    assert_eq!(now, want, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keep_leaves_the_console_running_until_ctrl_c() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut demo = Demo::start(&["--keep"]);
    let (url, password) = demo.console().await;
    demo.line("--keep: everything keeps running", Duration::from_secs(60))
        .await;

    // The console shows the pair: gw-b2 active since the takeover and why, gw-b1 offline.
    let (gateways, ok) = curl(&["-sf", &format!("{url}/api/gateways")]).await;
    assert!(ok, "{gateways}");
    let gateways: Value = serde_json::from_str(&gateways).expect("gateways JSON");
    let gw = |id: &str| {
        gateways
            .as_array()
            .and_then(|a| a.iter().find(|g| g["gateway"] == id))
            .unwrap_or_else(|| panic!("no {id} in {gateways}"))
            .clone()
    };
    let (b1, b2) = (gw("gw-b1"), gw("gw-b2"));
    assert_eq!(b2["state"], "online", "{b2}");
    assert_eq!(b2["role"], "active", "{b2}");
    assert_eq!(b2["peer"], "gw-b1", "{b2}");
    assert_eq!(b2["role_reason"], "peer gw-b1 offline (last will)", "{b2}");
    assert!(
        b2["role_since"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{b2}"
    );
    assert_eq!(b1["state"], "offline", "{b1}");
    assert_eq!(b1["peer"], "gw-b2", "{b1}");

    // After the story, the console holds it: the zone at emergency, the off-gas alarm active.
    let (zones, ok) = curl(&["-sf", &format!("{url}/api/zones")]).await;
    assert!(ok, "{zones}");
    let zones: Value = serde_json::from_str(&zones).expect("zones JSON");
    assert_eq!(zones[0]["zone"], "battery-room-1", "{zones}");
    assert_eq!(zones[0]["level"], "emergency", "{zones}");
    let (alarms, _) = curl(&["-sf", &format!("{url}/api/alarms?state=active")]).await;
    let alarms: Value = serde_json::from_str(&alarms).expect("alarms JSON");
    let offgas = alarms
        .as_array()
        .and_then(|a| a.iter().find(|x| x["point"] == "offgas"))
        .unwrap_or_else(|| panic!("no active off-gas alarm in {alarms}"))
        .clone();

    // The printed password works: the demo user acknowledges it.
    let body = serde_json::json!({
        "site": offgas["site"], "gateway": offgas["gateway"], "alarm": offgas["alarm"],
    })
    .to_string();
    let (answer, ok) = curl(&[
        "-s",
        "-w",
        "\n%{http_code}",
        "-u",
        &format!("demo:{password}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &format!("{url}/api/ack"),
    ])
    .await;
    assert!(ok && answer.ends_with("\n200"), "ack as demo: {answer}");

    // Ctrl-C ends it cleanly.
    let pid = demo.child.id().expect("running");
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), demo.child.wait())
        .await
        .unwrap_or_else(|_| panic!("demo --keep still running after Ctrl-C:\n{}", demo.text()))
        .expect("wait");
    assert!(
        status.success(),
        "demo --keep exited {status}:\n{}",
        demo.text()
    );
    assert!(demo.text().contains("stopping."));
}
