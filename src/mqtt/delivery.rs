//! Durable delivery: the outbox between the pipeline and every broker link.
//!
//! Without it, an alarm event waited in memory for the broker, and was gone if the daemon died
//! first. With it:
//!
//! - [`DurableOutbox::append`] puts alarm events, zone statuses and every other durable message into
//!   the [`Outbox`] (written and fsynced: only then has an event been raised). One writer thread
//!   does every append, so messages that arrive together share one fsync (group commit), and the
//!   async pipeline never blocks on the disk.
//! - each broker link (the `mqtt.url`, and each of `mqtt.also`) reads the outbox through its own
//!   [`Feed`], from its own cursor, and reports that broker's PUBACKs to it. A broker that is
//!   away holds up nobody: the others' cursors move on, and its records wait on disk.
//! - the writer thread persists the cursors every [`COMMIT_EVERY`]; a crash in between only
//!   means those messages are sent again (at least once; subscribers drop copies by `event_id`).
//! - `cmd/replay` is answered by the link that received it, from the outbox's event journal, a
//!   batch at a time ([`Feed::replay_batch`], paced by `replays.rs`); the retained status is republished every `mqtt.heartbeat` with the
//!   latest `seq` ([`Feed::heartbeat`]).
//! - a gateway of a redundant pair holds back what it had not seen confirmed before it
//!   stopped ([`DurableOutbox::backlog`]) until it knows whether its peer took over and
//!   published the same changes meanwhile; then [`DurableOutbox::release`] lets it go, less
//!   what the peer had already published (`pair::backlog`), acknowledged locally instead.
//! - a failed write or fsync is not retried (a retried fsync can report success for lost data):
//!   every later append fails, and [`DurableOutbox::failed`] tells the daemon, which publishes a
//!   fault status and exits so that its supervisor restarts it on a clean file.

use std::collections::{BTreeSet, HashMap};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rumqttc::QoS;
use tokio::sync::{oneshot, watch};

use super::payload::{Class, GatewayStatus, OutboxHealth, Publication};
use super::replays::Want;
use crate::alarms::{AlarmEvent, Snapshot};
use crate::config::Config;
use crate::message::Outgoing;
use crate::outbox::{Entry, Kind, Options, Outbox, OutboxError, Pressure, Record};
use crate::pair::RoleStatus;

/// How often acknowledged positions are written to the cursor files.
pub const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// Events read back at a time when rolling `state.json` forward at start.
const ROLL_BATCH: usize = 256;

/// How often the journal is checked for records past `storage.journal_max_age`.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// The backlog from before this start, as the links see it.
#[derive(Debug, Clone)]
enum Held {
    /// Nothing at or after the broker's cursor goes out while it is below this position (the
    /// outbox's end at start; what follows waits too, so order is kept).
    Until(u64),
    /// Released: these positions are not sent, but acknowledged locally.
    Skip(Arc<BTreeSet<u64>>),
}

/// One batch waiting for the writer thread, and who to tell when it is durable.
struct Request {
    entries: Vec<Entry>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The durable outbox: the on-disk [`Outbox`] with its writer thread, as shared by the
/// pipeline's handles (which append) and the broker loops (which read through a [`Feed`]).
pub struct DurableOutbox {
    outbox: Arc<Mutex<Outbox>>,
    /// To the writer thread; `None` once closed.
    requests: Mutex<Option<std_mpsc::Sender<Request>>>,
    /// The outbox's next position after each append: wakes the links.
    appended: watch::Receiver<u64>,
    /// Set once, to the first write or fsync failure.
    failure: watch::Receiver<Option<String>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// This gateway's role in its pair, for the status; a change makes every link republish
    /// the status at once.
    role: watch::Sender<RoleStatus>,
    /// The backlog from before this start: held (a gateway of a pair with alarm events or
    /// zone statuses unconfirmed), then released.
    held: watch::Sender<Held>,
    /// The newest alarm event or zone status of a held backlog, when appended.
    held_newest: Option<SystemTime>,
}

impl std::fmt::Debug for DurableOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableOutbox")
            .field("pressure", &self.pressure())
            .finish()
    }
}

fn lock(outbox: &Mutex<Outbox>) -> MutexGuard<'_, Outbox> {
    // A panic while holding the lock leaves the outbox as consistent as its files: go on.
    outbox.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The broker names cursors are kept under: the URLs as configured.
pub fn brokers(cfg: &Config) -> Vec<String> {
    std::iter::once(&cfg.mqtt.url)
        .chain(&cfg.mqtt.also)
        .map(ToString::to_string)
        .collect()
}

impl DurableOutbox {
    /// Opens the outbox under `storage.dir` with a cursor for `mqtt.url` and each `mqtt.also`,
    /// and starts the writer thread.
    pub fn open(cfg: &Config) -> Result<Arc<DurableOutbox>, OutboxError> {
        let outbox = Outbox::open(
            &cfg.storage.dir,
            Options::from_config(&cfg.storage),
            &brokers(cfg),
        )?;
        let pressure = outbox.pressure();
        if pressure.undelivered > 0 {
            tracing::info!(
                "outbox: {} message(s) from before the restart not yet confirmed by every broker; delivering them first",
                pressure.undelivered
            );
        }
        // A gateway of a pair holds its backlog until it knows what its peer published.
        let held_newest = outbox
            .newest_unconfirmed_ms()
            .filter(|_| cfg.redundancy.is_some())
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        let held = match held_newest {
            Some(_) => Held::Until(outbox.next_pos()),
            None => Held::Skip(Arc::default()),
        };
        let (appended_tx, appended) = watch::channel(outbox.next_pos());
        let (failure_tx, failure) = watch::channel(None);
        let outbox = Arc::new(Mutex::new(outbox));
        let (tx, rx) = std_mpsc::channel();
        let shared = outbox.clone();
        let writer = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || write_loop(&shared, &rx, &appended_tx, &failure_tx))
            .map_err(|source| OutboxError::Io {
                path: cfg.storage.dir.clone(),
                op: "start the outbox writer thread",
                source,
            })?;
        Ok(Arc::new(DurableOutbox {
            outbox,
            requests: Mutex::new(Some(tx)),
            appended,
            failure,
            writer: Mutex::new(Some(writer)),
            role: watch::Sender::new(RoleStatus::alone()),
            held: watch::Sender::new(held),
            held_newest,
        }))
    }

    /// When the newest alarm event or zone status of the held backlog was appended; `None`
    /// when nothing is held (then nothing waits for [`DurableOutbox::release`]).
    pub fn held_newest(&self) -> Option<SystemTime> {
        self.held_newest
    }

    /// The held backlog: every record from the slowest broker's cursor to the outbox's end at
    /// start, for the pair to judge. Empty once released.
    pub fn backlog(&self) -> Vec<Arc<Record>> {
        let Held::Until(until) = *self.held.borrow() else {
            return Vec::new();
        };
        let o = lock(&self.outbox);
        let mut pos = o
            .brokers()
            .filter_map(|b| o.cursor(b).ok())
            .min()
            .unwrap_or(until);
        let mut out = Vec::new();
        while pos < until {
            let batch = o.read_from(pos, ROLL_BATCH);
            let Some(last) = batch.last() else {
                break;
            };
            pos = last.pos + 1;
            out.extend(batch.into_iter().filter(|r| r.pos < until));
        }
        out
    }

    /// Lets the held backlog go to every broker, less `skip` (positions acknowledged locally
    /// instead of sent).
    pub fn release(&self, skip: BTreeSet<u64>) {
        self.held.send_replace(Held::Skip(Arc::new(skip)));
    }

    /// Makes `entries` durable; returns once they are fsynced, or with the reason they could
    /// not be (then the outbox is dead: see [`DurableOutbox::failed`]).
    pub async fn append(&self, entries: Vec<Entry>) -> Result<(), String> {
        if let Some(reason) = self.failure.borrow().clone() {
            return Err(reason);
        }
        let (done, wait) = oneshot::channel();
        let sent = self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|tx| tx.send(Request { entries, done }).is_ok());
        if sent != Some(true) {
            return Err("outbox: closed".into());
        }
        wait.await
            .unwrap_or_else(|_| Err("outbox: the writer thread stopped".into()))
    }

    /// Resolves with the reason once an outbox write or fsync has failed.
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.clone();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        match reason {
            Some(r) => r,
            // The writer thread is gone without a failure: nothing will fail any more.
            None => std::future::pending().await,
        }
    }

    /// How full the outbox is.
    pub fn pressure(&self) -> Pressure {
        lock(&self.outbox).pressure()
    }

    /// The latest alarm event `seq` the outbox has held.
    pub fn latest_seq(&self) -> Option<u64> {
        lock(&self.outbox).latest_seq()
    }

    /// Rolls `snapshot` (the alarm table from `state.json`) forward over the alarm events
    /// the outbox holds past its `last_seq`, a batch at a time: the outbox is the truth (see
    /// [`Snapshot::roll_forward`]). Returns the `seq` range applied, if any. An event whose
    /// payload does not parse (cannot happen for our own records) is logged and skipped.
    pub fn roll_forward(
        &self,
        snapshot: &mut Snapshot,
        latching: impl Fn(&str) -> bool,
    ) -> Result<Option<(u64, u64)>, OutboxError> {
        let from = snapshot.last_seq.saturating_add(1);
        let mut applied = None;
        let mut pos = 0;
        loop {
            let batch = lock(&self.outbox).replay_batch(pos, from, u64::MAX, ROLL_BATCH)?;
            if batch.events.is_empty() {
                return Ok(applied);
            }
            pos = batch.next_pos;
            let mut events = Vec::with_capacity(batch.events.len());
            for r in &batch.events {
                match serde_json::from_slice::<AlarmEvent>(&r.payload) {
                    Ok(ev) => events.push(ev),
                    Err(e) => tracing::error!(
                        "outbox: journaled event seq {} does not parse ({e}); not rolled forward",
                        r.seq
                    ),
                }
            }
            if snapshot.roll_forward(&events, &latching) > 0 {
                let first = applied.map_or(events[0].seq, |(f, _)| f);
                applied = Some((first, snapshot.last_seq));
            }
        }
    }

    /// See [`Outbox::assess`]: events `state.json` says were raised (through
    /// `raised_through`) that the outbox lost, as `seq` ranges; logged, and reported in the
    /// status and the metrics from then on.
    pub fn assess(&self, raised_through: u64) -> Vec<(u64, u64)> {
        lock(&self.outbox).assess(raised_through)
    }

    /// The number of events [`DurableOutbox::assess`] found lost.
    pub fn lost_events(&self) -> u64 {
        lock(&self.outbox)
            .lost()
            .iter()
            .map(|&(from, to)| to - from + 1)
            .sum()
    }

    /// See [`Outbox::note_seq`].
    pub fn note_seq(&self, seq: u64) {
        lock(&self.outbox).note_seq(seq);
    }

    /// The role fields of the status from now on; every link republishes it at once.
    pub fn set_role(&self, role: RoleStatus) {
        self.role.send_replace(role);
    }

    /// A link's view of the outbox, from `broker`'s cursor.
    pub(crate) fn feed(self: &Arc<Self>, broker: &str) -> Feed {
        let next = lock(&self.outbox).cursor(broker).unwrap_or_else(|e| {
            tracing::error!("{e}; delivering everything held");
            0
        });
        Feed {
            durable: self.clone(),
            broker: broker.to_string(),
            next,
            appended: self.appended.clone(),
            role: self.role.subscribe(),
            held: self.held.subscribe(),
            positions: HashMap::new(),
        }
    }

    /// Stops the writer thread after a last cursor commit, so a clean stop resends nothing.
    /// Called once every link has finished.
    pub async fn close(&self) {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = writer {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }
}

/// One durable append. The outbox is locked to stage the records and again to publish
/// them, but not while they are written and fsynced: broker links keep reading and acking
/// meanwhile, so an alarm already on disk is not held up by the next one's fsync (on an SD
/// card, hundreds of milliseconds). Returns the outbox's next position.
fn append(outbox: &Mutex<Outbox>, entries: Vec<Entry>) -> Result<u64, OutboxError> {
    let staged = lock(outbox).stage(entries, SystemTime::now())?;
    let Some(mut staged) = staged else {
        return Ok(lock(outbox).next_pos());
    };
    let written = staged.write();
    let mut o = lock(outbox);
    o.finish(staged, written)?;
    Ok(o.next_pos())
}

/// Persists the cursors that moved, with their fsyncs outside the lock, as [`append`].
fn commit(outbox: &Mutex<Outbox>) -> Result<(), OutboxError> {
    let writes = lock(outbox).take_cursor_writes()?;
    let written = writes.write();
    lock(outbox).cursors_written(&writes, written)
}

/// The writer thread: appends batches (everything queued when it wakes is one fsync), commits
/// cursors every [`COMMIT_EVERY`], ages the journal every [`TRIM_EVERY`].
fn write_loop(
    outbox: &Mutex<Outbox>,
    rx: &std_mpsc::Receiver<Request>,
    appended: &watch::Sender<u64>,
    failure: &watch::Sender<Option<String>>,
) {
    let mut dead: Option<String> = None;
    let fail = |e: OutboxError, dead: &mut Option<String>| {
        let reason = e.to_string();
        if dead.is_none() {
            tracing::error!("outbox: {reason}");
            *dead = Some(reason.clone());
            failure.send_replace(Some(reason));
        }
    };
    let mut last_commit = Instant::now();
    let mut last_trim = Instant::now();
    loop {
        match rx.recv_timeout(COMMIT_EVERY) {
            Ok(first) => {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let entries: Vec<Entry> = batch
                    .iter_mut()
                    .flat_map(|r| std::mem::take(&mut r.entries))
                    .collect();
                let result = match &dead {
                    Some(reason) => Err(reason.clone()),
                    None => match append(outbox, entries) {
                        Ok(next) => {
                            appended.send_replace(next);
                            Ok(())
                        }
                        Err(e) => {
                            fail(e, &mut dead);
                            Err(dead.clone().unwrap_or_default())
                        }
                    },
                };
                for r in batch {
                    let _ = r.done.send(result.clone());
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if dead.is_none() && last_commit.elapsed() >= COMMIT_EVERY {
            last_commit = Instant::now();
            if let Err(e) = commit(outbox) {
                fail(e, &mut dead);
            }
        }
        if dead.is_none() && last_trim.elapsed() >= TRIM_EVERY {
            last_trim = Instant::now();
            let r = lock(outbox).trim(SystemTime::now());
            if let Err(e) = r {
                tracing::warn!("outbox: {e}");
            }
        }
    }
    if dead.is_none() {
        if let Err(e) = commit(outbox) {
            tracing::error!("outbox: final cursor commit: {e}");
        }
    }
}

/// What an outgoing pipeline message becomes in the outbox.
pub(crate) fn entry(msg: &Outgoing, p: Publication) -> Entry {
    let (kind, seq) = match msg {
        Outgoing::Event(e) => (Kind::Event, e.seq),
        Outgoing::Zone(_) => (Kind::Zone, 0),
        _ => (Kind::Message, 0),
    };
    Entry {
        kind,
        seq,
        topic: p.topic,
        retain: p.retain,
        payload: p.payload,
    }
}

/// One broker link's view of the outbox: where it is, and which of its in-flight
/// publications are outbox records (so their PUBACKs move the cursor).
#[derive(Debug)]
pub(crate) struct Feed {
    durable: Arc<DurableOutbox>,
    broker: String,
    /// The next position to hand to the broker.
    next: u64,
    appended: watch::Receiver<u64>,
    role: watch::Receiver<RoleStatus>,
    /// The backlog from before this start: held, or released less what is skipped.
    held: watch::Receiver<Held>,
    /// The link's ledger number of each handed record → its outbox position.
    positions: HashMap<u64, u64>,
}

impl Feed {
    /// The gateway's role, as the status says it: the link republishes the status when it
    /// changes.
    pub fn role_watch(&self) -> watch::Receiver<RoleStatus> {
        self.role.clone()
    }

    /// Resolves when something new was appended, or the backlog was released.
    pub async fn appended(feed: &mut Option<Feed>) {
        let alive = match feed {
            Some(f) => tokio::select! {
                r = f.appended.changed() => r.is_ok(),
                r = f.held.changed() => r.is_ok(),
            },
            None => false,
        };
        if !alive {
            std::future::pending::<()>().await;
        }
    }

    /// True if records wait at or after `next` and may go (not held back).
    pub fn has_more(&self) -> bool {
        *self.appended.borrow() > self.next && !self.is_held()
    }

    fn is_held(&self) -> bool {
        matches!(*self.held.borrow(), Held::Until(until) if self.next < until)
    }

    /// Up to `max` records to hand to the broker next, as publications with their positions.
    /// Records of a released backlog that are not to be sent are acknowledged here instead.
    pub fn take(&mut self, max: usize) -> Vec<(u64, Publication)> {
        if self.is_held() {
            return Vec::new();
        }
        let skip = match &*self.held.borrow() {
            Held::Skip(skip) => skip.clone(),
            Held::Until(_) => Arc::default(),
        };
        let mut records = Vec::new();
        {
            let mut o = lock(&self.durable.outbox);
            // Skipped records do not count against `max`: read on until there is something
            // to send or nothing more.
            while records.is_empty() && self.next < o.next_pos() {
                let read = o.read_from(self.next, max);
                self.next = match read.last() {
                    // Fewer than asked for: everything appended so far has been taken
                    // (records dropped over the bound leave holes that must not look like
                    // more to come).
                    _ if read.len() < max => o.next_pos(),
                    Some(last) => last.pos + 1,
                    None => self.next,
                };
                for r in read {
                    if !skip.contains(&r.pos) {
                        records.push(r);
                    } else if let Err(e) = o.ack(&self.broker, r.pos) {
                        tracing::error!("{e}");
                    }
                }
            }
        }
        records
            .into_iter()
            .map(|r| {
                (
                    r.pos,
                    Publication {
                        topic: r.topic.clone(),
                        payload: r.payload.clone(),
                        qos: QoS::AtLeastOnce,
                        retain: r.retain,
                        class: Class::Durable,
                    },
                )
            })
            .collect()
    }

    /// The ledger gave the record at `pos` the number `ledger_seq`.
    pub fn track(&mut self, ledger_seq: u64, pos: u64) {
        self.positions.insert(ledger_seq, pos);
    }

    /// The broker acknowledged the ledger's entry `ledger_seq`; if it is an outbox record, the
    /// broker's cursor may move.
    pub fn acked(&mut self, ledger_seq: u64) {
        if let Some(pos) = self.positions.remove(&ledger_seq) {
            if let Err(e) = lock(&self.durable.outbox).ack(&self.broker, pos) {
                tracing::error!("{e}");
            }
        }
    }

    /// The retained status with the latest `seq` and the outbox's state.
    pub fn status(&self, version: &str, started_at: &str) -> GatewayStatus {
        let (seq, p, lost) = {
            let o = lock(&self.durable.outbox);
            (o.latest_seq(), o.pressure(), o.lost().to_vec())
        };
        GatewayStatus::Online {
            version: version.to_string(),
            started_at: started_at.to_string(),
            // 0 until this gateway's first event ever: always present, so a subscriber can
            // compare it with the last event it has.
            seq: Some(seq.unwrap_or(0)),
            outbox: Some(OutboxHealth {
                bytes: p.bytes,
                max: p.max,
                over_bound: p.over_bound,
                dropped: p.dropped,
                undelivered: p.undelivered as u64,
            }),
            lost: lost.iter().map(|&(from, to)| [from, to]).collect(),
            role: Some(Box::new(self.role.borrow().clone())),
        }
    }

    /// The latest alarm event `seq` held: where a `cmd/replay` arriving now ends.
    pub fn latest_seq(&self) -> Option<u64> {
        self.durable.latest_seq()
    }

    /// One turn of a `cmd/replay` ([`Replays`](super::replays::Replays) says what to read).
    pub fn replay_batch(&self, want: Want) -> Result<crate::outbox::Replay, String> {
        lock(&self.durable.outbox)
            .replay_batch(want.from_pos, want.from_seq, want.until_seq, want.max)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::config;
    use super::super::payload::tests::spec_event;
    use super::super::replays::Replays;
    use super::super::Topics;
    use super::*;
    use crate::alarms::AlarmEvent;
    use crate::command::{Refused, Replay};
    use crate::message::CommandResult;

    /// A `cmd/replay` body as the link hands it over: parsed, or refused.
    fn request(body: &[u8]) -> Result<Replay, Refused> {
        Replay::parse(body)
    }

    /// Answers one request as a broker loop with an empty window and a prompt broker does:
    /// every publication it hands over, in order.
    fn replay(feed: &Feed, request: Result<Replay, Refused>, topics: &Topics) -> Vec<Publication> {
        let mut replays = Replays::default();
        replays.request(request, feed.latest_seq());
        let mut out = Vec::new();
        loop {
            if let Some(result) = replays.next_answer() {
                out.push(
                    Publication::encode(topics, &Outgoing::CommandResult(result)).expect("encode"),
                );
            } else if let Some(want) = replays.want(64) {
                out.extend(replays.batch(want, feed.replay_batch(want)));
            } else {
                return out;
            }
        }
    }

    const A: &str = "mqtt://127.0.0.1:1";
    const B: &str = "mqtt://127.0.0.1:2";

    fn event(seq: u64) -> Outgoing {
        Outgoing::Event(AlarmEvent {
            seq,
            event_id: format!("gw-b1-{seq}"),
            ..spec_event()
        })
    }

    async fn raise(d: &DurableOutbox, topics: &Topics, seqs: std::ops::RangeInclusive<u64>) {
        let entries = seqs
            .map(|s| {
                let msg = event(s);
                let p = Publication::encode(topics, &msg).expect("encode");
                entry(&msg, p)
            })
            .collect();
        d.append(entries).await.expect("durable");
    }

    fn two_brokers(dir: &std::path::Path) -> Config {
        let mut cfg = config(A);
        cfg.storage.dir = dir.to_path_buf();
        cfg.mqtt.also = vec![crate::config::BrokerUrl::parse(B).expect("url")];
        cfg
    }

    /// Each broker's feed starts at its own cursor; acks of one do not move the other; both
    /// survive a close and reopen.
    #[tokio::test]
    async fn each_broker_feeds_from_its_own_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = two_brokers(dir.path());
        let topics = Topics::new(&cfg);
        let d = DurableOutbox::open(&cfg).expect("open");
        let (mut a, mut b) = (d.feed(A), d.feed(B));
        raise(&d, &topics, 1..=4).await;
        assert!(a.has_more() && b.has_more());
        let sent = a.take(10);
        assert_eq!(sent.len(), 4);
        for (i, (pos, _)) in sent.iter().enumerate() {
            a.track(100 + i as u64, *pos);
            a.acked(100 + i as u64);
        }
        assert!(!a.has_more());
        let first = b.take(1);
        b.track(7, first[0].0);
        b.acked(7);
        d.close().await;
        drop((a, b, d));

        let d = DurableOutbox::open(&cfg).expect("reopen");
        let (mut a, mut b) = (d.feed(A), d.feed(B));
        assert!(a.take(10).is_empty(), "A confirmed everything");
        let rest: Vec<u64> = b
            .take(10)
            .iter()
            .map(|(_, p)| {
                serde_json::from_slice::<AlarmEvent>(&p.payload)
                    .expect("json")
                    .seq
            })
            .collect();
        assert_eq!(rest, [2, 3, 4], "B goes on where it was, in order");
        assert_eq!(d.latest_seq(), Some(4));
        d.close().await;
    }

    /// A gateway of a pair restarts with records no broker confirmed: they are held (and
    /// whatever is appended after them waits too, to keep the order) until released; then
    /// the skipped ones are acknowledged instead of sent, and the rest go in order.
    #[tokio::test]
    async fn a_pairs_backlog_waits_for_release_and_skipped_records_are_not_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = two_brokers(dir.path());
        cfg.redundancy = Some(crate::config::Redundancy {
            peer: "gw-b2".into(),
            priority: 1,
        });
        let topics = Topics::new(&cfg);
        let d = DurableOutbox::open(&cfg).expect("open");
        assert_eq!(d.held_newest(), None, "nothing from before: nothing held");
        raise(&d, &topics, 1..=3).await;
        d.close().await;
        drop(d);

        let d = DurableOutbox::open(&cfg).expect("reopen");
        assert!(d.held_newest().is_some());
        let (mut a, mut b) = (d.feed(A), d.feed(B));
        raise(&d, &topics, 4..=4).await;
        assert!(!a.has_more() && a.take(10).is_empty(), "held");
        let backlog: Vec<u64> = d.backlog().iter().map(|r| r.seq).collect();
        assert_eq!(backlog, [1, 2, 3], "the backlog is what was there at start");
        let second = d.backlog()[1].pos;
        d.release(BTreeSet::from([second]));
        let sent_a = a.take(10);
        let seqs = |sent: &[(u64, Publication)]| -> Vec<u64> {
            sent.iter()
                .map(|(_, p)| {
                    serde_json::from_slice::<AlarmEvent>(&p.payload)
                        .expect("json")
                        .seq
                })
                .collect()
        };
        assert_eq!(seqs(&sent_a), [1, 3, 4]);
        assert_eq!(seqs(&b.take(10)), [1, 3, 4]);
        assert!(d.backlog().is_empty(), "released");
        // Broker A confirms what it was sent: with the skipped record acknowledged locally,
        // its cursor passes all four. Broker B confirmed nothing.
        for (i, (pos, _)) in sent_a.iter().enumerate() {
            a.track(i as u64, *pos);
            a.acked(i as u64);
        }
        d.close().await;
        drop((a, b, d));
        let d = DurableOutbox::open(&cfg).expect("reopen");
        d.release(BTreeSet::new());
        let (mut a, mut b) = (d.feed(A), d.feed(B));
        assert!(a.take(10).is_empty(), "A has everything");
        assert_eq!(seqs(&b.take(10)), [1, 2, 3, 4], "B is judged anew");
        d.close().await;
    }

    #[tokio::test]
    async fn replay_republishes_held_events_and_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = two_brokers(dir.path());
        let topics = Topics::new(&cfg);
        let d = DurableOutbox::open(&cfg).expect("open");
        raise(&d, &topics, 1..=5).await;
        let feed = d.feed(A);
        let out = replay(
            &feed,
            request(br#"{"from_seq": 3, "reply_to": "ops/replay"}"#),
            &topics,
        );
        assert_eq!(out.len(), 4, "three events and the result");
        assert!(out[..3]
            .iter()
            .all(|p| p.topic == "ops/replay" && !p.retain));
        let result: CommandResult = serde_json::from_slice(&out[3].payload).expect("result");
        assert!(result.ok, "{result:?}");
        assert_eq!(out[3].topic, topics.cmd_result());
        // Numbering starts at 1: from 0 with seq 1 still held, nothing is lost.
        let out = replay(
            &feed,
            request(br#"{"from_seq": 0, "reply_to": "ops/replay"}"#),
            &topics,
        );
        let result: CommandResult = serde_json::from_slice(&out[5].payload).expect("result");
        assert_eq!(
            result.reason.as_deref(),
            Some("republished 5 event(s), seq 1..=5, on ops/replay")
        );
        for bad in [
            &br#"{"from_seq": 1}"#[..],
            br#"{"from_seq": 1, "reply_to": "a/#"}"#,
        ] {
            let out = replay(&feed, request(bad), &topics);
            let result: CommandResult = serde_json::from_slice(&out[0].payload).expect("result");
            assert_eq!((out.len(), result.ok), (1, false), "{result:?}");
        }
        let GatewayStatus::Online { seq, outbox, .. } = feed.status("1", "t") else {
            panic!("online")
        };
        assert_eq!(seq, Some(5));
        assert_eq!(outbox.map(|o| o.undelivered), Some(5));
        d.close().await;
    }
}
