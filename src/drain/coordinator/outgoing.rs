//! What a drain looks like on the wire: the retained request, status and clearance built from
//! a [`DrainRecord`], and the one helper every retained drain message goes through. The drain
//! machine decides when to publish; this part only says what, so the payloads' shape stays in
//! one place whichever rule (start, ack, deadline, cancel, restart) sends them.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::{Coordinator, DrainRecord};
use crate::drain::messages::{
    Cancelled, CancelledState, Clearance, DrainState, Progress, Request, Status,
};
use crate::message::Outgoing;

impl Coordinator {
    /// `P/drain/{zone}/request`: the request while the drain is in force, `cancelled` after.
    pub(super) fn request_message(&self, rec: &DrainRecord) -> Outgoing {
        let topic = self.topics.drain_request(&rec.zone);
        if rec.state == DrainState::Cancelled {
            message(
                topic,
                &Cancelled {
                    drain_id: rec.drain_id.clone(),
                    state: CancelledState::Cancelled,
                    drill: rec.drill,
                    gateway: Some(self.topics.gateway_id().to_string()),
                },
            )
        } else {
            message(
                topic,
                &Request {
                    drain_id: rec.drain_id.clone(),
                    zone: rec.zone.clone(),
                    severity: rec.severity,
                    reason: rec.reason.clone(),
                    requested_at: rec.requested_at.clone(),
                    deadline: crate::clock::rfc3339(
                        UNIX_EPOCH + Duration::from_millis(rec.deadline_ms),
                    ),
                    drill: rec.drill,
                    gateway: Some(self.topics.gateway_id().to_string()),
                },
            )
        }
    }

    /// `P/drain/{zone}/status`; an open drain lists the agents it still waits for that are
    /// not online, so operators see why it may run to its deadline.
    pub(super) fn status_message(&self, rec: &DrainRecord) -> Outgoing {
        let offline = if rec.open() {
            rec.agents
                .iter()
                .filter(|(a, p)| **p == Progress::Pending && self.roster.presence_of(a) != "online")
                .map(|(a, _)| a.clone())
                .collect()
        } else {
            Vec::new()
        };
        message(
            self.topics.drain_status(&rec.zone),
            &Status {
                drain_id: rec.drain_id.clone(),
                state: rec.state,
                agents: rec.agents.clone(),
                offline,
                drill: rec.drill,
            },
        )
    }

    /// `P/power/{zone}/clearance`, if the drain has one yet.
    pub(super) fn clearance_message(&self, rec: &DrainRecord) -> Option<Outgoing> {
        let c = rec.clearance.as_ref()?;
        Some(message(
            self.topics.power_clearance(&rec.zone),
            &Clearance {
                zone: rec.zone.clone(),
                clear: c.clear,
                drain_id: rec.drain_id.clone(),
                reason: c.reason.clone(),
                time: c.time.clone(),
                drill: rec.drill,
            },
        ))
    }
}

/// A retained drain message.
pub(super) fn message<T: Serialize>(topic: String, body: &T) -> Outgoing {
    // These bodies are strings, numbers and maps of strings: serialising cannot fail; an
    // empty body (which would clear the retained message) is the fallback all the same.
    let payload = serde_json::to_vec(body).unwrap_or_default();
    Outgoing::Message {
        topic,
        payload,
        retain: true,
    }
}
