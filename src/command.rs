//! Operator commands: what arrives on `P/gateways/{gateway}/cmd/{name}`, parsed once.
//!
//! Commands come from outside the process (an operator, a script, the console), so every body
//! is checked here, in one place, before anything acts on it: a command that does not parse is
//! a [`Refused`] that names the command and says what was wrong, and the caller answers it on
//! `cmd/result` without changing anything. What parses is routed by variant: the broker link
//! answers [`Replay`] from the journal, the drain task runs [`Drill`], and the engine's alarm
//! table takes [`Ack`], [`Shelve`] and [`Service`]. Like the rest of the pipeline's vocabulary
//! this module does no I/O, so the parsing is table-tested below.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::message::CommandResult;

/// Every command name this gateway takes, for the answer to one it does not.
pub const NAMES: [&str; 6] = ["ack", "shelve", "service", "drill", "replay", "switchover"];

/// The largest command body taken, in bytes. A real command is a few hundred bytes; anything
/// near this is a mistake or an attack, refused before it is parsed so that a flood of large
/// bodies costs no JSON work. Below the link's incoming packet limit
/// (`mqtt::options::MAX_INCOMING`) by design: the gateway must be able to read a body to answer
/// that it is too large.
pub const MAX_BODY: usize = 16 * 1024;

/// One parsed, checked operator command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ack(Ack),
    Shelve(Shelve),
    Service(Service),
    Drill(Drill),
    Replay(Replay),
    Switchover(Switchover),
}

/// `cmd/switchover`: `{}` or `{"by": NAME}`: the active gateway of a redundant pair hands over
/// to its standby peer (maintenance). `emberwatch switchover` sends it, hence `Serialize`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switchover {
    /// Who asked: named in both gateways' `role_reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// `cmd/ack`: `{"alarm": KEY}` or `{"alarm": "*"}`, optionally `"zone"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub alarm: String,
    /// Needed only for the gateway's own alarms (`_zone/...`, `_drain/...`), whose key is
    /// the same in every zone; without it an ack covers them all.
    #[serde(default)]
    pub zone: Option<String>,
    /// Who acknowledged: the operator's name, recorded in the events as `acked_by`.
    #[serde(default)]
    pub by: Option<String>,
}

/// The longest operator name taken in `"by"`, in characters.
pub const MAX_BY: usize = 64;

/// The shortest shelf: the daemon lifts expired shelves on its one-second tick, so a shorter
/// one would last until that tick anyway, and `"1ns"` answered ok is a typo (`"1h"`?) the
/// operator never learns about.
pub const MIN_SHELVE: Duration = Duration::from_secs(1);

/// `cmd/shelve`: hide an alarm for a while, with a reason. Both are required: a shelf must
/// expire, and whoever finds a hidden alarm must learn why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shelve {
    pub alarm: String,
    /// Required when the key names alarms in several zones (a shelf must hide one alarm).
    pub zone: Option<String>,
    /// How long, at least [`MIN_SHELVE`]; the alarm table enforces `alarms.max_shelve`.
    pub duration: Duration,
    /// Not blank.
    pub reason: String,
    /// Who shelved: recorded in the events as `shelved_by`.
    pub by: Option<String>,
}

/// `cmd/service`: take an alarm out of service (`in_service: false`, with a reason) or back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub alarm: String,
    pub zone: Option<String>,
    /// `None`: back in service; `Some(reason)`: out of service, and why (never blank).
    pub out_of_service: Option<String>,
    /// Who: named in the event's message.
    pub by: Option<String>,
}

/// `cmd/drill`: `{"zone": ZONE}`, a drain of the zone marked as a drill. `emberwatch drill`
/// sends it, hence `Serialize`. Strict: a body with anything else (an alarm event replayed
/// onto `cmd/drill`, which also has a `zone`) is not a drill request and must not start one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drill {
    pub zone: String,
}

/// `cmd/replay`: `{"from_seq": N, "reply_to": TOPIC}`, the journaled events from `from_seq`
/// republished on `reply_to`, to repair a subscriber's gap. Strict, like every command body:
/// a misspelt field is refused rather than silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    pub from_seq: u64,
    /// Checked to be a topic one can publish to (no wildcard, not `$...`, not empty). The
    /// broker link also refuses the gateway's own command topics (it knows them; this module
    /// does not).
    pub reply_to: String,
}

/// A command that was not taken, and why: answered on `cmd/result` with `ok: false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The command's name, as it arrived (the last topic segment).
    pub command: String,
    pub reason: String,
}

impl Refused {
    pub fn new(command: &str, reason: impl Into<String>) -> Refused {
        Refused {
            command: command.to_string(),
            reason: reason.into(),
        }
    }

    /// The answer published on `cmd/result`.
    pub fn result(self) -> CommandResult {
        CommandResult {
            command: self.command,
            ok: false,
            reason: Some(self.reason),
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// `cmd/shelve` as it arrives, before its required fields are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShelveBody {
    alarm: String,
    #[serde(default)]
    zone: Option<String>,
    #[serde(rename = "for")]
    for_: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    by: Option<String>,
}

/// `cmd/service` as it arrives.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    alarm: String,
    #[serde(default)]
    zone: Option<String>,
    in_service: bool,
    reason: Option<String>,
    #[serde(default)]
    by: Option<String>,
}

impl Command {
    /// Parses the body of `cmd/{name}`; every way it can be wrong is a [`Refused`] that says so.
    pub fn parse(name: &str, payload: &[u8]) -> Result<Command, Refused> {
        let refuse = |reason: String| Refused::new(name, reason);
        within_limit(name, payload)?;
        match name {
            "ack" => {
                let a: Ack = json(name, payload)?;
                operator(name, a.by.as_deref())?;
                Ok(Command::Ack(a))
            }
            "shelve" => {
                let b: ShelveBody = json(name, payload)?;
                operator(name, b.by.as_deref())?;
                let Some(for_) = b.for_ else {
                    return Err(refuse(
                        "cmd/shelve: \"for\" is required (e.g. \"30m\"): a shelf must expire"
                            .into(),
                    ));
                };
                let duration = crate::config::parse_duration(&for_)
                    .map_err(|e| refuse(format!("cmd/shelve: \"for\": {e}")))?;
                if duration.is_zero() {
                    return Err(refuse("cmd/shelve: \"for\" must be more than 0".into()));
                }
                if duration < MIN_SHELVE {
                    return Err(refuse(format!(
                        "cmd/shelve: \"for\" must be at least {}: shelves are lifted on the \
                         gateway's once-a-second tick, so a shorter one could not be honoured",
                        humantime::format_duration(MIN_SHELVE)
                    )));
                }
                let Some(reason) = b.reason.filter(|r| !r.trim().is_empty()) else {
                    return Err(refuse(
                        "cmd/shelve: \"reason\" is required: say why the alarm is hidden".into(),
                    ));
                };
                Ok(Command::Shelve(Shelve {
                    alarm: b.alarm,
                    zone: b.zone,
                    duration,
                    reason,
                    by: b.by,
                }))
            }
            "service" => {
                let b: ServiceBody = json(name, payload)?;
                operator(name, b.by.as_deref())?;
                let out_of_service = if b.in_service {
                    None
                } else {
                    Some(b.reason.filter(|r| !r.trim().is_empty()).ok_or_else(|| {
                        refuse(
                            "cmd/service: \"reason\" is required to take an alarm out of service"
                                .into(),
                        )
                    })?)
                };
                Ok(Command::Service(Service {
                    alarm: b.alarm,
                    zone: b.zone,
                    out_of_service,
                    by: b.by,
                }))
            }
            "drill" => serde_json::from_slice(payload)
                .map(Command::Drill)
                .map_err(|e| refuse(format!("cmd/drill wants {{\"zone\": ZONE}}: {e}"))),
            "replay" => Replay::parse(payload).map(Command::Replay),
            "switchover" => {
                let s: Switchover = json(name, payload)?;
                operator(name, s.by.as_deref())?;
                Ok(Command::Switchover(s))
            }
            other => Err(refuse(format!(
                "unknown command {other:?} (this gateway takes {})",
                names()
            ))),
        }
    }

    /// The command's name, the last segment of the topic it arrived on.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ack(_) => "ack",
            Command::Shelve(_) => "shelve",
            Command::Service(_) => "service",
            Command::Drill(_) => "drill",
            Command::Replay(_) => "replay",
            Command::Switchover(_) => "switchover",
        }
    }
}

impl Replay {
    /// The body of `cmd/replay`, which the broker link answers itself (from the journal, on the
    /// broker that asked) rather than routing it on as a [`Command`].
    pub fn parse(payload: &[u8]) -> Result<Replay, Refused> {
        let refuse = |reason: String| Refused::new("replay", reason);
        within_limit("replay", payload)?;
        let r: Replay = serde_json::from_slice(payload).map_err(|e| {
            refuse(format!(
                "expected {{\"from_seq\": N, \"reply_to\": TOPIC}}: {e}"
            ))
        })?;
        if !publishable(&r.reply_to) {
            return Err(refuse(format!(
                "reply_to {:?} is not a topic one can publish to",
                r.reply_to
            )));
        }
        Ok(r)
    }
}

/// Every body, known command or not, is refused past [`MAX_BODY`] before it is parsed.
fn within_limit(name: &str, payload: &[u8]) -> Result<(), Refused> {
    if payload.len() > MAX_BODY {
        return Err(Refused::new(
            name,
            format!(
                "cmd/{name}: body of {} bytes is over the {MAX_BODY}-byte limit for a command",
                payload.len()
            ),
        ));
    }
    Ok(())
}

/// `"by"`, when given, names a person: not blank, at most [`MAX_BY`] characters, printable (it
/// is shown on consoles and written into events and logs, so no control characters).
fn operator(name: &str, by: Option<&str>) -> Result<(), Refused> {
    let Some(by) = by else { return Ok(()) };
    let why = if by.trim().is_empty() {
        "must not be blank".to_string()
    } else if by.chars().count() > MAX_BY {
        format!("is over {MAX_BY} characters")
    } else if by.chars().any(char::is_control) {
        "must not contain control characters".to_string()
    } else {
        return Ok(());
    };
    Err(Refused::new(
        name,
        format!("cmd/{name}: \"by\" (the operator's name) {why}"),
    ))
}

/// "ack, shelve, service, drill, replay and switchover".
fn names() -> String {
    let (last, rest) = NAMES.split_last().unwrap_or((&"", &[]));
    format!("{} and {last}", rest.join(", "))
}

fn json<T: DeserializeOwned>(name: &str, payload: &[u8]) -> Result<T, Refused> {
    serde_json::from_slice(payload).map_err(|e| {
        Refused::new(
            name,
            format!("cmd/{name}: not valid JSON for this command: {e}"),
        )
    })
}

/// A topic a client may publish to: not empty, no wildcards, not a `$SYS`-style topic.
fn publishable(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#', '\0']) && !t.starts_with('$') && t.len() < 65_536
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(name: &str, body: &str) -> String {
        match Command::parse(name, body.as_bytes()) {
            Err(r) => {
                assert_eq!(r.command, name);
                r.reason
            }
            Ok(c) => panic!("{name} {body} parsed as {c:?}"),
        }
    }

    #[test]
    fn good_bodies_parse_into_their_variant() {
        let cases = [
            (
                "ack",
                r#"{"alarm":"*"}"#,
                Command::Ack(Ack {
                    alarm: "*".into(),
                    zone: None,
                    by: None,
                }),
            ),
            (
                "ack",
                r#"{"alarm":"a/b/c","by":"Kim Ji-woo"}"#,
                Command::Ack(Ack {
                    alarm: "a/b/c".into(),
                    zone: None,
                    by: Some("Kim Ji-woo".into()),
                }),
            ),
            (
                "shelve",
                r#"{"alarm":"a/b/c","zone":"room-1","for":"30m","reason":"sensor swap","by":"ops"}"#,
                Command::Shelve(Shelve {
                    alarm: "a/b/c".into(),
                    zone: Some("room-1".into()),
                    duration: Duration::from_secs(1800),
                    reason: "sensor swap".into(),
                    by: Some("ops".into()),
                }),
            ),
            (
                "service",
                r#"{"alarm":"a/b/c","in_service":false,"reason":"recalibration","by":"Søren"}"#,
                Command::Service(Service {
                    alarm: "a/b/c".into(),
                    zone: None,
                    out_of_service: Some("recalibration".into()),
                    by: Some("Søren".into()),
                }),
            ),
            (
                "service",
                r#"{"alarm":"a/b/c","in_service":true}"#,
                Command::Service(Service {
                    alarm: "a/b/c".into(),
                    zone: None,
                    out_of_service: None,
                    by: None,
                }),
            ),
            (
                "drill",
                r#"{"zone":"room-1"}"#,
                Command::Drill(Drill {
                    zone: "room-1".into(),
                }),
            ),
            (
                "replay",
                r#"{"from_seq":7,"reply_to":"ops/replay"}"#,
                Command::Replay(Replay {
                    from_seq: 7,
                    reply_to: "ops/replay".into(),
                }),
            ),
            (
                "switchover",
                "{}",
                Command::Switchover(Switchover::default()),
            ),
            (
                "switchover",
                r#"{"by":"alice"}"#,
                Command::Switchover(Switchover {
                    by: Some("alice".into()),
                }),
            ),
        ];
        for (name, body, want) in cases {
            let got = Command::parse(name, body.as_bytes());
            assert_eq!(got, Ok(want.clone()), "{name} {body}");
            assert_eq!(want.name(), name);
        }
    }

    #[test]
    fn bad_bodies_are_refused_with_the_reason() {
        let cases = [
            ("ack", "not json", "cmd/ack: not valid JSON for this command"),
            ("ack", r#"{"alarm":"x","who":"kim"}"#, "unknown field `who`"),
            ("ack", r#"{"alarm":"x","by":1}"#, "invalid type: integer"),
            (
                "ack",
                r#"{"alarm":"x","by":"  "}"#,
                "cmd/ack: \"by\" (the operator's name) must not be blank",
            ),
            (
                "shelve",
                r#"{"alarm":"x","for":"1m","reason":"r","by":"a\nb"}"#,
                "cmd/shelve: \"by\" (the operator's name) must not contain control characters",
            ),
            (
                "service",
                r#"{"alarm":"x","in_service":true,"by":"\u001b[2J"}"#,
                "cmd/service: \"by\" (the operator's name) must not contain control characters",
            ),
            ("shelve", r#"{"alarm":"x","reason":"r"}"#, "\"for\" is required"),
            (
                "shelve",
                r#"{"alarm":"x","for":"soon","reason":"r"}"#,
                "cmd/shelve: \"for\":",
            ),
            (
                "shelve",
                r#"{"alarm":"x","for":"0s","reason":"r"}"#,
                "\"for\" must be more than 0",
            ),
            (
                "shelve",
                r#"{"alarm":"x","for":"999ms","reason":"r"}"#,
                "cmd/shelve: \"for\" must be at least 1s: shelves are lifted on the gateway's \
                 once-a-second tick, so a shorter one could not be honoured",
            ),
            (
                "shelve",
                r#"{"alarm":"x","for":"30m","reason":"  "}"#,
                "\"reason\" is required",
            ),
            (
                "service",
                r#"{"alarm":"x","in_service":false}"#,
                "\"reason\" is required to take an alarm out of service",
            ),
            ("drill", "{}", "cmd/drill wants {\"zone\": ZONE}"),
            (
                "drill",
                r#"{"zone":"room-1","go":true}"#,
                "unknown field `go`",
            ),
            (
                "replay",
                r#"{"from_seq":1,"reply_to":"ops/r","to_seq":9}"#,
                "unknown field `to_seq`",
            ),
            ("replay", r#"{"from_seq":1}"#, "expected {\"from_seq\": N"),
            ("switchover", r#"{"now":true}"#, "unknown field `now`"),
            ("switchover", r#"{"by":""}"#, "\"by\" (the operator's name) must not be blank"),
            (
                "replay",
                r#"{"from_seq":1,"reply_to":"a/#"}"#,
                "is not a topic one can publish to",
            ),
            (
                "replay",
                r#"{"from_seq":1,"reply_to":"$SYS/x"}"#,
                "is not a topic one can publish to",
            ),
            (
                "reboot",
                "{}",
                "unknown command \"reboot\" (this gateway takes ack, shelve, service, drill, replay and switchover)",
            ),
        ];
        for (name, body, want) in cases {
            let reason = refusal(name, body);
            assert!(reason.contains(want), "{name} {body}: {reason}");
        }
    }

    /// Any command, known or not, over [`MAX_BODY`] is refused by its size, naming the limit;
    /// at the limit it is parsed as usual.
    #[test]
    fn an_oversized_body_is_refused_naming_the_limit() {
        let pad = |n: usize| format!(r#"{{"alarm":"{}"}}"#, "x".repeat(n - 12));
        let big = pad(MAX_BODY + 1);
        assert_eq!(big.len(), MAX_BODY + 1);
        for name in ["ack", "drill", "reboot"] {
            let reason = refusal(name, &big);
            assert_eq!(
                reason,
                format!(
                    "cmd/{name}: body of {} bytes is over the {MAX_BODY}-byte limit for a command",
                    MAX_BODY + 1
                )
            );
        }
        let at_limit = pad(MAX_BODY);
        assert!(matches!(
            Command::parse("ack", at_limit.as_bytes()),
            Ok(Command::Ack(_))
        ));
    }

    /// 64 characters (not bytes: names are not all ASCII) are taken, 65 refused.
    #[test]
    fn an_operator_name_is_at_most_64_characters() {
        let body = |n: usize| format!(r#"{{"alarm":"x","by":"{}"}}"#, "é".repeat(n));
        assert!(matches!(
            Command::parse("ack", body(MAX_BY).as_bytes()),
            Ok(Command::Ack(Ack { by: Some(b), .. })) if b.chars().count() == MAX_BY
        ));
        assert_eq!(
            refusal("ack", &body(MAX_BY + 1)),
            "cmd/ack: \"by\" (the operator's name) is over 64 characters"
        );
    }

    #[test]
    fn replay_topics_must_be_publishable() {
        assert!(publishable("ops/replay/42"));
        assert!(!publishable(""));
        assert!(!publishable("ops/+/x"));
        assert!(!publishable("ops/#"));
        assert!(!publishable("$SYS/x"));
    }

    #[test]
    fn a_refusal_is_answered_as_a_failed_result() {
        let r = Refused::new("ack", "no alarm \"x\"").result();
        assert_eq!(r.command, "ack");
        assert!(!r.ok);
        assert_eq!(r.reason.as_deref(), Some("no alarm \"x\""));
    }
}
