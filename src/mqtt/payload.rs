//! What goes on the wire: the gateway's own payloads, and how each [`Outgoing`] becomes a
//! publication (topic, JSON body, QoS, retain flag).
//!
//! Kept apart from the connection so the exact bytes subscribers see can be tested without a
//! broker, and so QoS/retain choices (SPEC "MQTT" table) are made in exactly one place.

use rumqttc::QoS;
use serde::{Deserialize, Serialize};

use super::Topics;
use crate::message::Outgoing;
use crate::pair::RoleStatus;

/// Retained on `P/gateways/{gateway}/status`. Serialises as `{"state":"online","version":..,
/// "started_at":..}` or `{"state":"offline"}`, the form the last will carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum GatewayStatus {
    Online {
        /// emberwatch's version, so operators can see which gateways need upgrading.
        version: String,
        /// When this gateway process started (RFC 3339); a change means it restarted.
        started_at: String,
        /// The latest alarm event `seq` raised (durable links only; republished every
        /// `mqtt.heartbeat`), so a subscriber sees a gap at the tail of what it received.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// How full the durable outbox is (durable links only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outbox: Option<OutboxHealth>,
        /// Alarm events found lost at start, as `[from, to]` seq ranges (inclusive): raised
        /// (`state.json` says so) but gone from the damaged outbox. Absent when nothing was
        /// lost; judged again at every start.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        lost: Vec<[u64; 2]>,
        /// `"role"` (always: a gateway alone is active), and for a redundant pair `"peer"`,
        /// `"priority"`, `"role_since"`, `"role_reason"` and, while handing over,
        /// `"handover_to"` (SPEC "Redundant gateways").
        #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
        role: Option<Box<RoleStatus>>,
    },
    /// The gateway hit a fault it cannot continue with (a failed outbox write or fsync) and is
    /// exiting so that its supervisor restarts it; `reason` says what failed, and where.
    Fault {
        reason: String,
    },
    Offline,
}

/// The outbox's state as published in the gateway status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxHealth {
    /// Bytes on disk, and `storage.outbox_max`.
    pub bytes: u64,
    pub max: u64,
    /// Over the bound with only alarm events (never dropped) and the newest retained messages
    /// left: the broker has been away too long for the disk the outbox was given.
    pub over_bound: bool,
    /// Records dropped to stay within the bound since the daemon started.
    pub dropped: u64,
    /// Records the slowest broker has not confirmed yet.
    pub undelivered: u64,
}

impl GatewayStatus {
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings always serialises; the fallback only keeps this panic-free.
        serde_json::to_vec(self).unwrap_or_else(|_| br#"{"state":"offline"}"#.to_vec())
    }
}

/// How hard the link tries to deliver a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Must reach the broker: queued while disconnected, resent after a reconnect until acked.
    Durable,
    /// The online status: republished on every connect anyway, so never resent.
    Presence,
    /// Only worth sending while fresh: dropped and counted when it cannot go out at once.
    Telemetry,
}

/// One message ready for the broker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Publication {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    pub class: Class,
}

impl Publication {
    /// A connection's presence (`online`, or the final `offline` or `fault`), QoS 1 retained,
    /// on `P/gateways/{gateway}/status` for the gateway. The online form is republished on
    /// every connect, so it is never resent; the last word must arrive (it is what a stop
    /// leaves behind), so it is durable.
    pub fn presence(topic: &str, payload: &[u8], online: bool) -> Publication {
        Publication {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            qos: QoS::AtLeastOnce,
            retain: true,
            class: if online {
                Class::Presence
            } else {
                Class::Durable
            },
        }
    }

    /// Topic, body, QoS and retain flag of one pipeline message.
    pub fn encode(topics: &Topics, msg: &Outgoing) -> Result<Publication, serde_json::Error> {
        Ok(match msg {
            Outgoing::Event(e) => Publication {
                topic: topics.alarm(&e.zone, &e.device, &e.point, &e.rule),
                payload: serde_json::to_vec(e)?,
                qos: QoS::AtLeastOnce,
                retain: false,
                class: Class::Durable,
            },
            Outgoing::Zone(z) => Publication {
                topic: topics.zone_status(&z.zone),
                payload: serde_json::to_vec(z)?,
                qos: QoS::AtLeastOnce,
                retain: true,
                class: Class::Durable,
            },
            Outgoing::Telemetry { device, body } => Publication {
                topic: topics.telemetry(device),
                payload: body.to_json()?,
                qos: QoS::AtMostOnce,
                retain: false,
                class: Class::Telemetry,
            },
            Outgoing::CommandResult(r) => Publication {
                topic: topics.cmd_result(),
                payload: serde_json::to_vec(r)?,
                qos: QoS::AtLeastOnce,
                retain: false,
                class: Class::Durable,
            },
            Outgoing::Message {
                topic,
                payload,
                retain,
            } => Publication {
                topic: topic.clone(),
                payload: payload.clone(),
                qos: QoS::AtLeastOnce,
                retain: *retain,
                class: Class::Durable,
            },
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {

    use super::*;
    use crate::alarms::{AlarmEvent, AlarmKind, AlarmState, Level, ZoneStatus};
    use crate::message::{CommandResult, Quality, Telemetry};
    use crate::rules::Severity;

    /// The alarm event of SPEC, field for field.
    pub(crate) fn spec_event() -> AlarmEvent {
        AlarmEvent {
            event_id: "gw-b1-42".into(),
            seq: 42,
            site: "pangyo-a".into(),
            gateway: "gw-b1".into(),
            alarm: "rack-01/cell_temp_max/cell-overtemp".into(),
            rule: "cell-overtemp".into(),
            zone: "room-1".into(),
            device: "rack-01".into(),
            point: "cell_temp_max".into(),
            kind: AlarmKind::Threshold,
            severity: Severity::Critical,
            state: AlarmState::Active,
            acked: false,
            acked_by: None,
            shelved_by: None,
            value: Some(57.2),
            threshold: Some(55.0),
            unit: Some("degC".into()),
            message: "cell_temp_max 57.2 degC above critical 55.0".into(),
            time: "2026-11-24T13:40:02.123Z".into(),
            since: "2026-11-24T13:40:01.900Z".into(),
            detail: crate::alarms::EventDetail {
                isa_state: crate::alarms::IsaState::ActiveUnacknowledged,
                transitions_last_minute: 1,
                ..Default::default()
            },
        }
    }

    /// The SPEC example text, without its line breaks, followed by emberwatch's extension
    /// fields (alarm management, issue 3).
    pub(crate) const SPEC_EVENT_JSON: &str = concat!(
        r#"{"event_id":"gw-b1-42","seq":42,"site":"pangyo-a","gateway":"gw-b1","#,
        r#""alarm":"rack-01/cell_temp_max/cell-overtemp","rule":"cell-overtemp","zone":"room-1","#,
        r#""device":"rack-01","point":"cell_temp_max","kind":"threshold","severity":"critical","#,
        r#""state":"active","acked":false,"value":57.2,"threshold":55.0,"unit":"degC","#,
        r#""message":"cell_temp_max 57.2 degC above critical 55.0","time":"2026-11-24T13:40:02.123Z","#,
        r#""since":"2026-11-24T13:40:01.900Z","#,
        r#""isa_state":"active_unacknowledged","shelved_until":null,"out_of_service":false,"#,
        r#""chattering":false,"transitions_last_minute":1}"#
    );

    fn topics() -> Topics {
        Topics::from_parts("emberwatch", "pangyo-a", "gw-b1")
    }

    #[test]
    fn gateway_status_matches_spec_and_last_will() {
        let online = GatewayStatus::Online {
            version: "0.1.0".into(),
            started_at: "2026-11-24T13:40:00.000Z".into(),
            seq: None,
            outbox: None,
            lost: Vec::new(),
            role: None,
        };
        assert_eq!(
            String::from_utf8(online.to_json()).unwrap(),
            r#"{"state":"online","version":"0.1.0","started_at":"2026-11-24T13:40:00.000Z"}"#
        );
        assert_eq!(GatewayStatus::Offline.to_json(), br#"{"state":"offline"}"#);
        let back: GatewayStatus = serde_json::from_slice(&online.to_json()).unwrap();
        assert_eq!(back, online);
        // Events found lost at start: `[from, to]` ranges, only when there are some.
        let lossy = GatewayStatus::Online {
            version: "0.1.0".into(),
            started_at: "2026-11-24T13:40:00.000Z".into(),
            seq: Some(6),
            outbox: None,
            lost: vec![[3, 6]],
            role: None,
        };
        assert_eq!(
            String::from_utf8(lossy.to_json()).unwrap(),
            r#"{"state":"online","version":"0.1.0","started_at":"2026-11-24T13:40:00.000Z","seq":6,"lost":[[3,6]]}"#
        );
    }

    #[test]
    fn a_pair_status_says_role_peer_and_why() {
        let mut role = RoleStatus::alone();
        role.role = crate::pair::Role::Standby;
        role.peer = Some("gw-b2".into());
        role.priority = Some(2);
        role.role_since = Some("2026-11-24T13:40:00.000Z".into());
        role.role_reason = Some("peer gw-b2 is active".into());
        let status = GatewayStatus::Online {
            version: "0.1.0".into(),
            started_at: "2026-11-24T13:40:00.000Z".into(),
            seq: Some(0),
            outbox: None,
            lost: Vec::new(),
            role: Some(Box::new(role)),
        };
        assert_eq!(
            String::from_utf8(status.to_json()).unwrap(),
            r#"{"state":"online","version":"0.1.0","started_at":"2026-11-24T13:40:00.000Z","seq":0,"role":"standby","peer":"gw-b2","priority":2,"role_since":"2026-11-24T13:40:00.000Z","role_reason":"peer gw-b2 is active"}"#
        );
        let back: GatewayStatus = serde_json::from_slice(&status.to_json()).unwrap();
        assert_eq!(back, status);
        let alone = GatewayStatus::Online {
            version: "0.1.0".into(),
            started_at: "t".into(),
            seq: None,
            outbox: None,
            lost: Vec::new(),
            role: Some(Box::new(RoleStatus::alone())),
        };
        assert_eq!(
            String::from_utf8(alone.to_json()).unwrap(),
            r#"{"state":"online","version":"0.1.0","started_at":"t","role":"active"}"#
        );
    }

    #[test]
    fn an_alarm_event_is_the_spec_json_on_its_alarm_topic() {
        let p = Publication::encode(&topics(), &Outgoing::Event(spec_event())).unwrap();
        assert_eq!(
            p.topic,
            "emberwatch/pangyo-a/alarms/room-1/rack-01/cell_temp_max/cell-overtemp"
        );
        assert_eq!(String::from_utf8(p.payload).unwrap(), SPEC_EVENT_JSON);
        assert_eq!(
            (p.qos, p.retain, p.class),
            (QoS::AtLeastOnce, false, Class::Durable)
        );
    }

    #[test]
    fn zone_status_is_retained_qos1() {
        let z = ZoneStatus {
            zone: "room-1".into(),
            level: Level::Critical,
            active: vec!["rack-01/cell_temp_max/cell-overtemp".into()],
            faults: 0,
            time: "2026-11-24T13:40:02.123Z".into(),
            shelved: vec![],
            unacknowledged: 0,
            evidence: Level::Critical,
        };
        let p = Publication::encode(&topics(), &Outgoing::Zone(z)).unwrap();
        assert_eq!(p.topic, "emberwatch/pangyo-a/zones/room-1/status");
        assert_eq!(
            String::from_utf8(p.payload).unwrap(),
            r#"{"zone":"room-1","level":"critical","active":["rack-01/cell_temp_max/cell-overtemp"],"faults":0,"time":"2026-11-24T13:40:02.123Z","shelved":[],"unacknowledged":0,"evidence":"critical"}"#
        );
        assert_eq!(
            (p.qos, p.retain, p.class),
            (QoS::AtLeastOnce, true, Class::Durable)
        );
    }

    #[test]
    fn telemetry_is_qos0_and_volatile() {
        // Three points, listed out of order: published sorted by id, as a map would be; a
        // sentinel ("no value") is null.
        let cfg = crate::config::Config::from_toml(
            "[site]\nid = \"s\"\ngateway = \"g\"\n[[devices]]\nid = \"rack-01\"\nzone = \"z\"\n\
             address = \"127.0.0.1:502\"\n[[devices.points]]\nid = \"soc\"\naddress = 132\n\
             [[devices.points]]\nid = \"cell_temp_max\"\naddress = 116\n\
             [[devices.points]]\nid = \"hydrogen\"\naddress = 122\n",
            crate::config::Role::Gateway,
        )
        .unwrap();
        let body = Telemetry::new(
            "2026-11-24T13:40:02.123Z".into(),
            cfg.devices[0].points.clone(),
            vec![(0, Some(80.0)), (2, None), (1, Some(25.0))],
            Quality::Good,
        );
        // The engine's way (ranks computed once per device) lists them the same.
        let ranked = Telemetry::ranked(
            "2026-11-24T13:40:02.123Z".into(),
            cfg.devices[0].points.clone(),
            vec![(2, None), (0, Some(80.0)), (1, Some(25.0))],
            Quality::Good,
            &crate::message::id_ranks(&cfg.devices[0].points),
        );
        assert_eq!(ranked, body);
        let p = Publication::encode(
            &topics(),
            &Outgoing::Telemetry {
                device: "rack-01".into(),
                body,
            },
        )
        .unwrap();
        assert_eq!(p.topic, "emberwatch/pangyo-a/telemetry/rack-01");
        assert_eq!(
            String::from_utf8(p.payload).unwrap(),
            r#"{"time":"2026-11-24T13:40:02.123Z","points":{"cell_temp_max":25.0,"hydrogen":null,"soc":80.0},"quality":"good"}"#
        );
        assert_eq!(
            (p.qos, p.retain, p.class),
            (QoS::AtMostOnce, false, Class::Telemetry)
        );
    }

    #[test]
    fn command_results_answer_on_cmd_result() {
        let r = CommandResult {
            command: "ack".into(),
            ok: false,
            reason: Some("no alarm \"x\"".into()),
        };
        let p = Publication::encode(&topics(), &Outgoing::CommandResult(r)).unwrap();
        assert_eq!(p.topic, "emberwatch/pangyo-a/gateways/gw-b1/cmd/result");
        assert_eq!(
            String::from_utf8(p.payload).unwrap(),
            r#"{"command":"ack","ok":false,"reason":"no alarm \"x\""}"#
        );
        assert_eq!((p.qos, p.retain), (QoS::AtLeastOnce, false));
    }

    #[test]
    fn generic_messages_are_durable_qos1_with_their_own_retain_flag() {
        for retain in [false, true] {
            let m = Outgoing::Message {
                topic: "emberwatch/pangyo-a/drain/room-1/status".into(),
                payload: br#"{"x":1}"#.to_vec(),
                retain,
            };
            let p = Publication::encode(&topics(), &m).unwrap();
            assert_eq!(p.topic, "emberwatch/pangyo-a/drain/room-1/status");
            assert_eq!(p.payload, br#"{"x":1}"#);
            assert_eq!(
                (p.qos, p.retain, p.class),
                (QoS::AtLeastOnce, retain, Class::Durable)
            );
        }
    }

    #[test]
    fn presence_publications_are_retained_qos1() {
        let t = topics();
        let off = Publication::presence(&t.status(), &GatewayStatus::Offline.to_json(), false);
        assert_eq!(off.topic, "emberwatch/pangyo-a/gateways/gw-b1/status");
        assert_eq!(
            (off.qos, off.retain, off.class),
            (QoS::AtLeastOnce, true, Class::Durable)
        );
        let on = Publication::presence(&t.status(), b"{}", true);
        assert_eq!((on.retain, on.class), (true, Class::Presence));
    }
}
