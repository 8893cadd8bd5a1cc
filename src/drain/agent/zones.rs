//! One drain per zone, whoever asks.
//!
//! In a split brain both gateways of a redundant pair may coordinate a drain of the same zone,
//! each under its own `drain_id` (SPEC "Redundant gateways": fire safety prefers two publishers
//! to none). Running the site's drain hook twice for one room would at best be noise and at
//! worst undo itself, so the agent drains a zone once: a request for a zone it is draining or
//! has drained (and not restored since) *joins* that drain, the lead, and is answered with the
//! lead's outcome instead of a second run.
//!
//! Traffic comes back only when no drain of the group is still live. A drain is live while it
//! has not been cancelled, has not been replaced by a newer drain of the same gateway (a
//! coordinator has one drain of a zone at a time, so that is a cancellation the agent missed),
//! and its gateway may still speak for the zone: online and not standby by its retained status
//! (a gateway never heard of counts as active, so the agent errs towards keeping traffic away).
//! So one gateway's cancellation while the other still asks holds the restore; it runs when the
//! last live drain is cancelled, or when the gateway still asking dies or steps down to standby
//! after the pair sees each other again.
//!
//! Pure decisions over the persisted [`AgentState`] and the gateways' statuses, table-tested
//! below; the worker in `mod.rs` runs the hooks and sends the acks.

use std::collections::BTreeMap;

use super::{AgentState, Stage};

/// Gateways remembered at most: statuses come from the broker, so a flood of made-up gateway
/// ids must not grow the agent without bound (a site has a handful).
pub const MAX_GATEWAYS: usize = 256;

/// What the agent knows of each gateway from `P/gateways/{gw}/status`.
#[derive(Debug, Default, Clone)]
pub struct Gateways(BTreeMap<String, Standing>);

/// Whether a gateway may still speak for its zones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Online, and active (or a gateway without a pair, which has no role).
    Active,
    /// Online as the standby of a pair: its partner speaks for the zone.
    Standby,
    /// Offline (its last will or a clean stop) or stopped with a fault.
    Gone,
}

impl Gateways {
    /// Takes a retained status; returns whether the gateway's standing changed. An empty
    /// payload (a cleared retained status) forgets the gateway; a body that is not a status
    /// is ignored with an error naming it.
    pub fn update(&mut self, gateway: &str, payload: &[u8]) -> Result<bool, String> {
        if payload.is_empty() {
            return Ok(self.0.remove(gateway).is_some());
        }
        let v: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| format!("status of gateway {gateway}: not JSON ({e})"))?;
        let standing = match (v["state"].as_str(), v["role"].as_str()) {
            (Some("online"), Some("standby")) => Standing::Standby,
            (Some("online"), _) => Standing::Active,
            (Some(_), _) => Standing::Gone,
            (None, _) => return Err(format!("status of gateway {gateway}: no \"state\"")),
        };
        if self.0.len() >= MAX_GATEWAYS && !self.0.contains_key(gateway) {
            return Err(format!(
                "status of gateway {gateway}: already {MAX_GATEWAYS} gateways known; not remembered"
            ));
        }
        Ok(self.0.insert(gateway.to_string(), standing) != Some(standing))
    }

    /// Whether a request from `gateway` can still be live. A request that does not say who
    /// sent it (an older gateway), or from a gateway not heard of, counts.
    pub fn may_ask(&self, gateway: Option<&str>) -> bool {
        gateway.is_none_or(|g| self.0.get(g).is_none_or(|s| *s == Standing::Active))
    }
}

impl AgentState {
    /// The drain of `zone` whose hook drained its traffic and has not restored it, for
    /// requests of the same kind (a drill never stands in for a real drain, nor the reverse):
    /// the one a new request joins.
    pub fn lead(&self, zone: &str, drill: bool) -> Option<String> {
        self.drains
            .iter()
            .filter(|(_, h)| {
                h.zone == zone
                    && h.drill == drill
                    && h.joined.is_none()
                    && matches!(h.drain, Stage::Finished { ok: true, .. })
                    && h.restore == Stage::NotRun
            })
            .max_by_key(|(_, h)| h.seen_ms)
            .map(|(id, _)| id.clone())
    }

    /// The lead of `id`'s group: the drain it joined, or itself.
    pub fn lead_of(&self, id: &str) -> String {
        self.drains
            .get(id)
            .and_then(|h| h.joined.clone())
            .unwrap_or_else(|| id.to_string())
    }

    /// `lead` and every drain that joined it.
    pub fn group(&self, lead: &str) -> Vec<String> {
        self.drains
            .iter()
            .filter(|(id, h)| id.as_str() == lead || h.joined.as_deref() == Some(lead))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A new drain `new_id` of `zone` from `gateway`: that gateway's earlier drains of the zone
    /// (of the same kind) are over, as if cancelled, since a coordinator has one at a time.
    pub fn supersede(&mut self, zone: &str, gateway: Option<&str>, drill: bool, new_id: &str) {
        for (id, h) in self.drains.iter_mut() {
            if id != new_id && h.zone == zone && h.drill == drill && h.gateway.as_deref() == gateway
            {
                h.cancelled = true;
            }
        }
    }

    /// The drains of `lead`'s group still asked for.
    pub fn live(&self, lead: &str, gateways: &Gateways) -> Vec<String> {
        self.group(lead)
            .into_iter()
            .filter(|id| {
                self.drains
                    .get(id)
                    .is_some_and(|h| !h.cancelled && gateways.may_ask(h.gateway.as_deref()))
            })
            .collect()
    }

    /// Leads whose traffic may come back now: a drain of the group was cancelled, none is
    /// live, the restore has not run, and the drain hook did run. Each with the cancelled
    /// drain most recently seen, whose cancellation the restore answers.
    pub fn restores_due(&self, gateways: &Gateways) -> Vec<(String, String)> {
        self.drains
            .iter()
            .filter(|(_, h)| {
                h.joined.is_none() && h.drain != Stage::NotRun && h.restore == Stage::NotRun
            })
            .filter_map(|(lead, _)| {
                let group = self.group(lead);
                let cancelled = group
                    .iter()
                    .filter_map(|id| self.drains.get(id).map(|h| (id, h)))
                    .filter(|(_, h)| h.cancelled)
                    .max_by_key(|(_, h)| h.seen_ms)?
                    .0
                    .clone();
                self.live(lead, gateways)
                    .is_empty()
                    .then(|| (lead.clone(), cancelled))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Handled;
    use super::*;

    fn done() -> Stage {
        Stage::Finished {
            ok: true,
            exit_status: Some(0),
            detail: "ok".into(),
            output: String::new(),
        }
    }

    fn drain(zone: &str, gw: Option<&str>, seen_ms: u64, joined: Option<&str>) -> Handled {
        Handled {
            zone: zone.into(),
            drill: false,
            seen_ms,
            drain: done(),
            restore: Stage::NotRun,
            joined: joined.map(str::to_string),
            gateway: gw.map(str::to_string),
            cancelled: false,
        }
    }

    fn status(gws: &mut Gateways, gw: &str, body: &str) -> bool {
        gws.update(gw, body.as_bytes()).unwrap()
    }

    #[test]
    fn a_gateways_status_says_whether_it_may_still_ask() {
        let mut gws = Gateways::default();
        assert!(gws.may_ask(Some("gw-b1")), "never heard of: counts");
        assert!(
            gws.may_ask(None),
            "a request that does not say who sent it counts"
        );
        assert!(status(
            &mut gws,
            "gw-b1",
            r#"{"state":"online","role":"standby"}"#
        ));
        assert!(!gws.may_ask(Some("gw-b1")));
        assert!(!status(
            &mut gws,
            "gw-b1",
            r#"{"state":"online","role":"standby","x":1}"#
        ));
        assert!(status(
            &mut gws,
            "gw-b1",
            r#"{"state":"online","role":"active"}"#
        ));
        assert!(gws.may_ask(Some("gw-b1")));
        assert!(status(&mut gws, "gw-b1", r#"{"state":"offline"}"#));
        assert!(!gws.may_ask(Some("gw-b1")));
        // Offline or stopped with a fault: gone either way, no change.
        assert!(!status(
            &mut gws,
            "gw-b1",
            r#"{"state":"fault","reason":"disk"}"#
        ));
        assert!(
            status(&mut gws, "gw-b1", r#"{"state":"online"}"#),
            "no pair, no role"
        );
        assert!(gws.may_ask(Some("gw-b1")));
        assert!(
            gws.update("gw-b1", b"").unwrap(),
            "a cleared status forgets it"
        );
        assert!(gws.may_ask(Some("gw-b1")));
        assert_eq!(
            gws.update("gw-b1", b"{nope")
                .unwrap_err()
                .split(" (")
                .next(),
            Some("status of gateway gw-b1: not JSON")
        );
        assert_eq!(
            gws.update("gw-b1", br#"{"role":"active"}"#).unwrap_err(),
            "status of gateway gw-b1: no \"state\""
        );
    }

    #[test]
    fn made_up_gateways_do_not_grow_the_agent_without_bound() {
        let mut gws = Gateways::default();
        for i in 0..MAX_GATEWAYS {
            gws.update(&format!("gw-{i}"), br#"{"state":"offline"}"#)
                .unwrap();
        }
        assert_eq!(
            gws.update("gw-x", br#"{"state":"offline"}"#).unwrap_err(),
            "status of gateway gw-x: already 256 gateways known; not remembered"
        );
        assert!(
            gws.may_ask(Some("gw-x")),
            "not remembered: counts as asking"
        );
        assert!(
            status(&mut gws, "gw-0", r#"{"state":"online"}"#),
            "a known one still updates"
        );
    }

    #[test]
    fn a_new_request_joins_the_zones_drain_until_it_is_restored() {
        let mut s = AgentState::default();
        assert_eq!(s.lead("room-1", false), None);
        s.drains
            .insert("d1".into(), drain("room-1", Some("gw-b1"), 1, None));
        assert_eq!(s.lead("room-1", false).as_deref(), Some("d1"));
        assert_eq!(s.lead("room-2", false), None, "another zone");
        assert_eq!(
            s.lead("room-1", true),
            None,
            "a drill does not join a real drain"
        );
        s.drains
            .insert("d2".into(), drain("room-1", Some("gw-b2"), 2, Some("d1")));
        assert_eq!(
            s.lead("room-1", false).as_deref(),
            Some("d1"),
            "not a joiner"
        );
        assert_eq!(s.lead_of("d2"), "d1");
        assert_eq!(s.group("d1"), vec!["d1".to_string(), "d2".to_string()]);
        // A failed hook drained nothing for sure: the next request runs it again.
        s.drains.get_mut("d1").unwrap().drain = Stage::Finished {
            ok: false,
            exit_status: Some(1),
            detail: "x".into(),
            output: String::new(),
        };
        assert_eq!(s.lead("room-1", false), None);
        s.drains.get_mut("d1").unwrap().drain = done();
        s.drains.get_mut("d1").unwrap().restore = done();
        assert_eq!(s.lead("room-1", false), None, "restored: traffic is back");
    }

    #[test]
    fn traffic_comes_back_only_when_no_drain_of_the_zone_is_live() {
        let mut gws = Gateways::default();
        let mut s = AgentState::default();
        s.drains
            .insert("d1".into(), drain("room-1", Some("gw-b1"), 1, None));
        s.drains
            .insert("d2".into(), drain("room-1", Some("gw-b2"), 2, Some("d1")));
        assert_eq!(s.restores_due(&gws), vec![], "nothing cancelled");
        // gw-b1 cancels its drain; gw-b2's is still live.
        s.drains.get_mut("d1").unwrap().cancelled = true;
        assert_eq!(s.live("d1", &gws), vec!["d2".to_string()]);
        assert_eq!(s.restores_due(&gws), vec![]);
        // The pair sees each other again and gw-b2 steps down: the active gw-b1 speaks.
        status(&mut gws, "gw-b2", r#"{"state":"online","role":"standby"}"#);
        assert_eq!(
            s.restores_due(&gws),
            vec![("d1".to_string(), "d1".to_string())]
        );
        // Or gw-b2 cancels too: the restore answers its cancellation, the latest.
        let gws = Gateways::default();
        s.drains.get_mut("d2").unwrap().cancelled = true;
        assert_eq!(
            s.restores_due(&gws),
            vec![("d1".to_string(), "d2".to_string())]
        );
        s.drains.get_mut("d1").unwrap().restore = done();
        assert_eq!(s.restores_due(&gws), vec![], "restored once");
    }

    #[test]
    fn a_gateway_dying_mid_drain_restores_nothing_by_itself() {
        let mut gws = Gateways::default();
        let mut s = AgentState::default();
        s.drains
            .insert("d1".into(), drain("room-1", Some("gw-b1"), 1, None));
        status(&mut gws, "gw-b1", r#"{"state":"offline"}"#);
        assert_eq!(s.live("d1", &gws), Vec::<String>::new());
        assert_eq!(s.restores_due(&gws), vec![], "only a cancellation restores");
    }

    #[test]
    fn a_gateways_new_drain_replaces_its_old_one_of_the_zone() {
        let mut s = AgentState::default();
        s.drains
            .insert("d1".into(), drain("room-1", Some("gw-b1"), 1, None));
        s.drains
            .insert("d2".into(), drain("room-1", Some("gw-b2"), 2, Some("d1")));
        s.drains
            .insert("d9".into(), drain("room-2", Some("gw-b1"), 3, None));
        s.supersede("room-1", Some("gw-b1"), false, "d3");
        assert!(s.drains["d1"].cancelled);
        assert!(!s.drains["d2"].cancelled, "another gateway's");
        assert!(!s.drains["d9"].cancelled, "another zone");
        s.supersede("room-1", None, false, "d4");
        assert!(!s.drains["d2"].cancelled, "a request that names no gateway");
    }
}
