//! The command line as an operator meets it: `check-config` on the shipped example and on a file
//! full of mistakes, `run` refusing a bad file, and `--help` everywhere.
//!
//! Exit codes and error texts are part of the contract: scripts and systemd act on the codes,
//! people act on the texts, so both are asserted exactly.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use emberwatch::config::{Config, Role, RuleBody};

/// What a finished command left behind.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `emberwatch ARGS` with a clean environment for emberwatch's own variables; kills it and
/// fails if it has not finished within 30 s (none of these commands should wait for anything).
fn emberwatch(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emberwatch"));
    cmd.args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("EMBERWATCH__") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn emberwatch");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "emberwatch {args:?} still running after 30 s; stderr so far:\n{}",
                err_reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/emberwatch.toml")
}

/// The site, broker and storage every configuration here starts with (a macro so that the
/// configurations can stay `const`).
macro_rules! head {
    () => {
        r#"
[site]
id = "test-site"
gateway = "gw-t"

[mqtt]
url = "mqtt://127.0.0.1:1883"
topic_prefix = "emberwatch"

[storage]
dir = "/tmp/emberwatch-never-written"
"#
    };
}

/// A configuration with one mistake of each kind an operator makes, each at a known key path.
const BAD: &str = concat!(
    head!(),
    r#"
[[devices]]
id = "rack-01"
zone = "room-1"
transport = "can-bus"
address = "127.0.0.1:5020"
poll_interval = "1 fortnight"

  [[devices.points]]
  id = "cell_temp_max"
  kind = "temperature"
  address = 116
  type = "u17"
  scale = 0.1

[[rules]]
id = "cell-overtemp"
points = ["rack-99/nothing"]
above = { warning = 60.0, critical = 55.0 }
"#
);

/// Every line an operator must find in the error output for [`BAD`], in the validator's words.
const BAD_ERRORS: [&str; 5] = [
    "devices[0].transport: unknown transport \"can-bus\" (expected modbus-tcp, modbus-rtu, modbus-rtu-over-tcp or serial-lines)",
    "devices[0].points[0].type: unknown type \"u17\" (expected u16, i16, u32, i32, f32, u64, i64, f64 or bool)",
    "devices[0].poll_interval: \"1 fortnight\" is not a duration",
    "rules[0].above.warning: warning 60 must be below critical 55",
    "rules[0].points[0]: no point \"rack-99/nothing\"",
];

/// A TOML syntax error on line 7 (`zone = = ...`).
const BROKEN: &str = "[site]\nid = \"test-site\"\ngateway = \"gw-t\"\n\n[[devices]]\nid = \"rack-01\"\nzone = = \"room-1\"\n";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p.to_str().expect("utf-8 temp path").to_string()
}

fn assert_every_error_named(o: &Outcome) {
    for want in BAD_ERRORS {
        assert!(o.stderr.contains(want), "missing {want:?} in\n{o}");
    }
    assert!(
        o.stderr.contains("5 errors"),
        "expected exactly the 5 mistakes to be counted:\n{o}"
    );
}

#[test]
fn example_config_is_valid() {
    let cfg = Config::load_with_env(&example(), Role::Gateway, Vec::new())
        .unwrap_or_else(|e| panic!("config/emberwatch.toml is refused:\n{e}"));
    let ids: Vec<&str> = cfg.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["rack-01", "rack-02", "ups-01", "asd-01", "offgas-01"]);
    assert_eq!(cfg.zones(), ["room-1"]);
    // Every rule that names points finds them, and the SPEC's three rule kinds are all shown.
    for r in &cfg.rules {
        if !matches!(r.body, RuleBody::Vote(_)) {
            assert!(!r.targets.is_empty(), "rule {} watches nothing", r.id);
        }
    }
    assert!(cfg
        .rules
        .iter()
        .any(|r| matches!(r.body, RuleBody::Threshold(_))));
    assert!(cfg
        .rules
        .iter()
        .any(|r| matches!(r.body, RuleBody::RateOfRise(_))));
    assert!(cfg
        .rules
        .iter()
        .any(|r| matches!(r.body, RuleBody::Vote(_))));
    let drain = cfg.drain.expect("[drain] section");
    assert_eq!(drain.agents, ["lb-1", "k8s-b"]);
}

#[test]
fn check_config_accepts_the_example_and_summarises_it() {
    let o = emberwatch(
        &["check-config", "--config", example().to_str().unwrap()],
        &[],
    );
    assert_eq!(o.code, Some(0), "{o}");
    let summary = o.stdout.to_lowercase();
    for word in ["devices", "points", "rules"] {
        assert!(
            summary.contains(word),
            "summary does not mention {word}:\n{o}"
        );
    }
}

#[test]
fn check_config_names_every_mistake_by_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.toml", BAD);
    let o = emberwatch(&["check-config", "--config", &bad], &[]);
    assert_eq!(o.code, Some(1), "{o}");
    assert!(o.stderr.contains("bad.toml"), "which file? {o}");
    assert_every_error_named(&o);
}

#[test]
fn check_config_points_at_the_line_of_a_syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write(dir.path(), "broken.toml", BROKEN);
    let o = emberwatch(&["check-config", "--config", &broken], &[]);
    assert_eq!(o.code, Some(1), "{o}");
    assert!(o.stderr.contains("line 7"), "{o}");
}

#[test]
fn check_config_of_a_missing_file_says_so() {
    let o = emberwatch(
        &["check-config", "--config", "/nonexistent/emberwatch.toml"],
        &[],
    );
    assert_eq!(o.code, Some(1), "{o}");
    assert!(
        o.stderr
            .contains("/nonexistent/emberwatch.toml: cannot read"),
        "{o}"
    );
}

/// A path with no end (`/dev/zero`, a slip of the hand or a replaced symlink) as the
/// configuration or the broker password is refused at a ceiling, naming the key and the file,
/// instead of growing the process until the kernel kills it (before: both ran out of memory).
#[test]
fn an_endless_file_as_config_or_password_is_refused_by_its_size() {
    let o = emberwatch(&["check-config", "--config", "/dev/zero"], &[]);
    assert_eq!(o.code, Some(1), "{o}");
    assert!(
        o.stderr.contains(
            "/dev/zero: cannot read: larger than 64 MiB, the most this file may hold (is it the right file?)"
        ),
        "{o}"
    );

    let dir = tempfile::tempdir().unwrap();
    let text = head!().replace(
        "\n[storage]",
        "username = \"gw-t\"\npassword_file = \"/dev/zero\"\n\n[storage]",
    )
        + "\n[[devices]]\nid = \"rack-01\"\nzone = \"room-1\"\ntransport = \"modbus-tcp\"\n\
         address = \"127.0.0.1:5020\"\n\n  [[devices.points]]\n  id = \"cell_temp_max\"\n\
         kind = \"temperature\"\n  address = 116\n  type = \"u16\"\n";
    let config = write(dir.path(), "pw.toml", &text);
    let o = emberwatch(&["run", "--config", &config], &[]);
    assert_eq!(o.code, Some(1), "{o}");
    assert!(
        o.stderr.contains("mqtt.password_file")
            && o.stderr.contains("/dev/zero")
            && o.stderr.contains("larger than 4 MiB"),
        "{o}"
    );
    assert!(!o.stderr.contains("panicked"), "{o}");
}

#[test]
fn check_config_sees_environment_overrides() {
    let o = emberwatch(
        &["check-config", "--config", example().to_str().unwrap()],
        &[("EMBERWATCH__SITE__ID", "Pangyo A")],
    );
    assert_eq!(o.code, Some(1), "{o}");
    assert!(
        o.stderr
            .contains("site.id: \"Pangyo A\" must match [a-z0-9-]+"),
        "{o}"
    );
}

#[test]
fn run_refuses_a_bad_config_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.toml", BAD);
    let o = emberwatch(&["run", "--config", &bad], &[]);
    assert_ne!(o.code, Some(0), "{o}");
    assert!(o.code.is_some(), "killed by a signal: {o}");
    assert_every_error_named(&o);
    assert!(!o.stderr.contains("panicked"), "{o}");

    let broken = write(dir.path(), "broken.toml", BROKEN);
    let o = emberwatch(&["run", "--config", &broken], &[]);
    assert_ne!(o.code, Some(0), "{o}");
    assert!(o.stderr.contains("line 7"), "{o}");
    assert!(!o.stderr.contains("panicked"), "{o}");
}

#[test]
fn every_command_has_help() {
    let o = emberwatch(&["--help"], &[]);
    assert_eq!(o.code, Some(0), "{o}");
    let commands = ["run", "check-config", "read", "sim", "demo", "discover"];
    for c in commands {
        assert!(
            o.stdout.contains(c),
            "top-level help does not list {c}:\n{o}"
        );
    }
    for c in commands {
        let o = emberwatch(&[c, "--help"], &[]);
        assert_eq!(o.code, Some(0), "emberwatch {c} --help: {o}");
        assert!(
            o.stdout.contains(&format!("Usage: emberwatch {c}")),
            "emberwatch {c} --help: {o}"
        );
        if ["run", "check-config", "read"].contains(&c) {
            assert!(o.stdout.contains("--config"), "emberwatch {c} --help: {o}");
        }
    }
    let o = emberwatch(&["--version"], &[]);
    assert_eq!(o.code, Some(0), "{o}");
    assert!(o.stdout.contains(emberwatch::VERSION), "{o}");
}

#[test]
fn sim_help_lists_its_options() {
    let o = emberwatch(&["sim", "--help"], &[]);
    assert_eq!(o.code, Some(0), "{o}");
    for flag in [
        "--listen",
        "--unit",
        "--scenario",
        "--speed",
        "--rtu",
        "--baud",
        "--parity",
        "--sunspec",
    ] {
        assert!(
            o.stdout.contains(flag),
            "emberwatch sim --help lacks {flag}:\n{o}"
        );
    }
}

/// A valid configuration for the cases below, each of which changes one line of it.
const GOOD: &str = concat!(
    head!(),
    r#"
[[devices]]
id = "rack-01"
zone = "room-1"
address = "127.0.0.1:5020"
poll_interval = "1s"
timeout = "500ms"

  [[devices.points]]
  id = "cell_temp_max"
  address = 116
  type = "i16"
  scale = 0.1
  offset = 0.0
"#
);

/// Settings that used to pass `check-config` and leave the gateway blind (a point never
/// evaluated, a poll loop flooding the link or never coming round, a prefix nobody receives,
/// state written to the working directory): each is now refused with exit code 1 and exactly
/// this line, and nothing else.
#[test]
fn check_config_refuses_settings_that_would_blind_the_gateway() {
    let cases = [
        (
            ("offset = 0.0", "offset = nan"),
            "devices[0].points[0].offset: NaN is not a finite number: no reading could be computed",
        ),
        (
            ("poll_interval = \"1s\"", "poll_interval = \"1ns\""),
            "devices[0].poll_interval: must be at least 10ms: no Modbus device answers sooner",
        ),
        (
            ("poll_interval = \"1s\"", "poll_interval = \"999999999999h\""),
            "devices[0].poll_interval: must be at most 1h: a device is lost only after two missed polls, so longer leaves a dead sensor unnoticed",
        ),
        (
            ("timeout = \"500ms\"", "timeout = \"1h\""),
            "devices[0].timeout: must be at most 1m: a device that has not answered in a minute is not answering",
        ),
        (
            ("topic_prefix = \"emberwatch\"", "topic_prefix = \"$SYS\""),
            "mqtt.topic_prefix: \"$SYS\" starts with '$': brokers keep $ topics for themselves and deliver nothing published there",
        ),
        (
            ("topic_prefix = \"emberwatch\"", "topic_prefix = \"ember\\u0000watch\""),
            "mqtt.topic_prefix: \"ember\\0watch\" contains a control character: MQTT topics cannot carry one",
        ),
        (
            ("address = \"127.0.0.1:5020\"", "address = \"\""),
            "devices[0].address: \"\" is not host:port",
        ),
        (
            ("dir = \"/tmp/emberwatch-never-written\"", "dir = \"\""),
            "storage.dir: must not be empty: alarm state and the outbox live there (e.g. \"/var/lib/emberwatch\")",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", GOOD);
    let o = emberwatch(&["check-config", "--config", &good], &[]);
    assert_eq!(o.code, Some(0), "{o}");
    assert!(!o.stderr.contains("warning"), "{o}");
    for ((from, to), want) in cases {
        assert!(GOOD.contains(from), "{from:?}");
        let bad = write(dir.path(), "bad.toml", &GOOD.replacen(from, to, 1));
        let o = emberwatch(&["check-config", "--config", &bad], &[]);
        assert_eq!(o.code, Some(1), "{to}: {o}");
        assert!(
            o.stderr.contains(&format!("bad.toml: 1 error\n  {want}\n")),
            "{to}: want {want:?} alone in\n{o}"
        );
    }
}

/// A timeout above the poll interval is accepted (a fast poll that tolerates a slow answer) but
/// said out loud: exit 0, and the warning on stderr beside the summary.
#[test]
fn check_config_warns_of_a_timeout_beyond_the_poll_interval() {
    let dir = tempfile::tempdir().unwrap();
    let slow = GOOD.replace("timeout = \"500ms\"", "timeout = \"2s\"");
    let path = write(dir.path(), "slow.toml", &slow);
    let o = emberwatch(&["check-config", "--config", &path], &[]);
    assert_eq!(o.code, Some(0), "{o}");
    assert!(o.stdout.contains("configuration OK"), "{o}");
    assert_eq!(
        o.stderr,
        "warning: devices[0].timeout: 2s is longer than poll_interval 1s: while the device takes \
         that long it is polled every 2s, not every 1s, and a silent device shows as comm-loss \
         only after 4s\n",
        "{o}"
    );
}

/// Issue 15: an error's cause was printed three times (`storage.dir: X: create directory: Not a
/// directory (os error 20): X: create directory: Not a directory (os error 20): Not a
/// directory (os error 20)`). Each cause is said once, on one line, after the program's name.
#[test]
fn run_says_each_cause_of_an_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let state = file.join("state").display().to_string();
    let example = std::fs::read_to_string(example()).unwrap();
    let text: String = example
        .lines()
        .map(|l| {
            if l.starts_with("dir = ") {
                format!("dir = '{state}'\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let config = write(dir.path(), "unwritable.toml", &text);
    let o = emberwatch(&["run", "--config", &config], &[]);
    assert_eq!(o.code, Some(1), "{o}");
    assert_eq!(
        o.stderr,
        format!(
            "emberwatch: storage.dir: {state}: create directory: Not a directory (os error 20)\n"
        ),
        "{o}"
    );
}
