//! The stop protocol of one broker loop, as one state.
//!
//! On cancellation a loop must not just drop the socket: what the pipeline already handed
//! over is still delivered, then the retained offline status goes last, and only once the
//! broker has confirmed all of it does the loop send DISCONNECT (so the broker discards the
//! last will, the retained status already saying offline). If [`STOP_GRACE`] runs out first,
//! the loop closes the socket without DISCONNECT and the last will says offline instead.
//!
//! These steps were once five fields whose valid combinations four functions had to agree on;
//! here each step is a variant, the transitions are methods, and no I/O happens, so the table
//! below tests every transition.
//!
//! [`STOP_GRACE`]: super::STOP_GRACE

use tokio::time::Instant;

use super::STOP_GRACE;

/// Where a broker loop is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Not cancelled. `pipeline_closed`: every publisher is gone and the channel is empty.
    Running { pipeline_closed: bool },
    /// Cancelled: nothing new gets into the pipeline channel, and what is in it or in the
    /// outbox is still being handed over.
    Draining {
        deadline: Instant,
        pipeline_closed: bool,
    },
    /// The offline status is queued behind everything else; nothing more is taken. Waiting
    /// for the broker to confirm it all.
    OfflineQueued { deadline: Instant },
    /// DISCONNECT is handed to rumqttc; the loop ends once it is written.
    Disconnecting { deadline: Instant },
}

impl Default for Stop {
    fn default() -> Stop {
        Stop::Running {
            pipeline_closed: false,
        }
    }
}

impl Stop {
    /// Cancellation has begun (the grace is running).
    pub fn is_stopping(&self) -> bool {
        !matches!(self, Stop::Running { .. })
    }

    /// When the stop grace runs out; `None` until cancelled.
    pub fn deadline(&self) -> Option<Instant> {
        match *self {
            Stop::Running { .. } => None,
            Stop::Draining { deadline, .. }
            | Stop::OfflineQueued { deadline }
            | Stop::Disconnecting { deadline } => Some(deadline),
        }
    }

    /// Whether the pipeline channel may still have messages to take.
    pub fn takes_pipeline(&self) -> bool {
        matches!(
            self,
            Stop::Running {
                pipeline_closed: false
            } | Stop::Draining {
                pipeline_closed: false,
                ..
            }
        )
    }

    /// Whether outbox records are still taken: until the offline status is queued.
    pub fn takes_outbox(&self) -> bool {
        matches!(self, Stop::Running { .. } | Stop::Draining { .. })
    }

    /// Cancelled at `now`: the grace starts. Only from [`Stop::Running`].
    pub fn begin(&mut self, now: Instant) {
        if let Stop::Running { pipeline_closed } = *self {
            *self = Stop::Draining {
                deadline: now + STOP_GRACE,
                pipeline_closed,
            };
        }
    }

    /// The pipeline channel turned out closed and empty.
    pub fn pipeline_closed(&mut self) {
        match self {
            Stop::Running { pipeline_closed }
            | Stop::Draining {
                pipeline_closed, ..
            } => *pipeline_closed = true,
            Stop::OfflineQueued { .. } | Stop::Disconnecting { .. } => {}
        }
    }

    /// True, once, when the offline status is to be queued: draining, the pipeline channel
    /// closed and empty, and (`outbox_drained`) every outbox record handed over.
    pub fn offline_due(&mut self, outbox_drained: bool) -> bool {
        match *self {
            Stop::Draining {
                deadline,
                pipeline_closed: true,
            } if outbox_drained => {
                *self = Stop::OfflineQueued { deadline };
                true
            }
            _ => false,
        }
    }

    /// Whether to send DISCONNECT once everything is confirmed: the offline status is
    /// queued and DISCONNECT is not already on its way.
    pub fn awaits_disconnect(&self) -> bool {
        matches!(self, Stop::OfflineQueued { .. })
    }

    /// DISCONNECT was handed to rumqttc.
    pub fn disconnect_sent(&mut self) {
        if let Stop::OfflineQueued { deadline } = *self {
            *self = Stop::Disconnecting { deadline };
        }
    }

    /// A new CONNACK: a DISCONNECT handed to the previous connection is gone with it.
    pub fn reconnected(&mut self) {
        if let Stop::Disconnecting { deadline } = *self {
            *self = Stop::OfflineQueued { deadline };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// One step of the protocol, as the loop drives it.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Begin,
        PipelineClosed,
        OfflineDue { outbox_drained: bool },
        DisconnectSent,
        Reconnected,
    }

    fn apply(s: &mut Stop, step: Step, now: Instant) -> Option<bool> {
        match step {
            Step::Begin => s.begin(now),
            Step::PipelineClosed => s.pipeline_closed(),
            Step::OfflineDue { outbox_drained } => return Some(s.offline_due(outbox_drained)),
            Step::DisconnectSent => s.disconnect_sent(),
            Step::Reconnected => s.reconnected(),
        }
        None
    }

    #[test]
    fn every_transition() {
        let t = Instant::now();
        let d = t + STOP_GRACE;
        let running = |closed| Stop::Running {
            pipeline_closed: closed,
        };
        let draining = |closed| Stop::Draining {
            deadline: d,
            pipeline_closed: closed,
        };
        let offline = Stop::OfflineQueued { deadline: d };
        let disconnecting = Stop::Disconnecting { deadline: d };
        use Step::*;
        let drained = OfflineDue {
            outbox_drained: true,
        };
        let undrained = OfflineDue {
            outbox_drained: false,
        };
        // (from, step, to, what offline_due answered)
        let table = [
            (running(false), Begin, draining(false), None),
            (running(true), Begin, draining(true), None),
            (draining(false), Begin, draining(false), None),
            (offline, Begin, offline, None),
            (running(false), PipelineClosed, running(true), None),
            (draining(false), PipelineClosed, draining(true), None),
            (offline, PipelineClosed, offline, None),
            // The offline status waits for the pipeline and the outbox, and for cancellation.
            (running(true), drained, running(true), Some(false)),
            (draining(false), drained, draining(false), Some(false)),
            (draining(true), undrained, draining(true), Some(false)),
            (draining(true), drained, offline, Some(true)),
            // ... and is queued once.
            (offline, drained, offline, Some(false)),
            (disconnecting, drained, disconnecting, Some(false)),
            (draining(true), DisconnectSent, draining(true), None),
            (offline, DisconnectSent, disconnecting, None),
            (disconnecting, Reconnected, offline, None),
            (offline, Reconnected, offline, None),
            (draining(false), Reconnected, draining(false), None),
            (running(false), Reconnected, running(false), None),
        ];
        for (from, step, to, answer) in table {
            let mut s = from;
            let got = apply(&mut s, step, t);
            assert_eq!((s, got), (to, answer), "{from:?} --{step:?}-->");
        }
    }

    #[test]
    fn what_each_state_allows() {
        let d = Instant::now();
        // (state, stopping, takes pipeline, takes outbox, awaits disconnect)
        let table = [
            (Stop::default(), false, true, true, false),
            (
                Stop::Running {
                    pipeline_closed: true,
                },
                false,
                false,
                true,
                false,
            ),
            (
                Stop::Draining {
                    deadline: d,
                    pipeline_closed: false,
                },
                true,
                true,
                true,
                false,
            ),
            (
                Stop::Draining {
                    deadline: d,
                    pipeline_closed: true,
                },
                true,
                false,
                true,
                false,
            ),
            (
                Stop::OfflineQueued { deadline: d },
                true,
                false,
                false,
                true,
            ),
            (
                Stop::Disconnecting { deadline: d },
                true,
                false,
                false,
                false,
            ),
        ];
        for (s, stopping, pipeline, outbox, disconnect) in table {
            assert_eq!(
                (
                    s.is_stopping(),
                    s.takes_pipeline(),
                    s.takes_outbox(),
                    s.awaits_disconnect()
                ),
                (stopping, pipeline, outbox, disconnect),
                "{s:?}"
            );
            assert_eq!(s.deadline(), stopping.then_some(d), "{s:?}");
        }
    }

    #[test]
    fn the_grace_starts_at_cancellation() {
        let t = Instant::now();
        let mut s = Stop::default();
        s.begin(t);
        assert_eq!(s.deadline(), Some(t + STOP_GRACE));
        // A second cancellation does not extend it.
        s.begin(t + Duration::from_secs(1));
        assert_eq!(s.deadline(), Some(t + STOP_GRACE));
    }
}
