//! Drain coordination: the reason emberwatch exists. When a zone's alarms reach
//! `drain.trigger`, the gateway asks the zone's drain agents (load balancers, clusters, DNS) to
//! move traffic away, waits for them to confirm, and then tells whoever cuts the power that it
//! may (the power-cut clearance), before the fire brigade has to cut it anyway.
//!
//! - [`messages`]: the handshake's payloads, one type per message.
//! - [`coordinator`]: the gateway's state machine (pure: inputs with `now`, messages out).
//! - [`service`]: the gateway's async shell around it: fed zone statuses by the daemon, acks
//!   and presence by the MQTT link, persisting to `storage.dir/drain.json`.
//! - [`agent`] and [`hook`]: `emberwatch drain-agent`, which runs a site's hook commands.
//! - [`drill`]: `emberwatch drill`, a rehearsal of the whole handshake.
//!
//! The coordinator's `drain.json` and each agent's state file are written atomically by
//! [`crate::storage`], which the service and the agents share with the alarm table.

pub mod agent;
pub mod coordinator;
pub mod drill;
pub mod hook;
pub mod messages;
pub mod service;

pub use crate::storage::StoreError;
pub use coordinator::{AgentFault, Coordinator, Persisted};
pub use service::{DrainHandle, DrainService};
