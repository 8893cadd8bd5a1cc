//! A TCP relay the test controls, standing between the gateway and a broker: the network
//! partition of a fault-injection test, without `tc`, namespaces or root.
//!
//! `cut` closes every relayed connection and refuses new ones (each is accepted and closed at
//! once, as a firewall that resets would); `restore` lets connections through again.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Relay {
    port: u16,
    up: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a free 127.0.0.1 port and forwards to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("relay: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("relay: local_addr").port();
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let shared = up.clone();
        let task = tokio::spawn(async move {
            let to = SocketAddr::from(([127, 0, 0, 1], target));
            while let Ok((inbound, _)) = listener.accept().await {
                if !*shared.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut cut = shared.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Relay { port, up, task }
    }

    /// Where the gateway should connect.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The link goes down: open connections are closed, new ones refused.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// The link comes back.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
