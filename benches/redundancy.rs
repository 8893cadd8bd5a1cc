//! Redundant gateways (issue 13), measured: the real `emberwatch run` twice (gw-b1 priority 1,
//! gw-b2 priority 2, keep_alive 2 s) against mosquitto and `emberwatch sim`, while a client
//! flips the rack's cell temperature between 60 °C (critical) and 25 °C every 300 ms.
//!
//! ```text
//! cargo build && EMBERWATCH_BIN=target/debug/emberwatch cargo bench --profile dev --bench redundancy
//! ```
//!
//! `EMBERWATCH_BIN` (default `target/release/emberwatch`, else `target/debug/emberwatch`) is
//! the binary run. `DUMP=FILE` writes every event of the alarm, per kind of death, to
//! `FILE.{kind}`; `GATEWAY_LOG=DIR` appends each gateway's log (warnings, and the pair's
//! account of what a restarted gateway did not resend) to `DIR/{gw}.log`. `TRIALS` (default 20) is the number of takeovers of each kind, `KINDS`
//! (default `SIGKILL,SIGSTOP`) the kinds run:
//!
//! - **SIGKILL**: the active gateway is killed; the kernel closes its socket, so the broker
//!   publishes its last will at once.
//! - **SIGSTOP**: the active gateway freezes with its socket open (a hung host, or one whose
//!   power or network went without a FIN): the broker notices only after 1.5 × keep_alive
//!   (mosquitto 2.0: at its next 6 s sweep), the standby after 1.5 × keep_alive without the
//!   active one's beat. The SPEC's bound is 1.5 × keep_alive + 2 s = 5 s.
//!
//! Each trial takes over from whichever gateway is active, then restarts the dead one (it
//! comes back standby) and waits 2 to 8 s (at random) before the next, so takeovers alternate
//! between the two and meet a broker's periodic keep-alive sweep at any phase.
//! Figures, per kind: takeover time (kill or freeze → the new active gateway's status, as a
//! subscriber receives it), p50 and max; how many takeovers came on the standby's own count
//! of the peer's silence (1.5 × keep_alive without a beat) rather than on the last will; for
//! those on the last will, the gateway's part (the dead one's last will, as the subscriber
//! receives it, → the new active status); time from that status to the first alarm event the
//! new active gateway publishes. Over the whole run, from the merged stream of both gateways'
//! events for the alarm, in `time` order and without redeliveries (same `event_id`, which
//! subscribers drop; counted apart): **doubled** = an event with the same state and severity as the
//! previous one (a second publication of one change); **lost** = flips of the register
//! (critical ↔ normal, each held 300 ms, polled every 100 ms) that no event shows, i.e. flips
//! minus changes of state seen. Nothing here asserts a time.

mod common;
use common::{machine, percentile};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

const P: &str = "emberwatch/bench-site";
const ALARM_SUFFIX: &str = "/alarms/room-1/rack-01/cell_temp_max/cell-overtemp";
const FLIP: Duration = Duration::from_millis(300);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn binary() -> PathBuf {
    if let Some(b) = std::env::var_os("EMBERWATCH_BIN") {
        return PathBuf::from(b);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let release = root.join("target/release/emberwatch");
    if release.exists() {
        return release;
    }
    let debug = root.join("target/debug/emberwatch");
    assert!(
        debug.exists(),
        "no emberwatch binary: run `cargo build` first"
    );
    debug
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(p: &Proc, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(p.0.id().to_string())
        .status();
}

fn gateway_config(gw: &str, priority: u32, broker: u16, sim: u16, dir: &Path) -> String {
    let peer = if gw == "gw-b1" { "gw-b2" } else { "gw-b1" };
    format!(
        r#"[site]
id = "bench-site"
gateway = "{gw}"
[mqtt]
url = "mqtt://127.0.0.1:{broker}"
topic_prefix = "emberwatch"
keep_alive = "2s"
[storage]
dir = '{dir}'
[redundancy]
peer = "{peer}"
priority = {priority}
[[devices]]
id = "rack-01"
zone = "room-1"
transport = "modbus-tcp"
address = "127.0.0.1:{sim}"
unit = 1
poll_interval = "100ms"
timeout = "90ms"
  [[devices.points]]
  id = "cell_temp_max"
  kind = "temperature"
  table = "holding"
  address = 116
  type = "i16"
  scale = 0.1
  unit = "degC"
[[rules]]
id = "cell-overtemp"
points = ["*/cell_temp_max"]
above = {{ warning = 45.0, critical = 55.0, emergency = 65.0 }}
deadband = 1.0
"#,
        dir = dir.display()
    )
}

/// One message as received, with when.
#[derive(Clone)]
struct Seen {
    at: Instant,
    topic: String,
    json: Value,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn since(&self, from: usize) -> Vec<Seen> {
        self.0
            .lock()
            .map(|v| v[from.min(v.len())..].to_vec())
            .unwrap_or_default()
    }
    fn len(&self) -> usize {
        self.0.lock().map(|v| v.len()).unwrap_or(0)
    }
}

struct Rig {
    bin: PathBuf,
    broker: u16,
    sim: u16,
    dirs: [tempfile::TempDir; 2],
    gateways: [Option<Proc>; 2],
}

impl Rig {
    fn start_gateway(&mut self, i: usize) {
        let gw = ["gw-b1", "gw-b2"][i];
        let dir = self.dirs[i].path();
        let config = dir.join("emberwatch.toml");
        let text = gateway_config(gw, i as u32 + 1, self.broker, self.sim, &dir.join("state"));
        std::fs::write(&config, text).expect("write config");
        // `GATEWAY_LOG=DIR`: each gateway's warnings and the pair's own account (what a
        // restarted gateway did not resend, and why) appended to DIR/{gw}.log.
        let (log, level) = match std::env::var_os("GATEWAY_LOG") {
            Some(d) => {
                let path = PathBuf::from(d).join(format!("{gw}.log"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                (Stdio::from(file), "warn,emberwatch::pair=info")
            }
            None => (Stdio::null(), "warn"),
        };
        let child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start emberwatch run");
        self.gateways[i] = Some(Proc(child));
    }
}

/// The first message from `from` on that satisfies `pred`, waiting up to `within`.
async fn wait_for(
    log: &Log,
    from: usize,
    within: Duration,
    pred: impl Fn(&Seen) -> bool,
) -> Option<Seen> {
    let end = Instant::now() + within;
    loop {
        if let Some(s) = log.since(from).into_iter().find(|s| pred(s)) {
            return Some(s);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One kind of death's figures, in ms: takeover times, takeover → first alarm, last will →
/// new active status (takeovers on the last will only); and how many takeovers came on the
/// standby's own count of the peer's silence.
type Figures = (&'static str, Vec<f64>, Vec<f64>, Vec<f64>, usize);

fn is_role(s: &Seen, gw: &str, role: &str) -> bool {
    s.topic == format!("{P}/gateways/{gw}/status")
        && s.json["role"] == role
        && !s.json["role_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("starting"))
}

#[tokio::main]
async fn main() {
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(20);
    // `KINDS=SIGSTOP` (or `SIGKILL`) runs one kind of death only.
    let kinds = std::env::var("KINDS").unwrap_or_else(|_| "SIGKILL,SIGSTOP".into());
    let kinds: Vec<&str> = kinds.split(',').map(str::trim).collect();
    let bin = binary();
    println!("machine: {}", machine());
    println!("binary: {}", bin.display());

    // mosquitto, as in production.
    let broker = free_port();
    let mdir = tempfile::tempdir().expect("tempdir");
    let conf = mdir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {broker} 127.0.0.1\nallow_anonymous true\npersistence false\n{}",
            // `MOSQUITTO_LOG=FILE`: the broker's own account (connections, keep-alive
            // timeouts, wills), to attribute a slow takeover.
            std::env::var("MOSQUITTO_LOG").map_or(String::new(), |f| format!(
                "log_dest file {f}\nlog_type all\nlog_timestamp_format %H:%M:%S\n"
            ))
        ),
    )
    .expect("write mosquitto.conf");
    let _mosquitto = Proc(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto"),
    );
    wait_port(broker);
    let sim = free_port();
    let _sim = Proc(
        Command::new(&bin)
            .args(["sim", "--listen", &format!("127.0.0.1:{sim}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start emberwatch sim"),
    );
    wait_port(sim);

    // The subscriber: everything of the site, with arrival times.
    let log = Log::default();
    let mut opts = MqttOptions::new(
        format!("bench-sub-{}", std::process::id()),
        "127.0.0.1",
        broker,
    );
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 256);
    client
        .subscribe(format!("{P}/#"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let sink = log.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    if let Ok(mut v) = sink.0.lock() {
                        v.push(Seen {
                            at: Instant::now(),
                            topic: p.topic.clone(),
                            json,
                        });
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });

    let mut rig = Rig {
        bin: bin.clone(),
        broker,
        sim,
        dirs: [
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        ],
        gateways: [None, None],
    };
    rig.start_gateway(0);
    rig.start_gateway(1);
    wait_for(&log, 0, Duration::from_secs(20), |s| {
        is_role(s, "gw-b1", "active")
    })
    .await
    .expect("gw-b1 active at start");
    wait_for(&log, 0, Duration::from_secs(20), |s| {
        is_role(s, "gw-b2", "standby")
    })
    .await
    .expect("gw-b2 standby at start");

    // The device: flips every 300 ms for as long as the trials run.
    let flips = Arc::new(Mutex::new(0u64));
    let counter = flips.clone();
    let flipper = tokio::spawn(async move {
        let mut ctx = loop {
            match tokio_modbus::client::tcp::connect_slave(
                ([127, 0, 0, 1], sim).into(),
                tokio_modbus::Slave(1),
            )
            .await
            {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let mut hot = false;
        loop {
            hot = !hot;
            use tokio_modbus::client::Writer;
            if let Ok(Ok(())) = ctx
                .write_single_register(116, if hot { 600 } else { 250 })
                .await
            {
                if let Ok(mut n) = counter.lock() {
                    *n += 1;
                }
            }
            tokio::time::sleep(FLIP).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut active = 0usize;
    let flip_count = || flips.lock().map(|n| *n).unwrap_or(0);
    let mut phases = Vec::new();
    let mut results: Vec<Figures> = Vec::new();
    for kind in ["SIGKILL", "SIGSTOP"]
        .into_iter()
        .filter(|k| kinds.contains(k))
    {
        let (phase_from, flips_from) = (log.len(), flip_count());
        let mut takeover = Vec::new();
        let mut first_alarm = Vec::new();
        // The last will as the subscriber got it → the new active status: the gateway's part.
        let mut reaction = Vec::new();
        // Takeovers on the standby's own count (`peer gw-b1 silent for 3.0 s`), before any
        // last will.
        let mut on_silence = 0;
        for trial in 0..trials {
            let standby = 1 - active;
            let (gw_dead, gw_new) = (["gw-b1", "gw-b2"][active], ["gw-b1", "gw-b2"][standby]);
            let from = log.len();
            let t0 = Instant::now();
            if let Some(p) = rig.gateways[active].as_ref() {
                signal(p, if kind == "SIGKILL" { "KILL" } else { "STOP" });
            }
            let Some(s) = wait_for(&log, from, Duration::from_secs(20), |s| {
                is_role(s, gw_new, "active")
            })
            .await
            else {
                println!("{kind} trial {trial}: {gw_new} did not take over within 20 s");
                break;
            };
            takeover.push(s.at.duration_since(t0).as_secs_f64() * 1000.0);
            let why = s.json["role_reason"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            println!(
                "{kind} trial {trial}: {gw_dead} at {}, {gw_new} active {:.0} ms later ({why})",
                humantime::format_rfc3339_millis(std::time::SystemTime::now() - t0.elapsed()),
                s.at.duration_since(t0).as_secs_f64() * 1000.0
            );
            let dead_status = format!("{P}/gateways/{gw_dead}/status");
            if why.contains(" silent for ") {
                on_silence += 1;
            } else if let Some(will) = log
                .since(from)
                .into_iter()
                .find(|x| x.topic == dead_status && x.json["state"] == "offline")
            {
                reaction.push(s.at.saturating_duration_since(will.at).as_secs_f64() * 1000.0);
            }
            let alarm = format!("{P}{ALARM_SUFFIX}");
            if let Some(a) = wait_for(&log, from, Duration::from_secs(5), |x| {
                x.topic == alarm && x.json["gateway"] == gw_new && x.at >= s.at
            })
            .await
            {
                first_alarm.push(a.at.duration_since(s.at).as_secs_f64() * 1000.0);
            }
            // The dead one is gone for good (a frozen one too), then comes back as standby.
            if let Some(p) = rig.gateways[active].take() {
                signal(&p, "KILL");
                drop(p);
            }
            let from = log.len();
            rig.start_gateway(active);
            if wait_for(&log, from, Duration::from_secs(20), |s| {
                is_role(s, gw_dead, "standby")
            })
            .await
            .is_none()
            {
                println!("{kind} trial {trial}: {gw_dead} did not come back standby");
                break;
            }
            active = standby;
            // Plus 0 to 6 s at random: a broker that sweeps keep-alives on a period (mosquitto
            // 2.0 every 6 s) would otherwise be met at the same phase every trial, and the
            // figures would show that phase rather than a death at any moment.
            let jitter = rand::random_range(0..6000);
            tokio::time::sleep(Duration::from_millis(2000 + jitter)).await;
        }
        // Events of the last flips arrive after a poll or two.
        let flips_to = flip_count();
        tokio::time::sleep(Duration::from_millis(250)).await;
        phases.push((kind, phase_from, log.len(), flips_from, flips_to));
        results.push((kind, takeover, first_alarm, reaction, on_silence));
    }
    flipper.abort();

    // Lost and doubled, over the merged stream of both gateways' events, per kind of death.
    let alarm = format!("{P}{ALARM_SUFFIX}");
    let mut counts = Vec::new();
    for (kind, from, to, flips_from, flips_to) in &phases {
        // As a subscriber merging both gateways by alarm key sees them: in `time` order
        // (a dead gateway's last events may be delivered late, from its outbox, on restart).
        let mut stream: Vec<Value> = log
            .since(*from)
            .into_iter()
            .take(to - from)
            .filter(|s| s.topic == alarm)
            .map(|s| s.json)
            .collect();
        stream.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
        // `DUMP=FILE`: every event of the stretch, one JSON a line, to look into a doubled one.
        if let Some(file) = std::env::var_os("DUMP") {
            let lines: Vec<String> = stream.iter().map(Value::to_string).collect();
            let _ = std::fs::write(
                format!("{}.{kind}", PathBuf::from(file).display()),
                lines.join("\n"),
            );
        }
        // Subscribers drop duplicates of an at-least-once delivery by `event_id` (SPEC).
        let received = stream.len();
        let mut ids = std::collections::HashSet::new();
        stream.retain(|e| ids.insert(e["event_id"].as_str().unwrap_or("").to_string()));
        let (lost, doubled, changes) = judge(&stream, flips_to - flips_from);
        counts.push(format!(
            "{kind}: {} flips, {received} events received, {} redelivered (same event_id), \
             {changes} changes of state seen; lost {lost}, doubled {doubled}",
            flips_to - flips_from,
            received - stream.len()
        ));
    }

    for (kind, mut takeover, mut first, mut reaction, on_silence) in results {
        takeover.sort_by(f64::total_cmp);
        first.sort_by(f64::total_cmp);
        reaction.sort_by(f64::total_cmp);
        let all: Vec<String> = takeover.iter().map(|t| format!("{t:.0}")).collect();
        println!("{kind}: every takeover, ms: {}", all.join(" "));
        println!(
            "{kind}: {on_silence} of {} takeovers on the standby's own count of the peer's silence, the rest on the last will",
            takeover.len()
        );
        if !reaction.is_empty() {
            println!(
                "{kind}: of the takeovers on the last will, last will → new active status (the gateway's part): p50 {:.0} ms, max {:.0} ms ({} of {})",
                percentile(&reaction, 50.0),
                percentile(&reaction, 100.0),
                reaction.len(),
                takeover.len(),
            );
        }
        println!(
            "{kind}: {} takeovers: takeover p50 {:.0} ms, max {:.0} ms (SPEC bound 5000 ms at keep_alive 2 s); \
             takeover → first alarm by the new active gateway: p50 {:.0} ms, max {:.0} ms ({} of {})",
            takeover.len(),
            percentile(&takeover, 50.0),
            percentile(&takeover, 100.0),
            percentile(&first, 50.0),
            percentile(&first, 100.0),
            first.len(),
            takeover.len(),
        );
    }
    println!("alarm events while the register flipped every {FLIP:?}:");
    for c in counts {
        println!("  {c}");
    }
}

/// (lost, doubled, changes seen) of one stretch of the merged event stream, against the
/// number of flips the writer made in it. An event repeating the state and severity of the
/// one before is doubled (printed, with both, for the record).
fn judge(stream: &[Value], flips: u64) -> (u64, u64, u64) {
    let mut doubled = 0;
    let mut changes = 0u64;
    let mut last: Option<&Value> = None;
    for ev in stream {
        if let Some(l) = last {
            if l["state"] == ev["state"] && l["severity"] == ev["severity"] {
                doubled += 1;
                println!(
                    "  doubled: {} {} {} {} after {} {} {} {}",
                    ev["event_id"],
                    ev["state"],
                    ev["time"],
                    ev["message"],
                    l["event_id"],
                    l["state"],
                    l["time"],
                    l["message"]
                );
            } else if l["state"] != ev["state"] {
                changes += 1;
            }
        }
        last = Some(ev);
    }
    // The first event of the stretch shows a flip too.
    let seen = changes + u64::from(!stream.is_empty());
    (flips.saturating_sub(seen), doubled, seen)
}
