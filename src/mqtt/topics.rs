//! Every MQTT topic emberwatch publishes or subscribes to, built in one place.
//!
//! The topic layout is part of the contract with operators' dashboards and drain agents (SPEC,
//! "MQTT"), so no other module formats a topic string: a typo here would be a silent outage
//! there. Ids that go into topics (`site.id`, `gateway`, zone, device, point, rule, agent) are
//! validated by `config` to `[a-z0-9-_]+`, so no segment can contain `/`, `+` or `#`.

use crate::config::Config;

/// Builds topics under `P = {topic_prefix}/{site.id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `{topic_prefix}/{site.id}`
    root: String,
    /// `P/gateways/{gateway}`
    gateway: String,
    /// `{gateway}`, the id alone, for payloads that say who sent them.
    gateway_id: String,
}

impl Topics {
    pub fn new(cfg: &Config) -> Topics {
        Topics::from_parts(&cfg.mqtt.topic_prefix, &cfg.site.id, &cfg.site.gateway)
    }

    /// For callers without a whole [`Config`] (tests, tools).
    pub fn from_parts(topic_prefix: &str, site: &str, gateway: &str) -> Topics {
        let root = format!("{topic_prefix}/{site}");
        let gateway_id = gateway.to_string();
        let gateway = format!("{root}/gateways/{gateway}");
        Topics {
            root,
            gateway,
            gateway_id,
        }
    }

    /// The gateway id these topics are built for.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// `P` itself, for subscribers that want everything (`{P}/#`).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `P/#`: everything of the site (the console's subscription).
    pub fn everything(&self) -> String {
        format!("{}/#", self.root)
    }

    /// `P/console/{console}/replay/{gateway}`: where a console asks this gateway to republish
    /// the events it missed (`reply_to` of `cmd/replay`); under the site, so the console's
    /// one subscription (`P/#`) hears it, and outside the gateway's own `cmd/` (refused there).
    pub fn console_replay(&self, console: &str) -> String {
        format!("{}/console/{console}/replay", self.gateway)
    }

    /// `P/gateways/{gateway}/status`: retained online status; the last will sets it offline.
    pub fn status(&self) -> String {
        format!("{}/status", self.gateway)
    }

    /// `P/gateways/{other}/status`: another gateway's status (the peer of a redundant pair).
    pub fn status_of(&self, other: &str) -> String {
        format!("{}/gateways/{other}/status", self.root)
    }

    /// `P/gateways/{gateway}/pair`: retained, what a gateway of a redundant pair has
    /// published (its alarms with the operators' settings), for the other to follow.
    pub fn pair_of(&self, gateway: &str) -> String {
        format!("{}/gateways/{gateway}/pair", self.root)
    }

    /// `P/gateways/{gateway}/alive`: not retained, QoS 0, every half `mqtt.keep_alive` from
    /// the active gateway of a redundant pair, so the standby notices a silent peer without
    /// waiting for the broker's keep-alive check (see `pair`).
    pub fn alive_of(&self, gateway: &str) -> String {
        format!("{}/gateways/{gateway}/alive", self.root)
    }

    /// `P/gateways/{gateway}/cmd/{name}` of another gateway (`emberwatch switchover` sends
    /// to the configuration's own gateway; a standby names the active one).
    pub fn cmd_of(&self, gateway: &str, name: &str) -> String {
        format!("{}/gateways/{gateway}/cmd/{name}", self.root)
    }

    /// `P/alarms/#`: every alarm event of the site (a standby follows its peer's).
    pub fn alarms_filter(&self) -> String {
        format!("{}/alarms/#", self.root)
    }

    /// `P/drain/+/request` and `P/drain/+/status`: the retained drain messages a standby
    /// follows, so it carries on the same drain when it takes over.
    pub fn drain_state_filters(&self) -> [String; 2] {
        [
            format!("{}/drain/+/request", self.root),
            format!("{}/drain/+/status", self.root),
        ]
    }

    /// `P/alarms/{zone}/{device}/{point}/{rule}`: one alarm's events.
    pub fn alarm(&self, zone: &str, device: &str, point: &str, rule: &str) -> String {
        format!("{}/alarms/{zone}/{device}/{point}/{rule}", self.root)
    }

    /// `P/zones/{zone}/status`: retained zone level.
    pub fn zone_status(&self, zone: &str) -> String {
        format!("{}/zones/{zone}/status", self.root)
    }

    /// `P/telemetry/{device}`.
    pub fn telemetry(&self, device: &str) -> String {
        format!("{}/telemetry/{device}", self.root)
    }

    /// `P/gateways/{gateway}/cmd/{name}`: where commands to this gateway arrive.
    pub fn cmd(&self, name: &str) -> String {
        format!("{}/cmd/{name}", self.gateway)
    }

    /// `P/gateways/{gateway}/cmd/+`: the subscription that receives every command.
    pub fn cmd_filter(&self) -> String {
        self.cmd("+")
    }

    /// `P/gateways/{gateway}/cmd/result`: answers to commands. It matches [`cmd_filter`], so
    /// the gateway hears its own answers and must not take them for commands.
    ///
    /// [`cmd_filter`]: Topics::cmd_filter
    pub fn cmd_result(&self) -> String {
        self.cmd(RESULT)
    }

    /// The command name of a topic matched by [`cmd_filter`](Topics::cmd_filter), or `None` for
    /// any other topic (including `cmd/result`, this gateway's own answers).
    pub fn command_name<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let name = topic
            .strip_prefix(self.gateway.as_str())?
            .strip_prefix("/cmd/")?;
        if name.is_empty() || name.contains('/') || name == RESULT {
            return None;
        }
        Some(name)
    }

    /// `P/drain/agents/{agent}`: retained agent presence.
    pub fn drain_agent(&self, agent: &str) -> String {
        format!("{}/drain/agents/{agent}", self.root)
    }

    /// `P/drain/{zone}/request`: retained drain request (or its cancellation).
    pub fn drain_request(&self, zone: &str) -> String {
        format!("{}/drain/{zone}/request", self.root)
    }

    /// `P/drain/{zone}/ack/{agent}`: one agent's progress on a drain.
    pub fn drain_ack(&self, zone: &str, agent: &str) -> String {
        format!("{}/drain/{zone}/ack/{agent}", self.root)
    }

    /// `P/drain/{zone}/ack/+`: every agent's progress on a zone's drain.
    pub fn drain_ack_filter(&self, zone: &str) -> String {
        self.drain_ack(zone, "+")
    }

    /// `P/drain/+/ack/+`: every agent's progress on every zone's drain (the coordinator).
    pub fn drain_acks_filter(&self) -> String {
        format!("{}/drain/+/ack/+", self.root)
    }

    /// `P/drain/agents/+`: every agent's presence (the coordinator, operators).
    pub fn drain_agents_filter(&self) -> String {
        self.drain_agent("+")
    }

    /// `P/drain/readiness`: retained, which expected agents are missing (emberwatch's addition
    /// to SPEC: an expected agent offline is a warning-level fault).
    pub fn drain_readiness(&self) -> String {
        format!("{}/drain/readiness", self.root)
    }

    /// `(zone, agent)` of a `P/drain/{zone}/ack/{agent}` topic; `None` for any other topic.
    pub fn drain_ack_parts<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let rest = topic
            .strip_prefix(self.root.as_str())?
            .strip_prefix("/drain/")?;
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            [zone, "ack", agent] if !zone.is_empty() && !agent.is_empty() => Some((zone, agent)),
            _ => None,
        }
    }

    /// The agent id of a `P/drain/agents/{agent}` topic; `None` for any other topic.
    pub fn drain_agent_id<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let agent = topic
            .strip_prefix(self.root.as_str())?
            .strip_prefix("/drain/agents/")?;
        (!agent.is_empty() && !agent.contains('/')).then_some(agent)
    }

    /// `P/drain/{zone}/status`: retained drain state.
    pub fn drain_status(&self, zone: &str) -> String {
        format!("{}/drain/{zone}/status", self.root)
    }

    /// `P/power/{zone}/clearance`: retained, advisory: power may be cut.
    pub fn power_clearance(&self, zone: &str) -> String {
        format!("{}/power/{zone}/clearance", self.root)
    }

    /// `P/gateways/+/status`: every gateway's retained status (drain agents watch which
    /// gateway of a pair is active).
    pub fn gateway_statuses_filter(&self) -> String {
        format!("{}/gateways/+/status", self.root)
    }

    /// The gateway id of a `P/gateways/{gateway}/status` topic; `None` for any other topic.
    pub fn status_gateway<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let gw = topic
            .strip_prefix(self.root.as_str())?
            .strip_prefix("/gateways/")?
            .strip_suffix("/status")?;
        (!gw.is_empty() && !gw.contains('/')).then_some(gw)
    }
}

const RESULT: &str = "result";

/// Whether `topic` matches the subscription `filter` (`+` one level, `#` the rest), as the
/// broker decides it; used to route what arrives on a link with several subscriptions.
pub fn matches(topic: &str, filter: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(seg)) if f == seg => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Topics {
        Topics::from_parts("emberwatch", "pangyo-a", "gw-b1")
    }

    #[test]
    fn every_spec_topic_is_spelled_exactly() {
        let t = t();
        let cases: &[(String, &str)] = &[
            (t.status(), "emberwatch/pangyo-a/gateways/gw-b1/status"),
            (
                t.alarm("room-1", "rack-01", "cell_temp_max", "cell-overtemp"),
                "emberwatch/pangyo-a/alarms/room-1/rack-01/cell_temp_max/cell-overtemp",
            ),
            (
                t.zone_status("room-1"),
                "emberwatch/pangyo-a/zones/room-1/status",
            ),
            (
                t.telemetry("rack-01"),
                "emberwatch/pangyo-a/telemetry/rack-01",
            ),
            (t.cmd("ack"), "emberwatch/pangyo-a/gateways/gw-b1/cmd/ack"),
            (t.cmd_filter(), "emberwatch/pangyo-a/gateways/gw-b1/cmd/+"),
            (
                t.cmd_result(),
                "emberwatch/pangyo-a/gateways/gw-b1/cmd/result",
            ),
            (
                t.drain_agent("lb-1"),
                "emberwatch/pangyo-a/drain/agents/lb-1",
            ),
            (
                t.drain_request("room-1"),
                "emberwatch/pangyo-a/drain/room-1/request",
            ),
            (
                t.drain_ack("room-1", "lb-1"),
                "emberwatch/pangyo-a/drain/room-1/ack/lb-1",
            ),
            (
                t.drain_ack_filter("room-1"),
                "emberwatch/pangyo-a/drain/room-1/ack/+",
            ),
            (
                t.drain_status("room-1"),
                "emberwatch/pangyo-a/drain/room-1/status",
            ),
            (
                t.power_clearance("room-1"),
                "emberwatch/pangyo-a/power/room-1/clearance",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
        assert_eq!(t.root(), "emberwatch/pangyo-a");
    }

    #[test]
    fn topics_come_from_the_config() {
        let cfg = crate::config::Config::from_toml(
            r#"
[site]
id = "site-9"
gateway = "gw-x"
[mqtt]
url = "mqtt://127.0.0.1:1883"
topic_prefix = "acme/fire"
[storage]
dir = "/tmp/x"
[[devices]]
id = "rack-01"
zone = "room-1"
transport = "modbus-tcp"
address = "127.0.0.1:5020"
  [[devices.points]]
  id = "offgas"
  kind = "offgas"
  address = 121
"#,
            crate::config::Role::Gateway,
        )
        .expect("test config is valid");
        let t = Topics::new(&cfg);
        assert_eq!(t.status(), "acme/fire/site-9/gateways/gw-x/status");
        assert_eq!(t.telemetry("rack-01"), "acme/fire/site-9/telemetry/rack-01");
    }

    #[test]
    fn drain_topics_are_read_back() {
        let t = t();
        assert_eq!(
            t.drain_ack_parts("emberwatch/pangyo-a/drain/room-1/ack/lb-1"),
            Some(("room-1", "lb-1"))
        );
        assert_eq!(
            t.drain_ack_parts("emberwatch/pangyo-a/drain/room-1/status"),
            None
        );
        assert_eq!(
            t.drain_ack_parts("emberwatch/pangyo-a/drain/room-1/ack/"),
            None
        );
        assert_eq!(
            t.drain_ack_parts("emberwatch/other/drain/room-1/ack/lb-1"),
            None
        );
        assert_eq!(
            t.drain_agent_id("emberwatch/pangyo-a/drain/agents/lb-1"),
            Some("lb-1")
        );
        assert_eq!(
            t.drain_agent_id("emberwatch/pangyo-a/drain/agents/a/b"),
            None
        );
        assert_eq!(t.drain_acks_filter(), "emberwatch/pangyo-a/drain/+/ack/+");
        assert_eq!(
            t.drain_agents_filter(),
            "emberwatch/pangyo-a/drain/agents/+"
        );
        assert_eq!(t.drain_readiness(), "emberwatch/pangyo-a/drain/readiness");
    }

    #[test]
    fn gateway_status_topics_are_read_back() {
        let t = t();
        assert_eq!(t.gateway_id(), "gw-b1");
        assert_eq!(
            t.gateway_statuses_filter(),
            "emberwatch/pangyo-a/gateways/+/status"
        );
        assert_eq!(
            t.status_gateway("emberwatch/pangyo-a/gateways/gw-b2/status"),
            Some("gw-b2")
        );
        for other in [
            "emberwatch/pangyo-a/gateways//status",
            "emberwatch/pangyo-a/gateways/a/b/status",
            "emberwatch/pangyo-a/gateways/gw-b2/cmd/result",
            "emberwatch/other/gateways/gw-b2/status",
        ] {
            assert_eq!(t.status_gateway(other), None, "{other}");
        }
    }

    #[test]
    fn filters_match_like_a_broker() {
        let cases: &[(&str, &str, bool)] = &[
            ("p/drain/room-1/ack/lb-1", "p/drain/+/ack/+", true),
            ("p/drain/room-1/ack", "p/drain/+/ack/+", false),
            ("p/drain/room-1/ack/lb-1/x", "p/drain/+/ack/+", false),
            ("p/drain/agents/lb-1", "p/drain/agents/+", true),
            ("p/drain/room-1/request", "p/drain/room-1/request", true),
            ("p/drain/room-2/request", "p/drain/room-1/request", false),
            ("p/drain/a/b", "p/drain/#", true),
            ("p/drain", "p/drain/#", true),
            ("p/other", "p/drain/#", false),
        ];
        for (topic, filter, want) in cases {
            assert_eq!(matches(topic, filter), *want, "{topic} ~ {filter}");
        }
    }

    #[test]
    fn command_names_are_read_back_from_topics() {
        let t = t();
        let cases: &[(&str, Option<&str>)] = &[
            ("emberwatch/pangyo-a/gateways/gw-b1/cmd/ack", Some("ack")),
            (
                "emberwatch/pangyo-a/gateways/gw-b1/cmd/shelve",
                Some("shelve"),
            ),
            (
                "emberwatch/pangyo-a/gateways/gw-b1/cmd/replay",
                Some("replay"),
            ),
            // Our own answers come back through the cmd/+ subscription.
            ("emberwatch/pangyo-a/gateways/gw-b1/cmd/result", None),
            ("emberwatch/pangyo-a/gateways/gw-b1/cmd/", None),
            ("emberwatch/pangyo-a/gateways/gw-b1/cmd/a/b", None),
            ("emberwatch/pangyo-a/gateways/gw-b2/cmd/ack", None),
            ("emberwatch/pangyo-a/gateways/gw-b1x/cmd/ack", None),
            ("emberwatch/pangyo-a/gateways/gw-b1/status", None),
            ("emberwatch/pangyo-a/alarms/room-1/rack-01/p/r", None),
        ];
        for (topic, want) in cases {
            assert_eq!(t.command_name(topic), *want, "{topic}");
        }
    }
}
