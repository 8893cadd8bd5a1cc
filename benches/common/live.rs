//! What the benches that run the released binaries share: free ports, a mosquitto, the console
//! started on a configuration of its own (with whatever database its directory already holds),
//! MQTT clients playing gateways, and the raw HTTP the benches read the API with. Each bench
//! uses a part of it.

#![allow(dead_code)]

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub const PREFIX: &str = "emberwatch";
pub const SITE: &str = "pangyo-a";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The binary under test: `EMBERWATCH_BIN`, else the release build.
pub fn binary() -> PathBuf {
    let bin = std::env::var_os("EMBERWATCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/emberwatch")
        });
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --release` first",
        bin.display()
    );
    bin
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn mosquitto(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"),
    )
    .expect("write mosquitto.conf");
    let child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start /usr/sbin/mosquitto (apt-get install mosquitto)");
    wait_port(port);
    (Proc(child), port)
}

/// Writes a console configuration and users file under `dir` and starts the console (on
/// `dir/console.db`, which may already hold a history); returns it once `/healthz` answers.
pub async fn console(bin: &Path, dir: &Path, mqtt_port: u16) -> (Proc, u16) {
    let http = free_port();
    let (proc, http) = console_on(bin, dir, mqtt_port, http);
    healthy(http).await;
    (proc, http)
}

/// Starts the console on `http` without waiting for it (the users file and configuration are
/// written first, so what follows the spawn is the console's own start-up).
pub fn console_on(bin: &Path, dir: &Path, mqtt_port: u16, http: u16) -> (Proc, u16) {
    let d = dir.display();
    let config = dir.join("console.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\ntopic_prefix = \"{PREFIX}\"\n\
             keep_alive = \"5s\"\n\n[console]\nlisten = \"127.0.0.1:{http}\"\n\
             database = '{d}/console.db'\nusers_file = '{d}/console.users'\nsites = [\"{SITE}\"]\n"
        ),
    )
    .expect("write console.toml");
    let users = dir.join("console.users");
    if !users.exists() {
        let mut user = Command::new(bin)
            .args(["console-user", "--users"])
            .arg(&users)
            .arg("bench")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn console-user");
        user.stdin
            .take()
            .expect("piped stdin")
            .write_all(b"correct horse battery\n")
            .expect("write the password");
        assert!(user.wait().expect("console-user ran").success());
    }
    let child = Command::new(bin)
        .arg("console")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn emberwatch console");
    (Proc(child), http)
}

/// Waits until the console on `http` answers `/healthz` with 200 (15 s at most).
pub async fn healthy(http: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", http)).await {
            let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await;
            let mut first = String::new();
            let _ = BufReader::new(s).read_line(&mut first).await;
            if first.contains(" 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "console not healthy in 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A publisher whose event loop runs in the background.
pub fn client(port: u16, id: &str) -> AsyncClient {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_inflight(1000);
    let (c, mut el) = AsyncClient::new(o, 10_000);
    tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    c
}

/// An alarm event as a gateway publishes it (SPEC), and its topic.
pub fn event(gw: &str, seq: u64, device: &str) -> (String, String) {
    let state = if seq % 2 == 0 { "cleared" } else { "active" };
    let zone = "room-1";
    let v = json!({
        "event_id": format!("{gw}-{seq}"), "seq": seq, "site": SITE, "gateway": gw,
        "alarm": format!("{device}/cell_temp_max/cell-overtemp"), "rule": "cell-overtemp",
        "zone": zone, "device": device, "point": "cell_temp_max", "kind": "threshold",
        "severity": "critical", "state": state, "acked": false, "value": 57.2,
        "threshold": 55.0, "unit": "degC", "message": "cell_temp_max 57.2 degC above critical 55.0",
        "time": "2026-11-24T13:40:02.123Z", "since": "2026-11-24T13:40:01.900Z"
    });
    (
        format!("{PREFIX}/{SITE}/alarms/{zone}/{device}/cell_temp_max/cell-overtemp"),
        v.to_string(),
    )
}

/// Publishes `gw`'s retained `online` status saying its latest event is `seq`.
pub async fn status(c: &AsyncClient, gw: &str, seq: u64) {
    let body = json!({"state": "online", "seq": seq}).to_string();
    c.publish(
        format!("{PREFIX}/{SITE}/gateways/{gw}/status"),
        QoS::AtLeastOnce,
        true,
        body,
    )
    .await
    .expect("publish status");
}

/// `GET path` as JSON (HTTP/1.0: the body runs to the end of the connection); `Null` when
/// the console does not answer.
pub async fn get_json(http: u16, path: &str) -> Value {
    use tokio::io::AsyncReadExt;
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", http)).await else {
        return Value::Null;
    };
    let _ = s
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await;
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply).await;
    let text = String::from_utf8_lossy(&reply);
    text.split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null)
}

/// Whether `/api/gateways` lists `gw` with every event through `last` and nothing missing.
pub fn repaired(gateways: &Value, gw: &str, last: u64) -> bool {
    gateways.as_array().is_some_and(|a| {
        a.iter().any(|g| {
            g.get("gateway").and_then(Value::as_str) == Some(gw)
                && g.get("received_through").and_then(Value::as_u64) == Some(last)
                && g.get("missing")
                    .and_then(Value::as_array)
                    .is_some_and(|m| m.is_empty())
        })
    })
}

/// utime+stime in clock ticks, VmRSS and VmHWM in kB.
pub fn proc_stat(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (
        num(11) + num(12),
        status_field(pid, "VmRSS:"),
        status_field(pid, "VmHWM:"),
    )
}

/// One number of /proc/PID/status (`key` with its colon, e.g. `RssAnon:`; kB for sizes), 0 if
/// the process or the key is gone.
pub fn status_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}

pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
