//! The demo's narration: what the operator has seen over MQTT, told as it arrives, and what
//! the story still waits for. Built only from what was received: if a gateway did not publish
//! it, the demo does not say it. The one exception is the demo's own act, the kill of the active
//! gateway, which it tells as it does it: the rest of the pair's story (the last will, the
//! takeover and its reason, no alarm raised twice, the same drain carried on) is again only
//! what arrived.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

/// After the takeover, how long the story watches for alarms raised twice before saying
/// whether there were any: the new active gateway publishes what differs after one more poll of
/// every device, at most 2 s (README, "Redundant gateway pairs"), and the demo polls every 250 ms.
const VERDICT_AFTER: Duration = Duration::from_secs(3);

/// What the operator has seen so far, and what the narration still waits for.
#[derive(Default)]
pub(super) struct Story {
    pub(super) events: usize,
    /// Per gateway, the (state, role, role_reason) last told: its status is republished as a
    /// heartbeat, and only changes are news.
    gateways: BTreeMap<String, (String, String, String)>,
    /// The gateway whose last status says online and active.
    active: Option<String>,
    pair: PairStory,
    zone_levels: BTreeMap<String, String>,
    pub(super) first_offgas: Option<Duration>,
    pub(super) first_smoke: Option<Duration>,
    smoke_emergency: bool,
    heat_emergency: bool,
    online: bool,
    drain_requested: Option<Duration>,
    /// The first drain request: its `drain_id` and the gateway that asked.
    first_drain: Option<(String, String)>,
    drain_states: BTreeMap<String, String>,
    agent_done: bool,
    /// The last state told per agent, drain and action.
    acks: BTreeMap<String, String>,
    pub(super) clearance: Option<Duration>,
}

/// The redundant pair's part of the story: the kill, the takeover, and alarms raised twice.
#[derive(Default)]
struct PairStory {
    /// The gateway the demo killed, and when.
    killed: Option<(String, Duration)>,
    takeover: Option<Takeover>,
    /// Alarm key → the (gateway, state, severity) of its last event.
    last: BTreeMap<String, (String, String, String)>,
    /// The alarms the killed gateway had raised and were active when it died, with severity.
    raised_by_dead: BTreeMap<String, String>,
    /// Events that repeated what the other gateway had already published.
    duplicates: Vec<String>,
    /// Drain requests after the takeover under another `drain_id` than the first.
    new_drain_ids: Vec<String>,
    verdict: bool,
    /// The clearance was given after the takeover for the drain the dead gateway requested.
    same_drain_cleared: bool,
}

struct Takeover {
    by: String,
    at: Duration,
    /// From the kill to the new active gateway's status arriving here.
    after: Duration,
    reason: String,
}

impl Story {
    pub(super) fn complete(&self) -> bool {
        self.first_offgas.is_some()
            && self.drain_requested.is_some()
            && self.agent_done
            && self.clearance.is_some()
            && self.smoke_emergency
            && self.heat_emergency
            && self.pair.verdict
    }

    pub(super) fn missing(&self) -> String {
        let mut m = Vec::new();
        if !self.online {
            m.push("gateway online");
        }
        if self.pair.killed.is_none() {
            m.push("active gateway killed mid-drain");
        } else if self.pair.takeover.is_none() {
            m.push("takeover by the standby");
        } else if !self.pair.verdict {
            m.push("verdict on alarms raised twice");
        }
        if self.first_offgas.is_none() {
            m.push("off-gas alarm");
        }
        if self.drain_requested.is_none() {
            m.push("drain request");
        }
        if !self.agent_done {
            m.push("drain agent done");
        }
        if self.clearance.is_none() {
            m.push("power-cut clearance");
        }
        if !self.smoke_emergency {
            m.push("smoke fire stage");
        }
        if !self.heat_emergency {
            m.push("cell temperature emergency");
        }
        m.join(", ")
    }

    pub(super) fn lead_time(&self) -> Option<Duration> {
        Some(self.first_smoke?.saturating_sub(self.first_offgas?))
    }

    /// The gateway to kill now: the active one, once the agent is draining (once only).
    pub(super) fn kill_due(&self) -> Option<String> {
        if self.pair.killed.is_some() || !self.drain_states.values().any(|s| s == "draining") {
            return None;
        }
        self.active.clone()
    }

    /// The demo killed `gateway` at `at`: tells it, and notes which alarms it had raised.
    pub(super) fn killed(&mut self, gateway: &str, at: Duration) {
        println!(
            "{} !!! KILL: the demo kills {gateway}, the active gateway, mid-drain, as a power \
             cut would: no goodbye, the broker publishes its last will",
            stamp(at)
        );
        self.pair.raised_by_dead = self
            .pair
            .last
            .iter()
            .filter(|(_, (gw, state, _))| gw == gateway && state == "active")
            .map(|(key, (_, _, severity))| (key.clone(), severity.clone()))
            .collect();
        self.pair.killed = Some((gateway.to_string(), at));
    }

    /// Time passing without a message: the verdict on alarms raised twice, once the new
    /// active gateway has had [`VERDICT_AFTER`] to publish what differs.
    pub(super) fn tick(&mut self, at: Duration) {
        let (Some((dead, _)), Some(t)) = (&self.pair.killed, &self.pair.takeover) else {
            return;
        };
        if self.pair.verdict || at < t.at + VERDICT_AFTER {
            return;
        }
        self.pair.verdict = true;
        let raised = self
            .pair
            .raised_by_dead
            .iter()
            .map(|(key, severity)| format!("{key} {severity}"))
            .collect::<Vec<_>>()
            .join(", ");
        if self.pair.duplicates.is_empty() {
            println!(
                "{} no duplicate: {} raised again none of the alarms {dead} had raised ({raised})",
                stamp(at),
                t.by
            );
        } else {
            println!(
                "{} DUPLICATE: {} raised again what {dead} had raised: {}",
                stamp(at),
                t.by,
                self.pair.duplicates.join(", ")
            );
        }
    }

    /// What went wrong in the pair's story, if anything: an alarm raised twice, a new drain.
    pub(super) fn broken(&self) -> Option<String> {
        let mut wrong = Vec::new();
        if !self.pair.duplicates.is_empty() {
            wrong.push(format!(
                "alarms raised twice across the takeover: {}",
                self.pair.duplicates.join(", ")
            ));
        }
        if !self.pair.new_drain_ids.is_empty() {
            wrong.push(format!(
                "the takeover started another drain instead of carrying on: {}",
                self.pair.new_drain_ids.join(", ")
            ));
        }
        (!wrong.is_empty()).then(|| wrong.join("; "))
    }

    /// The pair's story in a sentence, for the summary.
    pub(super) fn pair_summary(&self) -> Option<String> {
        let (dead, killed) = self.pair.killed.as_ref()?;
        let t = self.pair.takeover.as_ref()?;
        Some(format!(
            "{dead} died mid-drain at +{:.1} s; {} took over {} ms later ({}), raised none of \
             {dead}'s alarms again and {}.",
            killed.as_secs_f64(),
            t.by,
            t.after.as_millis(),
            t.reason,
            if self.pair.same_drain_cleared {
                "gave the clearance for the same drain"
            } else {
                "carried on"
            }
        ))
    }

    /// A gateway's status changed (not a heartbeat): tells it, and the takeover when it is one.
    fn gateway_status(&mut self, at: Duration, gw: &str, json: &Value) {
        let s = |k: &str| {
            json.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let (state, role, reason) = (s("state"), s("role"), s("role_reason"));
        let told = (state.clone(), role.clone(), reason.clone());
        if self.gateways.get(gw) == Some(&told) {
            return;
        }
        self.gateways.insert(gw.to_string(), told);
        self.online |= state == "online";
        let active = state == "online" && role == "active";
        if active {
            self.active = Some(gw.to_string());
        } else if self.active.as_deref() == Some(gw) {
            self.active = None;
        }
        let ts = stamp(at);
        let dead = self.pair.killed.as_ref().map(|(d, _)| d.as_str());
        match (state.as_str(), dead) {
            ("online", Some(dead)) if active && gw != dead && self.pair.takeover.is_none() => {
                let after = at.saturating_sub(self.pair.killed.as_ref().map_or(at, |k| k.1));
                println!(
                    "{ts} *** TAKEOVER: {gw} is active {} ms after {dead} died, since {} \
                     (role_reason: {reason})",
                    after.as_millis(),
                    s("role_since")
                );
                self.pair.takeover = Some(Takeover {
                    by: gw.to_string(),
                    at,
                    after,
                    reason,
                });
            }
            ("online", _) => println!(
                "{ts} gateway {gw} is online, {} (role_reason: {reason})",
                if active { "ACTIVE" } else { role.as_str() }
            ),
            ("offline", Some(dead)) if gw == dead => println!(
                "{ts} gateway {gw} is offline: its last will, which the broker published when \
                 the connection dropped"
            ),
            _ => println!("{ts} gateway {gw} is {state}"),
        }
    }

    pub(super) fn observe(&mut self, at: Duration, topic: &str, json: &Value) {
        let ts = stamp(at);
        let s = |k: &str| {
            json.get(k)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        };
        let parts: Vec<&str> = topic.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["gateways", gw, "status"] => self.gateway_status(at, gw, json),
            ["alarms", ..] => {
                self.events += 1;
                let (point, severity, state) = (s("point"), s("severity"), s("state"));
                let (gateway, key) = (s("gateway"), s("alarm"));
                // The same state and severity the other gateway of the pair already published.
                let twice = matches!(
                    self.pair.last.get(&key),
                    Some((g, st, sev)) if *g != gateway && *st == state && *sev == severity
                );
                if twice {
                    self.pair
                        .duplicates
                        .push(format!("{key} {severity} {state} by {gateway}"));
                }
                self.pair.last.insert(
                    key.clone(),
                    (gateway.clone(), state.clone(), severity.clone()),
                );
                let active = state == "active";
                if active && point == "offgas" && self.first_offgas.is_none() {
                    self.first_offgas = Some(at);
                    println!("{ts} *** off-gas detected: electrolyte vapour is the first sign of thermal runaway");
                }
                if active && point == "smoke_stage" && self.first_smoke.is_none() {
                    self.first_smoke = Some(at);
                }
                if active && severity == "emergency" {
                    match point.as_str() {
                        "smoke_stage" => self.smoke_emergency = true,
                        "cell_temp_max" => self.heat_emergency = true,
                        _ => {}
                    }
                }
                println!(
                    "{ts} ALARM {:<9} {:<7} {}  ({gateway} seq {}, {key}){}",
                    severity.to_uppercase(),
                    state,
                    s("message"),
                    json.get("seq").and_then(Value::as_u64).unwrap_or(0),
                    if twice {
                        "  DUPLICATE: the other gateway already raised it"
                    } else {
                        ""
                    }
                );
            }
            ["drain", "agents", agent] => {
                let zones = json
                    .get("zones")
                    .and_then(Value::as_array)
                    .map(|z| {
                        z.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                println!(
                    "{ts} drain agent {agent} is {} (zones: {zones})",
                    s("state")
                );
            }
            ["drain", zone, "request"] => {
                if json.get("state").and_then(Value::as_str) == Some("cancelled") {
                    println!(
                        "{ts} DRAIN of {zone} cancelled ({}): agents restore",
                        s("drain_id")
                    );
                } else if self.drain_requested.is_none() {
                    self.drain_requested = Some(at);
                    self.first_drain = Some((s("drain_id"), s("gateway")));
                    println!(
                        "{ts} DRAIN REQUESTED for {zone} by {}: drain {} at severity {}, deadline {}",
                        s("gateway"),
                        s("drain_id"),
                        s("severity"),
                        s("deadline")
                    );
                } else if let Some((id, by)) = self
                    .first_drain
                    .clone()
                    .filter(|(_, by)| *by != s("gateway"))
                {
                    // The other gateway of the pair asks: after the takeover, it carries on.
                    if s("drain_id") == id {
                        println!(
                            "{ts} {} carries on drain {id} at severity {} (the drain_id {by} \
                             requested: the agent does not drain twice)",
                            s("gateway"),
                            s("severity")
                        );
                    } else {
                        self.pair.new_drain_ids.push(s("drain_id"));
                        println!(
                            "{ts} {} asks for ANOTHER drain {} of {zone} (not {by}'s {id})",
                            s("gateway"),
                            s("drain_id")
                        );
                    }
                } else {
                    println!(
                        "{ts} drain {} now at severity {} (same drain: agents do not drain twice)",
                        s("drain_id"),
                        s("severity")
                    );
                }
            }
            ["drain", _zone, "ack", agent] => {
                let state = s("state");
                let action = json
                    .get("action")
                    .and_then(Value::as_str)
                    .unwrap_or("drain")
                    .to_string();
                if state == "done" && action == "drain" {
                    self.agent_done = true;
                }
                // An agent repeats its answer when it sees the request again (escalation, a
                // gateway restart); the narration tells each step once.
                let key = format!("{agent} {} {action}", s("drain_id"));
                if self.acks.get(&key) != Some(&state) {
                    println!("{ts} agent {agent}: {action} {state} ({})", s("detail"));
                    self.acks.insert(key, state);
                }
            }
            ["drain", zone, "status"] => {
                let state = s("state");
                if self.drain_states.get(*zone) != Some(&state) {
                    println!("{ts} drain status of {zone}: {state}");
                    self.drain_states.insert(zone.to_string(), state);
                }
            }
            ["power", zone, "clearance"]
                if json.get("clear").and_then(Value::as_bool) == Some(true) =>
            {
                if self.clearance.is_none() {
                    self.clearance = Some(at);
                }
                println!("{ts} *** POWER-CUT CLEARANCE for {zone}: {}", s("reason"));
                if let (Some((id, by)), Some(t)) = (&self.first_drain, &self.pair.takeover) {
                    if s("drain_id") == *id {
                        self.pair.same_drain_cleared = true;
                        println!(
                            "{ts}     given by {} after the takeover, for drain {id}: the drain \
                             {by} requested",
                            t.by
                        );
                    }
                }
            }
            ["zones", zone, "status"] => {
                let level = s("level");
                if self.zone_levels.get(*zone) != Some(&level) {
                    let n = json
                        .get("active")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len);
                    println!(
                        "{ts} ZONE  {zone} is now {} ({n} active alarms)",
                        level.to_uppercase()
                    );
                    self.zone_levels.insert(zone.to_string(), level);
                }
            }
            _ => {}
        }
    }
}

/// `[+  7.7s]`: the time since the demo started, at the head of every line of the story.
fn stamp(at: Duration) -> String {
    format!("[+{:5.1}s]", at.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S: Duration = Duration::from_secs(1);

    /// gw-b1 active raises the off-gas alarm critical and asks for a drain; the agent drains;
    /// the demo kills gw-b1; its last will; gw-b2 takes over.
    fn up_to_the_takeover() -> Story {
        let mut st = Story::default();
        let status = |state: &str, role: &str, reason: &str| {
            json!({"state": state, "role": role, "role_reason": reason,
                   "role_since": "2026-11-29T18:00:00.000Z"})
        };
        st.observe(
            S,
            "/gateways/gw-b1/status",
            &status("online", "active", "peer gw-b2 is standby: priority 1 wins"),
        );
        st.observe(
            S,
            "/gateways/gw-b2/status",
            &status("online", "standby", "peer gw-b1 is active"),
        );
        st.observe(
            2 * S,
            "/alarms/battery-room-1/rack-01/offgas/offgas",
            &json!({
            "gateway": "gw-b1", "alarm": "rack-01/offgas/offgas", "point": "offgas",
            "state": "active", "severity": "critical", "seq": 2}),
        );
        st.observe(
            2 * S,
            "/drain/battery-room-1/request",
            &json!({
            "drain_id": "d-1", "gateway": "gw-b1", "severity": "critical"}),
        );
        assert_eq!(st.kill_due(), None, "not before the agent drains");
        st.observe(
            2 * S,
            "/drain/battery-room-1/status",
            &json!({"state": "draining"}),
        );
        assert_eq!(st.kill_due().as_deref(), Some("gw-b1"));
        st.killed("gw-b1", 3 * S);
        assert_eq!(st.kill_due(), None, "killed once");
        st.observe(
            3 * S,
            "/gateways/gw-b1/status",
            &json!({"state": "offline"}),
        );
        st.observe(
            4 * S,
            "/gateways/gw-b2/status",
            &status("online", "active", "peer gw-b1 offline (last will)"),
        );
        st
    }

    #[test]
    fn the_takeover_is_told_with_its_time_and_reason_and_nothing_raised_twice() {
        let mut st = up_to_the_takeover();
        let t = st.pair.takeover.as_ref().expect("a takeover");
        assert_eq!((t.by.as_str(), t.after), ("gw-b2", S));
        assert_eq!(t.reason, "peer gw-b1 offline (last will)");
        // A change after the takeover is news, not a duplicate.
        st.observe(
            5 * S,
            "/alarms/battery-room-1/rack-01/offgas/offgas",
            &json!({
            "gateway": "gw-b2", "alarm": "rack-01/offgas/offgas", "point": "offgas",
            "state": "active", "severity": "emergency", "seq": 1}),
        );
        st.tick(4 * S + VERDICT_AFTER - Duration::from_millis(1));
        assert!(!st.pair.verdict, "the verdict waits {VERDICT_AFTER:?}");
        st.tick(4 * S + VERDICT_AFTER);
        assert!(st.pair.verdict);
        assert_eq!(st.broken(), None);
        assert!(st
            .pair_summary()
            .is_some_and(|s| s.contains("gw-b2 took over 1000 ms later")));
    }

    #[test]
    fn an_alarm_the_dead_gateway_raised_raised_again_breaks_the_demo() {
        let mut st = up_to_the_takeover();
        st.observe(
            5 * S,
            "/alarms/battery-room-1/rack-01/offgas/offgas",
            &json!({
            "gateway": "gw-b2", "alarm": "rack-01/offgas/offgas", "point": "offgas",
            "state": "active", "severity": "critical", "seq": 1}),
        );
        st.tick(4 * S + VERDICT_AFTER);
        assert!(st.pair.verdict);
        assert_eq!(
            st.broken().as_deref(),
            Some("alarms raised twice across the takeover: rack-01/offgas/offgas critical active by gw-b2")
        );
    }

    #[test]
    fn a_new_drain_id_after_the_takeover_breaks_the_demo() {
        let mut st = up_to_the_takeover();
        st.observe(
            5 * S,
            "/drain/battery-room-1/request",
            &json!({
            "drain_id": "d-2", "gateway": "gw-b2", "severity": "critical"}),
        );
        assert!(st
            .broken()
            .is_some_and(|b| b.contains("another drain instead of carrying on: d-2")));
    }
}
