//! MQTT: the connection to the broker, topics, payloads, and the embedded broker.
//!
//! MQTT is where emberwatch's warnings become visible to operators and drain agents, so this
//! module's one job is that nothing the pipeline hands it is lost on the way: alarm events and
//! zone statuses are queued while the broker is away and delivered in order afterwards, while
//! telemetry (useful only while fresh) is dropped and counted instead of piling up.
//!
//! - [`topics`]: the one place topic strings are built (SPEC "MQTT" table).
//! - [`payload`]: the gateway status body, and how each [`crate::message::Outgoing`] becomes a
//!   publication (topic, QoS, retain).
//! - [`link`]: a connection (the gateway's, or a drain agent's): a cloneable [`Publisher`]
//!   handle and one loop task per broker that owns its rumqttc event loop, in the
//!   handle-vs-loop shape rumqttc itself uses. [`LinkOptions`] says whose presence it announces
//!   and what it hears.
//! - [`delivery`]: the durable outbox between the pipeline and each broker's loop: per-broker
//!   cursors, `cmd/replay`, the `seq` heartbeat.
//! - [`embedded`]: an in-process rumqttd broker for `mqtt.url = "embedded"` and the demo.

pub mod delivery;
pub mod echo;
pub mod embedded;
mod error;
mod ledger;
pub mod link;
mod options;
pub mod payload;
mod replays;
pub mod topics;

#[cfg(test)]
pub(crate) mod harness;
#[cfg(test)]
mod tests;

pub use delivery::DurableOutbox;
pub use embedded::EmbeddedBroker;

/// rumqttc options for a short-lived client of `cfg.mqtt`'s broker (credentials and TLS as the
/// gateway's, clean session, no last will): for tools such as `emberwatch drill` that watch and
/// send a command but are nobody's presence.
pub fn client_options(
    cfg: &crate::config::Config,
    client_id: &str,
) -> Result<rumqttc::MqttOptions, MqttError> {
    options::build(&cfg.mqtt, client_id, None, true)
}
pub use error::MqttError;
pub use link::{
    connect, connect_durable, connect_with, Farewell, Inbound, Link, LinkOptions, LinkTasks,
    Presence, Publisher, PULSE,
};
pub use payload::GatewayStatus;
pub use topics::Topics;
