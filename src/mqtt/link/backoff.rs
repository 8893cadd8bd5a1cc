//! When to try the broker again, and whether a failure is worth a warning.
//!
//! A broker loop reconnects for as long as it runs. How long it waits depends on the
//! connection's recent history (how many attempts failed in a row, and whether the last
//! connection lasted), and how loudly it logs depends on what it last said: a broker down for
//! an hour must neither flood the journal nor go quiet. That history is kept here, apart from
//! the loop's I/O, so its rules are unit-tested below like the [`Ledger`]'s.
//!
//! [`Ledger`]: super::super::ledger::Ledger

use std::time::Duration;

use rand::Rng;
use rumqttc::{ConnectReturnCode, ConnectionError, StateError};
use tokio::time::Instant;

pub(super) const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A connection that lasted this long resets the backoff; one that drops sooner (a broker that
/// kicks us at once) keeps escalating, so the gateway does not hammer it.
const STABLE: Duration = Duration::from_secs(10);

/// While the same connection failure repeats, it is logged at warn level this often.
const REPEAT_WARNING: Duration = Duration::from_secs(60);

/// One broker's connection history, as far as reconnecting cares.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    /// Consecutive failures (a connection shorter than [`STABLE`] does not break the run).
    failures: u32,
    /// Since the last CONNACK; `None` while disconnected.
    connected_since: Option<Instant>,
    /// The last failure logged at warn level, and when: a repeat of it within
    /// [`REPEAT_WARNING`] is logged at debug only.
    last_warned: Option<(String, Instant)>,
}

/// What to do about one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Retry {
    /// How long to wait before the next attempt.
    pub delay: Duration,
    /// The same failure was warned about less than [`REPEAT_WARNING`] ago: log at debug.
    pub repeat: bool,
}

impl Backoff {
    /// True between a CONNACK and the next failure.
    pub fn is_connected(&self) -> bool {
        self.connected_since.is_some()
    }

    /// A CONNACK at `now`. Returns the failures before it, for the log line; they are
    /// forgotten only once the connection has proved stable.
    pub fn connected(&mut self, now: Instant) -> u32 {
        self.connected_since = Some(now);
        self.last_warned = None;
        self.failures
    }

    /// The connection (or the attempt) failed at `now` because of `reason`.
    pub fn failed(&mut self, reason: &str, now: Instant) -> Retry {
        if let Some(since) = self.connected_since.take() {
            if now.saturating_duration_since(since) >= STABLE {
                self.failures = 0;
            }
        }
        self.failures = self.failures.saturating_add(1);
        let repeat = matches!(&self.last_warned, Some((last, at))
            if last == reason && now.saturating_duration_since(*at) < REPEAT_WARNING);
        if !repeat {
            self.last_warned = Some((reason.to_string(), now));
        }
        Retry {
            delay: backoff(self.failures),
            repeat,
        }
    }
}

/// The delay's upper bound after `failures` failures in a row: [`BACKOFF_FIRST`] doubling per
/// failure up to [`BACKOFF_MAX`].
fn ceiling(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// The [`ceiling`] with jitter (50–100 %), so a site's gateways do not all reconnect in the
/// same instant after a broker restart.
fn backoff(failures: u32) -> Duration {
    let ms = ceiling(failures).as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// A connection failure in an operator's words.
pub(super) fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => {
                "broker refused the login: bad user name or password (mqtt.username, mqtt.password_file)".into()
            }
            ConnectReturnCode::NotAuthorized => {
                "broker refused the login: not authorized (check mqtt.username / mqtt.password_file and the broker's ACL)".into()
            }
            ConnectReturnCode::BadClientId => {
                "broker refused the client id (mqtt.client_id)".into()
            }
            ConnectReturnCode::ServiceUnavailable => {
                "broker refused the connection: service unavailable".into()
            }
            ConnectReturnCode::RefusedProtocolVersion => {
                "broker refused MQTT 3.1.1".into()
            }
            ConnectReturnCode::Success => "broker sent an odd CONNACK".into(),
        },
        ConnectionError::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "cannot connect: connection refused (is the broker running?)".into()
            }
            _ => format!("cannot connect: {io}"),
        },
        ConnectionError::NetworkTimeout => "no answer from the broker in time".into(),
        ConnectionError::Tls(t) => format!("TLS: {t}"),
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            "connection closed by the broker".into()
        }
        ConnectionError::MqttState(StateError::AwaitPingResp) => {
            "connection lost: no answer to keep-alive ping".into()
        }
        ConnectionError::MqttState(StateError::Io(io))
        | ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(io))) => {
            format!("connection lost: {io}")
        }
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(n),
        )) => format!("connection dropped: the broker sent a {n}-byte packet, above the limit"),
        ConnectionError::MqttState(s) => format!("connection lost: {s}"),
        ConnectionError::FlushTimeout => "connection lost: write timed out".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What happens to the connection, seconds after the start.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Connected,
        Failed(&'static str),
    }

    #[test]
    fn failures_escalate_until_a_connection_lasts_and_repeats_are_quiet() {
        use Step::*;
        // (at seconds, step, failures in a row after it, logged as a repeat)
        let table = [
            (0, Failed("refused"), 1, false),
            (1, Failed("refused"), 2, true),
            (2, Failed("timeout"), 3, false),
            (3, Failed("timeout"), 4, true),
            // A connection that drops at once does not reset the run; the CONNACK does
            // forget what was warned about.
            (4, Connected, 4, false),
            (5, Failed("timeout"), 5, false),
            // A stable connection (STABLE = 10 s) does.
            (6, Connected, 5, false),
            (16, Failed("reset"), 1, false),
            // The same failure warns again once REPEAT_WARNING (60 s) has passed.
            (20, Failed("reset"), 2, true),
            (75, Failed("reset"), 3, true),
            (77, Failed("reset"), 4, false),
            (78, Failed("reset"), 5, true),
        ];
        let start = Instant::now();
        let mut b = Backoff::default();
        for (at, step, failures, repeat) in table {
            let now = start + Duration::from_secs(at);
            match step {
                Connected => {
                    b.connected(now);
                    assert!(b.is_connected());
                }
                Failed(reason) => {
                    let retry = b.failed(reason, now);
                    assert!(!b.is_connected());
                    assert_eq!(retry.repeat, repeat, "at {at} s: {step:?}");
                    let ceiling = ceiling(failures);
                    assert!(
                        retry.delay >= ceiling / 2 && retry.delay <= ceiling,
                        "at {at} s: {:?} outside {ceiling:?}",
                        retry.delay
                    );
                }
            }
            assert_eq!(b.failures, failures, "at {at} s: {step:?}");
        }
    }

    #[test]
    fn a_connack_reports_the_failures_before_it() {
        let t = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.connected(t), 0);
        b.failed("refused", t);
        b.failed("refused", t);
        assert_eq!(b.connected(t), 2);
    }

    #[test]
    fn the_ceiling_doubles_from_100ms_to_5s() {
        let table = [
            (1, 100),
            (2, 200),
            (3, 400),
            (6, 3200),
            (7, 5000),
            (40, 5000),
            (u32::MAX, 5000),
        ];
        for (failures, ms) in table {
            assert_eq!(ceiling(failures), Duration::from_millis(ms), "{failures}");
        }
    }

    #[test]
    fn backoff_doubles_from_100ms_to_5s_with_jitter() {
        for _ in 0..50 {
            let first = backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let fourth = backoff(4);
            assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800));
            let late = backoff(40);
            assert!(late >= Duration::from_millis(2500) && late <= BACKOFF_MAX);
        }
    }

    #[test]
    fn a_refused_login_says_so() {
        let e = ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword);
        assert!(describe(&e).contains("refused the login: bad user name or password"));
        let e = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert!(describe(&e).contains("refused the login: not authorized"));
        let e = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(describe(&e).contains("is the broker running?"));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(reset)));
        assert_eq!(describe(&e), "connection lost: connection reset");
    }
}
