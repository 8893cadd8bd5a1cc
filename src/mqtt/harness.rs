//! Test harness for the link tests: a real mosquitto on a free port, and a watcher client that
//! waits for messages with deadlines, never fixed sleeps.
//!
//! The link's promises (retained status, last will, nothing lost across a broker restart) are
//! promises about a real broker's behaviour, so they are tested against one.

use std::process::{Child, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use crate::config::{Config, Role};

pub(crate) const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// The longest any single expectation may take.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// Waits until `cond` holds, checking every 10 ms, or panics after `WAIT`.
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// A gateway config as in SPEC (site `pangyo-a`, gateway `gw-b1`) pointing at `url`.
pub(crate) fn config(url: &str) -> Config {
    let text = format!(
        r#"
[site]
id = "pangyo-a"
gateway = "gw-b1"
[mqtt]
url = "{url}"
keep_alive = "5s"
[storage]
dir = "/tmp/emberwatch-test"
[[devices]]
id = "rack-01"
zone = "room-1"
transport = "modbus-tcp"
address = "127.0.0.1:5020"
  [[devices.points]]
  id = "cell_temp_max"
  kind = "temperature"
  address = 116
"#
    );
    match Config::from_toml(&text, Role::Gateway) {
        Ok(c) => c,
        Err(problems) => panic!("test config: {problems:?}"),
    }
}

pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A mosquitto process with its own config and persistence directory.
pub(crate) struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: String,
    child: Option<Child>,
}

impl Mosquitto {
    pub async fn start() -> Mosquitto {
        Mosquitto::start_with("").await
    }

    /// Starts mosquitto with extra config lines (TLS, authentication).
    pub async fn start_with(extra: &str) -> Mosquitto {
        let mut last = String::new();
        for _ in 0..5 {
            let mut m = Mosquitto {
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                extra: extra.to_string(),
                child: None,
            };
            match m.launch().await {
                Ok(()) => return m,
                Err(e) => last = e,
            }
        }
        panic!("mosquitto would not start: {last}");
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let conf = dir.join("mosquitto.conf");
        // Persistence lets a watcher's session (and what was queued for it) survive a restart;
        // the gateway itself uses a clean session and relies on nothing of the sort.
        let anonymous = if self.extra.contains("allow_anonymous") {
            ""
        } else {
            "allow_anonymous true\n"
        };
        let text = format!(
            "listener {port} 127.0.0.1\n{anonymous}user root\npersistence true\n\
             persistence_location {dir}/\n{extra}\n",
            port = self.port,
            dir = dir.display(),
            extra = self.extra,
        );
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("mosquitto.log")).map_err(|e| e.to_string())?;
        let child = std::process::Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {MOSQUITTO}: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    let log =
                        std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
                    return Err(format!("mosquitto exited ({status}): {log}"));
                }
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "mosquitto not listening on {} after 5 s",
                    self.port
                ));
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops mosquitto the way an operator's `systemctl stop` would (SIGTERM): it closes every
    /// connection and saves persistent sessions.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(child.try_wait(), Ok(Some(_))) {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        // Wait until the port is really closed, so "down" is down.
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_ok()
        {
            assert!(
                Instant::now() < deadline,
                "mosquitto still listening after stop"
            );
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts it again on the same port, with the same persistence directory.
    pub async fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch().await {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => panic!("mosquitto restart: {e}"),
                Err(_) => sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A subscriber standing where an operator's dashboard would, collecting what arrives.
pub(crate) struct Watcher {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Publish>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Subscribes (QoS 1, clean session) to `filter` on the broker at `port`; returns once the
    /// subscription is acknowledged.
    pub async fn new(port: u16, filter: &str) -> Watcher {
        let id = format!("watcher-{:08x}", rand::random::<u32>());
        Watcher::with_session(port, &id, filter, true).await
    }

    /// As [`Watcher::new`] with a persistent session under `id`, so messages published while
    /// it is disconnected (a broker restart) are kept for it.
    pub async fn persistent(port: u16, id: &str, filter: &str) -> Watcher {
        Watcher::with_session(port, id, filter, false).await
    }

    async fn with_session(port: u16, id: &str, filter: &str, clean: bool) -> Watcher {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = watch::channel(false);
        let sub_client = client.clone();
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = sub_client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = subscribed_tx.send(true);
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(_) => {}
                    Err(_) => sleep(Duration::from_millis(20)).await,
                }
            }
        });
        timeout(WAIT, subscribed.wait_for(|s| *s))
            .await
            .expect("watcher subscribed in time")
            .expect("watcher task alive");
        Watcher { client, rx, task }
    }

    /// The next message, whatever its topic.
    pub async fn next(&mut self) -> Publish {
        match timeout(WAIT, self.rx.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => panic!("watcher stopped"),
            Err(_) => panic!("no message within {WAIT:?}"),
        }
    }

    /// The next message on exactly `topic`, skipping others.
    pub async fn next_on(&mut self, topic: &str) -> Publish {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.rx.recv()).await {
                Ok(Some(p)) if p.topic == topic => return p,
                Ok(Some(_)) => {}
                Ok(None) => panic!("watcher stopped"),
                Err(_) => panic!("nothing on {topic} within {WAIT:?}"),
            }
        }
    }

    /// The next message on `topic` whose payload is `payload`, skipping others.
    pub async fn expect(&mut self, topic: &str, payload: &[u8]) -> Publish {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.rx.recv()).await {
                Ok(Some(p)) if p.topic == topic && p.payload == payload => return p,
                Ok(Some(_)) => {}
                Ok(None) => panic!("watcher stopped"),
                Err(_) => panic!(
                    "no {} on {topic} within {WAIT:?}",
                    String::from_utf8_lossy(payload)
                ),
            }
        }
    }

    /// Nothing (more) arrives within `quiet`.
    pub async fn silent_for(&mut self, quiet: Duration) -> Option<Publish> {
        timeout(quiet, self.rx.recv()).await.ok().flatten()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
