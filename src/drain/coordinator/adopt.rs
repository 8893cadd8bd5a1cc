//! A drain the other gateway of a redundant pair started, carried on by this one when it
//! takes over (SPEC "Redundant gateways": the same `drain_id`, so agents, which run a hook
//! once per `drain_id`, do not drain twice).
//!
//! While standby, the coordinator publishes nothing and starts nothing (it is given no zone
//! statuses); the drain task keeps what the pair published instead, from the retained
//! `P/drain/{zone}/request`, `.../status` and `P/power/{zone}/clearance` ([`Followed`]). At the
//! takeover [`Coordinator::adopt`] makes those drains this coordinator's own records, so the
//! zone statuses that follow escalate or cancel them rather than start new ones.

use std::collections::BTreeMap;

use super::{ClearanceRecord, Coordinator, DrainRecord, Effects};
use crate::clock::{unix_ms, Now};
use crate::drain::messages::{Clearance, DrainState, Progress, RequestMessage, Status};
use crate::mqtt::topics;

/// The pair's drains as last published, zone by zone.
#[derive(Debug, Clone, Default)]
pub struct Followed {
    zones: BTreeMap<String, Published>,
}

#[derive(Debug, Clone, Default)]
struct Published {
    request: Option<RequestMessage>,
    status: Option<Status>,
    clearance: Option<Clearance>,
}

impl Followed {
    /// A retained drain message (`P/drain/{zone}/request`, `.../status`,
    /// `P/power/{zone}/clearance`) under `root`; anything else, or a body that does not
    /// parse, is ignored (false).
    pub fn on_message(&mut self, root: &str, topic: &str, payload: &[u8]) -> bool {
        let Some(rest) = topic.strip_prefix(root) else {
            return false;
        };
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let (zone, what) = match parts.as_slice() {
            ["drain", zone, what @ ("request" | "status")] => (*zone, *what),
            ["power", zone, "clearance"] => (*zone, "clearance"),
            _ => return false,
        };
        let entry = self.zones.entry(zone.to_string()).or_default();
        match what {
            "request" => entry.request = serde_json::from_slice(payload).ok(),
            "status" => entry.status = serde_json::from_slice(payload).ok(),
            _ => entry.clearance = serde_json::from_slice(payload).ok(),
        }
        true
    }

    /// The filters whose messages [`Followed::on_message`] takes, under `root`.
    pub fn filters(root: &str) -> [String; 3] {
        [
            format!("{root}/drain/+/request"),
            format!("{root}/drain/+/status"),
            format!("{root}/power/+/clearance"),
        ]
    }

    /// Whether `topic` is one of [`Followed::filters`].
    pub fn wants(root: &str, topic: &str) -> bool {
        Followed::filters(root)
            .iter()
            .any(|f| topics::matches(topic, f))
    }
}

impl Coordinator {
    /// At a takeover: every drain the pair published for this gateway's zones becomes this
    /// coordinator's record (same `drain_id`, deadline, agents' progress, clearance); a
    /// cancellation the pair published cancels this coordinator's record of that drain.
    /// Returns the drains' retained messages again (agents answer a repeated request with what
    /// they already did) and whatever the deadline says now.
    pub fn adopt(&mut self, followed: &Followed, now: Now) -> Effects {
        let mut fx = Effects::default();
        for (zone, p) in &followed.zones {
            if !self.zones.contains(zone) {
                continue;
            }
            let rec = match &p.request {
                Some(RequestMessage::Request(r)) => {
                    let status = p.status.as_ref().filter(|s| s.drain_id == r.drain_id);
                    let mine = self
                        .state
                        .zones
                        .get(zone)
                        .filter(|m| m.drain_id == r.drain_id);
                    let agents: BTreeMap<String, Progress> = match (status, mine) {
                        (Some(s), _) => s.agents.clone(),
                        (None, Some(m)) => m.agents.clone(),
                        (None, None) => self
                            .roster
                            .expected_for(zone)
                            .into_iter()
                            .map(|a| (a, Progress::Pending))
                            .collect(),
                    };
                    let deadline_ms = humantime::parse_rfc3339(&r.deadline)
                        .map(unix_ms)
                        .unwrap_or_else(|_| unix_ms(now.wall));
                    DrainRecord {
                        drain_id: r.drain_id.clone(),
                        zone: zone.clone(),
                        severity: r.severity,
                        reason: r.reason.clone(),
                        requested_at: r.requested_at.clone(),
                        deadline_ms,
                        drill: r.drill,
                        state: status.map_or(DrainState::Requested, |s| s.state),
                        agents,
                        details: mine.map(|m| m.details.clone()).unwrap_or_default(),
                        clearance: p
                            .clearance
                            .as_ref()
                            .filter(|c| c.drain_id == r.drain_id)
                            .map(|c| ClearanceRecord {
                                clear: c.clear,
                                reason: c.reason.clone(),
                                time: c.time.clone(),
                            }),
                    }
                }
                Some(RequestMessage::Cancelled(c)) => {
                    match self
                        .state
                        .zones
                        .get(zone)
                        .filter(|m| m.drain_id == c.drain_id)
                    {
                        Some(m) if m.in_force() => {
                            let mut m = m.clone();
                            m.state = DrainState::Cancelled;
                            m
                        }
                        _ => continue,
                    }
                }
                None => continue,
            };
            tracing::info!(zone = %zone, drain_id = %rec.drain_id, state = ?rec.state, "drain: carrying on the pair's drain");
            // A new drain of this zone must still get a new id.
            let id_ms = rec
                .drain_id
                .rsplit('-')
                .next()
                .and_then(|ms| ms.parse::<u64>().ok())
                .unwrap_or(0);
            self.state.last_id_ms = self.state.last_id_ms.max(id_ms);
            self.request_sent.insert(zone.clone(), now.mono);
            fx.messages.push(self.request_message(&rec));
            fx.messages.push(self.status_message(&rec));
            if let Some(c) = self.clearance_message(&rec) {
                fx.messages.push(c);
            }
            self.state.zones.insert(zone.clone(), rec);
            self.dirty = true;
        }
        fx.extend(self.tick(now));
        fx
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::alarms::{Level, ZoneStatus};
    use crate::config;
    use crate::drain::coordinator::Persisted;
    use crate::mqtt::Topics;
    use crate::rules::Severity;

    const P: &str = "emberwatch/pangyo-a";

    fn coordinator(gw: &str, now: Now) -> Coordinator {
        let drain = config::Drain {
            trigger: Severity::Critical,
            deadline: Duration::from_secs(120),
            agents: vec!["lb-1".into(), "lb-2".into()],
            cancel_after_ack: false,
        };
        Coordinator::new(
            Topics::from_parts("emberwatch", "pangyo-a", gw),
            &drain,
            vec!["room-1".into()],
            Persisted::default(),
            now,
        )
    }

    fn critical() -> ZoneStatus {
        ZoneStatus {
            zone: "room-1".into(),
            level: Level::Critical,
            evidence: Level::Critical,
            active: vec!["rack-01/t/r".into()],
            faults: 0,
            unacknowledged: 1,
            time: "t".into(),
            shelved: Vec::new(),
        }
    }

    /// Feeds gw-b2's `Followed` with every retained drain message gw-b1 published.
    fn follow(fx: &Effects, f: &mut Followed) {
        for m in &fx.messages {
            if let crate::message::Outgoing::Message { topic, payload, .. } = m {
                f.on_message(P, topic, payload);
            }
        }
    }

    #[test]
    fn the_standby_carries_on_the_drain_of_the_dead_one() {
        let t0 = Now::system();
        let mut b1 = coordinator("gw-b1", t0);
        let mut followed = Followed::default();
        follow(&b1.on_zone(&critical(), t0), &mut followed);
        let id = b1.persisted().zones["room-1"].drain_id.clone();
        let ack = format!(r#"{{"drain_id":"{id}","agent":"lb-1","state":"done","detail":"ok"}}"#);
        follow(
            &b1.on_ack("room-1", "lb-1", ack.as_bytes(), t0),
            &mut followed,
        );

        let later = t0.after(Duration::from_secs(5));
        let mut b2 = coordinator("gw-b2", later);
        let fx = b2.adopt(&followed, later);
        let rec = &b2.persisted().zones["room-1"];
        assert_eq!(rec.drain_id, id);
        assert_eq!(rec.agents["lb-1"], Progress::Done);
        assert_eq!(rec.deadline_ms, b1.persisted().zones["room-1"].deadline_ms);
        // The same request goes out again, and the zone, still critical, starts nothing new.
        assert!(fx.messages.iter().any(|m| matches!(m,
            crate::message::Outgoing::Message { topic, payload, .. }
                if topic == "emberwatch/pangyo-a/drain/room-1/request"
                    && String::from_utf8_lossy(payload).contains(&id))));
        b2.on_zone(&critical(), later);
        assert_eq!(b2.persisted().zones["room-1"].drain_id, id);
        // A later drain gets a new id all the same.
        assert!(b2.persisted().last_id_ms >= b1.persisted().last_id_ms);
    }

    #[test]
    fn only_drain_messages_are_followed() {
        let mut f = Followed::default();
        assert!(!f.on_message(P, "emberwatch/pangyo-a/zones/room-1/status", b"{}"));
        assert!(!f.on_message(P, "other/site/drain/room-1/request", b"{}"));
        assert!(f.on_message(P, "emberwatch/pangyo-a/drain/room-1/status", b"junk"));
        assert!(Followed::wants(
            P,
            "emberwatch/pangyo-a/power/room-1/clearance"
        ));
        assert!(!Followed::wants(
            P,
            "emberwatch/pangyo-a/drain/room-1/ack/lb-1"
        ));
    }
}
