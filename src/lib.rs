//! emberwatch: turns the minutes of warning a Li-ion battery fire gives (off-gas, then smoke, then
//! heat) into alarms operators can trust and a traffic drain finished before the power is cut.
//!
//! The modules mirror the pipeline, in the order a register value travels:
//! `config` → `fieldbus` (poll) → `decode` → `engine` (with `rules` and `alarms`) → `message` →
//! `mqtt` (with `outbox`) → `drain`; operator commands come in through `command`. `sim` and `demo`
//! stand in for a real battery room. ARCHITECTURE.md at the repository root is the map: which
//! task owns which state, the channels between them, and where to start for each kind of change.

pub mod alarms;
pub mod clock;
pub mod command;
pub mod config;
pub mod console;
pub mod daemon;
pub mod decode;
pub mod demo;
pub mod drain;
pub mod engine;
pub mod fieldbus;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod mqtt;
pub mod outbox;
pub mod pair;
pub mod report;
pub mod rules;
pub mod sim;
pub mod storage;
pub mod sunspec;
mod supervision;

/// The version reported on the gateway status topic.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
