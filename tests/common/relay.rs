//! A TCP relay the test controls, standing between the gateway and a broker: the network
//! partition of a fault-injection test, without `tc`, namespaces or root.
//!
//! `cut` closes every relayed connection and refuses new ones (each is accepted and closed at
//! once, as a firewall that resets would); `restore` lets connections through again. `swallow`
//! keeps connections open but drops what the gateway sends (the broker's side still reaches
//! it): publishes that never arrive and so are never acknowledged, as on a link that died
//! mid-flight, so they stay unconfirmed in the gateway's outbox. A connection whose gateway
//! side closes is closed on the broker's side too, without a DISCONNECT: the broker publishes
//! the last will at once, as after a SIGKILL.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the relay does with the gateway's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Swallow,
    Cut,
}

pub struct Relay {
    port: u16,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a free 127.0.0.1 port and forwards to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("relay: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("relay: local_addr").port();
        let (mode, _) = watch::channel(Mode::Up);
        let mode = Arc::new(mode);
        let shared = mode.clone();
        let task = tokio::spawn(async move {
            let to = SocketAddr::from(([127, 0, 0, 1], target));
            while let Ok((inbound, _)) = listener.accept().await {
                if *shared.borrow() == Mode::Cut {
                    drop(inbound);
                    continue;
                }
                let mut cut = shared.subscribe();
                let swallow = shared.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut ar, mut aw) = inbound.into_split();
                    let (mut br, mut bw) = outbound.into_split();
                    // Gateway → broker: forwarded unless swallowed; ends when the gateway's
                    // side closes, and dropping both halves then closes the broker's side.
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match ar.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) if *swallow.borrow() == Mode::Swallow => {}
                                Ok(n) => {
                                    if bw.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    };
                    tokio::select! {
                        () = up => {}
                        _ = tokio::io::copy(&mut br, &mut aw) => {}
                        _ = cut.wait_for(|m| *m == Mode::Cut) => {}
                    }
                });
            }
        });
        Relay { port, mode, task }
    }

    /// Where the gateway should connect.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The link goes down: open connections are closed, new ones refused.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// The link comes back.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Up);
    }

    /// What the gateway sends from now on is dropped, its connections kept open.
    pub fn swallow(&self) {
        self.mode.send_replace(Mode::Swallow);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
