//! What every pipeline benchmark stands on: a broker, simulated racks, the real daemon on a
//! generated configuration, an MQTT subscriber, and the daemon's CPU and RSS from /proc.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use emberwatch::sim::{self, Scenario, SimOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

/// A simulated rack (scenario `normal`) on a free port, stopped by `cancel`.
pub(crate) async fn normal_sim(cancel: &CancellationToken) -> sim::RunningSim {
    sim::start(
        SimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            unit: 1,
            scenario: Scenario::Normal,
            speed: 1.0,
        },
        cancel.clone(),
    )
    .await
    .expect("sim")
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A broker for the benchmark: mosquitto when installed (as in production), else the embedded one.
pub(crate) struct Broker {
    pub(crate) port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub(crate) async fn start() -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        if std::path::Path::new("/usr/sbin/mosquitto").exists() {
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
                ),
            )
            .expect("write mosquitto.conf");
            let child = Command::new("/usr/sbin/mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start mosquitto");
            wait_port(port);
            println!("broker: mosquitto on port {port}");
            Broker {
                port,
                child: Some(child),
                _dir: dir,
            }
        } else {
            let b = emberwatch::mqtt::embedded::start(SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .expect("embedded broker");
            println!("broker: embedded rumqttd on port {}", b.addr.port());
            Broker {
                port,
                child: None,
                _dir: dir,
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) const POINTS_TOML: &str = r#"
  [[devices.points]]
  id = "cell_temp_max"
  kind = "temperature"
  address = 116
  type = "i16"
  scale = 0.1
  unit = "degC"
"#;

pub(crate) fn device_toml(id: &str, addr: SocketAddr, poll: &str, points: usize) -> String {
    let mut s = format!(
        "[[devices]]\nid = \"{id}\"\nzone = \"room-1\"\naddress = \"{addr}\"\npoll_interval = \"{poll}\"\ntimeout = \"500ms\"\n{POINTS_TOML}"
    );
    for i in 1..points {
        s.push_str(&format!(
            "  [[devices.points]]\n  id = \"module_{i}\"\n  address = {}\n  type = \"i16\"\n  scale = 0.1\n  unit = \"degC\"\n",
            100 + (i - 1) % 16 + if i > 16 { 14 } else { 0 }
        ));
    }
    s
}

pub(crate) fn gateway_toml(broker_port: u16, storage: &std::path::Path, devices: &str) -> String {
    format!(
        "[site]\nid = \"bench\"\ngateway = \"gw-bench\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{broker_port}\"\n[storage]\ndir = \"{}\"\n{devices}\n[[rules]]\nid = \"overtemp\"\npoints = [\"*/cell_temp_max\"]\nabove = {{ warning = 45.0, critical = 55.0 }}\n",
        storage.display()
    )
}

pub(crate) struct Daemon(pub(crate) Child);

impl Daemon {
    pub(crate) fn start(config: &std::path::Path) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_emberwatch"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start emberwatch run");
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) async fn subscriber(port: u16, filter: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(
        format!("bench-sub-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut ev) = AsyncClient::new(opts, 64);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    // Wait for the SUBACK so no event is missed.
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = ev.poll().await {
            break;
        }
    }
    (client, ev)
}

pub(crate) async fn next_alarm(ev: &mut rumqttc::EventLoop, want_state: &str) -> Instant {
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                if v["state"] == want_state {
                    return Instant::now();
                }
            }
            Ok(_) => {}
            Err(e) => panic!("subscriber: {e}"),
        }
    }
}

pub(crate) fn proc_stat(pid: u32) -> (u64, u64) {
    // utime + stime in clock ticks, and RSS in kB.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}
