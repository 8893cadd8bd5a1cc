//! An MQTT broker inside the emberwatch process (rumqttd), for `mqtt.url = "embedded"` and
//! `emberwatch demo`: a single-box site or a laptop demo should not need mosquitto installed.
//!
//! rumqttd is configured in code (no config file at run time) for what the gateway and its
//! subscribers use: MQTT 3.1.1 on one TCP listener, QoS 1, retained messages and last wills,
//! room for about a hundred clients.
//!
//! rumqttd's `Broker::start` blocks its thread for good and only logs a failed bind, so the
//! broker runs on a thread of its own and [`start`] checks readiness itself: the address is
//! bound once beforehand (a clear "address in use" error), then an MQTT CONNECT must be answered
//! within [`READY_WITHIN`]. rumqttd 0.20 cannot be stopped: the broker's threads (`emberwatch-
//! broker`, rumqttd's router and listener threads) live until the process exits.
//!
//! rumqttd logs through `tracing` under the target prefix `rumqttd` (`rumqttd::server::broker`,
//! `rumqttd::router::routing`, `rumqttd::link::remote`, ...): one or more info lines per client
//! connection and disconnection, and an `error` line "disconnected" for an ordinary dropped
//! client. `RUST_LOG=info,rumqttd=warn` keeps the daemon's log readable.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

use super::MqttError;

/// How long the broker may take to answer its first CONNECT.
pub const READY_WITHIN: Duration = Duration::from_secs(5);

/// Tries for [`start_on_free_port`], in case another process takes the port between picking
/// and binding it.
const FREE_PORT_ATTEMPTS: u32 = 5;

/// A running embedded broker. It has no stop: see the module comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedBroker {
    /// Where clients connect (`mqtt://{addr}`).
    pub addr: SocketAddr,
}

/// Starts the broker on `addr` and returns once it answers MQTT there.
pub async fn start(addr: SocketAddr) -> Result<EmbeddedBroker, MqttError> {
    // rumqttd would only log a failed bind from its own thread; find out here instead.
    std::net::TcpListener::bind(addr).map_err(|e| listen_error(addr, &e))?;

    let (stopped_tx, mut stopped) = tokio::sync::oneshot::channel::<String>();
    let config = broker_config(addr);
    std::thread::Builder::new()
        .name("emberwatch-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            // `start` returns only once every listener thread has ended.
            let why = match broker.start() {
                Ok(()) => None,
                Err(e) => Some(e.to_string()),
            };
            let _ = stopped_tx.send(why.unwrap_or_default());
        })
        .map_err(|e| MqttError::EmbeddedStart {
            addr,
            reason: format!("cannot start its thread: {e}"),
        })?;

    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Ok(why) = stopped.try_recv() {
            // Its listener ends early only when it cannot bind: someone took the port between
            // the check above and rumqttd's own bind.
            return Err(MqttError::EmbeddedListen {
                addr,
                reason: if why.is_empty() {
                    "taken by another process while starting".into()
                } else {
                    why
                },
            });
        }
        let last = match timeout(Duration::from_millis(500), probe(addr)).await {
            Ok(Ok(())) => return Ok(EmbeddedBroker { addr }),
            Ok(Err(e)) => e,
            Err(_) => "no CONNACK within 500 ms".to_string(),
        };
        if Instant::now() >= deadline {
            return Err(MqttError::EmbeddedStart {
                addr,
                reason: format!(
                    "not answering MQTT within {} s ({last})",
                    READY_WITHIN.as_secs()
                ),
            });
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the broker on a free port of 127.0.0.1, for tests and the demo.
pub async fn start_on_free_port() -> Result<EmbeddedBroker, MqttError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let addr = std::net::TcpListener::bind(any)
            .and_then(|l| l.local_addr())
            .map_err(|e| listen_error(any, &e))?;
        match start(addr).await {
            Err(MqttError::EmbeddedListen { .. }) if attempt < FREE_PORT_ATTEMPTS => continue,
            other => return other,
        }
    }
}

fn listen_error(addr: SocketAddr, e: &std::io::Error) -> MqttError {
    let reason = match e.kind() {
        std::io::ErrorKind::AddrInUse => "address in use".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    MqttError::EmbeddedListen { addr, reason }
}

/// rumqttd's configuration, built in code.
fn broker_config(addr: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        // Time a new socket gets to send CONNECT.
        connection_timeout_ms: 10_000,
        max_payload_size: 256 * 1024,
        max_inflight_count: 256,
        auth: None,
        external_auth: None,
        // Clients may subscribe to topics nobody has published on yet.
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "emberwatch-embedded".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let router = rumqttd::RouterConfig {
        max_connections: 1024,
        max_outgoing_packet_count: 200,
        max_segment_size: 1024 * 1024,
        max_segment_count: 10,
        ..Default::default()
    };
    rumqttd::Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}

/// Connects, sends an MQTT 3.1.1 CONNECT, expects a successful CONNACK, and disconnects
/// cleanly. Proves it is an MQTT broker answering, not just any listener, and leaves no
/// half-open connection behind for rumqttd to log as an error.
async fn probe(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let id = format!("emberwatch-probe-{:08x}", rand::random::<u32>());
    s.write_all(&connect_packet(&id))
        .await
        .map_err(|e| e.to_string())?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack)
        .await
        .map_err(|e| format!("no CONNACK: {e}"))?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        return Err(format!("unexpected answer to CONNECT: {connack:02x?}"));
    }
    s.write_all(&[0xe0, 0x00])
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.shutdown().await;
    Ok(())
}

/// An MQTT 3.1.1 CONNECT with a clean session and no credentials.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let id_len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0a];
    body.extend_from_slice(&id_len.to_be_bytes());
    body.extend_from_slice(&id[..usize::from(id_len)]);
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_connect_packet_is_valid_mqtt_311() {
        let p = connect_packet("abc");
        assert_eq!(
            p,
            [0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 3, b'a', b'b', b'c']
        );
        // Remaining length above 127 takes two bytes.
        let long = "x".repeat(200);
        let p = connect_packet(&long);
        assert_eq!(&p[..3], &[0x10, (212 % 128) as u8 | 0x80, 1]);
        assert_eq!(p.len(), 3 + 212);
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_clearly() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = start(addr).await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!("embedded broker: cannot listen on {addr}: address in use")
        );
    }
}
