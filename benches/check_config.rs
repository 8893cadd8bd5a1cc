//! How `emberwatch check-config` scales with the number of devices (issue 15: 186,000 devices
//! took 104 s and 1.8 GB, quadratic). Run with `cargo bench --bench check_config [-- N ...]`
//! (default 5000 50000 186000 devices). `EMBERWATCH_BIN=/path/to/emberwatch` measures another
//! build instead (an older release, for a before/after comparison on one machine).
//!
//! Each size is a generated site: N Modbus TCP devices in zones of 100, two points each, a
//! threshold and a rate-of-rise rule on `*/cell_temp_max` (so each watches N points) and a vote
//! on `*/offgas/*`. Each size is checked again as issue 14 lays a site out: the same devices,
//! each `profile = "rack-20"` (20 points from one `[[profiles]]` entry) and 100 unit ids per
//! gateway address. The real binary checks it under `/usr/bin/time -v`; the wall time and the
//! peak RSS are printed with the machine. Nothing here asserts a time.

#[allow(dead_code)] // percentile: the other benches use it
mod common;
use common::machine;

use std::fmt::Write as _;
use std::process::Command;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![5_000, 50_000, 186_000]
    } else {
        sizes
    };
    println!("machine: {}", machine());
    let bin = std::env::var("EMBERWATCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_emberwatch").to_string());
    println!("binary: {bin}");
    let dir = tempfile::tempdir().expect("tempdir");
    for (n, profiled) in sizes.iter().flat_map(|&n| [(n, false), (n, true)]) {
        let path = dir.path().join(format!("site-{n}-{profiled}.toml"));
        let text = if profiled { profiled_site(n) } else { site(n) };
        std::fs::write(&path, text).expect("write config");
        let out = Command::new("/usr/bin/time")
            .arg("-v")
            .arg(&bin)
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run /usr/bin/time -v emberwatch check-config (Debian package time)");
        let err = String::from_utf8_lossy(&out.stderr);
        let field = |name: &str| {
            err.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| "?".into())
        };
        let rss_kb: f64 = field("Maximum resident set size (kbytes):")
            .parse()
            .unwrap_or(f64::NAN);
        println!(
            "check-config, {n} devices ({} points{}): {} ({}), wall {}, peak RSS {:.1} MB",
            if profiled { 20 * n } else { 2 * n },
            if profiled {
                ", one profile, 100 units per address"
            } else {
                ""
            },
            if out.status.success() {
                "accepted"
            } else {
                "REFUSED"
            },
            humansize(std::fs::metadata(&path).map_or(0, |m| m.len())),
            field("Elapsed (wall clock) time (h:mm:ss or m:ss):"),
            rss_kb / 1024.0,
        );
        if !out.status.success() {
            println!("{}", err.lines().take(5).collect::<Vec<_>>().join("\n"));
        }
    }
}

fn humansize(bytes: u64) -> String {
    format!("{:.1} MB of TOML", bytes as f64 / 1e6)
}

/// The rules every site has.
const RULES: &str = r#"[site]
id = "big-site"
gateway = "gw-1"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[storage]
dir = "/tmp/emberwatch-bench"

[[rules]]
id = "cell-overtemp"
points = ["*/cell_temp_max"]
above = { warning = 45.0, critical = 55.0 }

[[rules]]
id = "cell-temp-rise"
points = ["*/cell_temp_max"]
rate_of_rise = { per_minute = 10.0, window = "30s" }

[[rules]]
id = "confirmed-fire"
vote = { alarms = ["*/offgas/*", "*/cell_temp_max/*"], need = 2 }
"#;

/// A valid site of `n` devices, 100 unit ids behind each gateway address, all from one profile
/// of 20 points (the simulator's rack, as benches/scale.rs polls it).
fn profiled_site(n: usize) -> String {
    let mut s = String::from(RULES);
    s.push_str("\n[[profiles]]\nid = \"rack-20\"\n");
    for (id, address) in (1..=16).map(|m| (format!("module_{m}"), 99 + m)).chain([
        ("cell_temp_max".to_string(), 116),
        ("smoke".to_string(), 120),
        ("offgas".to_string(), 121),
        ("hydrogen".to_string(), 122),
    ]) {
        let _ = write!(
            s,
            "  [[profiles.points]]\n  id = \"{id}\"\n  address = {address}\n  type = \"i16\"\n  scale = 0.1\n"
        );
    }
    for i in 0..n {
        let _ = write!(
            s,
            "\n[[devices]]\nid = \"rack-{i}\"\nzone = \"room-{}\"\nprofile = \"rack-20\"\n\
             address = \"10.0.{}.{}:502\"\nunit = {}\npoll_interval = \"1s\"\n",
            i / 100,
            (i / 100) >> 8,
            (i / 100) & 0xFF,
            i % 100 + 1,
        );
    }
    s
}

/// A valid site of `n` devices.
fn site(n: usize) -> String {
    let mut s = String::from(RULES);
    for i in 0..n {
        let _ = write!(
            s,
            r#"
[[devices]]
id = "rack-{i}"
zone = "room-{}"
address = "10.{}.{}.{}:502"
poll_interval = "10s"
  [[devices.points]]
  id = "cell_temp_max"
  kind = "temperature"
  address = 116
  type = "i16"
  scale = 0.1
  [[devices.points]]
  id = "offgas"
  kind = "offgas"
  address = 121
"#,
            i / 100,
            (i >> 16) & 0xFF,
            (i >> 8) & 0xFF,
            i & 0xFF,
        );
    }
    s
}
