//! Why MQTT could not be set up, worded for the operator who has to fix it.
//!
//! Only set-up fails with an error: once a [`Link`](super::Link) exists, broker trouble is
//! retried forever and reported in the logs, because a gateway that gives up on its broker stops
//! warning anyone. Every message names the thing to look at: the broker URL, the file, the
//! address.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::BrokerUrl;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A file named in `[mqtt]` (password, CA, client certificate or key) could not be used.
    #[error("{key} {}: {reason}", path.display())]
    File {
        /// The config key that names the file, e.g. `mqtt.password_file`.
        key: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// TLS was asked for but cannot be set up (no CA, bad certificate pair, ...).
    #[error("broker {url}: TLS: {reason}")]
    Tls { url: BrokerUrl, reason: String },

    /// The embedded broker's address is taken or cannot be bound.
    #[error("embedded broker: cannot listen on {addr}: {reason}")]
    EmbeddedListen { addr: SocketAddr, reason: String },

    /// The embedded broker was started but never answered an MQTT CONNECT.
    #[error("embedded broker on {addr}: {reason}")]
    EmbeddedStart { addr: SocketAddr, reason: String },
}
