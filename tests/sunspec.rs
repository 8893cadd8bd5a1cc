//! SunSpec as an operator meets it: `emberwatch discover` against `emberwatch sim --sunspec`
//! (the models, and a profile block that `check-config` accepts and `read` reads right), against
//! a device without SunSpec (the addresses tried), the shipped 804 profile in a running gateway
//! (a "not implemented" point is null and no fault; a required one is a fault), and the
//! simulator read by pysunspec2, the SunSpec Alliance's own client.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs `emberwatch ARGS` without the developer's own `EMBERWATCH__` overrides.
fn emberwatch(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emberwatch"));
    cmd.args(args).env("NO_COLOR", "1").stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("EMBERWATCH__") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run emberwatch")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/profiles")
        .join(name)
}

/// The simulator's SunSpec map, frozen (scenario `stuck`): SoC 95 %, 800.0 V, 0 A, every module
/// at 25.0 °C.
async fn sunspec_sim() -> Sim {
    Sim::start_with("stuck", 1, &["--sunspec"]).await
}

/// The `read` row of `point`: (value, unit-and-status).
fn row<'a>(out: &'a str, device: &str, point: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(device) && w.next() == Some(point)
        })
        .unwrap_or_else(|| panic!("no row for {device} {point} in:\n{out}"))
        .split_whitespace()
        .skip(4)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_prints_the_models_and_a_profile_that_check_config_accepts_and_read_reads() {
    let sim = sunspec_sim().await;
    let addr = sim.addr().to_string();
    let o = emberwatch(&["discover", "--address", &addr, "--unit", "1"]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    let head: Vec<&str> = out.lines().take(8).collect();
    assert_eq!(
        head,
        vec![
            format!("# SunSpec map of {addr} unit 1: marker \"SunS\" at holding register 40000")
                .as_str(),
            "# manufacturer \"emberwatch\", model \"sim-rack\", serial number \"SIM-0001\"",
            "#  model  name                          start length",
            "#      1  common                        40002     66",
            "#    802  battery                       40070     62",
            "#    804  lithium_ion_string            40134    302",
            "# end marker 0xFFFF at register 40438",
            "",
        ]
    );
    // The profile block is last: from its comment to the end of the output.
    let block = &out[out
        .find("# SunSpec battery models")
        .expect("a profile block")..];
    assert!(
        block.contains("[[profiles]]\nid = \"sunspec-battery\"\n"),
        "{block}"
    );
    assert!(
        block.contains("  address = 40081\n  type = \"u16\"   # SunSpec uint16\n  scale = 0.1   # 10^-1, from SoC_SF (register 40126)\n"),
        "{block}"
    );

    // Pasted into a configuration as is.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("emberwatch.toml");
    std::fs::write(
        &cfg,
        format!(
            "[site]\nid = \"s\"\ngateway = \"g\"\n[[devices]]\nid = \"bat-01\"\nzone = \"room-1\"\n\
             address = \"{addr}\"\nunit = 1\nprofile = \"sunspec-battery\"\n\n{block}"
        ),
    )
    .expect("write config");
    let cfg = cfg.to_str().expect("utf-8");
    let o = emberwatch(&["check-config", "--config", cfg]);
    let summary = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{summary}{}", text(&o.stderr));
    assert!(
        summary.contains("    sunspec-battery (31 points, in the configuration file): bat-01\n"),
        "{summary}"
    );
    let o = emberwatch(&["read", "--config", cfg]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    // Scale factors applied; "not implemented" points shown as such, not as 65535.
    for (point, want) in [
        ("battery_soc", vec!["95", "%", "ok"]),
        ("battery_voltage", vec!["800", "V", "ok"]),
        ("string_soc", vec!["95", "%", "ok"]),
        ("string_current", vec!["0", "A", "ok"]),
        ("string_mod_temp_max", vec!["25", "degC", "ok"]),
        ("string_mod_temp_min", vec!["25", "degC", "ok"]),
        ("string_cell_v_max", vec!["3.353", "V", "ok"]),
        ("string_modtmp_sf", vec!["-1", "ok"]),
        (
            "battery_soh",
            vec![
                "null",
                "%",
                "no",
                "value",
                "(sentinel",
                "0xFFFF:",
                "not",
                "implemented)",
            ],
        ),
        (
            "string_events_2",
            vec![
                "null",
                "no",
                "value",
                "(sentinel",
                "0xFFFFFFFF:",
                "not",
                "implemented)",
            ],
        ),
    ] {
        assert_eq!(row(&out, "bat-01", point), want, "{point}");
    }
    // A mandatory point the device stops implementing: read fails on it, saying why.
    sim.write(40156, 0x8000).await;
    let o = emberwatch(&["read", "--config", cfg]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert_eq!(
        row(&out, "bat-01", "string_mod_temp_min").join(" "),
        "- degC register 40156: reads 0x8000, the device's \"no value\" (not implemented), and \
         the point is required"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_without_sunspec_fails_naming_the_addresses_tried() {
    let sim = Sim::start("stuck", 1).await; // the plain map: no marker anywhere
    let addr = sim.addr().to_string();
    let o = emberwatch(&["discover", "--address", &addr]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stdout), "");
    assert_eq!(
        text(&o.stderr).trim_end(),
        format!(
            "emberwatch: {addr} unit 1: no SunSpec marker \"SunS\" (0x53756E53) in holding \
             registers 40000, 50000 or 0 (40000: Modbus exception 2 (illegal data address); \
             50000: Modbus exception 2 (illegal data address); 0: 0x0000 0x0000)"
        )
    );
    // Nobody listening: the connection is named.
    drop(sim);
    let port = free_port();
    let o = emberwatch(&["discover", "--address", &format!("127.0.0.1:{port}")]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.starts_with(&format!("emberwatch: cannot connect to 127.0.0.1:{port}: ")),
        "{err}"
    );
}

/// The shipped 804 profile in a running gateway: SoH, which the simulator leaves "not
/// implemented", is null in telemetry with quality good and raises nothing; a required point
/// (the coolest module's temperature) made "not implemented" is a fault naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_publishes_a_sentinel_as_null_and_a_required_sentinel_as_a_fault() {
    let broker = Mosquitto::start().await;
    let sim = sunspec_sim().await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let config = format!(
        "include = ['{}']\n[site]\nid = \"test-site\"\ngateway = \"gw-t\"\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[storage]\ndir = '{}'\n\
         [[devices]]\nid = \"string-01\"\nzone = \"room-1\"\naddress = \"{}\"\nunit = 1\n\
         poll_interval = \"100ms\"\ntimeout = \"300ms\"\nprofile = \"sunspec-804\"\n\
         [[rules]]\nid = \"low-soh\"\npoints = [\"*/string_soh\"]\nbelow = {{ warning = 80.0 }}\n",
        shipped("sunspec-804.toml").display(),
        broker.port(),
        state.path().display(),
        sim.addr(),
    );
    let daemon = Daemon::start(&config);
    let soon = Duration::from_secs(15);
    let topic = format!("{P}/telemetry/string-01");
    let t = sub
        .expect_where(&topic, |j| j["quality"] == "good", soon)
        .await;
    assert_eq!(t["points"]["string_soh"], Value::Null, "{t}");
    assert!(
        t["points"]
            .as_object()
            .is_some_and(|p| p.contains_key("string_soh")),
        "null, not absent: {t}"
    );
    assert_eq!(t["points"]["string_soc"], 95.0, "{t}");
    assert_eq!(t["points"]["string_mod_temp_max"], 25.0, "{t}");
    assert_eq!(t["points"]["string_voltage"], 800.0, "{t}");
    // A few more polls: no alarm at all (no fault for the sentinel, and low-soh never sees it).
    let alarm = sub
        .next_matching(|t, _| t.contains("/alarms/"), Duration::from_secs(2))
        .await;
    assert!(
        alarm.is_none(),
        "{:?}\n{}",
        alarm.map(|m| m.text()),
        daemon.stderr()
    );

    sim.write(40156, 0x8000).await; // ModTmpMin, mandatory in SunSpec: "not implemented"
    let key = format!("{P}/alarms/room-1/string-01/string_mod_temp_min/unreadable");
    let a = sub
        .expect_where(&key, |j| j["state"] == "active", soon)
        .await;
    assert_eq!(a["kind"], "fault", "{a}");
    assert_eq!(
        a["message"],
        "device string-01 point string_mod_temp_min: register 40156: reads 0x8000, the \
         device's \"no value\" (not implemented), and the point is required",
        "{a}"
    );
    let t = sub
        .expect_where(&topic, |j| j["quality"] == "fault", soon)
        .await;
    assert!(t["points"].get("string_mod_temp_min").is_none(), "{t}");
    assert_eq!(t["points"]["string_soh"], Value::Null, "{t}");
}

/// pysunspec2 (the SunSpec Alliance's client, installed by scripts/test.sh) scans the simulator
/// and reads the values the rack should serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pysunspec2_reads_the_simulators_models_and_values() {
    let sim = sunspec_sim().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sunspec_client.py");
    let run = Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", &sim.port().to_string(), "1"])
        .stdin(Stdio::null())
        .output();
    let o = match run {
        Ok(o) => o,
        Err(e) => {
            println!("SKIPPED: pysunspec2 cross-check: cannot run python3: {e}");
            return;
        }
    };
    let out = text(&o.stdout);
    if o.status.code() == Some(3) {
        println!("{}", out.trim());
        return;
    }
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    let j: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(
        j["models"],
        serde_json::json!([
            {"id": 1, "start": 40002, "length": 66},
            {"id": 802, "start": 40070, "length": 62},
            {"id": 804, "start": 40134, "length": 302},
        ])
    );
    assert_eq!(j["manufacturer"], "emberwatch");
    assert_eq!(j["model"], "sim-rack");
    assert_eq!(j["serial"], "SIM-0001");
    assert_eq!(
        j["battery"],
        serde_json::json!({"SoC": 95.0, "SoH": null, "V": 800.0, "A": 0.0, "Typ": 4, "State": 3})
    );
    assert_eq!(
        j["string"],
        serde_json::json!({"SoC": 95.0, "SoH": null, "NMod": 16, "ModTmpMax": 25.0,
                           "ModTmpMin": 25.0, "Evt1": 0, "Evt2": null})
    );
    assert_eq!(j["module_cell_temp_max"], Value::from(vec![25.0; 16]));
}

#[test]
fn check_config_names_a_sentinel_that_cannot_be_and_a_required_without_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("emberwatch.toml");
    let point = |id: &str, rest: &str| format!("  [[devices.points]]\n  id = \"{id}\"\n{rest}");
    let body = [
        "[site]\nid = \"s\"\ngateway = \"g\"\n[[devices]]\nid = \"d\"\nzone = \"z\"\naddress = \"127.0.0.1:502\"\n".to_string(),
        point("a", "  address = 1\n  sentinel = 65536\n"),
        point("b", "  address = 2\n  required = true\n"),
        point("c", "  table = \"coil\"\n  address = 3\n  sentinel = 1\n"),
        // Both spellings of an int16's "not implemented" are fine.
        point("e", "  address = 4\n  type = \"i16\"\n  sentinel = -32768\n  required = true\n"),
        point("f", "  address = 5\n  type = \"i16\"\n  sentinel = 0x8000\n"),
        point("g", "  address = 6\n  type = \"u32\"\n  sentinel = 0xFFFFFFFF\n"),
    ]
    .concat();
    std::fs::write(&cfg, body).expect("write");
    let cfg = cfg.to_str().expect("utf-8");
    let o = emberwatch(&["check-config", "--config", cfg]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        format!(
            "{cfg}: 3 errors\n  \
             devices[0].points[0].sentinel: 65536 does not fit the 16 bits of a u16\n  \
             devices[0].points[1].required: only a point with a `sentinel` can be required \
             (without one, every reading is a value)\n  \
             devices[0].points[2].sentinel: only a point read from registers (holding or \
             input) has a sentinel\n"
        )
    );
}

/// The SunSpec map plays the scenario: during thermal-runaway the 804 string's hottest module
/// and its over-temperature event bit reach the gateway through the shipped profile, and a rule
/// on `string_mod_temp_max` raises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sunspec_values_follow_the_thermal_runaway() {
    let broker = Mosquitto::start().await;
    let sim = Sim::start_with("thermal-runaway", 10, &["--sunspec"]).await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let config = format!(
        "include = ['{}']\n[site]\nid = \"test-site\"\ngateway = \"gw-t\"\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[storage]\ndir = '{}'\n\
         [[devices]]\nid = \"string-01\"\nzone = \"room-1\"\naddress = \"{}\"\nunit = 1\n\
         poll_interval = \"100ms\"\ntimeout = \"300ms\"\nprofile = \"sunspec-804\"\n\
         [[rules]]\nid = \"module-overtemp\"\npoints = [\"*/string_mod_temp_max\"]\n\
         above = {{ warning = 45.0 }}\n",
        shipped("sunspec-804.toml").display(),
        broker.port(),
        state.path().display(),
        sim.addr(),
    );
    let _daemon = Daemon::start(&config);
    let key = format!("{P}/alarms/room-1/string-01/string_mod_temp_max/module-overtemp");
    // At speed 10 the hottest module (95 % of the cell's rise, from t+20 s) passes 45 °C at
    // about 4.2 s of wall time.
    let a = sub
        .expect_where(&key, |j| j["state"] == "active", Duration::from_secs(30))
        .await;
    assert_eq!(a["severity"], "warning", "{a}");
    assert!(a["value"].as_f64().is_some_and(|v| v >= 45.0), "{a}");
    // The BMS's own over-temperature warning (Evt1 bit 2) is set by then too.
    let topic = format!("{P}/telemetry/string-01");
    let t = sub
        .expect_where(
            &topic,
            |j| {
                j["points"]["string_events_1"]
                    .as_f64()
                    .is_some_and(|e| e >= 4.0)
            },
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(t["quality"], "good", "{t}");
}

/// emberwatch's embedded SunSpec tables (`src/sunspec/models.rs`) against the model definitions
/// pysunspec2 ships: every point and scale factor at the same offset, of the same type, scaled by
/// the same factor, equally mandatory.
#[test]
fn the_embedded_model_tables_match_pysunspec2s_definitions() {
    use emberwatch::sunspec::models::BATTERY;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sunspec_client.py");
    let o = match Command::new("python3")
        .arg(&script)
        .arg("models")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            println!("SKIPPED: SunSpec model tables: cannot run python3: {e}");
            return;
        }
    };
    let out = text(&o.stdout);
    if o.status.code() == Some(3) {
        println!("{}", out.trim());
        return;
    }
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    let defs: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    for m in BATTERY {
        let d = &defs[m.id.to_string()];
        assert_eq!(d["fixed_len"], m.fixed_len, "model {}", m.id);
        for p in m.points {
            let want = &d["points"][p.name];
            assert_eq!(
                want,
                &serde_json::json!([p.offset, p.ty.as_str(), p.sf, p.mandatory]),
                "model {} point {}",
                m.id,
                p.name
            );
        }
        for sf in m.sfs {
            let want = &d["points"][sf.name];
            assert_eq!(want[0], sf.offset, "model {} {}", m.id, sf.name);
            assert_eq!(want[1], "sunssf", "model {} {}", m.id, sf.name);
        }
    }
}

/// A chain the device breaks (written into the simulator's map) and a device that never
/// answers: exit 1, and the message says where it went wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_on_a_broken_chain_or_a_silent_device_says_where() {
    let sim = sunspec_sim().await;
    let addr = sim.addr().to_string();
    // The end marker at 40438 becomes model 7 of length 0: the next header, 40440, is past
    // the simulator's map, which answers an exception there.
    sim.write(40438, 7).await;
    let o = emberwatch(&["discover", "--address", &addr]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert_eq!(
        text(&o.stderr).trim_end(),
        format!(
            "emberwatch: {addr} unit 1: reading the model header at register 40440 (after 4 \
             models, no end marker 0xFFFF yet): Modbus exception 2 (illegal data address)"
        )
    );
    // Model 7's length now runs past register 65535.
    sim.write(40439, 0xFFF0).await;
    let o = emberwatch(&["discover", "--address", &addr]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr).trim_end(),
        format!(
            "emberwatch: {addr} unit 1: model 7 at register 40438 has length 65520: it runs \
             past register 65535, the end of the Modbus map (a broken chain)"
        )
    );

    // A device that accepts the connection and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let o = emberwatch(&["discover", "--address", &silent_addr, "--timeout", "300ms"]);
    hold.abort();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr).trim_end(),
        format!(
            "emberwatch: {silent_addr} unit 1: reading holding registers 40000-40001: no \
             answer within 300ms"
        )
    );
}
