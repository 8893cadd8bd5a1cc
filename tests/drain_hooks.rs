//! The hooks shipped in deploy/hooks/, run as a drain agent runs them (argv, environment), against
//! the real thing where it can be had on one machine: a real haproxy from the Debian archive with
//! real HTTP traffic moving from a zone's server to the other zone's, a real HTTP endpoint for
//! the webhook, and a stand-in kubectl that records what it is asked to do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

fn hook(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/hooks")
        .join(name)
}

async fn run_hook(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(hook(name))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A web server that answers every request with its own name; `/slow` after `slow`. Counts
/// the slow requests it has begun, so a test can wait until one is in flight.
async fn web_server(name: &'static str, slow: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let slow_started = Arc::new(AtomicUsize::new(0));
    let counter = slow_started.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if got.starts_with(b"GET /slow") {
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(slow).await;
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, slow_started)
}

/// One HTTP/1.1 GET through `addr`; the response body.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect to haproxy");
    let req = format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut resp))
        .await
        .expect("response in time")
        .expect("read response");
    let resp = String::from_utf8_lossy(&resp).into_owned();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

async fn bodies(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(get(addr, "/").await);
    }
    v
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// haproxy in the foreground: frontend on a free port, backend `be_app` with one server per
/// zone, `balance first` (everything goes to room-1's server while it takes traffic), and an
/// admin stats socket.
struct Haproxy {
    _child: Child,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    front: SocketAddr,
}

impl Haproxy {
    async fn start(room1: SocketAddr, room2: SocketAddr) -> Haproxy {
        let bin = Path::new("/usr/sbin/haproxy");
        assert!(
            bin.exists(),
            "haproxy is not installed; apt-get install -y haproxy (bash scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("admin.sock");
        let port = free_port();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n    stats socket {sock} mode 600 level admin\n\
                 defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
                 frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be_app\n\
                 backend be_app\n    balance first\n    server room-1-web1 {room1}\n    server room-2-web1 {room2}\n",
                sock = socket.display()
            ),
        )
        .expect("write haproxy.cfg");
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start haproxy");
        let front = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(socket.exists() && TcpStream::connect(front).await.is_ok()) {
            assert!(
                Instant::now() < deadline,
                "haproxy did not come up on {front}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Haproxy {
            _child: child,
            _dir: dir,
            socket,
            front,
        }
    }

    fn socket(&self) -> &str {
        self.socket.to_str().expect("utf-8 path")
    }
}

/// The drain hook moves live HTTP traffic from room-1's server to room-2's, waiting for the
/// request in flight on room-1 to finish (not cutting it); restore brings room-1 back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_drain_moves_traffic_to_the_other_zone_after_sessions_end() {
    let (a, a_slow) = web_server("room-1", Duration::from_millis(1500)).await;
    let (b, _) = web_server("room-2", Duration::from_millis(1500)).await;
    let hp = Haproxy::start(a, b).await;
    assert_eq!(bodies(hp.front, 5).await, vec!["room-1"; 5]);

    // A request in flight on room-1's server while the drain starts.
    let front = hp.front;
    let in_flight = tokio::spawn(async move { get(front, "/slow").await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while a_slow.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "slow request never reached room-1"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = Instant::now();
    let env = [
        ("HAPROXY_SOCKET", hp.socket()),
        ("HAPROXY_DRAIN_WAIT", "15"),
        ("EMBERWATCH_ZONE", "room-1"),
    ];
    let out = run_hook("haproxy-drain", &["be_app", "room-1"], &env).await;
    let took = t0.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("zone room-1 drained"),
        "{}",
        text(&out)
    );
    assert!(
        took >= Duration::from_millis(800),
        "the hook did not wait for the session in flight: {took:?}"
    );
    // The request in flight was allowed to finish on room-1.
    assert_eq!(in_flight.await.expect("in-flight request"), "room-1");
    // New traffic goes to the other zone.
    assert_eq!(bodies(hp.front, 5).await, vec!["room-2"; 5]);

    let out = run_hook("haproxy-restore", &["be_app", "room-1"], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(bodies(hp.front, 3).await, vec!["room-1"; 3]);
}

/// Sessions that outlive the bound make the drain fail with a reason (exit 2), unless the site
/// chose to shut them down (HAPROXY_DRAIN_KILL=1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_drain_fails_at_its_bound_or_shuts_sessions_down() {
    let (a, a_slow) = web_server("room-1", Duration::from_secs(20)).await;
    let (b, _) = web_server("room-2", Duration::from_secs(20)).await;
    let hp = Haproxy::start(a, b).await;
    let front = hp.front;
    let _stuck = tokio::spawn(async move {
        let mut s = TcpStream::connect(front).await.expect("connect");
        let _ = s
            .write_all(b"GET /slow HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            .await;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while a_slow.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "slow request never reached room-1"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let env = [("HAPROXY_SOCKET", hp.socket()), ("HAPROXY_DRAIN_WAIT", "1")];
    let out = run_hook("haproxy-drain", &["be_app", "room-1"], &env).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 session(s) still open after 1s"),
        "{}",
        text(&out)
    );
    let env = [
        ("HAPROXY_SOCKET", hp.socket()),
        ("HAPROXY_DRAIN_WAIT", "1"),
        ("HAPROXY_DRAIN_KILL", "1"),
    ];
    let out = run_hook("haproxy-drain", &["be_app", "room-1"], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("by shutting down 1 session(s)"),
        "{}",
        text(&out)
    );
    // A zone with no servers is an error worth saying, not a silent success.
    let out = run_hook("haproxy-drain", &["be_app", "room-9"], &env).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no server of be_app belongs to zone room-9")
    );
}

/// The webhook POSTs the request JSON with the drain's headers, and fails on a non-2xx answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_posts_the_request_json() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut status = 200;
        while let Ok((mut s, _)) = l.accept().await {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&got).to_string());
            let resp =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = s.write_all(resp.as_bytes()).await;
            status = 503;
        }
    });
    let url = format!("http://{addr}/hook");
    let request = r#"{"drain_id":"room-1-1","zone":"room-1","severity":"critical","reason":[],"requested_at":"t","deadline":"t"}"#;
    let env = [
        ("EMBERWATCH_REQUEST", request),
        ("EMBERWATCH_ACTION", "drain"),
        ("EMBERWATCH_ZONE", "room-1"),
        ("EMBERWATCH_DRAIN_ID", "room-1-1"),
        ("EMBERWATCH_DRILL", "1"),
    ];
    let out = run_hook("webhook", &[&url], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    let seen = rx.recv().await.expect("a POST");
    assert!(seen.starts_with("POST /hook HTTP/1.1"), "{seen}");
    let lower = seen.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/json"), "{seen}");
    assert!(lower.contains("x-emberwatch-drain-id: room-1-1"), "{seen}");
    assert!(lower.contains("x-emberwatch-drill: 1"), "{seen}");
    assert!(seen.ends_with(request), "{seen}");
    // The second answer is a 503: the hook fails and says so.
    let out = run_hook("webhook", &[&url], &env).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("answered HTTP 503"));
}

/// The Kubernetes hooks cordon and drain exactly the zone's nodes (kubectl replaced by a script
/// that records its arguments and lists two nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_hooks_cordon_drain_and_uncordon_the_zone_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("kubectl.log");
    let fake = dir.path().join("kubectl");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nif [ \"$1\" = get ]; then echo node/w1; echo node/w2; fi\n",
            log.display()
        ),
    )
    .expect("write fake kubectl");
    let status = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .expect("chmod");
    assert!(status.success());
    let kubectl = fake.to_str().expect("utf-8");
    let env = [("KUBECTL", kubectl), ("K8S_DRAIN_TIMEOUT", "30s")];
    let out = run_hook("k8s-drain", &["room-1"], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = run_hook("k8s-restore", &["room-1"], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    let calls = std::fs::read_to_string(&log).expect("kubectl was called");
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        vec![
            "get nodes -l emberwatch.io/fire-zone=room-1 -o name",
            "cordon node/w1",
            "cordon node/w2",
            "drain node/w1 --ignore-daemonsets --delete-emptydir-data --timeout=30s",
            "drain node/w2 --ignore-daemonsets --delete-emptydir-data --timeout=30s",
            "get nodes -l emberwatch.io/fire-zone=room-1 -o name",
            "uncordon node/w1",
            "uncordon node/w2",
        ]
    );
}

/// Every hook explains itself, and refuses to run without its arguments.
#[tokio::test]
async fn every_hook_has_usage_text() {
    for name in [
        "haproxy-drain",
        "haproxy-restore",
        "k8s-drain",
        "k8s-restore",
        "webhook",
    ] {
        let out = run_hook(name, &[], &[]).await;
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("usage: {name}")),
            "{name}: {}",
            text(&out)
        );
        let script = std::fs::read_to_string(hook(name)).expect("read hook");
        assert!(script.contains("set -euo pipefail"), "{name}");
    }
}
