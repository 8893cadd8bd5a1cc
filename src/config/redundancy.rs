//! `[redundancy]`: the other gateway of a hot-standby pair, and which of the two is preferred.
//! The type, its validator and its tests side by side (SPEC "Redundant gateways").
//!
//! Only what one file can check is checked here: the peer is an id, and not this gateway's
//! own. Whether the two priorities tie is known only once the peer's status is seen, so the
//! running gateway warns about that (`pair::Pair`).

use serde::Deserialize;

use super::validate::Validator;
use super::Site;

/// This gateway's place in a redundant pair (`[redundancy]`); without the section a gateway is
/// alone and always active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redundancy {
    /// `peer`: the other gateway of the pair (its `[site] gateway`), `[a-z0-9-]+`; same site,
    /// zones and devices.
    pub peer: String,
    /// `priority`: the lower number is active when both are up; equal priorities are broken
    /// by the lower gateway id (with a warning at start). Only decides when both start or
    /// both are active: a gateway that finds its peer already active stays standby.
    pub priority: i64,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawRedundancy {
    peer: Option<String>,
    priority: Option<i64>,
}

impl Validator {
    pub(super) fn redundancy(&mut self, r: RawRedundancy, site: &Site) -> Redundancy {
        let peer = self.id("redundancy.peer", r.peer, &['-']);
        if !peer.is_empty() && peer == site.gateway {
            self.problem(
                "redundancy.peer",
                format!(
                    "{peer:?} is this gateway's own id (site.gateway); name the other gateway \
                     of the pair"
                ),
            );
        }
        let priority = self
            .required("redundancy.priority", r.priority)
            .unwrap_or(0);
        Redundancy { peer, priority }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Role};

    fn with(section: &str) -> Result<Config, Vec<crate::config::Problem>> {
        let text = format!(
            r#"
[site]
id = "pangyo-a"
gateway = "gw-b1"
{section}
[[devices]]
id = "rack-01"
zone = "room-1"
transport = "modbus-tcp"
address = "127.0.0.1:5020"
  [[devices.points]]
  id = "cell_temp_max"
  kind = "temperature"
  address = 116
"#
        );
        Config::from_toml(&text, Role::Gateway)
    }

    #[test]
    fn a_pair_is_read() {
        let cfg = with("[redundancy]\npeer = \"gw-b2\"\npriority = 1").unwrap();
        let r = cfg.redundancy.unwrap();
        assert_eq!((r.peer.as_str(), r.priority), ("gw-b2", 1));
        assert!(with("").unwrap().redundancy.is_none());
    }

    #[test]
    fn bad_pairs_name_the_key() {
        let cases = [
            (
                "[redundancy]\npeer = \"gw-b1\"\npriority = 1",
                "redundancy.peer: \"gw-b1\" is this gateway's own id (site.gateway); name the other gateway of the pair",
            ),
            (
                "[redundancy]\npeer = \"GW B2\"\npriority = 1",
                "redundancy.peer: \"GW B2\" must match [a-z0-9-]+",
            ),
            (
                "[redundancy]\npriority = 1",
                "redundancy.peer: missing (required)",
            ),
            (
                "[redundancy]\npeer = \"gw-b2\"",
                "redundancy.priority: missing (required)",
            ),
            (
                "[redundancy]\npeer = \"gw-b2\"\npriority = 1\nprio = 2",
                "redundancy.prio: unknown key (misspelt? see the example config)",
            ),
        ];
        for (section, want) in cases {
            let problems = with(section).unwrap_err();
            let got: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            assert!(got.iter().any(|g| g == want), "{section}: {got:?}");
        }
    }
}
