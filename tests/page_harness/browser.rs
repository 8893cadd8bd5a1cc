//! A real browser for the console's page tests (and benches/console_page.rs): Debian's `chromium`, headless, driven through
//! `chromedriver` (WebDriver) with fantoccini. Each [`Browser`] has its own chromedriver on a
//! free port and a fresh profile directory, and is killed when dropped.
//!
//! The flags keep a headless Chromium from reaching for the network on its own (component
//! updates, sync, QUIC probes): on a closed network those connections are refused and slow it.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::{Child, Command};

/// Chromium's flags for a headless run on a machine without a display or internet.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

fn find(candidates: &[&str]) -> String {
    for c in candidates {
        if std::path::Path::new(c).exists() {
            return c.to_string();
        }
    }
    panic!(
        "none of {candidates:?} exists: install Debian's chromium and chromium-driver \
         (scripts/test.sh does)"
    );
}

/// A port nobody listens on now (this file is shared with benches/console_page.rs, which has
/// no tests/common).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a `width` × `height` window.
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
        let chromedriver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let port = free_port();
        let mut driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            // Its own process group, so Drop can kill the Chromium it starts too: killing
            // chromedriver alone leaves its browser running, using a core, after a failed test.
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(s)) = driver.try_wait() {
                panic!("chromedriver exited ({s}) before listening on {port}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver not listening on {port} after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let mut args: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push(format!("--window-size={width},{height}"));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session through chromedriver");
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Opens `url`; panics naming it if the browser cannot.
    pub async fn open(&self, url: &str) {
        if let Err(e) = self.client.goto(url).await {
            panic!("open {url}: {e}");
        }
    }

    /// Opens `url` and waits until the page says it has drawn its first data (`data-ready`).
    pub async fn open_ready(&self, url: &str, within: Duration) {
        self.open(url).await;
        self.wait_until(
            "the page ready",
            "document.body.dataset.ready === '1'",
            within,
        )
        .await;
    }

    /// Waits until `script` (a JavaScript expression) is truthy, up to `within`; panics with
    /// `what` and the page's visible text if it never is.
    pub async fn wait_until(&self, what: &str, script: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = self
                .client
                .execute(&format!("return !!({script});"), vec![])
                .await
                .expect("execute");
            if v == json!(true) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let body = self.text("body").await;
                panic!("{what}: not seen within {within:?}; the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(e) => format!("(no {css}: {e})"),
        }
    }

    /// Saves a PNG screenshot of the whole window.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    pub async fn close(self) {
        let _ = self.client.clone().close().await;
        // Drop kills chromedriver's whole process group.
    }
}

impl Drop for Browser {
    /// Kills chromedriver and every Chromium process it started (one process group), whether
    /// the test passed or panicked.
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.start_kill();
    }
}
