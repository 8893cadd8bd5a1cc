//! SunSpec: the Modbus register layout most battery and inverter makers publish, found without
//! a vendor's register list. `emberwatch discover` ([`client`]) finds the `SunS` marker, walks
//! the model chain ([`chain`]) and writes a `[[profiles]]` block for the battery models 802 to
//! 805 ([`profile`], from the tables in [`models`]).
//!
//! Nothing here runs in the daemon: what discovery writes is an ordinary profile (addresses,
//! types, scales, and the `sentinel`/`required` keys `decode` honours), so a SunSpec device is
//! polled like any other.

pub mod chain;
pub mod client;
pub mod models;
pub mod profile;

pub use client::{discover, run_cli, DiscoverArgs, DiscoverError};
