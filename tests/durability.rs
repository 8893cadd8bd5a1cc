//! When the disk lets the gateway down: a full file system in the middle of a save, and an
//! outbox damaged between two runs. What must hold, seen from a subscriber: the feed and the
//! alarm state never disagree after a restart (the outbox is the truth: what was published
//! stays published), a write failure leaves a retained `fault` status (never `offline`), and
//! events the state says were raised but the outbox lost are reported loudly (error log, the
//! status's `lost` ranges, a metric), while a write torn by a crash stays a quiet warning.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, Instant};

const STATUS: &str = "emberwatch/test-site/gateways/gw-t/status";
const ALARM: &str = "emberwatch/test-site/alarms/room-1/rack-01/cell_temp_max/cell-overtemp";
const ZONE: &str = "emberwatch/test-site/zones/room-1/status";
const KEY: &str = "rack-01/cell_temp_max/cell-overtemp";
const SOON: Duration = Duration::from_secs(15);

/// The harness configuration with a fast heartbeat (the status carries `seq` and `lost`).
fn config(mqtt_port: u16, sim_port: u16, storage: &Path, extra: &str) -> String {
    gateway_config(mqtt_port, sim_port, storage, extra).replace(
        "keep_alive = \"5s\"",
        "keep_alive = \"5s\"\nheartbeat = \"300ms\"",
    )
}

/// Now, as the payloads' `time` fields spell it (RFC 3339 strings in UTC compare in order).
fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// `last_seq` in `storage/state.json` (0 before its first save).
fn state_seq(storage: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(storage.join("state.json")) else {
        return 0;
    };
    let v: Value = serde_json::from_str(&text).expect("state.json is JSON");
    v["last_seq"].as_u64().expect("last_seq")
}

/// Waits (15 s at most) until the gateway's log contains `text`.
async fn logged(daemon: &Daemon, text: &str) {
    let deadline = Instant::now() + SOON;
    while !daemon.stderr().contains(text) {
        assert!(
            Instant::now() < deadline,
            "never logged {text:?}:\n{}",
            daemon.stderr()
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// A real file system that fills up: a tmpfs of 256 KiB. Mounted in a mount namespace of
/// its own, owned by an unprivileged user namespace (`unshare --user --map-root-user --mount`,
/// held open by a `sleep`), so neither root nor the host's mount table is needed; the daemon
/// runs in that namespace (`nsenter`), and the test reaches the tmpfs through
/// `/proc/{holder}/root`. Where user namespaces are disabled, root mounts it directly; with
/// neither, the test says it skipped and why.
struct TinyDisk {
    /// Where the daemon sees it (inside the namespace).
    dir: PathBuf,
    /// Where this test reads and writes it.
    host: PathBuf,
    /// The namespace's holder process, or `None` when mounted directly.
    holder: Option<std::process::Child>,
    _parent: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(test: &str) -> Option<TinyDisk> {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("tiny");
        std::fs::create_dir(&dir).expect("mkdir");
        let mut holder = std::process::Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sleep", "3600"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .ok();
        if let Some(h) = holder.as_mut() {
            let pid = h.id().to_string();
            // The holder needs a moment to unshare; nsenter fails until it has.
            let mut mounted = false;
            for _ in 0..50 {
                mounted = std::process::Command::new("nsenter")
                    .args([
                        "-t",
                        &pid,
                        "-U",
                        "-m",
                        // Keep our uid: it is the namespace's root (setgroups is denied in it).
                        "--preserve-credentials",
                        "mount",
                        "-t",
                        "tmpfs",
                        "-o",
                        "size=256k",
                    ])
                    .arg("tmpfs")
                    .arg(&dir)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if mounted {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if mounted {
                let host = PathBuf::from(format!("/proc/{pid}/root"))
                    .join(dir.strip_prefix("/").expect("absolute"));
                return Some(TinyDisk {
                    dir,
                    host,
                    holder,
                    _parent: parent,
                });
            }
            let _ = h.kill();
            let _ = h.wait();
        }
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&dir)
            .output();
        if !matches!(&mounted, Ok(o) if o.status.success()) {
            eprintln!(
                "SKIPPED {test}: a real full file system needs a tmpfs: neither an unprivileged \
                 user+mount namespace (unshare --user --map-root-user --mount) nor mount(8) as \
                 root worked here: {mounted:?}"
            );
            return None;
        }
        Some(TinyDisk {
            host: dir.clone(),
            dir,
            holder: None,
            _parent: parent,
        })
    }

    /// How to run the daemon so that it sees the tmpfs.
    fn wrapper(&self) -> Vec<String> {
        match &self.holder {
            Some(h) => [
                "nsenter",
                "-t",
                &h.id().to_string(),
                "-U",
                "-m",
                "--preserve-credentials",
            ]
            .map(String::from)
            .to_vec(),
            None => Vec::new(),
        }
    }

    /// Writes a filler file until the file system refuses more.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.host.join("filler")).expect("filler");
        while filler.write_all(&[0u8; 4096]).is_ok() {}
        let _ = filler.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.host.join("filler")).expect("remove filler");
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        match self.holder.as_mut() {
            // The namespace, and its tmpfs, go with their last process.
            Some(h) => {
                let _ = h.kill();
                let _ = h.wait();
            }
            None => {
                let _ = std::process::Command::new("umount").arg(&self.dir).status();
            }
        }
    }
}

/// The report's case: the event is raised (in the outbox, published) but saving the alarm
/// state that numbers it fails on a full disk. The gateway must leave a retained `fault` status
/// (the last will must not turn it into `offline`) and exit non-zero; restarted once space is
/// back, its zone status must say what subscribers saw (cleared), with no event contradicting
/// it, and `state.json` must have caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_mid_save_leaves_a_fault_and_the_restart_agrees_with_the_feed() {
    let Some(disk) =
        TinyDisk::mount("a_full_disk_mid_save_leaves_a_fault_and_the_restart_agrees_with_the_feed")
    else {
        return;
    };
    // state.json on the tiny disk; the outbox on a roomy one, so the event is raised and only
    // the save after it fails.
    let roomy = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(roomy.path(), disk.host.join("outbox")).expect("symlink");
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let config = config(broker.port(), sim.port(), &disk.dir, "");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let mut daemon = Daemon::start_under(&config, &[], &disk.wrapper());
    sub.expect_where(STATUS, |j| j["state"] == "online", SOON)
        .await;

    sim.write(116, 600).await;
    let raised = sub
        .expect_where(ALARM, |j| j["state"] == "active", SOON)
        .await;
    let raised_seq = raised["seq"].as_u64().expect("seq");
    let deadline = Instant::now() + SOON;
    while state_seq(&disk.host) < raised_seq {
        assert!(
            Instant::now() < deadline,
            "state.json never saved the raise"
        );
        sleep(Duration::from_millis(50)).await;
    }

    disk.fill();
    sim.write(116, 250).await;
    let cleared = sub
        .expect_where(ALARM, |j| j["state"] == "cleared", SOON)
        .await;
    let cleared_seq = cleared["seq"].as_u64().expect("seq");
    let exit = daemon
        .exited(SOON)
        .await
        .unwrap_or_else(|| panic!("still running on a full disk:\n{}", daemon.stderr()));
    assert_eq!(exit.code(), Some(1), "exit status {exit}");
    let last = fault_stays(&mut sub, broker.port()).await;
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("state.json") && reason.contains("No space left"),
        "{last}"
    );
    // The report's state of affairs: the feed says cleared, state.json still says raised.
    assert_eq!(state_seq(&disk.host), raised_seq);

    disk.free();
    sub.forget();
    let restart = now();
    let daemon = Daemon::start_under(&config, &[], &disk.wrapper());
    // The first zone status the restarted gateway publishes (records it had not seen
    // confirmed before the exit are delivered again first, with their old times).
    let zone = sub
        .expect_where(ZONE, |j| j["time"].as_str() >= Some(restart.as_str()), SOON)
        .await;
    assert!(
        !zone["active"]
            .as_array()
            .expect("active")
            .iter()
            .any(|k| k == KEY),
        "the restarted gateway shows the alarm active that subscribers saw cleared: {zone}"
    );
    assert_eq!(zone["level"], "normal", "{zone}");
    sub.expect_where(STATUS, |j| j["state"] == "online", SOON)
        .await;
    logged(
        &daemon,
        &format!("rolled forward over events seq {cleared_seq}..={cleared_seq}"),
    )
    .await;
    assert!(
        state_seq(&disk.host) >= cleared_seq,
        "state.json did not catch up"
    );
    // No event says otherwise: the alarm is not raised again.
    assert!(
        sub.next_matching(
            |t, j| t == ALARM && j["state"] == "active",
            Duration::from_secs(2)
        )
        .await
        .is_none(),
        "{}",
        sub.seen_list()
    );
}

/// The gateway's last word on its status topic, 2 s after it exited: still the fault (neither
/// the stop nor the last will may overwrite it), and still retained for a late subscriber.
async fn fault_stays(sub: &mut Subscriber, port: u16) -> Value {
    let last = sub
        .expect_where(STATUS, |j| j["state"] != "online", SOON)
        .await;
    assert_eq!(last["state"], "fault", "{last}");
    sleep(Duration::from_secs(2)).await;
    let seen = sub.seen_list();
    let last_status = seen
        .lines()
        .rfind(|l| l.trim_start().starts_with(STATUS))
        .unwrap_or_default();
    assert!(
        last_status.contains(r#"{"state":"fault""#),
        "the fault status was overwritten:\n{seen}"
    );
    let mut late = Subscriber::connect(port, STATUS).await;
    let retained = late.expect(STATUS, SOON).await;
    assert_eq!(retained["state"], "fault", "{retained}");
    last
}

/// The other write: the outbox itself on the full disk (the alarm state on a roomy one). The
/// change is then not raised, or only partly (a batch cut by the full disk). Whatever the
/// subscriber saw last of the alarm (before the exit, or delivered from the outbox after the
/// restart, before anything new), the restarted gateway's first zone status says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_outbox_leaves_a_fault_and_the_restart_agrees_with_the_feed() {
    let Some(disk) = TinyDisk::mount(
        "a_full_disk_under_the_outbox_leaves_a_fault_and_the_restart_agrees_with_the_feed",
    ) else {
        return;
    };
    let storage = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(&disk.dir, storage.path().join("outbox")).expect("symlink");
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let config = config(broker.port(), sim.port(), storage.path(), "");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let mut daemon = Daemon::start_under(&config, &[], &disk.wrapper());
    sub.expect_where(STATUS, |j| j["state"] == "online", SOON)
        .await;
    sim.write(116, 600).await;
    sub.expect_where(ALARM, |j| j["state"] == "active", SOON)
        .await;

    disk.fill();
    // The segment's last page may still take a few records: change the alarm until a write
    // fails.
    let mut exit = None;
    for _ in 0..40 {
        for value in [250, 600] {
            sim.write(116, value).await;
            sleep(Duration::from_millis(300)).await;
        }
        if let Some(s) = daemon.exited(Duration::from_millis(10)).await {
            exit = Some(s);
            break;
        }
    }
    let exit = match exit {
        Some(s) => s,
        None => daemon
            .exited(SOON)
            .await
            .unwrap_or_else(|| panic!("still running on a full disk:\n{}", daemon.stderr())),
    };
    assert_eq!(exit.code(), Some(1), "exit status {exit}");
    let fault = fault_stays(&mut sub, broker.port()).await;
    assert!(
        fault["reason"]
            .as_str()
            .is_some_and(|r| r.contains("outbox")),
        "{fault}"
    );

    // What the subscriber has seen of the alarm so far.
    let mut last_state = None;
    while let Some(m) = sub
        .next_matching(|t, _| t == ALARM, Duration::from_millis(200))
        .await
    {
        last_state = Some(m.json()["state"].clone());
    }
    disk.free();
    let restart = now();
    let _daemon = Daemon::start_under(&config, &[], &disk.wrapper());
    // Records not confirmed before the exit come first (old zone statuses among them, with
    // their old times), then the restarted gateway's own first zone status.
    let zone = loop {
        let m = sub
            .next_matching(|t, _| t == ALARM || t == ZONE, SOON)
            .await
            .unwrap_or_else(|| panic!("no zone status after the restart:\n{}", sub.seen_list()));
        let j = m.json();
        if m.topic == ALARM {
            last_state = Some(j["state"].clone());
        } else if j["time"].as_str() >= Some(restart.as_str()) {
            break j;
        }
    };
    let listed = zone["active"]
        .as_array()
        .expect("active")
        .iter()
        .any(|k| k == KEY);
    assert_eq!(
        listed,
        last_state == Some(Value::from("active")),
        "the subscriber last saw the alarm {last_state:?}, the zone status says {zone}"
    );
}

/// Raises and clears `cell-overtemp` `cycles` times, waiting for each event in the log, then
/// stops the gateway cleanly: `state.json` records seq 1..=2×cycles as raised.
async fn raise_and_stop(sim: &Sim, config: &str, cycles: u64) {
    let mut daemon = Daemon::start(config);
    let mut seq = 0;
    for _ in 0..cycles {
        for value in [600, 250] {
            sim.write(116, value).await;
            seq += 1;
            logged(&daemon, &format!(" seq={seq} ")).await;
        }
    }
    assert!(daemon.terminate().await.success(), "{}", daemon.stderr());
}

/// The only segment file of the outbox under `storage`.
fn segment(storage: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(storage.join("outbox"))
        .expect("outbox dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.pop().expect("one segment")
}

/// GET /metrics, as `name → value`; `None` while nothing listens yet (the listener starts
/// after the broker link).
async fn scrape(port: u16) -> Option<HashMap<String, f64>> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect(),
    )
}

/// What a subscriber and a Prometheus scrape see of the restarted gateway: the retained
/// status once it carries `seq`, and `emberwatch_outbox_lost_events`.
async fn after_restart(sub: &mut Subscriber, metrics: u16) -> (Value, f64) {
    let status = sub
        .expect_where(
            STATUS,
            |j| j["state"] == "online" && j["seq"].is_u64(),
            SOON,
        )
        .await;
    let deadline = Instant::now() + SOON;
    loop {
        // The gauges are refreshed once a second: `last_seq` says this scrape has them.
        let m = scrape(metrics).await.unwrap_or_default();
        if m.get("emberwatch_last_seq").is_some_and(|&s| s >= 6.0) {
            let lost = m.get("emberwatch_outbox_lost_events").copied();
            return (status, lost.expect("emberwatch_outbox_lost_events"));
        }
        assert!(Instant::now() < deadline, "gauges never refreshed: {m:?}");
        sleep(Duration::from_millis(200)).await;
    }
}

/// Damage between two runs, then a restart: returns the status, the metric and the log.
async fn restart_after(damage: impl FnOnce(&Path)) -> (Value, f64, String) {
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let storage = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config(
        broker.port(),
        sim.port(),
        storage.path(),
        &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    raise_and_stop(&sim, &config, 3).await;
    assert_eq!(state_seq(storage.path()), 6);
    damage(&segment(storage.path()));
    let mut sub = Subscriber::connect(broker.port(), STATUS).await;
    let daemon = Daemon::start(&config);
    let (status, lost) = after_restart(&mut sub, port).await;
    (status, lost, daemon.stderr())
}

/// The `[from, to]` of the one "LOST alarm events seq FROM..=TO" error line in `log`.
fn lost_in_log(log: &str) -> (u64, u64) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("LOST alarm events seq"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("ERROR"),
        "not at error level: {}",
        lines[0]
    );
    let range = lines[0]
        .split("LOST alarm events seq ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .expect("a range");
    let (from, to) = range.split_once("..=").expect("FROM..=TO");
    (from.parse().expect("from"), to.trim().parse().expect("to"))
}

/// A segment cut short while state.json says seq 1..=6 were raised: the newest events are
/// gone. Not a torn write: an error names the range, the status carries it, the metric counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_segment_that_loses_raised_events_is_reported_loudly() {
    let (status, metric, log) = restart_after(|seg| {
        let len = std::fs::metadata(seg).expect("segment").len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(seg)
            .expect("open segment");
        f.set_len(len / 2).expect("truncate");
    })
    .await;
    let (from, to) = lost_in_log(&log);
    assert!(from > 1 && to == 6, "lost {from}..={to}\n{log}");
    assert_eq!(status["lost"], serde_json::json!([[from, to]]), "{status}");
    assert_eq!(metric, (to - from + 1) as f64);
    assert!(!log.contains("never acknowledged"), "{log}");
}

/// A zero-filled stretch in the middle of a segment (a bad block, a filesystem bug): the
/// events in it are a hole in the journal, reported with their range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_filled_stretch_that_loses_raised_events_is_reported_loudly() {
    let (status, metric, log) = restart_after(|seg| {
        let mut bytes = std::fs::read(seg).expect("segment");
        let (a, b) = (bytes.len() / 3, 2 * bytes.len() / 3);
        bytes[a..b].fill(0);
        std::fs::write(seg, bytes).expect("zero-fill");
    })
    .await;
    let (from, to) = lost_in_log(&log);
    assert!(
        from > 1 && from <= to && to < 6,
        "lost {from}..={to}\n{log}"
    );
    assert_eq!(status["lost"], serde_json::json!([[from, to]]), "{status}");
    assert_eq!(metric, (to - from + 1) as f64);
}

/// A write torn by a crash (zeros after the last record) held nothing state.json records as
/// raised: a warning, no `lost` in the status, the metric at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_stays_a_quiet_warning() {
    let (status, metric, log) = restart_after(|seg| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(seg)
            .expect("open segment");
        f.write_all(&[0u8; 100]).expect("append zeros");
    })
    .await;
    assert!(
        log.contains("a write torn by a crash or power loss, never acknowledged"),
        "{log}"
    );
    assert!(!log.contains("LOST"), "{log}");
    assert!(status.get("lost").is_none(), "{status}");
    assert_eq!(metric, 0.0);
}
