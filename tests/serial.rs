//! Serial field buses as an operator sees them: racks on an RS-485 bus polled over Modbus RTU, a
//! rack behind a serial device server (RTU over TCP), a sensor that prints lines, an adapter that
//! is unplugged and plugged back, and a noisy bus.
//!
//! Serial ports are socat pty pairs (`pty,raw,echo=0`): the simulator (`emberwatch sim --rtu`,
//! tokio-modbus's RTU server) or the test itself on one end, the daemon on the other. Parity is
//! none because ptys refuse parity settings. Unplugging kills socat and removes the links, as the
//! kernel removes /dev/ttyUSB0 when an adapter is pulled; replugging starts a new socat on the
//! same paths. Every wait is on an event under a deadline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Generous for a 100 ms poll; a test waits this long only when something is wrong.
const SOON: Duration = Duration::from_secs(10);

const ZONE_ALARMS: &str = "emberwatch/test-site/alarms/room-1";

fn telemetry(device: &str) -> String {
    format!("{P}/telemetry/{device}")
}

fn alarm(device: &str, point: &str, rule: &str) -> String {
    format!("{ZONE_ALARMS}/{device}/{point}/{rule}")
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Waits until `path` exists (or stops existing), polling under a deadline.
async fn wait_for_path(path: &Path, present: bool) {
    let deadline = Instant::now() + STARTUP;
    while path.exists() != present {
        assert!(
            Instant::now() < deadline,
            "{} still {} after {STARTUP:?}",
            path.display(),
            if present { "missing" } else { "present" }
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A null-modem cable between two pty links made by socat: `a` for the device side, `b` for the
/// daemon. Or, with [`Cable::device_server`], `a` and a TCP port, as a serial device server.
struct Cable {
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Cable {
    async fn pty_pair() -> Cable {
        assert!(
            have("socat"),
            "socat is needed for serial tests (bash scripts/test.sh installs it)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a").display().to_string();
        let b = dir.path().join("b").display().to_string();
        let args = vec![
            format!("pty,raw,echo=0,link={a}"),
            format!("pty,raw,echo=0,link={b}"),
        ];
        let mut c = Cable {
            child: None,
            dir,
            args,
        };
        c.plug().await;
        c
    }

    /// A pty `a` for the simulator, bridged to a TCP listener on `port`: a serial device server.
    async fn device_server(port: u16) -> Cable {
        assert!(have("socat"), "socat is needed for serial tests");
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a").display().to_string();
        let args = vec![
            format!("pty,raw,echo=0,link={a}"),
            format!("tcp-listen:{port},bind=127.0.0.1,reuseaddr"),
        ];
        let mut c = Cable {
            child: None,
            dir,
            args,
        };
        c.plug().await;
        c
    }

    fn a(&self) -> PathBuf {
        self.dir.path().join("a")
    }

    fn b(&self) -> PathBuf {
        self.dir.path().join("b")
    }

    /// Starts socat and waits for the device-side link (and the daemon side, for a pty pair).
    async fn plug(&mut self) {
        let child = Command::new("socat")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn socat");
        self.child = Some(child);
        wait_for_path(&self.a(), true).await;
        if self.args[1].starts_with("pty") {
            wait_for_path(&self.b(), true).await;
        }
    }

    /// Pulls the cable: socat dies without a word and the device nodes disappear.
    async fn unplug(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        let _ = std::fs::remove_file(self.a());
        let _ = std::fs::remove_file(self.b());
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// `emberwatch sim --rtu` on the device end of `cable`, with racks for `units`.
async fn rtu_sim(cable: &Cable, units: &[u8]) -> Sim {
    let a = cable.a().display().to_string();
    let mut args: Vec<String> = vec![
        "--rtu".into(),
        a,
        "--baud".into(),
        "19200".into(),
        "--parity".into(),
        "none".into(),
        "--unit".into(),
        units[0].to_string(),
    ];
    for u in &units[1..] {
        args.push("--also-unit".into());
        args.push(u.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Sim::start_with("normal", 1, &args).await
}

/// One RTU device section; `link` is the transport and its keys.
fn rtu_device(id: &str, unit: u8, link: &str) -> String {
    format!(
        r#"
[[devices]]
id = "{id}"
zone = "room-1"
{link}
unit = {unit}
poll_interval = "100ms"
timeout = "300ms"

  [[devices.points]]
  id = "cell_temp_max"
  kind = "temperature"
  address = 116
  type = "i16"
  scale = 0.1
  unit = "degC"
"#
    )
}

fn serial_link(port: &Path) -> String {
    format!(
        "transport = \"modbus-rtu\"\nport = '{}'\nbaud = 19200\nparity = \"none\"",
        port.display()
    )
}

/// The harness's gateway configuration with its TCP rack replaced by `devices`.
fn config(broker: &Mosquitto, state: &Path, devices: &str) -> String {
    let base = gateway_config(broker.port(), 1, state, "");
    let start = base
        .find("[[devices]]")
        .expect("devices in the harness config");
    let end = base.find("[[rules]]").expect("rules in the harness config");
    format!("{}{devices}\n{}", &base[..start], &base[end..])
}

fn is_good(j: &Value) -> bool {
    j["quality"] == "good"
}

/// The daemon's comm-loss alarm of `device` reaching `state`.
async fn expect_comm_loss(sub: &mut Subscriber, device: &str, state: &str) -> Value {
    sub.expect_where(
        &alarm(device, "_link", "comm-loss"),
        |j| j["state"] == state,
        SOON,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racks_on_one_rs485_bus_alarm_independently() {
    let broker = Mosquitto::start().await;
    let cable = Cable::pty_pair().await;
    let sim = rtu_sim(&cable, &[1, 2]).await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let devices = rtu_device("rack-01", 1, &serial_link(&cable.b()))
        + &rtu_device("rack-02", 2, &serial_link(&cable.b()));
    let mut daemon = Daemon::start(&config(&broker, state.path(), &devices));

    for rack in ["rack-01", "rack-02"] {
        let t = sub.expect_where(&telemetry(rack), is_good, SOON).await;
        let v = t["points"]["cell_temp_max"].as_f64().unwrap_or(f64::NAN);
        assert!((24.0..27.0).contains(&v), "{rack}: {t}");
    }
    // Overheat the second rack only, through the simulator's TCP maintenance port.
    sim.write_unit(2, 116, 600).await;
    let a = sub
        .expect_where(
            &alarm("rack-02", "cell_temp_max", "cell-overtemp"),
            |j| j["state"] == "active",
            SOON,
        )
        .await;
    assert_eq!(a["severity"], "critical", "{a}");
    assert_eq!(a["value"], 60.0, "{a}");
    sub.forget();
    let t = sub.expect_where(&telemetry("rack-01"), is_good, SOON).await;
    assert!(
        t["points"]["cell_temp_max"].as_f64().unwrap_or(f64::NAN) < 45.0,
        "rack-01 read rack-02's value: {t}"
    );
    assert!(
        sub.next_matching(
            |topic, _| topic == alarm("rack-01", "cell_temp_max", "cell-overtemp"),
            Duration::from_millis(500)
        )
        .await
        .is_none(),
        "rack-01 raised an alarm it should not have"
    );
    // The bus owner stops with everything else: a clean exit on SIGTERM, the port released.
    let status = daemon.terminate().await;
    assert!(status.success(), "{status}\n{}", daemon.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplugged_adapter_faults_every_device_and_replug_recovers() {
    let broker = Mosquitto::start().await;
    let mut cable = Cable::pty_pair().await;
    let _sim = rtu_sim(&cable, &[1, 2]).await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let devices = rtu_device("rack-01", 1, &serial_link(&cable.b()))
        + &rtu_device("rack-02", 2, &serial_link(&cable.b()));
    let daemon = Daemon::start(&config(&broker, state.path(), &devices));
    for rack in ["rack-01", "rack-02"] {
        sub.expect_where(&telemetry(rack), is_good, SOON).await;
    }

    cable.unplug().await;
    let pulled = Instant::now();
    for rack in ["rack-01", "rack-02"] {
        let a = expect_comm_loss(&mut sub, rack, "active").await;
        assert_eq!(a["kind"], "fault", "{a}");
        assert!(
            a["message"].as_str().unwrap_or("").contains("port"),
            "the fault should say the port is gone: {a}"
        );
    }
    let detected = pulled.elapsed();

    cable.plug().await;
    let replugged = Instant::now();
    for rack in ["rack-01", "rack-02"] {
        expect_comm_loss(&mut sub, rack, "cleared").await;
    }
    let recovered = replugged.elapsed();
    sub.expect_where(&telemetry("rack-01"), is_good, SOON).await;
    eprintln!(
        "unplug → comm-loss alarms: {detected:?}; replug → comm-loss cleared: {recovered:?} (poll 100 ms)"
    );
    assert!(
        daemon.stderr().contains("bus"),
        "the daemon should log the bus going and coming back:\n{}",
        daemon.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_behind_a_serial_device_server_is_polled_over_rtu_over_tcp() {
    let broker = Mosquitto::start().await;
    let port = free_port();
    let cable = Cable::device_server(port).await;
    let sim = rtu_sim(&cable, &[1]).await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let link = format!("transport = \"modbus-rtu-over-tcp\"\naddress = \"127.0.0.1:{port}\"");
    let _daemon = Daemon::start(&config(
        &broker,
        state.path(),
        &rtu_device("rack-01", 1, &link),
    ));
    sub.expect_where(&telemetry("rack-01"), is_good, SOON).await;
    sim.write(116, 700).await;
    let a = sub
        .expect_where(
            &alarm("rack-01", "cell_temp_max", "cell-overtemp"),
            |j| j["state"] == "active",
            SOON,
        )
        .await;
    assert_eq!(a["severity"], "emergency", "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_reads_the_simulated_racks_over_rtu() {
    assert!(
        have("mbpoll"),
        "mbpoll is needed (bash scripts/test.sh installs it)"
    );
    let cable = Cable::pty_pair().await;
    let sim = rtu_sim(&cable, &[1, 2]).await;
    sim.write_unit(2, 116, 444).await;
    let b = cable.b().display().to_string();
    let run = |unit: &'static str| {
        let b = b.clone();
        async move {
            let out = Command::new("mbpoll")
                .args(["-m", "rtu", "-b", "19200", "-P", "none", "-a", unit])
                .args(["-r", "117", "-c", "1", "-o", "2", "-1", &b])
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(SOON, out)
                .await
                .expect("mbpoll finished")
                .expect("mbpoll ran");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let unit2 = run("2").await;
    assert!(unit2.contains("[117]: \t444"), "{unit2}");
    let unit1 = run("1").await;
    assert!(unit1.contains("[117]: \t25"), "{unit1}");
    // Unit 3 is not on the bus: an RTU slave stays silent for other addresses.
    let unit3 = run("3").await;
    assert!(!unit3.contains("[117]"), "{unit3}");
}

/// Writes `line` to the sensor end of the cable every 100 ms while it is `Some`.
fn sensor(path: PathBuf) -> tokio::sync::watch::Sender<Option<Vec<u8>>> {
    let (tx, mut rx) = tokio::sync::watch::channel(Some(b"T1=25.0 SMK=0\n".to_vec()));
    tokio::spawn(async move {
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .await
            .expect("open the sensor end");
        loop {
            let line = rx.borrow_and_update().clone();
            if let Some(line) = line {
                if f.write_all(&line).await.is_err() || f.flush().await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                r = rx.changed() => if r.is_err() { return },
            }
        }
    });
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_sensor_alarms_shrugs_off_garbage_and_faults_when_silent() {
    let broker = Mosquitto::start().await;
    let cable = Cable::pty_pair().await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let device = format!(
        r#"
[[devices]]
id = "asd-1"
zone = "room-1"
transport = "serial-lines"
port = '{}'
baud = 9600
parity = "none"
poll_interval = "200ms"
timeout = "200ms"

  [[devices.points]]
  id = "cell_temp_max"
  kind = "temperature"
  field = "T1"
  unit = "degC"

  [[devices.points]]
  id = "smoke"
  kind = "smoke"
  field = "SMK"
"#,
        cable.b().display()
    );
    let daemon = Daemon::start(&config(&broker, state.path(), &device));
    let line = sensor(cable.a());
    let t = sub.expect_where(&telemetry("asd-1"), is_good, SOON).await;
    assert_eq!(t["points"]["cell_temp_max"], 25.0, "{t}");
    assert_eq!(t["points"]["smoke"], 0.0, "{t}");

    // Noise, a boot banner, binary junk: counted and logged, nothing else.
    line.send_replace(Some(
        b"\x00\xff\xfe@@\nSENSOR v1.2 READY\nT1=61.5 SMK=0\n".to_vec(),
    ));
    let a = sub
        .expect_where(
            &alarm("asd-1", "cell_temp_max", "cell-overtemp"),
            |j| j["state"] == "active",
            SOON,
        )
        .await;
    assert_eq!(a["severity"], "critical", "{a}");
    assert!(
        daemon.stderr().contains("malformed line ignored"),
        "{}",
        daemon.stderr()
    );

    // The sensor goes quiet: a comm-loss fault, as for a Modbus device; back when it talks again.
    line.send_replace(None);
    let f = expect_comm_loss(&mut sub, "asd-1", "active").await;
    assert!(
        f["message"]
            .as_str()
            .unwrap_or("")
            .contains("no readable line"),
        "{f}"
    );
    line.send_replace(Some(b"T1=25.0 SMK=0\n".to_vec()));
    expect_comm_loss(&mut sub, "asd-1", "cleared").await;
}

/// Plays a bus with trouble: answers each unit's read of register 116 in its own bad way.
async fn troubled_slave(path: PathBuf) {
    use emberwatch::decode::Table;
    use emberwatch::fieldbus::frame::{reply_frame, Payload};
    let port = tokio_serial::SerialStream::open(
        &tokio_serial::new(path.display().to_string(), 19200).parity(tokio_serial::Parity::None),
    );
    let Ok(mut port) = port else {
        return;
    };
    let mut req = [0u8; 8];
    while port.read_exact(&mut req).await.is_ok() {
        let unit = req[0];
        let good = reply_frame(unit, Table::Holding, &Payload::Words(vec![250]));
        let reply: Vec<u8> = match unit {
            1 => {
                let mut bad = good.clone();
                bad[3] ^= 0x10; // a flipped bit: CRC error
                bad
            }
            2 => [&[0x00u8, 0xFF, 0x55][..], &good].concat(), // noise before a good reply
            3 => reply_frame(9, Table::Holding, &Payload::Words(vec![250])), // wrong unit
            4 => good[..4].to_vec(),                          // cut short
            _ => good,
        };
        if port.write_all(&reply).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_counts_bus_errors_and_none_poisons_the_next_request() {
    let cable = Cable::pty_pair().await;
    tokio::spawn(troubled_slave(cable.a()));
    let state = tempfile::tempdir().expect("tempdir");
    let mut devices = String::new();
    for unit in 1..=5u8 {
        devices += &rtu_device(&format!("unit-{unit}"), unit, &serial_link(&cable.b()))
            .replace("timeout = \"300ms\"", "timeout = \"200ms\"");
    }
    let cfg = format!(
        "[site]\nid = \"s\"\ngateway = \"g\"\n[storage]\ndir = '{}'\n{devices}",
        state.path().display()
    );
    let file = state.path().join("read.toml");
    std::fs::write(&file, cfg).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_emberwatch"))
        .args(["read", "--config"])
        .arg(&file)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SOON, out)
        .await
        .expect("read finished")
        .expect("read ran");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let section = |unit: u8| -> String {
        text.lines()
            .skip_while(|l| !l.starts_with(&format!("unit-{unit} ")))
            .take(2)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(out.status.code(), Some(1), "some devices failed:\n{text}");
    let want: [(u8, &[&str]); 5] = [
        (1, &["CRC", "1 CRC error"]),
        (2, &["25", "ok", "1 garbage burst"]),
        (3, &["answered by unit 9", "1 wrong-unit reply"]),
        (4, &["cut short", "1 short frame"]),
        (5, &["25", "ok", "1 request, no errors"]),
    ];
    for (unit, needles) in want {
        let s = section(unit);
        for n in needles {
            assert!(
                s.contains(n),
                "unit {unit}: {n:?} missing in\n{s}\n---\n{text}"
            );
        }
    }
}
