//! A device's "no value" sentinel (SunSpec's "not implemented") through the engine: null in
//! telemetry with no fault and no rule evaluation, unless the point is required.

use std::time::Duration;

use super::*;
use crate::config::Role;
use crate::decode::{DecodeError, Decoded, Raw};
use crate::fieldbus::{PointError, PointReading};

fn engine(required: bool) -> Engine {
    let text = format!(
        r#"
[site]
id = "s"
gateway = "gw"
[[devices]]
id = "rack-01"
zone = "room-1"
address = "127.0.0.1:5020"
  [[devices.points]]
  id = "soh"
  address = 40150
  type = "u16"
  sentinel = 0xFFFF
  required = {required}
  [[devices.points]]
  id = "t"
  address = 40151
  type = "i16"
[[rules]]
id = "low-soh"
points = ["*/soh"]
below = {{ warning = 50.0 }}
"#
    );
    Engine::new(
        Arc::new(Config::from_toml(&text, Role::Gateway).expect("valid")),
        0,
    )
}

fn reading(at: Now, soh: Option<f64>) -> Reading {
    let soh = match soh {
        Some(v) => Ok(Decoded {
            raw: Raw::Int(v as i128),
            value: v,
        }),
        None => Err(PointError::Decode {
            address: 40150,
            source: DecodeError::NoValue { sentinel: 0xFFFF },
        }),
    };
    Reading {
        device: 0,
        at,
        latency: Duration::ZERO,
        outcome: Ok(vec![
            PointReading {
                point: 0,
                result: soh,
            },
            PointReading {
                point: 1,
                result: Ok(Decoded {
                    raw: Raw::Int(25),
                    value: 25.0,
                }),
            },
        ]),
    }
}

/// The telemetry body as published (JSON), whatever its representation inside.
fn telemetry(out: &Output) -> serde_json::Value {
    out.messages
        .iter()
        .find_map(|m| match m {
            Outgoing::Telemetry { body, .. } => serde_json::to_value(body).ok(),
            _ => None,
        })
        .expect("telemetry")
}

#[test]
fn a_sentinel_is_null_in_telemetry_not_a_fault_and_not_evaluated() {
    let mut e = engine(false);
    let t0 = Now::system();
    let out = e.on_reading(&reading(t0, None));
    // A sentinel below the rule's threshold would raise low-soh if it were read as a value.
    assert!(out.events.is_empty(), "{:?}", out.events);
    let body = telemetry(&out);
    assert_eq!(body["quality"], "good");
    assert_eq!(
        body["points"],
        serde_json::json!({"soh": null, "t": 25.0}),
        "null, not absent"
    );
    // A value again is evaluated as any other.
    let out = e.on_reading(&reading(t0.after(Duration::from_secs(1)), Some(40.0)));
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].alarm, "rack-01/soh/low-soh");
}

#[test]
fn a_required_point_reading_its_sentinel_is_a_fault_naming_device_point_and_register() {
    let mut e = engine(true);
    let t0 = Now::system();
    let out = e.on_reading(&reading(t0, None));
    assert_eq!(out.events.len(), 1, "{:?}", out.events);
    let ev = &out.events[0];
    assert_eq!(ev.alarm, "rack-01/soh/unreadable");
    assert_eq!(
        ev.message,
        "device rack-01 point soh: register 40150: reads 0xFFFF, the device's \"no value\" (not implemented), and the point is required"
    );
    let body = telemetry(&out);
    assert_eq!(body["quality"], "fault");
    assert_eq!(body["points"], serde_json::json!({"t": 25.0}), "absent");
    // The device gives the value again: the fault clears.
    let out = e.on_reading(&reading(t0.after(Duration::from_secs(1)), Some(90.0)));
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].state, crate::alarms::AlarmState::Cleared);
    assert_eq!(telemetry(&out)["quality"], "good");
}
