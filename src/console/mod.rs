//! `emberwatch console`: the subscriber people use (issue 12). This placeholder holds the page
//! and the Alertmanager pusher until the backend (store, subscriber, API) is merged in.

pub mod alertmanager;
pub mod page;
