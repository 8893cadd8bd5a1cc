//! The demo's site console: the real `emberwatch console` (as `console::serve`) on loopback, its
//! database and users file in a temporary directory, one user `demo` whose password is made for
//! this run and printed, so a newcomer can open the page, log in and acknowledge.
//!
//! The console is a guest in the story: if it cannot start (the port range is exhausted, the
//! temporary directory is not writable), the demo says so and goes on without it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Role};

/// The demo user's name.
pub(super) const USER: &str = "demo";
/// The port tried first, the console's default; a free one if it is taken.
const PREFERRED_PORT: u16 = 8080;
/// How long the console gets to connect to the broker and open its database.
const READY_WITHIN: Duration = Duration::from_secs(10);

pub(super) struct DemoConsole {
    pub url: String,
    pub password: String,
    dir: PathBuf,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), crate::console::ConsoleError>>,
}

/// A password for this run: 16 letters and digits, without look-alikes (0/O, 1/l/I).
fn password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// A port to listen on: 8080 when free, else one the system picks.
fn port() -> u16 {
    let try_bind = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).ok();
    try_bind(PREFERRED_PORT)
        .or_else(|| try_bind(0))
        .and_then(|l| l.local_addr().ok())
        .map_or(PREFERRED_PORT, |a| a.port())
}

fn config(broker: SocketAddr, port: u16, dir: &std::path::Path, site: &str) -> String {
    format!(
        r#"
[console]
listen = "127.0.0.1:{port}"
database = '{db}'
users_file = '{users}'
sites = ["{site}"]

[mqtt]
url = "mqtt://{broker}"
keep_alive = "5s"
"#,
        db = dir.join("console.db").display(),
        users = dir.join("console.users").display(),
    )
}

/// Starts the console watching `site` on `broker`; returns once its `/healthz` answers 200 (it
/// has the broker and its database), so it sees the story from the start.
pub(super) async fn start(
    broker: SocketAddr,
    site: &str,
    cancel: CancellationToken,
) -> Result<DemoConsole, String> {
    let dir = super::scratch::dir(&std::env::temp_dir(), "console-");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let password = password();
    crate::console::users::set(&dir.join("console.users"), USER, &password)
        .map_err(|e| e.to_string())?;
    let port = port();
    let cfg =
        Config::from_toml(&config(broker, port, &dir, site), Role::Console).map_err(|ps| {
            ps.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    let task = tokio::spawn(crate::console::serve(cfg, cancel.clone()));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    loop {
        if healthy(addr).await {
            break;
        }
        if task.is_finished() {
            let why = match task.await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(())) => "it stopped".into(),
                Err(e) => e.to_string(),
            };
            let _ = std::fs::remove_dir_all(&dir);
            return Err(why);
        }
        if tokio::time::Instant::now() >= deadline {
            cancel.cancel();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("not healthy on {addr} after {READY_WITHIN:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(DemoConsole {
        url: format!("http://{addr}/"),
        password,
        dir,
        cancel,
        task,
    })
}

/// `GET /healthz` answered 200.
async fn healthy(addr: SocketAddr) -> bool {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

impl DemoConsole {
    /// Stops the console (it commits what it has) and removes its temporary directory.
    pub(super) async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
