//! Which QoS 1 publications the broker has not yet confirmed, so none is lost across a
//! reconnect.
//!
//! rumqttc alone does not guarantee that. After a connection error its event loop moves
//! unacknowledged publishes (and requests still in its channel) to `EventLoop::pending`, but on
//! the next CONNACK with `session_present = false` (always, for a clean session; also whenever
//! the broker restarted without persistence) it clears `pending`: those messages are silently
//! gone. Requests replayed from `pending` also bypass its in-flight limit, so a long replay can
//! collide on packet ids and overwrite one another.
//!
//! So the link keeps its own ledger and treats rumqttc as a window onto the socket: at most
//! `window` publications are handed over at a time; each is tracked from hand-over, through
//! "written with packet id N" (rumqttc's `Outgoing::Publish(N)`, in hand-over order), to the
//! broker's PUBACK N. When the connection drops, everything not acked goes back, in original
//! order, to the front of the backlog and is sent again after the next CONNACK. Delivery is at
//! least once: a message whose PUBACK was lost is sent twice, and `event_id` lets subscribers
//! drop the copy.
//!
//! Pure bookkeeping, no I/O, so the edge cases are unit-tested below.

use std::collections::{HashMap, VecDeque};

use super::payload::{Class, Publication};

/// One tracked publication; `seq` is its place in the order the pipeline sent it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub seq: u64,
    pub publication: Publication,
}

#[derive(Debug)]
pub(crate) struct Ledger {
    window: usize,
    next_seq: u64,
    /// Waiting to be handed to rumqttc; sent before anything new from the pipeline.
    backlog: VecDeque<Entry>,
    /// Handed to rumqttc's request channel, not yet written (no packet id yet).
    handed: VecDeque<Entry>,
    /// Written with a packet id, waiting for the broker's PUBACK.
    inflight: HashMap<u16, Entry>,
    /// Parked by rumqttc because its packet id was still in use (an out-of-order ack); it is
    /// written as soon as that id's PUBACK arrives.
    collided: Option<(u16, Entry)>,
    /// rumqttc reports the write of a `collided` publish as a second `Outgoing::Publish(id)`;
    /// that one must not consume a `handed` entry.
    skip_written: Option<u16>,
}

impl Ledger {
    pub fn new(window: usize) -> Ledger {
        Ledger {
            window: window.max(1),
            next_seq: 0,
            backlog: VecDeque::new(),
            handed: VecDeque::new(),
            inflight: HashMap::new(),
            collided: None,
            skip_written: None,
        }
    }

    /// Gives a new publication its place in the order.
    pub fn stamp(&mut self, publication: Publication) -> Entry {
        let seq = self.next_seq;
        self.next_seq += 1;
        Entry { seq, publication }
    }

    /// True while fewer than `window` publications are with rumqttc unconfirmed.
    pub fn has_room(&self) -> bool {
        self.outstanding() < self.window
    }

    /// Handed over or written, not yet acked.
    pub fn outstanding(&self) -> usize {
        self.handed.len() + self.inflight.len() + usize::from(self.collided.is_some())
    }

    /// Everything not yet confirmed by the broker, including what waits in the backlog.
    pub fn unconfirmed(&self) -> usize {
        self.backlog.len() + self.outstanding()
    }

    /// Nothing left to send or to confirm.
    pub fn is_idle(&self) -> bool {
        self.unconfirmed() == 0
    }

    pub fn backlog_is_empty(&self) -> bool {
        self.backlog.is_empty()
    }

    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Queues behind everything else (the final offline status).
    pub fn push_backlog(&mut self, entry: Entry) {
        self.backlog.push_back(entry);
    }

    /// The next backlog entry, if there is room to hand it over.
    pub fn next_from_backlog(&mut self) -> Option<Entry> {
        if self.has_room() {
            self.backlog.pop_front()
        } else {
            None
        }
    }

    /// Puts back an entry rumqttc refused, at the front so order is kept.
    pub fn unhand(&mut self, entry: Entry) {
        self.backlog.push_front(entry);
    }

    /// The entry was given to rumqttc's request channel.
    pub fn handed(&mut self, entry: Entry) {
        self.handed.push_back(entry);
    }

    /// rumqttc wrote a QoS 1 publish with this packet id (`Outgoing::Publish(pkid)`, `pkid > 0`).
    /// Returns false if nothing was waiting to be written, which means the ledger and rumqttc
    /// disagree (a bug worth a log line, not a crash).
    pub fn written(&mut self, pkid: u16) -> bool {
        if self.skip_written == Some(pkid) {
            self.skip_written = None;
            return true;
        }
        let Some(entry) = self.handed.pop_front() else {
            return false;
        };
        if let Some(displaced) = self.inflight.insert(pkid, entry) {
            // rumqttc never reuses an id it still tracks; if it did, resend rather than lose.
            self.backlog.push_front(displaced);
            return false;
        }
        true
    }

    /// rumqttc parked the next handed publish behind a packet id still in flight
    /// (`Outgoing::AwaitAck(pkid)`).
    pub fn parked(&mut self, pkid: u16) {
        if let Some(entry) = self.handed.pop_front() {
            if let Some((_, older)) = self.collided.replace((pkid, entry)) {
                self.backlog.push_front(older);
            }
        }
    }

    /// The broker acknowledged packet id `pkid`. Returns the confirmed entry.
    pub fn acked(&mut self, pkid: u16) -> Option<Entry> {
        let done = self.inflight.remove(&pkid);
        if matches!(&self.collided, Some((id, _)) if *id == pkid) {
            if let Some((id, entry)) = self.collided.take() {
                // rumqttc writes the parked publish under the freed id right away.
                self.inflight.insert(id, entry);
                self.skip_written = Some(id);
            }
        }
        done
    }

    /// The connection dropped: everything handed over but unconfirmed goes back to the front
    /// of the backlog, oldest first. The online status is dropped (the next CONNACK sends a
    /// fresh one). Returns how many entries were requeued.
    pub fn connection_lost(&mut self) -> usize {
        let mut back: Vec<Entry> = self.handed.drain(..).collect();
        back.extend(self.inflight.drain().map(|(_, e)| e));
        back.extend(self.collided.take().map(|(_, e)| e));
        self.skip_written = None;
        back.retain(|e| e.publication.class != Class::Presence);
        back.sort_by_key(|e| e.seq);
        let n = back.len();
        for e in back.into_iter().rev() {
            self.backlog.push_front(e);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::QoS;

    use super::*;

    fn publication(n: u32) -> Publication {
        Publication {
            topic: format!("t/{n}"),
            payload: n.to_string().into_bytes(),
            qos: QoS::AtLeastOnce,
            retain: false,
            class: Class::Durable,
        }
    }

    fn topic(e: &Entry) -> &str {
        &e.publication.topic
    }

    /// Hands over as rumqttc's loop would, through the backlog then fresh publications.
    fn hand(l: &mut Ledger, n: u32) {
        let e = l.stamp(publication(n));
        l.handed(e);
    }

    fn drain_backlog(l: &mut Ledger) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = l.next_from_backlog() {
            out.push(topic(&e).to_string());
            l.handed(e);
        }
        out
    }

    #[test]
    fn handed_written_acked_is_confirmed() {
        let mut l = Ledger::new(4);
        hand(&mut l, 1);
        hand(&mut l, 2);
        assert_eq!(l.outstanding(), 2);
        assert!(l.written(7));
        assert!(l.written(8));
        assert_eq!(l.acked(7).map(|e| e.seq), Some(0));
        assert_eq!(l.acked(8).map(|e| e.seq), Some(1));
        assert!(l.is_idle());
        // An ack nobody waits for is ignored.
        assert_eq!(l.acked(9), None);
    }

    #[test]
    fn the_window_limits_what_is_handed_over() {
        let mut l = Ledger::new(2);
        hand(&mut l, 1);
        assert!(l.has_room());
        hand(&mut l, 2);
        assert!(!l.has_room());
        assert!(l.written(1));
        assert!(!l.has_room(), "written but unacked still counts");
        l.acked(1);
        assert!(l.has_room());
    }

    #[test]
    fn a_lost_connection_requeues_everything_unacked_in_order() {
        let mut l = Ledger::new(10);
        for n in 1..=5 {
            hand(&mut l, n);
        }
        // 1..=3 written, 1 acked; 4 and 5 still in rumqttc's channel.
        assert!(l.written(1));
        assert!(l.written(2));
        assert!(l.written(3));
        l.acked(1);
        assert_eq!(l.connection_lost(), 4);
        assert_eq!(l.outstanding(), 0);
        assert_eq!(drain_backlog(&mut l), ["t/2", "t/3", "t/4", "t/5"]);
    }

    #[test]
    fn requeued_entries_go_before_an_older_backlog_remainder() {
        // A reconnect replays 1..=4 with a window of 2, then drops again after 1 and 2 were
        // written: 1, 2 go back before 3, 4 which never left the backlog.
        let mut l = Ledger::new(10);
        for n in 1..=4 {
            hand(&mut l, n);
        }
        l.connection_lost();
        l.window = 2;
        let a = l.next_from_backlog().unwrap();
        l.handed(a);
        let b = l.next_from_backlog().unwrap();
        l.handed(b);
        assert!(l.next_from_backlog().is_none(), "window full");
        assert!(l.written(1));
        l.connection_lost();
        l.window = 10;
        assert_eq!(drain_backlog(&mut l), ["t/1", "t/2", "t/3", "t/4"]);
    }

    #[test]
    fn the_online_status_is_not_replayed() {
        let mut l = Ledger::new(10);
        let mut online = publication(0);
        online.class = Class::Presence;
        let e = l.stamp(online);
        l.handed(e);
        hand(&mut l, 1);
        assert_eq!(l.connection_lost(), 1);
        assert_eq!(drain_backlog(&mut l), ["t/1"]);
    }

    #[test]
    fn a_collision_is_written_after_the_ack_that_frees_its_id() {
        let mut l = Ledger::new(10);
        hand(&mut l, 1); // pkid 1
        hand(&mut l, 2); // pkid 2
        hand(&mut l, 3); // wants pkid 1 again: parked
        assert!(l.written(1));
        assert!(l.written(2));
        l.parked(1);
        assert_eq!(l.outstanding(), 3);
        // PUBACK 1 confirms message 1; rumqttc then writes message 3 under id 1 and reports
        // Outgoing::Publish(1), which must not take a handed entry.
        assert_eq!(
            l.acked(1).map(|e| topic(&e).to_string()),
            Some("t/1".into())
        );
        hand(&mut l, 4);
        assert!(l.written(1));
        assert!(l.written(3));
        assert_eq!(
            l.acked(1).map(|e| topic(&e).to_string()),
            Some("t/3".into())
        );
        assert_eq!(
            l.acked(2).map(|e| topic(&e).to_string()),
            Some("t/2".into())
        );
        assert_eq!(
            l.acked(3).map(|e| topic(&e).to_string()),
            Some("t/4".into())
        );
        assert!(l.is_idle());
    }

    #[test]
    fn a_parked_publish_is_requeued_if_the_connection_drops() {
        let mut l = Ledger::new(10);
        hand(&mut l, 1);
        hand(&mut l, 2);
        assert!(l.written(1));
        l.parked(1);
        l.connection_lost();
        assert_eq!(drain_backlog(&mut l), ["t/1", "t/2"]);
    }

    #[test]
    fn a_write_nobody_handed_is_reported() {
        let mut l = Ledger::new(10);
        assert!(!l.written(5));
    }

    #[test]
    fn the_final_status_queues_behind_the_backlog() {
        let mut l = Ledger::new(10);
        hand(&mut l, 1);
        l.connection_lost();
        let last = l.stamp(publication(99));
        l.push_backlog(last);
        assert_eq!(drain_backlog(&mut l), ["t/1", "t/99"]);
        assert_eq!(l.unconfirmed(), 2);
    }
}
