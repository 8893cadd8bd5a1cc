//! The demo's narration: what the operator has seen over MQTT, told as it arrives, and what
//! the story still waits for. Built only from what was received: if the daemon did not publish
//! it, the demo does not say it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

/// What the operator has seen so far, and what the narration still waits for.
#[derive(Default)]
pub(super) struct Story {
    pub(super) events: usize,
    gateway_state: Option<String>,
    zone_levels: BTreeMap<String, String>,
    pub(super) first_offgas: Option<Duration>,
    pub(super) first_smoke: Option<Duration>,
    smoke_emergency: bool,
    heat_emergency: bool,
    online: bool,
    drain_requested: Option<Duration>,
    drain_states: BTreeMap<String, String>,
    agent_done: bool,
    /// The last state told per agent, drain and action.
    acks: BTreeMap<String, String>,
    pub(super) clearance: Option<Duration>,
}

impl Story {
    pub(super) fn complete(&self) -> bool {
        self.first_offgas.is_some()
            && self.drain_requested.is_some()
            && self.agent_done
            && self.clearance.is_some()
            && self.smoke_emergency
            && self.heat_emergency
    }

    pub(super) fn missing(&self) -> String {
        let mut m = Vec::new();
        if !self.online {
            m.push("gateway online");
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

    pub(super) fn observe(&mut self, at: Duration, topic: &str, json: &Value) {
        let ts = format!("[+{:5.1}s]", at.as_secs_f64());
        let s = |k: &str| {
            json.get(k)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        };
        let parts: Vec<&str> = topic.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["gateways", gw, "status"] => {
                let state = s("state");
                self.online |= state == "online";
                // The status is republished as a heartbeat (with the latest seq): narrate
                // changes only.
                if self.gateway_state.as_deref() != Some(state.as_str()) {
                    println!("{ts} gateway {gw} is {state}");
                    self.gateway_state = Some(state);
                }
            }
            ["alarms", ..] => {
                self.events += 1;
                let (point, severity, state) = (s("point"), s("severity"), s("state"));
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
                    "{ts} ALARM {:<9} {:<7} {}  (seq {}, {})",
                    severity.to_uppercase(),
                    state,
                    s("message"),
                    json.get("seq").and_then(Value::as_u64).unwrap_or(0),
                    s("alarm")
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
                    println!(
                        "{ts} DRAIN REQUESTED for {zone}: drain {} at severity {}, deadline {}",
                        s("drain_id"),
                        s("severity"),
                        s("deadline")
                    );
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
