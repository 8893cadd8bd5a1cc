//! Where an alarm comes from, and the one place its key is spelled.
//!
//! An alarm's key `device/point/rule` (and with the zone, its topic
//! `P/alarms/{zone}/{device}/{point}/{rule}`) is both a wire format subscribers match on and the
//! persisted identity of `state.json`. Besides a point's rules, the gateway raises alarms of its
//! own under sentinel segments (`_link`, `_zone`, `_vote`, `_detectors`, `_drain`); spelling
//! those in one module means the engine that raises an alarm, the restore that reads it back
//! and the table that ranks it cannot drift apart.

use crate::alarms::{AlarmKind, Identity};

/// Which kind of rule watches a point (vote rules watch a zone: [`Source::Vote`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Threshold,
    RateOfRise,
}

/// What is wrong with a sensor that answered (or whose register could not be read); a point
/// has at most one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointFault {
    OutOfRange,
    Stuck,
    Trouble,
    Unreadable,
}

impl PointFault {
    pub const ALL: [PointFault; 4] = [
        PointFault::OutOfRange,
        PointFault::Stuck,
        PointFault::Trouble,
        PointFault::Unreadable,
    ];

    /// The rule segment of the alarm's key.
    pub fn as_str(self) -> &'static str {
        match self {
            PointFault::OutOfRange => "out-of-range",
            PointFault::Stuck => "stuck",
            PointFault::Trouble => "trouble",
            PointFault::Unreadable => "unreadable",
        }
    }

    fn parse(s: &str) -> Option<PointFault> {
        PointFault::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// What is wrong with a whole device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// Not answering for [`crate::engine::COMM_LOSS_AFTER`] polls in a row.
    CommLoss,
    /// Answering with a Modbus exception.
    Exception,
    /// Answering with malformed replies or bytes nobody asked for: held until the device has
    /// answered cleanly [`crate::engine::PROTOCOL_CLEAR_AFTER`] times in a row.
    Protocol,
}

impl LinkFault {
    pub const ALL: [LinkFault; 3] = [
        LinkFault::CommLoss,
        LinkFault::Exception,
        LinkFault::Protocol,
    ];

    /// The rule segment of the alarm's key.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkFault::CommLoss => "comm-loss",
            LinkFault::Exception => "exception",
            LinkFault::Protocol => "protocol",
        }
    }

    fn parse(s: &str) -> Option<LinkFault> {
        LinkFault::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// Where an alarm comes from. Borrows its names, so building a key to look an alarm up costs no
/// copies beyond the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// A threshold or rate-of-rise rule watching one point: `{device}/{point}/{rule}`.
    Rule {
        device: &'a str,
        point: &'a str,
        rule: &'a str,
        kind: RuleKind,
    },
    /// A point's sensor fault: `{device}/{point}/{fault}`.
    PointFault {
        device: &'a str,
        point: &'a str,
        fault: PointFault,
    },
    /// A device's link fault: `{device}/_link/{fault}`.
    Link { device: &'a str, fault: LinkFault },
    /// A zone's vote rule agreeing: `_zone/_vote/{rule}`.
    Vote { rule: &'a str },
    /// A zone whose every detector is faulted: `_zone/_detectors/all-faulted`.
    BlindZone,
    /// An expected drain agent missing: `_drain/{agent}/agent-offline`.
    DrainAgent { agent: &'a str },
}

const LINK: &str = "_link";
const ZONE: &str = "_zone";
const VOTE: &str = "_vote";
const DETECTORS: &str = "_detectors";
const ALL_FAULTED: &str = "all-faulted";
const DRAIN: &str = "_drain";
const AGENT_OFFLINE: &str = "agent-offline";

impl<'a> Source<'a> {
    /// The `device`, `point` and `rule` segments of the key and of the alarm topic (after the
    /// zone), as the events' fields carry them.
    pub fn segments(&self) -> [&'a str; 3] {
        match *self {
            Source::Rule {
                device,
                point,
                rule,
                ..
            } => [device, point, rule],
            Source::PointFault {
                device,
                point,
                fault,
            } => [device, point, fault.as_str()],
            Source::Link { device, fault } => [device, LINK, fault.as_str()],
            Source::Vote { rule } => [ZONE, VOTE, rule],
            Source::BlindZone => [ZONE, DETECTORS, ALL_FAULTED],
            Source::DrainAgent { agent } => [DRAIN, agent, AGENT_OFFLINE],
        }
    }

    /// `device/point/rule`, as [`Identity::key`] spells it.
    pub fn key(&self) -> String {
        self.segments().join("/")
    }

    pub fn kind(&self) -> AlarmKind {
        match self {
            Source::Rule {
                kind: RuleKind::Threshold,
                ..
            } => AlarmKind::Threshold,
            Source::Rule {
                kind: RuleKind::RateOfRise,
                ..
            } => AlarmKind::RateOfRise,
            Source::Vote { .. } => AlarmKind::Vote,
            Source::PointFault { .. }
            | Source::Link { .. }
            | Source::BlindZone
            | Source::DrainAgent { .. } => AlarmKind::Fault,
        }
    }

    /// The alarm this source raises in `zone`: no unit, not latching (callers that have either
    /// set them with struct update syntax).
    pub fn identity(&self, zone: &str) -> Identity {
        let [device, point, rule] = self.segments();
        Identity {
            zone: zone.to_string(),
            device: device.to_string(),
            point: point.to_string(),
            rule: rule.to_string(),
            kind: self.kind(),
            unit: None,
            latching: false,
        }
    }

    /// Reads a (persisted) alarm's source back; `None` for an identity no source spells, which
    /// only a hand-edited state file holds.
    pub fn of(id: &'a Identity) -> Option<Source<'a>> {
        let (device, point, rule) = (id.device.as_str(), id.point.as_str(), id.rule.as_str());
        let source = match (device, point, rule, id.kind) {
            (DRAIN, agent, AGENT_OFFLINE, AlarmKind::Fault) => Source::DrainAgent { agent },
            (ZONE, DETECTORS, ALL_FAULTED, AlarmKind::Fault) => Source::BlindZone,
            (ZONE, VOTE, rule, AlarmKind::Vote) => Source::Vote { rule },
            (device, LINK, fault, AlarmKind::Fault) => Source::Link {
                device,
                fault: LinkFault::parse(fault)?,
            },
            (device, point, fault, AlarmKind::Fault) => Source::PointFault {
                device,
                point,
                fault: PointFault::parse(fault)?,
            },
            (device, point, rule, AlarmKind::Threshold) => Source::Rule {
                device,
                point,
                rule,
                kind: RuleKind::Threshold,
            },
            (device, point, rule, AlarmKind::RateOfRise) => Source::Rule {
                device,
                point,
                rule,
                kind: RuleKind::RateOfRise,
            },
            (_, _, _, AlarmKind::Vote) => return None,
        };
        Some(source)
    }

    /// A missing drain agent: the drain's trouble rather than the room's.
    pub fn is_drain_agent(id: &Identity) -> bool {
        matches!(Source::of(id), Some(Source::DrainAgent { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys are a wire format (event `alarm` field, topic segments, `state.json`).
    #[test]
    fn keys_are_spelled_as_before_and_read_back() {
        let cases = [
            (
                Source::Rule {
                    device: "rack-01",
                    point: "t",
                    rule: "hot",
                    kind: RuleKind::Threshold,
                },
                "rack-01/t/hot",
            ),
            (
                Source::Rule {
                    device: "rack-01",
                    point: "t",
                    rule: "climb",
                    kind: RuleKind::RateOfRise,
                },
                "rack-01/t/climb",
            ),
            (
                Source::PointFault {
                    device: "rack-01",
                    point: "t",
                    fault: PointFault::OutOfRange,
                },
                "rack-01/t/out-of-range",
            ),
            (
                Source::Link {
                    device: "rack-01",
                    fault: LinkFault::CommLoss,
                },
                "rack-01/_link/comm-loss",
            ),
            (
                Source::Vote {
                    rule: "confirmed-fire",
                },
                "_zone/_vote/confirmed-fire",
            ),
            (Source::BlindZone, "_zone/_detectors/all-faulted"),
            (
                Source::DrainAgent { agent: "dns-1" },
                "_drain/dns-1/agent-offline",
            ),
        ];
        for (source, key) in cases {
            assert_eq!(source.key(), key);
            let id = source.identity("room-1");
            assert_eq!(id.key(), key);
            assert_eq!(Source::of(&id), Some(source), "{key}");
        }
    }

    #[test]
    fn identities_no_source_spells_are_not_read_back() {
        let mut id = Source::BlindZone.identity("room-1");
        id.rule = "most-faulted".into();
        assert_eq!(Source::of(&id), None);
        let mut id = Source::PointFault {
            device: "rack-01",
            point: "t",
            fault: PointFault::Stuck,
        }
        .identity("room-1");
        id.rule = "melted".into();
        assert_eq!(Source::of(&id), None);
    }
}
