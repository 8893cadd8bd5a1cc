//! What the one-shot commands print: the `check-config` summary and the `emberwatch read`
//! table. Neither runs the daemon, so they live apart from it.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::{Config, RuleBody};
use crate::decode::DecodeError;
use crate::fieldbus::{self, PointError};
use crate::mqtt::Topics;

/// An error and its causes as one line, each cause said once: `outer: cause: root`.
///
/// Our error types embed their cause in their own message (so a log line of `{e}` is complete)
/// *and* expose it as `source()` (so callers can inspect it); printing the chain naively, as
/// anyhow's `{:#}` does, then says the root cause once per level. A cause whose text the line
/// already holds is skipped.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// The `check-config` summary: what the daemon would watch and where it would publish.
pub fn summary(cfg: &Config) -> String {
    let mut s = String::new();
    let points: usize = cfg.devices.iter().map(|d| d.points.len()).sum();
    let (mut th, mut ror, mut vote) = (0, 0, 0);
    for r in &cfg.rules {
        match r.body {
            RuleBody::Threshold(_) => th += 1,
            RuleBody::RateOfRise(_) => ror += 1,
            RuleBody::Vote(_) => vote += 1,
        }
    }
    let _ = writeln!(
        s,
        "configuration OK: site {}, gateway {}",
        cfg.site.id, cfg.site.gateway
    );
    let _ = writeln!(
        s,
        "  {} devices, {} points, {} rules ({th} threshold, {ror} rate_of_rise, {vote} vote)",
        cfg.devices.len(),
        points,
        cfg.rules.len()
    );
    let _ = writeln!(s, "  zones: {}", cfg.zones().join(", "));
    for d in &cfg.devices {
        // A line sensor talks on its own; there is nothing to read, only a silence to notice.
        let how = if matches!(d.transport, crate::config::Transport::SerialLines { .. }) {
            format!(
                "from its lines, a fault after {:?} of silence",
                d.poll_interval + d.timeout
            )
        } else {
            let reads = crate::decode::plan_reads(&d.points, d.max_gap).len();
            format!("in {reads} reads every {:?}", d.poll_interval)
        };
        let profile = d
            .profile
            .as_ref()
            .map(|p| format!(", profile {p}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  device {} ({}, zone {}{profile}): {} points {how}",
            d.id,
            d.transport.name(),
            d.zone,
            d.points.len(),
        );
    }
    profiles_summary(cfg, &mut s);
    let t = Topics::new(cfg);
    let _ = writeln!(s, "  broker: {}", cfg.mqtt.url);
    let _ = writeln!(s, "  topics:");
    let _ = writeln!(s, "    {}  (retained, last will offline)", t.status());
    for z in cfg.zones() {
        let _ = writeln!(s, "    {}  (retained)", t.zone_status(&z));
        let _ = writeln!(
            s,
            "    {}/#  (alarm events)",
            t.alarm(&z, "+", "+", "+").trim_end_matches("/+/+/+")
        );
    }
    for d in &cfg.devices {
        let _ = writeln!(s, "    {}", t.telemetry(&d.id));
    }
    let _ = write!(s, "    {}  (commands in)", t.cmd_filter());
    // A redundant pair (issue 13).
    if let Some(r) = &cfg.redundancy {
        let serial = cfg
            .devices
            .iter()
            .filter(|d| !matches!(d.transport, crate::config::Transport::ModbusTcp { .. }))
            .count();
        let _ = write!(
            s,
            "\n  pair: peer {}, priority {} (lower is active when both are up); {serial} serial \
             device(s) polled only while active",
            r.peer, r.priority
        );
        let _ = write!(
            s,
            "\n    {}  (retained, what the standby follows)",
            t.pair_of(&cfg.site.gateway)
        );
    }
    // Drain coordination (issue 5).
    if let Some(d) = &cfg.drain {
        let _ = write!(
            s,
            "\n  drain: trigger {}, deadline {}, agents {}",
            d.trigger,
            humantime::format_duration(d.deadline),
            if d.agents.is_empty() {
                "(none)".to_string()
            } else {
                d.agents.join(", ")
            }
        );
        for z in cfg.zones() {
            let _ = write!(
                s,
                "\n    {}  {}  {}  (retained)",
                t.drain_request(&z),
                t.drain_status(&z),
                t.power_clearance(&z)
            );
        }
        let _ = write!(
            s,
            "\n    {}  {}  (in)",
            t.drain_acks_filter(),
            t.drain_agents_filter()
        );
    }
    s
}

/// Which devices use which profile, and where each profile was written, so an operator who
/// edits a profile file sees every device it changes.
fn profiles_summary(cfg: &Config, s: &mut String) {
    if cfg.profiles.is_empty() {
        return;
    }
    let _ = writeln!(s, "  profiles:");
    for p in &cfg.profiles {
        let users: Vec<&str> = cfg
            .devices
            .iter()
            .filter(|d| d.profile.as_deref() == Some(p.id.as_str()))
            .map(|d| d.id.as_str())
            .collect();
        let _ = writeln!(
            s,
            "    {} ({} points, {}): {}",
            p.id,
            p.points.len(),
            p.file.as_deref().unwrap_or("in the configuration file"),
            if users.is_empty() {
                "no device".to_string()
            } else {
                users.join(", ")
            }
        );
    }
}

/// `emberwatch read`: one poll of each device, printed as a table. Returns whether all answered.
pub async fn read_once(cfg: &Config, only: Option<&str>) -> bool {
    let mut all_ok = true;
    let mut any = false;
    let counters = fieldbus::Counters::new(cfg.devices.len());
    println!(
        "{:<16} {:<20} {:<8} {:>6} {:>14} {:<8} STATUS",
        "DEVICE", "POINT", "TABLE", "ADDR", "VALUE", "UNIT"
    );
    for (i, d) in cfg.devices.iter().enumerate() {
        if only.is_some_and(|o| o != d.id) {
            continue;
        }
        any = true;
        let Some((reading, requests)) = fieldbus::poll_once(cfg, i, &counters).await else {
            continue;
        };
        let link = counters.stats(i);
        match reading.outcome {
            Err(e) => {
                all_ok = false;
                println!("{:<16} {:<20} {}", d.id, "-", e);
                println!("{:<16} (link: {link})", "");
            }
            Ok(points) => {
                for p in points {
                    let point = &d.points[p.point];
                    let (value, status) = match &p.result {
                        Ok(v) => {
                            let bad = point
                                .valid
                                .is_some_and(|(lo, hi)| v.value < lo || v.value > hi);
                            (
                                format!("{}", v.value),
                                if bad {
                                    "outside valid range".to_string()
                                } else {
                                    "ok".to_string()
                                },
                            )
                        }
                        // The device's "no value" sentinel: shown, and an error only for a
                        // required point.
                        Err(PointError::Decode {
                            source: DecodeError::NoValue { sentinel },
                            ..
                        }) if !point.required => (
                            "null".to_string(),
                            format!("no value (sentinel {sentinel:#X}: not implemented)"),
                        ),
                        Err(e) => {
                            all_ok = false;
                            let required = if matches!(
                                e,
                                PointError::Decode {
                                    source: DecodeError::NoValue { .. },
                                    ..
                                }
                            ) {
                                ", and the point is required"
                            } else {
                                ""
                            };
                            ("-".to_string(), format!("{e}{required}"))
                        }
                    };
                    println!(
                        "{:<16} {:<20} {:<8} {:>6} {:>14} {:<8} {}",
                        d.id,
                        point.id,
                        point.table.as_str(),
                        point.address,
                        value,
                        point.unit,
                        status
                    );
                }
                println!(
                    "{:<16} ({} requests, {:?}; link: {link})",
                    "",
                    requests,
                    Duration::from_micros(reading.latency.as_micros() as u64)
                );
            }
        }
    }
    if !any {
        println!("no device {:?} in the configuration", only.unwrap_or(""));
        return false;
    }
    all_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_how_each_device_is_read() {
        // The harness's gateway (rack-01 over Modbus TCP) plus a line sensor.
        let mut cfg = crate::mqtt::harness::config("mqtt://127.0.0.1:1883");
        let text = r#"
[site]
id = "s"
gateway = "gw"
[[devices]]
id = "h2-01"
zone = "room-1"
transport = "serial-lines"
port = "/dev/ttyUSB0"
poll_interval = "2s"
timeout = "1s"
  [[devices.points]]
  id = "h2"
  kind = "hydrogen"
"#;
        let lines = match Config::from_toml(text, crate::config::Role::Gateway) {
            Ok(c) => c,
            Err(p) => panic!("{p:?}"),
        };
        cfg.devices.extend(lines.devices);
        let s = summary(&cfg);
        assert!(
            s.contains("device rack-01 (modbus-tcp, zone room-1): 1 points in 1 reads every 1s"),
            "{s}"
        );
        assert!(
            s.contains("device h2-01 (serial-lines, zone room-1): 1 points from its lines, a fault after 3s of silence"),
            "{s}"
        );
    }
}

#[cfg(test)]
mod error_tests {
    use super::error_line;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: open: {source}")]
    struct Io {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("storage.dir: {0}")]
        Store(#[from] Io),
        #[error("while starting")]
        Starting(#[source] std::io::Error),
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Outer::from(Io {
            path: "/x".into(),
            source: io,
        });
        assert_eq!(error_line(&e), "storage.dir: /x: open: no such file");
        // A cause the message does not embed is still said.
        let e = Outer::Starting(std::io::Error::other("disk on fire"));
        assert_eq!(error_line(&e), "while starting: disk on fire");
    }
}
