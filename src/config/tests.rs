//! Whole-file tests of loading: one good configuration, and the located errors of its mistakes.
//! They go through [`parse`] end to end, so they hold whichever section file a check lives in.

use std::time::Duration;

use super::validate::parse;
use super::*;
use crate::decode::ValueType;
use crate::rules::Severity;

const GOOD: &str = r#"
[site]
id = "pangyo-a"
gateway = "gw-b1"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[storage]
dir = "/tmp/x"

[[devices]]
id = "rack-01"
zone = "room-1"
transport = "modbus-tcp"
address = "127.0.0.1:5020"
unit = 1
poll_interval = "1s"
timeout = "500ms"

  [[devices.points]]
  id = "cell_temp_max"
  kind = "temperature"
  table = "holding"
  address = 116
  type = "i16"
  scale = 0.1
  unit = "degC"
  valid = [-40.0, 150.0]
  stuck_after = "15m"

  [[devices.points]]
  id = "offgas"
  kind = "offgas"
  address = 121

[[rules]]
id = "cell-overtemp"
points = ["*/cell_temp_max"]
above = { warning = 45.0, critical = 55.0, emergency = 65.0 }
deadband = 1.0
off_delay = "5s"

[[rules]]
id = "cell-temp-rise"
points = ["*/cell_temp_max"]
rate_of_rise = { per_minute = 10.0, window = "30s", severity = "critical" }

[[rules]]
id = "confirmed-fire"
vote = { alarms = ["*/offgas/*", "*/smoke/*"], need = 2, at_least = "warning", severity = "emergency" }

[drain]
trigger = "critical"
deadline = "120s"
agents = ["lb-1"]
"#;

fn errors(text: &str) -> Vec<String> {
    match parse(text, vec![], Role::Gateway) {
        Ok(_) => vec![],
        Err(ps) => ps.into_iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn outbox_bounds_have_defaults_and_accept_sizes() {
    let c = parse(GOOD, vec![], Role::Gateway).expect("valid");
    assert_eq!(c.storage.outbox_max, 64 << 20);
    assert_eq!(c.storage.journal_max, 16 << 20);
    let text = GOOD.replace(
        "dir = \"/tmp/x\"",
        "dir = \"/tmp/x\"\noutbox_max = \"512KB\"\njournal_max = \"1MB\"\njournal_max_age = \"1h\"",
    );
    let c = parse(&text, vec![], Role::Gateway).expect("valid");
    assert_eq!(c.storage.outbox_max, 512 << 10);
    assert_eq!(c.storage.journal_max, 1 << 20);
    assert_eq!(c.storage.journal_max_age, Duration::from_secs(3600));
    let text = GOOD.replace(
        "dir = \"/tmp/x\"",
        "dir = \"/tmp/x\"\noutbox_max = \"lots\"",
    );
    let e = errors(&text);
    assert!(
        e.iter().any(|e| e.starts_with("storage.outbox_max: ")),
        "{e:?}"
    );
}

#[test]
fn a_broker_is_listed_once() {
    let text = GOOD.replace(
            "url = \"mqtt://127.0.0.1:1883\"",
            "url = \"mqtt://127.0.0.1:1883\"\nalso = [\"mqtt://10.0.0.2\", \"mqtt://127.0.0.1\", \"mqtt://10.0.0.2:1883\"]",
        );
    let e = errors(&text);
    assert!(e.iter().any(|e| e.starts_with("mqtt.also[1]: ")), "{e:?}");
    assert!(e.iter().any(|e| e.starts_with("mqtt.also[2]: ")), "{e:?}");
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn the_spec_example_is_accepted() {
    let c = parse(GOOD, vec![], Role::Gateway).expect("valid");
    assert_eq!(c.site.id, "pangyo-a");
    assert_eq!(c.mqtt.client_id, "emberwatch-gw-b1");
    assert_eq!(c.devices[0].points[0].value_type, ValueType::I16);
    assert_eq!(c.devices[0].timeout, Duration::from_millis(500));
    assert_eq!(c.rules[0].targets, vec![(0, 0)]);
    let RuleBody::Threshold(t) = &c.rules[0].body else {
        panic!("threshold")
    };
    assert_eq!(
        t.levels,
        vec![
            (Severity::Warning, 45.0),
            (Severity::Critical, 55.0),
            (Severity::Emergency, 65.0)
        ]
    );
}

#[test]
fn env_overrides_a_section_key() {
    let env = vec![
        (
            "EMBERWATCH__MQTT__URL".to_string(),
            "mqtt://10.0.0.9:1884".to_string(),
        ),
        ("EMBERWATCH__SITE__GATEWAY".to_string(), "gw-x".to_string()),
    ];
    let c = parse(GOOD, env, Role::Gateway).expect("valid");
    assert_eq!(
        c.mqtt.url,
        BrokerUrl::Tcp {
            host: "10.0.0.9".into(),
            port: 1884
        }
    );
    assert_eq!(c.site.gateway, "gw-x");
}

#[test]
fn syntax_errors_name_the_line() {
    let e = errors("[site]\nid = \"a\"\ngateway = \n");
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("line 3"), "{e:?}");
}

#[test]
fn every_semantic_error_is_reported_with_its_key_path() {
    let bad = GOOD
        .replace("transport = \"modbus-tcp\"", "transport = \"can-bus\"")
        .replace("type = \"i16\"", "type = \"u17\"")
        .replace("poll_interval = \"1s\"", "poll_interval = \"1 fortnight\"")
        .replace("warning = 45.0", "warning = 60.0")
        .replace("\"*/cell_temp_max\"]\nabove", "\"rack-99/nothing\"]\nabove")
        .replace(
            "stuck_after = \"15m\"",
            "stuck_after = \"15m\"\n  colour = \"red\"",
        );
    let e = errors(&bad);
    let want = [
        "devices[0].transport: unknown transport \"can-bus\"",
        "devices[0].points[0].type: unknown type \"u17\"",
        "devices[0].poll_interval: \"1 fortnight\" is not a duration",
        "rules[0].above.warning: warning 60 must be below critical 55",
        "rules[0].points[0]: no point \"rack-99/nothing\"",
        "devices[0].points[0].colour: unknown key",
    ];
    for w in want {
        assert!(
            e.iter().any(|x| x.starts_with(w)),
            "missing {w:?} in {e:#?}"
        );
    }
    assert_eq!(e.len(), want.len(), "{e:#?}");
}

#[test]
fn duplicate_ids_are_refused() {
    let dup = GOOD.replace("id = \"offgas\"", "id = \"cell_temp_max\"");
    let e = errors(&dup);
    assert!(
        e.iter()
            .any(|x| x.starts_with("devices[0].points[1].id: duplicate point id")),
        "{e:?}"
    );
}

#[test]
fn wrong_value_types_are_located() {
    let e = errors(&GOOD.replace("unit = 1\n", "unit = \"one\"\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("devices[0].unit"), "{e:?}");
    let e = errors(&GOOD.replace("unit = 1\n", "unit = 300\n"));
    assert!(
        e[0].starts_with("devices[0].unit: 300 is out of range"),
        "{e:?}"
    );
}

#[test]
fn below_thresholds_must_descend() {
    let t = GOOD.replace(
        "above = { warning = 45.0, critical = 55.0, emergency = 65.0 }",
        "below = { warning = 10.0, critical = 20.0 }",
    );
    let e = errors(&t);
    assert!(
        e.iter()
            .any(|x| x.starts_with("rules[0].below.warning: warning 10 must be above critical 20")),
        "{e:?}"
    );
}

#[test]
fn serial_devices_are_checked_together() {
    let serial = |id: &str, transport: &str, baud: u32, extra: &str| {
        format!(
            "[[devices]]\nid = \"{id}\"\nzone = \"z\"\ntransport = \"{transport}\"\n\
                 port = \"/dev/ttyUSB0\"\nbaud = {baud}\n{extra}\n\
                 [[devices.points]]\nid = \"t\"\nfield = \"T1\"\n"
        )
    };
    let head = "[site]\nid = \"s\"\ngateway = \"g\"\n";
    // A serial-lines sensor with a pattern whose groups name the fields: fine.
    let ok = format!(
        "{head}{}",
        serial("asd", "serial-lines", 9600, "pattern = '(?P<T1>[0-9.]+)'")
    );
    assert_eq!(errors(&ok), Vec::<String>::new());
    let cases: &[(String, &str)] = &[
        (
            serial("asd", "serial-lines", 9600, "pattern = '(?P<T2>[0-9.]+)'"),
            "devices[0].points[0].field: \"T1\" is not a named group",
        ),
        (
            serial("asd", "serial-lines", 9600, "pattern = '(unclosed'"),
            "devices[0].pattern: not a valid regex",
        ),
        (
            serial("asd", "serial-lines", 9600, "") + &serial("rack", "serial-lines", 9600, ""),
            "devices[1].port: \"/dev/ttyUSB0\" is also used by devices[0]",
        ),
    ];
    for (devices, want) in cases {
        let e = errors(&format!("{head}{devices}"));
        assert!(e.iter().any(|x| x.starts_with(want)), "{want:?} in {e:#?}");
    }
    // Modbus RTU devices may share a port, with one set of settings.
    let rtu = |id: &str, baud: u32| {
        format!(
            "[[devices]]\nid = \"{id}\"\nzone = \"z\"\ntransport = \"modbus-rtu\"\n\
                 port = \"/dev/ttyUSB0\"\nbaud = {baud}\n\
                 [[devices.points]]\nid = \"t\"\naddress = 116\n"
        )
    };
    assert_eq!(
        errors(&format!("{head}{}{}", rtu("a", 19200), rtu("b", 19200))),
        Vec::<String>::new()
    );
    let e = errors(&format!("{head}{}{}", rtu("a", 19200), rtu("b", 9600)));
    assert!(
        e.iter()
            .any(|x| x.starts_with("devices[1].port") && x.contains("other settings")),
        "{e:#?}"
    );
    // A Modbus point has an address, not a field.
    let e = errors(&format!(
        "{head}{}",
        rtu("a", 19200).replace("address = 116", "address = 116\nfield = \"T1\"")
    ));
    assert!(
        e.iter()
            .any(|x| x.starts_with("devices[0].points[0].field")),
        "{e:#?}"
    );
}

#[test]
fn broker_urls() {
    assert_eq!(BrokerUrl::parse("embedded"), Ok(BrokerUrl::Embedded));
    assert_eq!(
        BrokerUrl::parse("mqtts://broker.example"),
        Ok(BrokerUrl::Tls {
            host: "broker.example".into(),
            port: 8883
        })
    );
    assert!(BrokerUrl::parse("http://x").is_err());
    assert!(BrokerUrl::parse("mqtt://x:99999").is_err());
}

/// Settings that load without complaint yet leave the gateway blind or deaf: a point that can
/// never be computed, a poll loop that floods the link or never comes round, a prefix no
/// subscriber receives, state written nowhere in particular. Each is refused at its key path.
#[test]
fn settings_that_would_blind_the_gateway_are_refused() {
    let cases = [
        (
            ("scale = 0.1\n", "scale = 0.1\n  offset = nan\n"),
            "devices[0].points[0].offset: NaN is not a finite number",
        ),
        (
            ("scale = 0.1\n", "scale = 0.1\n  offset = -inf\n"),
            "devices[0].points[0].offset: -inf is not a finite number",
        ),
        (
            ("poll_interval = \"1s\"", "poll_interval = \"1ns\""),
            "devices[0].poll_interval: must be at least 10ms",
        ),
        (
            (
                "poll_interval = \"1s\"",
                "poll_interval = \"999999999999h\"",
            ),
            "devices[0].poll_interval: must be at most 1h",
        ),
        (
            ("timeout = \"500ms\"", "timeout = \"1ns\""),
            "devices[0].timeout: must be at least 10ms",
        ),
        (
            ("timeout = \"500ms\"", "timeout = \"2m\""),
            "devices[0].timeout: must be at most 1m",
        ),
        (
            (
                "url = \"mqtt://127.0.0.1:1883\"",
                "url = \"mqtt://127.0.0.1:1883\"\ntopic_prefix = \"$SYS\"",
            ),
            "mqtt.topic_prefix: \"$SYS\" starts with '$'",
        ),
        (
            (
                "url = \"mqtt://127.0.0.1:1883\"",
                "url = \"mqtt://127.0.0.1:1883\"\ntopic_prefix = \"ember\\u0000watch\"",
            ),
            "mqtt.topic_prefix: \"ember\\0watch\" contains a control character",
        ),
        (
            ("address = \"127.0.0.1:5020\"", "address = \"\""),
            "devices[0].address: \"\" is not host:port",
        ),
        (
            ("address = \"127.0.0.1:5020\"", "address = \":5020\""),
            "devices[0].address: \":5020\" is not host:port",
        ),
        (
            ("dir = \"/tmp/x\"", "dir = \"\""),
            "storage.dir: must not be empty",
        ),
    ];
    let mut wrong = Vec::new();
    for ((from, to), want) in cases {
        assert!(GOOD.contains(from), "{from:?}");
        let e = errors(&GOOD.replacen(from, to, 1));
        if e.len() != 1 || !e[0].starts_with(want) {
            wrong.push(format!("{to:?}: want {want:?}, got {e:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Through the environment as well as the file.
    let env = vec![("EMBERWATCH__STORAGE__DIR".to_string(), String::new())];
    let e = parse(GOOD, env, Role::Gateway).expect_err("empty dir");
    assert!(
        e[0].to_string()
            .starts_with("storage.dir: must not be empty"),
        "{e:?}"
    );
}

/// A timeout longer than the poll interval is legitimate (a fast poll that tolerates a slow
/// answer) but not what the interval promises, so it is a warning, not an error.
#[test]
fn a_timeout_beyond_the_poll_interval_is_a_warning() {
    let c = parse(GOOD, vec![], Role::Gateway).expect("valid");
    assert_eq!(c.warnings(), Vec::<Problem>::new());
    let slow = GOOD.replace("timeout = \"500ms\"", "timeout = \"2s\"");
    let c = parse(&slow, vec![], Role::Gateway).expect("a warning is not an error");
    let w: Vec<String> = c.warnings().iter().map(|p| p.to_string()).collect();
    assert_eq!(
        w,
        [
            "devices[0].timeout: 2s is longer than poll_interval 1s: while the device takes that \
          long it is polled every 2s, not every 1s, and a silent device shows as comm-loss only \
          after 4s"
        ]
    );
}

const CONSOLE: &str = r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"

[console]
listen = "0.0.0.0:8080"
database = "/var/lib/emberwatch/console.db"
sites = ["pangyo-a", "pangyo-b"]
alertmanager = "http://127.0.0.1:9093"
"#;

#[test]
fn a_console_file_needs_console_and_mqtt_only() {
    assert_eq!(Role::of_text(CONSOLE), Role::Console);
    assert_eq!(Role::of_text(GOOD), Role::Gateway);
    let c = parse(CONSOLE, vec![], Role::Console).expect("valid");
    let console = c.console.expect("[console]");
    assert_eq!(console.sites, vec!["pangyo-a", "pangyo-b"]);
    assert_eq!(console.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(
        console.users_file.to_str(),
        Some("/etc/emberwatch/console.users")
    );
    assert_eq!(c.mqtt.client_id, "emberwatch-console");
    assert!(c.devices.is_empty());
}

#[test]
fn console_mistakes_are_reported_with_their_key_paths() {
    let bad = r#"
[console]
listen = "everywhere"
sites = ["Pangyo A", "b", "b"]
alertmanager = "ftp://x"
history = "1h"
colour = "red"
"#;
    let e = parse(bad, vec![], Role::Console).expect_err("invalid");
    let text: Vec<String> = e.iter().map(|p| p.to_string()).collect();
    for want in [
        "console.colour: unknown key",
        "console.listen: \"everywhere\" is not an address like 127.0.0.1:8080",
        "console.sites[0]: \"Pangyo A\" must match [a-z0-9-]+",
        "console.sites[2]: \"b\" is listed twice",
        "console.alertmanager: \"ftp://x\" is not an http(s) URL",
        "console.history: must be at least 1 day",
    ] {
        assert!(
            text.iter().any(|t| t.starts_with(want)),
            "{want}: {text:#?}"
        );
    }
    let e = parse("[mqtt]\n", vec![], Role::Console).expect_err("no [console]");
    assert!(e.iter().any(|p| p.path == "console"), "{e:?}");
    let e = parse("[console]\n", vec![], Role::Console).expect_err("no sites");
    assert!(e.iter().any(|p| p.path == "console.sites"), "{e:?}");
}
