//! A hostile network peer for the broker link: a TCP relay in front of a real mosquitto that
//! can pass bytes, trickle them, or stall while keeping every connection open.
//!
//! Unlike [`super::relay::Relay`], which cuts (the gateway sees a reset and knows at once), a
//! stalled peer never says anything: the TCP connection stays up, new connections are accepted
//! and then hear nothing (no CONNACK), and bytes already sent sit in buffers. That is what a
//! hung broker, an overloaded proxy or a half-dead NAT looks like, and the only way to notice is
//! a timeout of one's own. When the relay passes again, what waited in the buffers flows on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the relay does with the bytes of every connection, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards as it reads.
    Pass,
    /// Forwards one byte per interval, reading no more meanwhile.
    Trickle(Duration),
    /// Reads and forwards nothing; connections stay open, new ones are accepted.
    Stall,
}

pub struct SlowRelay {
    port: u16,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowRelay {
    /// Listens on a free 127.0.0.1 port and forwards to 127.0.0.1:`target`, passing at first.
    pub async fn start(target: u16) -> SlowRelay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("slow relay: bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("slow relay: local_addr")
            .port();
        let (mode, _) = watch::channel(Mode::Pass);
        let mode = Arc::new(mode);
        let shared = mode.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let to = SocketAddr::from(([127, 0, 0, 1], target));
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Ok(outbound) = TcpStream::connect(to).await else {
                    continue;
                };
                let (ar, aw) = inbound.into_split();
                let (br, bw) = outbound.into_split();
                conns.spawn(pump(ar, bw, shared.subscribe()));
                conns.spawn(pump(br, aw, shared.subscribe()));
            }
        });
        SlowRelay {
            port,
            accepted,
            mode,
            task,
        }
    }

    /// Where the gateway should connect.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far: a client that gives up on a silent broker and retries
    /// makes this grow while the relay stalls.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every pump.
        self.task.abort();
    }
}

/// One direction of one connection, as the mode says; ends when either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Stall => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            Mode::Pass => {
                let n = tokio::select! {
                    r = from.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    },
                    _ = mode.changed() => continue,
                };
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Mode::Trickle(every) => {
                let n = tokio::select! {
                    r = from.read(&mut buf[..1]) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    },
                    _ = mode.changed() => continue,
                };
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        }
    }
}
