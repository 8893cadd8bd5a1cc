//! Commands heard through more than one broker.
//!
//! With `mqtt.also`, the gateway is subscribed to `cmd/+` on every broker. Where brokers are
//! bridged (the usual way a site mirrors its topics to a second broker), one operator command
//! arrives once per broker. An acknowledgement twice is harmless, but a shelve twice publishes
//! two events and a drill twice is refused the second time with a confusing `cmd/result`. So
//! the second copy of the same command (same name, same payload) arriving through a *different*
//! broker within [`ECHO_WINDOW`] is taken for an echo and dropped. The same command repeated
//! through the *same* broker is always delivered: that is an operator pressing the button again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long after a command its copy through another broker counts as an echo. Bridges forward
/// within milliseconds; a broker that was reconnecting may hold a QoS 1 copy for a few seconds.
pub const ECHO_WINDOW: Duration = Duration::from_secs(10);

/// The commands seen lately, shared by the broker loops of one link.
#[derive(Debug, Default)]
pub struct Echoes {
    /// (name, payload) → the broker it first came through, and when.
    seen: HashMap<(String, Vec<u8>), (usize, Instant)>,
}

impl Echoes {
    /// Whether the command `name`/`payload` arriving through broker `broker` at `now` is a
    /// copy of one already delivered through another broker. Records it if it is not.
    pub fn is_echo(&mut self, broker: usize, name: &str, payload: &[u8], now: Instant) -> bool {
        self.seen
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < ECHO_WINDOW);
        let key = (name.to_string(), payload.to_vec());
        match self.seen.get(&key) {
            Some((first, _)) if *first != broker => {
                // One echo per broker per command: a third copy through this broker again is
                // the operator repeating it, so forget the original.
                self.seen.remove(&key);
                true
            }
            _ => {
                self.seen.insert(key, (broker, now));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACK: &[u8] = br#"{"alarm":"room-1/rack-01/cell_temp_max/cell-overtemp"}"#;

    #[test]
    fn a_copy_through_another_broker_is_an_echo_a_repeat_through_the_same_is_not() {
        let mut e = Echoes::default();
        let t = Instant::now();
        assert!(!e.is_echo(0, "ack", ACK, t));
        // The bridge's copy, through the second broker.
        assert!(e.is_echo(1, "ack", ACK, t + Duration::from_millis(20)));
        // The operator sends it again through the first broker: delivered.
        assert!(!e.is_echo(0, "ack", ACK, t + Duration::from_secs(1)));
        // Same broker twice in a row: both delivered.
        assert!(!e.is_echo(0, "ack", ACK, t + Duration::from_secs(2)));
        // Another command, or another payload, is never an echo of this one.
        assert!(!e.is_echo(1, "shelve", ACK, t + Duration::from_secs(2)));
        assert!(!e.is_echo(1, "ack", b"{}", t + Duration::from_secs(2)));
    }

    #[test]
    fn a_copy_after_the_window_is_a_new_command() {
        let mut e = Echoes::default();
        let t = Instant::now();
        assert!(!e.is_echo(0, "drill", b"{\"zone\":\"room-1\"}", t));
        assert!(!e.is_echo(
            1,
            "drill",
            b"{\"zone\":\"room-1\"}",
            t + ECHO_WINDOW + Duration::from_millis(1)
        ));
        assert!(e.seen.len() == 1, "old entries are forgotten");
    }
}
