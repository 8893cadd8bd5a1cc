//! The test harness every integration test shares: a real mosquitto, the real `emberwatch sim` and
//! `emberwatch run` processes on free ports, and an MQTT subscriber that waits on messages with
//! deadlines.
//!
//! The tests exercise the binary the way an operator does (processes, sockets, topics), so what they
//! assert is what a user would see. Nothing here sleeps to let something happen: every wait is on
//! an event (a line on stdout, an accepted connection, an MQTT message) bounded by a deadline, and
//! the only sleeps are the short pauses of polling loops that have such a deadline.
//!
//! Each child process is killed when its handle drops. When a test panics, the handles print what
//! the processes wrote to stderr, so a failure shows the daemon's own account of what happened.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod agent;
pub mod console;
pub mod http;
pub mod relay;
pub mod slow;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout_at, Instant};

/// How long a process gets to come up (bind, print its address, accept connections).
pub const STARTUP: Duration = Duration::from_secs(10);

/// A port nobody was listening on a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Text a child process wrote, collected by a background task; shown when a test fails.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<String>>);

impl Output {
    /// Appends `r`'s lines, in the background, until it closes.
    fn collect<R: AsyncRead + Unpin + Send + 'static>(&self, r: R) {
        drop(self.collector(r));
    }

    /// As [`Output::collect`]; the handle finishes at end of file.
    fn collector<R: AsyncRead + Unpin + Send + 'static>(
        &self,
        r: R,
    ) -> tokio::task::JoinHandle<()> {
        let buf = self.0.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut b = buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        })
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// Prints a process's output into the test's captured output when the test is failing.
fn report_if_panicking(what: &str, out: &Output) {
    if std::thread::panicking() {
        eprintln!(
            "----- {what} -----\n{}----- end of {what} -----",
            out.text()
        );
    }
}

/// Waits until something accepts TCP connections on `addr`, or `child` exits, or the deadline.
async fn wait_until_listening(addr: SocketAddr, child: &mut Child, what: &str, out: &Output) {
    let deadline = Instant::now() + STARTUP;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening on {addr}:\n{}",
                out.text()
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "{what} not listening on {addr} after {STARTUP:?}:\n{}",
                out.text()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends SIGTERM, as systemd does on `systemctl stop`.
fn sigterm(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -TERM {pid} failed");
}

fn mosquitto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EMBERWATCH_TEST_MOSQUITTO") {
        return p.into();
    }
    let system = Path::new("/usr/sbin/mosquitto");
    if system.exists() {
        system.to_path_buf()
    } else {
        // Homebrew and other layouts put it on PATH.
        "mosquitto".into()
    }
}

/// A private mosquitto on a free 127.0.0.1 port, no persistence: a broker restart loses retained
/// messages, as a broker without a persistence file would.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    out: Output,
}

impl Mosquitto {
    pub async fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
            ),
        )
        .expect("write mosquitto.conf");
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
            out: Output::default(),
        };
        m.spawn().await;
        m
    }

    /// A mosquitto on a free port with the test's own configuration: `conf(port)` must open a
    /// listener on 127.0.0.1:`port` (the harness waits for it) and may add more.
    pub async fn start_custom(conf: impl FnOnce(u16) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        std::fs::write(dir.path().join("mosquitto.conf"), conf(port))
            .expect("write mosquitto.conf");
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
            out: Output::default(),
        };
        m.spawn().await;
        m
    }

    async fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let mut child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); install mosquitto (bash scripts/test.sh does)",
                    mosquitto_binary().display()
                )
            });
        self.out.collect(child.stderr.take().expect("piped stderr"));
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_until_listening(addr, &mut child, "mosquitto", &self.out).await;
        self.child = Some(child);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL: the broker vanishes without a word, as in a crash or a power loss.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts the broker again if it is not running: after a [`Mosquitto::restart`] that was
    /// cancelled between the kill and the start (a `select!` that stopped the chaos loop).
    pub async fn ensure_running(&mut self) {
        if self.child.is_none() {
            self.spawn().await;
        }
    }

    /// Kills the broker (if running) and starts a fresh one on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        report_if_panicking("mosquitto stderr", &self.out);
    }
}

/// `emberwatch sim` on a free port, speaking Modbus TCP.
pub struct Sim {
    child: Option<Child>,
    addr: SocketAddr,
    out: Output,
}

impl Sim {
    /// Starts the simulator and learns its port from the first stdout line,
    /// `emberwatch sim: listening on 127.0.0.1:PORT (...)`.
    pub async fn start(scenario: &str, speed: u32) -> Sim {
        Sim::start_with(scenario, speed, &[]).await
    }

    /// As [`Sim::start`], listening on `listen` (e.g. the port of a simulator that was killed,
    /// to play a device coming back).
    pub async fn start_at(listen: &str, scenario: &str, speed: u32) -> Sim {
        Sim::spawn(listen, scenario, speed, &[]).await
    }

    /// As [`Sim::start`], with more arguments (`--rtu PATH --parity none`, `--also-unit 2`).
    pub async fn start_with(scenario: &str, speed: u32, extra: &[&str]) -> Sim {
        Sim::spawn("127.0.0.1:0", scenario, speed, extra).await
    }

    async fn spawn(listen: &str, scenario: &str, speed: u32, extra: &[&str]) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_emberwatch"))
            .args(["sim", "--listen", listen, "--scenario", scenario])
            .args(["--speed", &speed.to_string()])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn emberwatch sim");
        let out = Output::default();
        let stderr_done = out.collector(child.stderr.take().expect("piped stderr"));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        let read = tokio::time::timeout(STARTUP, stdout.read_line(&mut first)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            // Whatever the simulator said on its way out is the explanation: wait for all of it.
            let _ = tokio::time::timeout(Duration::from_secs(2), stderr_done).await;
        }
        let addr = match read {
            Ok(Ok(n)) if n > 0 => parse_listening(&first).unwrap_or_else(|| {
                panic!(
                    "emberwatch sim: first stdout line {first:?} is not \
                     \"emberwatch sim: listening on ADDR (...)\"; stderr:\n{}",
                    out.text()
                )
            }),
            Ok(_) => panic!(
                "emberwatch sim closed stdout without announcing its address; stderr:\n{}",
                out.text()
            ),
            Err(_) => panic!(
                "emberwatch sim printed nothing within {STARTUP:?}; stderr:\n{}",
                out.text()
            ),
        };
        // Keep draining stdout so a chatty simulator never blocks on a full pipe.
        out.collect(stdout.into_inner());
        Sim {
            child: Some(child),
            addr,
            out,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn connect(&self) -> tokio_modbus::client::Context {
        self.connect_unit(1).await
    }

    async fn connect_unit(&self, unit: u8) -> tokio_modbus::client::Context {
        let connect =
            tokio_modbus::client::tcp::connect_slave(self.addr, tokio_modbus::Slave(unit));
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(ctx)) => ctx,
            Ok(Err(e)) => panic!("modbus connect to sim {}: {e}", self.addr),
            Err(_) => panic!("modbus connect to sim {}: timed out", self.addr),
        }
    }

    /// FC 06, write single holding register, unit 1: overrides the scenario for that register.
    pub async fn write(&self, addr: u16, value: u16) {
        self.write_unit(1, addr, value).await
    }

    /// As [`Sim::write`], to another rack on the simulated bus (`--also-unit`).
    pub async fn write_unit(&self, unit: u8, addr: u16, value: u16) {
        use tokio_modbus::client::Writer;
        let mut ctx = self.connect_unit(unit).await;
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            ctx.write_single_register(addr, value),
        )
        .await;
        match r {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(exc))) => panic!("sim: write {addr} = {value}: exception {exc:?}"),
            Ok(Err(e)) => panic!("sim: write {addr} = {value}: {e}"),
            Err(_) => panic!("sim: write {addr} = {value}: timed out"),
        }
    }

    /// FC 03, read one holding register, unit 1.
    pub async fn read(&self, addr: u16) -> u16 {
        use tokio_modbus::client::Reader;
        let mut ctx = self.connect().await;
        let r =
            tokio::time::timeout(Duration::from_secs(5), ctx.read_holding_registers(addr, 1)).await;
        match r {
            Ok(Ok(Ok(words))) if words.len() == 1 => words[0],
            Ok(Ok(Ok(words))) => panic!("sim: read {addr}: {} words for 1", words.len()),
            Ok(Ok(Err(exc))) => panic!("sim: read {addr}: exception {exc:?}"),
            Ok(Err(e)) => panic!("sim: read {addr}: {e}"),
            Err(_) => panic!("sim: read {addr}: timed out"),
        }
    }

    /// SIGKILL: the device goes silent (a cut cable, a dead BMS).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// What the simulator wrote after its first line (stdout and stderr).
    pub fn output(&self) -> String {
        self.out.text()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        report_if_panicking("emberwatch sim output", &self.out);
    }
}

/// `emberwatch sim: listening on 127.0.0.1:5020 (unit 1, scenario normal)` → the address.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("emberwatch sim: listening on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `emberwatch run` on a configuration the test wrote.
pub struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
    out: Output,
}

impl Daemon {
    /// Writes `config_toml` to a file of its own and starts `emberwatch run --config FILE` with
    /// `RUST_LOG=info`. The test's config names the storage dir, so a second daemon can reuse it.
    pub fn start(config_toml: &str) -> Daemon {
        Daemon::start_with_env(config_toml, &[])
    }

    /// As [`Daemon::start`], with extra environment (e.g. systemd's `NOTIFY_SOCKET`).
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_under(config_toml, env, &[])
    }

    /// As [`Daemon::start_with_env`], run by `wrapper` (e.g. `nsenter -t PID -U -m`, to run it
    /// in another mount namespace); `exec`-style wrappers keep the daemon's pid, so signals
    /// and the exit status are the daemon's.
    pub fn start_under(config_toml: &str, env: &[(&str, &str)], wrapper: &[String]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("emberwatch.toml");
        std::fs::write(&config, config_toml).expect("write config");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_emberwatch"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_emberwatch")),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // The developer's own overrides must not leak into the test's configuration.
        for (k, _) in std::env::vars() {
            if k.starts_with("EMBERWATCH__") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn emberwatch run");
        let out = Output::default();
        out.collect(child.stderr.take().expect("piped stderr"));
        out.collect(child.stdout.take().expect("piped stdout"));
        Daemon {
            child: Some(child),
            dir,
            config,
            out,
        }
    }

    /// What the daemon has logged so far (stderr, and stdout if it wrote any).
    pub fn stderr(&self) -> String {
        self.out.text()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The process id while it runs (for `/proc/PID/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("the daemon is running");
        let ok = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} {pid} failed");
    }

    /// SIGKILL: no goodbye, the broker has to notice (last will).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// SIGTERM, then waits for the exit (deadline 10 s) and returns the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("daemon already stopped");
        let pid = c.id().expect("daemon already reaped");
        sigterm(pid);
        match tokio::time::timeout(Duration::from_secs(10), c.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the daemon: {e}"),
            Err(_) => {
                let _ = c.kill().await;
                panic!(
                    "daemon still running 10 s after SIGTERM; its log:\n{}",
                    self.stderr()
                )
            }
        }
    }

    /// Waits until the daemon exits on its own (deadline `within`); `None` if it is still running.
    pub async fn exited(&mut self, within: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        match tokio::time::timeout(within, c.wait()).await {
            Ok(Ok(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        report_if_panicking("emberwatch run output", &self.out);
    }
}

/// One message as a subscriber received it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Set by the broker only when it delivers a stored retained message (to a new subscription).
    pub retain: bool,
}

impl Msg {
    /// The payload as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

static CLIENTS: AtomicU32 = AtomicU32::new(0);

/// An MQTT client subscribed (QoS 1) to one filter, collecting everything it receives.
///
/// Messages a wait does not match are kept (in arrival order) for later waits, so a test can
/// expect the zone status and the alarm event in either order. Call [`Subscriber::forget`] to drop
/// what came before a step when older messages could satisfy a later wait.
pub struct Subscriber {
    rx: mpsc::UnboundedReceiver<Msg>,
    pending: VecDeque<Msg>,
    seen: Vec<String>,
    subacks: watch::Receiver<u32>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects to 127.0.0.1:`port`, subscribes to `filter`, and returns once the broker has
    /// acknowledged the subscription (so nothing published afterwards can be missed). After a
    /// broker restart it reconnects and subscribes again.
    pub async fn connect(port: u16, filter: &str) -> Subscriber {
        let n = CLIENTS.fetch_add(1, Ordering::Relaxed);
        let mut opts = MqttOptions::new(
            format!("emberwatch-test-{}-{n}", std::process::id()),
            "127.0.0.1",
            port,
        );
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(true);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (subacks_tx, mut subacks) = watch::channel(0u32);
        let filter_owned = filter.to_string();
        let sub_client = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub_client.try_subscribe(filter_owned.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let msg = Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Broker gone (killed, restarting): back off briefly, then poll reconnects.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let acked = tokio::time::timeout(STARTUP, subacks.wait_for(|n| *n > 0))
            .await
            .map(|r| r.is_ok());
        assert!(
            acked == Ok(true),
            "MQTT subscriber: no SUBACK for {filter:?} from 127.0.0.1:{port} within {STARTUP:?}"
        );
        subacks.mark_unchanged();
        Subscriber {
            rx,
            pending: VecDeque::new(),
            seen: Vec::new(),
            subacks,
            client,
            task,
        }
    }

    /// Waits until the broker has acknowledged a new subscription since the last wait (after a
    /// broker restart: the subscriber is listening again); panics at the deadline.
    pub async fn resubscribed(&mut self, within: Duration) {
        let r = tokio::time::timeout(within, self.subacks.changed()).await;
        assert!(
            matches!(r, Ok(Ok(()))),
            "MQTT subscriber did not subscribe again within {within:?}"
        );
        self.subacks.mark_unchanged();
    }

    fn note(&mut self, m: &Msg) {
        let mut text = m.text();
        if text.len() > 400 {
            text.truncate(400);
            text.push('…');
        }
        self.seen.push(format!(
            "{}{} {}",
            m.topic,
            if m.retain { " (retained)" } else { "" },
            text
        ));
    }

    /// The first message (kept from earlier, or arriving within `within`) for which
    /// `pred(topic, json)` holds; `None` when the deadline passes.
    pub async fn next_matching(
        &mut self,
        mut pred: impl FnMut(&str, &Value) -> bool,
        within: Duration,
    ) -> Option<Msg> {
        if let Some(i) = self.pending.iter().position(|m| pred(&m.topic, &m.json())) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + within;
        loop {
            let m = match timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => return None,
            };
            self.note(&m);
            if pred(&m.topic, &m.json()) {
                return Some(m);
            }
            self.pending.push_back(m);
        }
    }

    /// The next message on exactly `topic` whose JSON satisfies `pred`; panics with every message
    /// seen so far when the deadline passes.
    pub async fn expect_where(
        &mut self,
        topic: &str,
        mut pred: impl FnMut(&Value) -> bool,
        within: Duration,
    ) -> Value {
        match self
            .next_matching(|t, j| t == topic && pred(j), within)
            .await
        {
            Some(m) => m.json(),
            None => panic!(
                "no matching message on {topic} within {within:?}; seen:\n{}",
                self.seen_list()
            ),
        }
    }

    /// The next message on exactly `topic`, as JSON; panics with every message seen so far when
    /// the deadline passes.
    pub async fn expect(&mut self, topic: &str, within: Duration) -> Value {
        self.expect_where(topic, |_| true, within).await
    }

    /// Drops every message received so far: later waits only see what arrives after this call.
    pub fn forget(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.note(&m);
        }
        self.pending.clear();
    }

    /// Every message received so far, one per line (the last 60, if there were more).
    pub fn seen_list(&mut self) -> String {
        while let Ok(m) = self.rx.try_recv() {
            self.note(&m);
            self.pending.push_back(m);
        }
        let skip = self.seen.len().saturating_sub(60);
        let mut s = String::new();
        if skip > 0 {
            let _ = writeln!(s, "  ... {skip} earlier messages");
        }
        for line in &self.seen[skip..] {
            let _ = writeln!(s, "  {line}");
        }
        if self.seen.is_empty() {
            s.push_str("  (nothing)\n");
        }
        s
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.client.try_disconnect();
    }
}

/// Publishes one message (QoS 1) as a separate client and returns once the broker has it: a
/// stand-in for an operator's console sending a command.
pub async fn publish(port: u16, topic: &str, payload: &[u8], retain: bool) {
    let n = CLIENTS.fetch_add(1, Ordering::Relaxed);
    let opts = MqttOptions::new(
        format!("emberwatch-test-pub-{}-{n}", std::process::id()),
        "127.0.0.1",
        port,
    );
    let (client, mut eventloop) = AsyncClient::new(opts, 8);
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .expect("queue publish");
    let acked = tokio::time::timeout(STARTUP, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match acked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("publish {topic} to 127.0.0.1:{port}: {e}"),
        Err(_) => panic!("publish {topic} to 127.0.0.1:{port}: no PUBACK within {STARTUP:?}"),
    }
    let _ = client.try_disconnect();
}

/// `P` of the SPEC for the test configuration.
pub const P: &str = "emberwatch/test-site";

/// A realistic gateway configuration: site "test-site", gateway "gw-t", one rack "rack-01" in
/// "room-1" polled every 100 ms from the simulator, and the `cell-overtemp` rule of the SPEC.
/// `extra_rules` is appended verbatim (more `[[rules]]`, or other sections).
pub fn gateway_config(
    mqtt_port: u16,
    sim_port: u16,
    storage_dir: &Path,
    extra_rules: &str,
) -> String {
    let dir = storage_dir.display().to_string();
    assert!(
        !dir.contains('\''),
        "storage dir {dir:?} cannot be a TOML literal string"
    );
    format!(
        r#"# Written by the emberwatch test harness.
[site]
id = "test-site"
gateway = "gw-t"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
topic_prefix = "emberwatch"
keep_alive = "5s"

[storage]
dir = '{dir}'

[[devices]]
id = "rack-01"
zone = "room-1"
transport = "modbus-tcp"
address = "127.0.0.1:{sim_port}"
unit = 1
poll_interval = "100ms"
timeout = "300ms"

  [[devices.points]]
  id = "cell_temp_max"
  kind = "temperature"
  table = "holding"
  address = 116
  type = "i16"
  scale = 0.1
  unit = "degC"

  [[devices.points]]
  id = "smoke"
  kind = "smoke"
  table = "holding"
  address = 120
  type = "u16"

  [[devices.points]]
  id = "offgas"
  kind = "offgas"
  table = "holding"
  address = 121
  type = "u16"
  unit = "ppm"

  [[devices.points]]
  id = "hydrogen"
  kind = "hydrogen"
  table = "holding"
  address = 122
  type = "u16"
  scale = 0.1
  unit = "%LEL"

[[rules]]
id = "cell-overtemp"
points = ["*/cell_temp_max"]
above = {{ warning = 45.0, critical = 55.0, emergency = 65.0 }}
deadband = 1.0
{extra_rules}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sim_announcement_is_parsed() {
        assert_eq!(
            parse_listening(
                "emberwatch sim: listening on 127.0.0.1:40123 (unit 1, scenario normal)\n"
            ),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(parse_listening("listening on 127.0.0.1:1"), None);
    }

    /// The harness itself: a subscriber sees what is published, retained messages carry the
    /// retain flag, and after a broker restart on the same port the subscriber listens again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn harness_broker_restarts_and_subscribers_follow() {
        let mut broker = Mosquitto::start().await;
        let mut sub = Subscriber::connect(broker.port(), "t/#").await;
        publish(broker.port(), "t/a", br#"{"n":1}"#, true).await;
        let m = sub
            .next_matching(|t, j| t == "t/a" && j["n"] == 1, STARTUP)
            .await
            .expect("t/a");
        assert!(
            !m.retain,
            "a live subscriber gets retained messages without the flag"
        );
        let mut late = Subscriber::connect(broker.port(), "t/a").await;
        assert!(
            late.next_matching(|_, _| true, STARTUP)
                .await
                .expect("retained")
                .retain
        );

        let port = broker.port();
        broker.restart().await;
        assert_eq!(broker.port(), port);
        sub.resubscribed(STARTUP).await;
        publish(broker.port(), "t/b", b"2", false).await;
        assert_eq!(sub.expect("t/b", STARTUP).await, 2);
        // Nothing else was published: a wait for it ends at its deadline, with None.
        assert!(sub
            .next_matching(|t, _| t == "t/c", Duration::from_millis(200))
            .await
            .is_none());
    }

    /// The harness's Modbus client against the simulator: FC 06 then FC 03 on register 116, and
    /// the normal scenario's idle value.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn harness_writes_and_reads_sim_registers() {
        let sim = Sim::start("normal", 1).await;
        // SOC (register 132) idles at 95 % in the normal scenario.
        assert_eq!(sim.read(132).await, 95);
        sim.write(116, (-50i16) as u16).await;
        assert_eq!(sim.read(116).await as i16, -50);
    }

    #[test]
    fn the_test_config_is_valid() {
        let text = gateway_config(1883, 5020, Path::new("/tmp/x"), "");
        let cfg = emberwatch::config::Config::from_toml(&text, emberwatch::config::Role::Gateway)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(cfg.devices[0].points.len(), 4);
        assert_eq!(cfg.rules[0].targets, vec![(0, 0)]);
    }
}
