//! Telling a torn tail from a real loss, once the outbox is recovered and the alarm state read.
//!
//! Recovery sees damaged bytes but cannot say what they were. A write torn by a crash or a
//! power cut only ever holds events *after* what `state.json` records (the state is saved once
//! the events are fsynced), so it cost nothing that was raised: a quiet warning. Damage that
//! removed events `state.json` says were raised (a zero-filled or truncated segment) is a real
//! loss: a broker that had not confirmed them never gets them, and `cmd/replay` cannot return
//! them. That is reported loudly: an error with the `seq` range, the `lost` field of the
//! retained gateway status and the `emberwatch_outbox_lost_events` gauge.
//!
//! Events leave the outbox legitimately only with whole confirmed segments, oldest first (the
//! journal ageing and the size bound never drop an alarm event otherwise), so the events held
//! are always a contiguous run of `seq` up to the newest: a hole in that run, or a newest held
//! event below what `state.json` records, is a loss.

use super::{Kind, Outbox};

impl Outbox {
    /// Compares the events held with `raised_through` (`state.json`'s `last_seq`), logs the
    /// verdict, and remembers the lost `seq` ranges ([`Outbox::lost`]). Returns them.
    pub fn assess(&mut self, raised_through: u64) -> Vec<(u64, u64)> {
        let held = self
            .held
            .iter()
            .filter(|h| h.record.kind == Kind::Event)
            .map(|h| h.record.seq);
        let lost = missing(held, raised_through);
        let damage = if self.damaged.is_empty() {
            "no damaged bytes were found: a segment was cut at a record boundary or removed"
                .to_string()
        } else {
            format!("damage at {}", self.damaged.join(", "))
        };
        for &(from, to) in &lost {
            tracing::error!(
                lost_from = from,
                lost_to = to,
                "outbox: LOST alarm events seq {from}..={to}: state.json records them as raised \
                 (through seq {raised_through}) but the outbox no longer holds them ({damage}); a \
                 broker that had not confirmed them will never get them and cmd/replay cannot \
                 return them"
            );
        }
        if lost.is_empty() && !self.damaged.is_empty() {
            if self.held.iter().any(|h| h.record.kind == Kind::Event) || raised_through == 0 {
                tracing::warn!(
                    "outbox: the damaged bytes ({damage}) were a write torn by a crash or power \
                     loss, never acknowledged: every event state.json records as raised \
                     (through seq {raised_through}) is held"
                );
            } else {
                tracing::warn!(
                    "outbox: {damage}; the journal holds no event to compare with state.json \
                     (through seq {raised_through}), so whether events were lost cannot be told"
                );
            }
        }
        self.lost = lost.clone();
        lost
    }

    /// The `seq` ranges [`Outbox::assess`] found lost.
    pub fn lost(&self) -> &[(u64, u64)] {
        &self.lost
    }
}

/// The `seq` ranges missing from `held` (event seqs in journal order): holes between held
/// events, and the tail after the newest held one up to `raised_through`. Nothing when no
/// event is held (the journal may have aged out entirely: nothing to compare with).
fn missing(held: impl Iterator<Item = u64>, raised_through: u64) -> Vec<(u64, u64)> {
    let mut lost = Vec::new();
    let mut last: Option<u64> = None;
    for seq in held {
        if let Some(prev) = last {
            if seq > prev + 1 {
                lost.push((prev + 1, seq - 1));
            }
        }
        last = Some(last.map_or(seq, |p| p.max(seq)));
    }
    if let Some(newest) = last {
        if newest < raised_through {
            lost.push((newest + 1, raised_through));
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::missing;

    /// Event seqs held, `state.json`'s `last_seq`, the ranges lost.
    type Case = (&'static [u64], u64, &'static [(u64, u64)]);

    #[test]
    fn holes_and_a_short_tail_are_losses_and_nothing_else_is() {
        let cases: &[Case] = &[
            // Everything held: a torn tail after it costs nothing.
            (&[1, 2, 3], 3, &[]),
            // Events past state.json (its save failed): rolled forward, not lost.
            (&[1, 2, 3, 4], 3, &[]),
            // The journal aged out the oldest: not a loss.
            (&[7, 8, 9], 9, &[]),
            // A hole in the middle: zero-filled or cut out.
            (&[1, 2, 5, 6], 6, &[(3, 4)]),
            // A truncated segment: the newest raised events are gone.
            (&[1, 2], 6, &[(3, 6)]),
            (&[1, 3], 6, &[(2, 2), (4, 6)]),
            // Nothing held: nothing to compare with.
            (&[], 6, &[]),
        ];
        for (held, through, want) in cases {
            assert_eq!(
                missing(held.iter().copied(), *through),
                want.to_vec(),
                "{held:?} through {through}"
            );
        }
    }
}
