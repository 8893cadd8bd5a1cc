//! Profiles as an operator meets them: `check-config` on a site written with `[[profiles]]` and
//! `include`, its exact errors and exit codes, `read` on profiled devices, and the daemon polling
//! two racks that share one profile from the shipped simulator profile file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// The shipped profile file for the simulator.
fn shipped_profiles() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/profiles/emberwatch-sim.toml")
}

/// Runs `emberwatch ARGS` without the developer's own `EMBERWATCH__` overrides.
fn emberwatch(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emberwatch"));
    cmd.args(args).env("NO_COLOR", "1").stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("EMBERWATCH__") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run emberwatch")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A site directory: `emberwatch.toml` and the given files beside it; returns the config path.
fn site(dir: &Path, main: &str, files: &[(&str, &str)]) -> String {
    for (name, body) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, body).expect("write");
    }
    let p = dir.join("emberwatch.toml");
    std::fs::write(&p, main).expect("write config");
    p.display().to_string()
}

const HEAD: &str = "include = [\"profiles/*.toml\"]\n[site]\nid = \"s\"\ngateway = \"g\"\n";

const RACK: &str = "[[profiles]]\nid = \"rack-bms\"\n\
    [[profiles.points]]\nid = \"cell_temp_max\"\nkind = \"temperature\"\naddress = 116\ntype = \"i16\"\nscale = 0.1\n\
    [[profiles.points]]\nid = \"soc\"\naddress = 132\n";

fn device(id: &str, unit: u8, profile: &str) -> String {
    format!(
        "[[devices]]\nid = \"{id}\"\nzone = \"room-1\"\naddress = \"127.0.0.1:5020\"\n\
         unit = {unit}\nprofile = \"{profile}\"\n"
    )
}

#[test]
fn check_config_summarises_which_devices_use_which_profile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = format!(
        "{HEAD}{}{}\n[[rules]]\nid = \"hot\"\npoints = [\"*/cell_temp_max\"]\nabove = {{ warning = 45.0 }}\n",
        device("rack-01", 1, "rack-bms"),
        device("rack-02", 2, "rack-bms")
    );
    let cfg = site(dir.path(), &main, &[("profiles/rack.toml", RACK)]);
    let o = emberwatch(&["check-config", "--config", &cfg], &[]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    assert!(out.contains("  2 devices, 4 points, 1 rules"), "{out}");
    assert!(
        out.contains("  device rack-02 (modbus-tcp, zone room-1, profile rack-bms): 2 points in 1 reads every 1s"),
        "{out}"
    );
    assert!(
        out.contains(
            "  profiles:\n    rack-bms (2 points, profiles/rack.toml): rack-01, rack-02\n"
        ),
        "{out}"
    );
}

#[test]
fn check_config_names_the_profile_and_its_file_in_every_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = "[[profiles]]\nid = \"rack-bms\"\n\
        [[profiles.points]]\nid = \"a\"\naddress = 1\n\
        [[profiles.points]]\nid = \"b\"\naddress = 2\n\
        [[profiles.points]]\nid = \"c\"\naddress = 3\n\
        [[profiles.points]]\nid = \"d\"\naddress = 4\ntype = \"u17\"\n";
    let ups = "[[profiles]]\nid = \"rack-bms\"\n[[profiles.points]]\nid = \"x\"\naddress = 9\n";
    let main = format!(
        "{HEAD}{}{}",
        device("rack-01", 1, "rack-bms"),
        device("ups-01", 1, "ups")
    );
    let cfg = site(
        dir.path(),
        &main,
        &[("profiles/rack.toml", bad), ("profiles/ups.toml", ups)],
    );
    let o = emberwatch(&["check-config", "--config", &cfg], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    for want in [
        "emberwatch.toml: 3 errors",
        "  profiles[rack-bms].points[3].type: unknown type \"u17\" (expected u16, i16, u32, i32, f32, u64, i64, f64 or bool) (in profiles/rack.toml)",
        "  profiles[rack-bms].id: duplicate profile id \"rack-bms\" (also in profiles/rack.toml) (in profiles/ups.toml)",
        "  devices[1].profile: no profile \"ups\"; known: rack-bms",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
}

#[test]
fn an_included_file_with_more_than_profiles_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stray = format!("{RACK}\n[mqtt]\nurl = \"mqtt://elsewhere:1883\"\n");
    let main = format!("{HEAD}{}", device("rack-01", 1, "rack-bms"));
    let cfg = site(dir.path(), &main, &[("profiles/rack.toml", &stray)]);
    let o = emberwatch(&["check-config", "--config", &cfg], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("  profiles/rack.toml: mqtt: an included file holds [[profiles]] only (with the keys of [[devices.points]])"),
        "{err}"
    );
}

#[test]
fn environment_overrides_still_apply_to_a_site_with_includes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = format!("{HEAD}{}", device("rack-01", 1, "rack-bms"));
    let cfg = site(dir.path(), &main, &[("profiles/rack.toml", RACK)]);
    let o = emberwatch(
        &["check-config", "--config", &cfg],
        &[("EMBERWATCH__SITE__ID", "Pangyo A")],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("  site.id: \"Pangyo A\" must match [a-z0-9-]+"),
        "{err}"
    );
    assert!(err.contains("emberwatch.toml: 1 error\n"), "{err}");
}

#[test]
fn the_shipped_racks_example_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/emberwatch-racks.toml");
    let o = emberwatch(
        &["check-config", "--config", example.to_str().expect("utf-8")],
        &[],
    );
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    assert!(
        out.contains("    sim-rack-bms (4 points, profiles/emberwatch-sim.toml): rack-01, rack-02, rack-03\n"),
        "{out}"
    );
}

/// `read` on profiled devices: one simulator answering units 1 and 2, two racks of one profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_shows_the_points_of_profiled_devices() {
    let sim = Sim::start_with("normal", 1, &["--also-unit", "2"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let main = format!(
        "include = ['{}']\n[site]\nid = \"s\"\ngateway = \"g\"\n{}{}",
        shipped_profiles().display(),
        device("rack-01", 1, "sim-rack-bms"),
        device("rack-02", 2, "sim-rack-bms"),
    )
    .replace("127.0.0.1:5020", &sim.addr().to_string());
    let cfg = site(dir.path(), &main, &[]);
    let o = emberwatch(&["read", "--config", &cfg], &[]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    for dev in ["rack-01", "rack-02"] {
        for point in ["cell_temp_max", "rack_voltage", "rack_current", "soc"] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(dev) && l.contains(point) && l.contains("ok")),
                "no good {dev}/{point} in\n{out}"
            );
        }
    }
}

/// The daemon on a profiled configuration: both racks publish telemetry with the profile's
/// points, and a `*/cell_temp_max` rule raises on the one that overheats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_polls_two_profiled_racks_and_rules_see_them() {
    let broker = Mosquitto::start().await;
    let sim = Sim::start_with("normal", 1, &["--also-unit", "2"]).await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let racks = |id: &str, unit: u8| {
        format!(
            "[[devices]]\nid = \"{id}\"\nzone = \"room-1\"\naddress = \"{}\"\nunit = {unit}\n\
             poll_interval = \"100ms\"\ntimeout = \"300ms\"\nprofile = \"sim-rack-bms\"\n",
            sim.addr()
        )
    };
    let config = format!(
        "include = ['{}']\n[site]\nid = \"test-site\"\ngateway = \"gw-t\"\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[storage]\ndir = '{}'\n{}{}\
         [[rules]]\nid = \"cell-overtemp\"\npoints = [\"*/cell_temp_max\"]\n\
         above = {{ warning = 45.0, critical = 55.0 }}\n",
        shipped_profiles().display(),
        broker.port(),
        state.path().display(),
        racks("rack-01", 1),
        racks("rack-02", 2),
    );
    let daemon = Daemon::start(&config);
    let soon = Duration::from_secs(15);
    for rack in ["rack-01", "rack-02"] {
        let topic = format!("{P}/telemetry/{rack}");
        let t = sub
            .expect_where(&topic, |j| j["quality"] == "good", soon)
            .await;
        for point in ["cell_temp_max", "rack_voltage", "rack_current", "soc"] {
            assert!(
                t["points"][point].is_number(),
                "{rack} telemetry lacks {point}: {t}\n{}",
                daemon.stderr()
            );
        }
    }
    sim.write_unit(2, 116, 500).await; // 50.0 degC on rack 2 only
    let alarm = format!("{P}/alarms/room-1/rack-02/cell_temp_max/cell-overtemp");
    let a = sub
        .expect_where(&alarm, |j| j["state"] == "active", soon)
        .await;
    assert_eq!(a["severity"], "warning", "{a}");
}
