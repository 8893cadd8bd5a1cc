//! Which event of an alarm the console shows: the merge by alarm key across gateways.
//!
//! One alarm key (site, zone, alarm) can be reported by two gateways: the two of a redundant
//! pair after a takeover, or both at once in a split brain (SPEC "Redundant gateways"). Their
//! `seq`s are unrelated counters, so between gateways only the event `time` orders them; within
//! one gateway `seq` does (exact, and immune to a clock step). A later event wins; an event of
//! another gateway that is older *or of the same time* never replaces what is shown, so a
//! late or duplicated report from the other gateway cannot turn an acknowledged or cleared
//! alarm back. The database (`store/writer.rs`) and the live stream (`subscriber.rs`) both ask
//! [`replaces`], so the page and `/api/alarms` agree.

use serde_json::Value;

use super::store::parse_ms;

/// What the merge needs of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    pub gateway: String,
    pub seq: u64,
    /// The event's `time`, ms since the epoch (when the event has none: when it was received).
    pub time_ms: i64,
}

impl Latest {
    /// From an event's JSON; `received_ms` stands in for a missing or unreadable `time`.
    pub fn of(event: &Value, received_ms: i64) -> Latest {
        Latest {
            gateway: event
                .get("gateway")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            seq: event.get("seq").and_then(Value::as_u64).unwrap_or(0),
            time_ms: event
                .get("time")
                .and_then(Value::as_str)
                .and_then(parse_ms)
                .unwrap_or(received_ms),
        }
    }
}

/// Whether `incoming` is the newer word on the alarm `stored` shows.
pub fn replaces(stored: &Latest, incoming: &Latest) -> bool {
    if stored.gateway == incoming.gateway {
        incoming.seq > stored.seq
    } else {
        incoming.time_ms > stored.time_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn l(gw: &str, seq: u64, time_ms: i64) -> Latest {
        Latest {
            gateway: gw.into(),
            seq,
            time_ms,
        }
    }

    #[test]
    fn one_gateway_orders_by_seq_two_by_time() {
        let cases = [
            // Same gateway: seq decides, whatever the clock says.
            (l("gw-b1", 5, 1000), l("gw-b1", 6, 900), true),
            (l("gw-b1", 6, 1000), l("gw-b1", 5, 2000), false),
            (l("gw-b1", 6, 1000), l("gw-b1", 6, 1000), false),
            // Another gateway: its seq means nothing here; time decides.
            (l("gw-b1", 50, 1000), l("gw-b2", 3, 1001), true),
            (l("gw-b1", 50, 1000), l("gw-b2", 99, 999), false),
            // The same time from the other gateway does not turn what is shown back.
            (l("gw-b1", 50, 1000), l("gw-b2", 99, 1000), false),
        ];
        for (stored, incoming, want) in cases {
            assert_eq!(
                replaces(&stored, &incoming),
                want,
                "{stored:?} then {incoming:?}"
            );
        }
    }

    #[test]
    fn an_events_time_and_identity_are_read_from_its_json() {
        let e = json!({"gateway": "gw-b2", "seq": 7, "time": "2026-11-29T15:00:00.250Z"});
        assert_eq!(Latest::of(&e, 5), l("gw-b2", 7, 1_795_964_400_250));
        assert_eq!(
            Latest::of(&json!({"gateway": "gw-b2", "seq": 7, "time": "soon"}), 5),
            l("gw-b2", 7, 5)
        );
    }
}
