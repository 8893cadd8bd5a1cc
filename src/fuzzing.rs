//! Entry points for fuzzing every parser that faces the outside, one function per target.
//!
//! Why this is in the library: the parsers are crate-private (`outbox::frame`, `span_points`)
//! and the interesting bugs are downstream of them (a decoded NaN in a rule, a restored alarm
//! the table cannot hold), so each target drives the bytes as far as the gateway would: parse,
//! then hand the result to the engine, the coordinator or the outbox, then encode what comes
//! out. The AFL harnesses in `fuzz/` and the `cargo test` smoke in `tests/fuzz_smoke.rs` call
//! these same functions, so a crash found by a campaign is replayed by the smoke once its input
//! is in `fuzz/corpus/<target>/`.
//!
//! Contract of every target: any input returns (never panics, never hangs) and allocates in
//! proportion to the input, not to a length field inside it. Nothing here is used by the
//! daemon.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::clock::Now;
use crate::command::{Command, Replay};
use crate::config::{Config, Device, Role, Transport};
use crate::decode::{plan_reads, ReadSpan};
use crate::drain::coordinator::Coordinator;
use crate::drain::messages::RequestMessage;
use crate::drain::Persisted;
use crate::engine::Engine;
use crate::fieldbus::frame::{self, Payload, Scan, Seen};
use crate::fieldbus::lines::{self, Format, Splitter};
use crate::fieldbus::mbap;
use crate::fieldbus::{span_points, PointReading, Reading, SpanAnswer};
use crate::message::Outgoing;
use crate::mqtt::payload::Publication;
use crate::mqtt::Topics;
use crate::outbox::{Entry, Kind, Options, Outbox};

/// One fuzz target: any bytes in, nothing out.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus folder and AFL binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("modbus_tcp", modbus_tcp),
    ("rtu_reply", rtu_reply),
    ("serial_lines", serial_lines),
    ("command", command),
    ("drain_inbound", drain_inbound),
    ("config", config),
    ("outbox", outbox),
    ("state_json", state_json),
    ("drain_json", drain_json),
    ("sunspec_chain", sunspec_chain),
];

/// The configuration every target decodes against: one device of each transport, points of
/// every value type, word order and table, the shipped rules and a drain with two agents.
pub const FUZZ_CONFIG: &str = include_str!("fuzzing.toml");

const PREFIX: &str = "emberwatch";
const SITE: &str = "pangyo-a";
const GATEWAY: &str = "gw-b1";

fn cfg() -> &'static Arc<Config> {
    static CFG: OnceLock<Arc<Config>> = OnceLock::new();
    CFG.get_or_init(|| match Config::from_toml(FUZZ_CONFIG, Role::Gateway) {
        Ok(c) => Arc::new(c),
        // The fuzz configuration is ours and fixed: failing here is a bug in this file.
        Err(p) => panic!("src/fuzzing.toml does not validate: {p:?}"),
    })
}

fn topics() -> Topics {
    Topics::from_parts(PREFIX, SITE, GATEWAY)
}

fn device(transport: fn(&Transport) -> bool) -> (usize, &'static Device) {
    cfg()
        .devices
        .iter()
        .enumerate()
        .find(|(_, d)| transport(&d.transport))
        .expect("src/fuzzing.toml has a device of every transport")
}

/// Publishes what the engine produced as the link would, so encoding is fuzzed too.
fn encode_all(msgs: &[Outgoing]) {
    let t = topics();
    for m in msgs {
        // A serialisation error is reported by the link; only a panic matters here.
        let _ = Publication::encode(&t, m);
    }
}

/// Hands one poll's decoded points to a fresh engine, then lets a minute pass.
fn evaluate(device: usize, points: Vec<PointReading>) {
    let mut run = Run::new();
    run.poll(device, points);
    run.finish();
}

/// One engine for one input, fed poll after poll two seconds apart as the gateway's would be,
/// then left a minute for its timers: a stream of many readings (serial lines) costs one
/// engine, not one per reading, so a campaign spends its time on the input, not on set-up.
struct Run {
    engine: Engine,
    now: Now,
}

impl Run {
    fn new() -> Run {
        Run {
            engine: Engine::new(cfg().clone(), 0),
            now: Now::system(),
        }
    }

    /// One reading of `device`, then the same again (a repeat must change nothing new).
    fn poll(&mut self, device: usize, points: Vec<PointReading>) {
        let reading = Reading {
            device,
            at: self.now,
            latency: Duration::from_millis(3),
            outcome: Ok(points),
        };
        encode_all(&self.engine.on_reading(&reading).messages);
        self.now = self.now.after(Duration::from_secs(2));
        let again = Reading {
            at: self.now,
            ..reading
        };
        encode_all(&self.engine.on_reading(&again).messages);
    }

    fn finish(mut self) {
        encode_all(
            &self
                .engine
                .tick(self.now.after(Duration::from_secs(60)))
                .messages,
        );
        encode_all(&self.engine.zone_statuses(self.now));
    }
}

/// A little-endian u16 off the front of `data`, for the harness's own framing.
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, rest) = data.split_at(n);
    *data = rest;
    head
}

/// Modbus TCP replies, checked and decoded by `fieldbus::mbap` exactly as the poll loop's
/// `exchange` does with what it reads from the connection (header, PDU, nothing behind it).
///
/// Input: a sequence of replies, each `[len u8][flags u8][len bytes]`, one whole MBAP frame per
/// request of the fuzz device's read plan (flag bit 0: with the transaction id the request
/// carries patched in, so the fuzzer gets past the id check; bit 1: with the request's unit id
/// too). A missing or malformed reply is a link fault and nothing is decoded; otherwise the
/// points are evaluated.
pub fn modbus_tcp(data: &[u8]) {
    let (index, dev) = device(|t| matches!(t, Transport::ModbusTcp { .. }));
    let plan = plan_reads(&dev.points, dev.max_gap);
    let mut rest = data;
    let mut out = Vec::new();
    for (k, span) in plan.iter().enumerate() {
        if rest.is_empty() {
            return; // the device fell silent: a timeout, nothing decoded
        }
        let len = usize::from(take(&mut rest, 1)[0]);
        let flags = take(&mut rest, 1).first().copied().unwrap_or(0);
        let mut frame = take(&mut rest, len).to_vec();
        let transaction = k as u16;
        if flags & 1 != 0 && frame.len() >= 2 {
            frame[..2].copy_from_slice(&transaction.to_be_bytes());
        }
        if flags & 2 != 0 && frame.len() >= 7 {
            frame[6] = dev.unit;
        }
        let Some(head) = frame.first_chunk::<{ mbap::HEADER }>() else {
            return; // a reply cut short by a close
        };
        let Ok(pdu_len) = mbap::header(head, transaction, dev.unit) else {
            return;
        };
        let Some(pdu) = frame.get(mbap::HEADER..mbap::HEADER + pdu_len) else {
            return;
        };
        if frame.len() > mbap::HEADER + pdu_len {
            return; // bytes behind the reply: a protocol fault
        }
        match mbap::reply(pdu, span.table, span.count) {
            Ok(payload) => decode_span(dev, span, &payload, &mut out),
            Err(_) => return,
        }
    }
    evaluate(index, out);
}

thread_local! {
    static SCRATCH: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

fn decode_span(dev: &Device, span: &ReadSpan, p: &Payload, out: &mut Vec<PointReading>) {
    let answer = match p {
        Payload::Words(w) => SpanAnswer::Words(w),
        Payload::Bits(b) => SpanAnswer::Bits(b),
        Payload::Exception(c) => SpanAnswer::Exception(*c),
    };
    span_points(dev, span, answer, out);
}

/// Modbus RTU replies on a serial bus or a serial device server, reassembled as
/// `fieldbus::bus` does: bytes arrive in chunks, each chunk appended and the buffer scanned for
/// the answer, at most `4 * MAX_FRAME` bytes, then the leftover classified.
///
/// Input: `[span selector][chunk size seed]` then the bytes the line delivers.
pub fn rtu_reply(data: &[u8]) {
    let (index, dev) = device(|t| matches!(t, Transport::ModbusRtu { .. }));
    let plan = plan_reads(&dev.points, dev.max_gap);
    let mut rest = data;
    let selector = take(&mut rest, 1).first().copied().unwrap_or(0);
    let mut seed = u32::from(take(&mut rest, 1).first().copied().unwrap_or(0)) | 1;
    let Some(span) = plan.get(usize::from(selector) % plan.len().max(1)) else {
        return;
    };
    // Half the time ask as another unit, so replies from "the wrong unit" are explored too.
    let unit = if selector & 0x80 != 0 {
        dev.unit.wrapping_add(1)
    } else {
        dev.unit
    };
    let mut buf = Vec::with_capacity(frame::MAX_FRAME);
    while !rest.is_empty() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = 1 + (seed >> 16) as usize % 256;
        buf.extend_from_slice(take(&mut rest, n));
        let mut seen = Seen::default();
        match frame::scan(&buf, unit, span.table, span.count, &mut seen) {
            Scan::Reply { payload, .. } => {
                let mut out = Vec::new();
                decode_span(dev, span, &payload, &mut out);
                evaluate(index, out);
                return;
            }
            Scan::Incomplete if buf.len() > 4 * frame::MAX_FRAME => break,
            Scan::Incomplete => {}
        }
    }
    let _ = frame::classify_leftover(&buf, unit, span.table);
}

/// Serial-lines sensors: the byte stream split into lines, each parsed by both formats
/// (`KEY=VALUE` and a device `pattern`) and evaluated by one engine, line after line.
///
/// Input: `[chunk size]` then the bytes the port delivers.
pub fn serial_lines(data: &[u8]) {
    let mut rest = data;
    let chunk = usize::from(take(&mut rest, 1).first().copied().unwrap_or(0)).max(1);
    thread_local! {
        // Built once: a `pattern` format compiles a regular expression, which would otherwise
        // be most of the cost of an input.
        static DEVICES: Vec<(usize, &'static Device, Format)> = cfg()
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| matches!(d.transport, Transport::SerialLines { .. }))
            .filter_map(|(i, d)| Format::of(d).ok().map(|f| (i, d, f)))
            .collect();
    }
    let mut splitter = Splitter::default();
    let mut run = Run::new();
    DEVICES.with(|devices| {
        for piece in rest.chunks(chunk) {
            for line in splitter.push(piece).into_iter().flatten() {
                for (index, dev, format) in devices {
                    if let Ok(fields) = format.fields(&line) {
                        run.poll(*index, lines::points(dev, &fields));
                    }
                }
            }
        }
    });
    run.finish();
}

/// Operator commands: `cmd/{name}` bodies parsed and applied to a fresh engine.
///
/// Input: `[name selector]` then the body. The selector picks ack, shelve, service, drill,
/// replay or an unknown name.
pub fn command(data: &[u8]) {
    const NAMES: [&str; 6] = ["ack", "shelve", "service", "drill", "replay", "reboot"];
    let mut rest = data;
    let selector = take(&mut rest, 1).first().copied().unwrap_or(0);
    let name = NAMES[usize::from(selector) % NAMES.len()];
    let _ = topics().command_name(&String::from_utf8_lossy(rest));
    if name == "replay" {
        let _ = Replay::parse(rest);
    }
    let parsed = Command::parse(name, rest);
    let mut engine = Engine::new(cfg().clone(), 41);
    let now = Now::system();
    // An alarm to act on, so ack/shelve/service reach the table's state changes.
    let (index, dev) = device(|t| matches!(t, Transport::ModbusTcp { .. }));
    let hot: Vec<PointReading> = (0..dev.points.len())
        .map(|point| PointReading {
            point,
            result: Ok(crate::decode::Decoded {
                raw: crate::decode::Raw::Float(1.0e6),
                value: 1.0e6,
            }),
        })
        .collect();
    for s in [0, 3, 6] {
        let r = Reading {
            device: index,
            at: now.after(Duration::from_secs(s)),
            latency: Duration::ZERO,
            outcome: Ok(hot.clone()),
        };
        let _ = engine.on_reading(&r);
    }
    let later = now.after(Duration::from_secs(7));
    encode_all(&engine.on_command(parsed, later).messages);
    encode_all(&engine.tick(later.after(Duration::from_secs(3600))).messages);
}

/// What the drain coordinator and the drain agents receive from the broker: agents' acks and
/// presence (coordinator) and drain requests (agent).
///
/// Input: `[selector]` then the payload. The selector picks the topic: an ack of a known agent,
/// of an unknown one, a presence, or a drain request as an agent parses it.
pub fn drain_inbound(data: &[u8]) {
    let mut rest = data;
    let selector = take(&mut rest, 1).first().copied().unwrap_or(0);
    let t = topics();
    let Some(drain) = cfg().drain.as_ref() else {
        return;
    };
    let now = Now::system();
    let mut c = Coordinator::new(topics(), drain, cfg().zones(), Persisted::default(), now);
    // A drain in force, so an ack has something to move.
    let zone = crate::alarms::ZoneStatus {
        zone: "room-1".into(),
        level: crate::alarms::Level::Critical,
        active: vec!["room-1/rack-01/cell_temp_max/cell-overtemp".into()],
        faults: 0,
        time: "t".into(),
        shelved: vec![],
        unacknowledged: 1,
        evidence: crate::alarms::Level::Critical,
    };
    let mut msgs = c.on_zone(&zone, now).messages;
    let topic = match selector % 5 {
        0 => t.drain_ack("room-1", "lb-1"),
        1 => t.drain_ack("room-1", "stranger"),
        2 => t.drain_agent("lb-1"),
        3 => t.drain_agent("k8s-b"),
        _ => {
            if let Ok(m) = serde_json::from_slice::<RequestMessage>(rest) {
                let _ = m.drain_id();
            }
            return;
        }
    };
    // Acks name the drain they answer: let the fuzzer's `$ID` stand for the current one.
    let id = c
        .persisted()
        .zones
        .get("room-1")
        .map(|r| r.drain_id.clone())
        .unwrap_or_default();
    let payload = String::from_utf8_lossy(rest).replace("$ID", &id);
    msgs.extend(c.on_inbound(&topic, payload.as_bytes(), now).messages);
    msgs.extend(c.on_inbound(&topic, rest, now).messages);
    msgs.extend(c.tick(now.after(Duration::from_secs(200))).messages);
    encode_all(&msgs);
}

/// The configuration file, as both roles load it (`Config::from_toml` but reading the text
/// once), and what the gateway builds from it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Both roles validate the same raw sections, read once: the reading (TOML, then the
    // `config` crate's tree) is most of an input's cost.
    let mut loaded = Config::from_toml_each(text, &[Role::DrainAgent, Role::Gateway]);
    let Some(Ok(cfg)) = loaded.pop() else {
        return;
    };
    let _ = cfg.warnings();
    let _ = crate::report::summary(&cfg);
    let _ = Topics::new(&cfg);
    for d in &cfg.devices {
        let _ = plan_reads(&d.points, d.max_gap);
        let _ = Format::of(d);
    }
    let mut engine = Engine::new(Arc::new(cfg), 0);
    let now = Now::system();
    encode_all(&engine.tick(now).messages);
    encode_all(&engine.zone_statuses(now));
}

/// A SunSpec device's holding registers from 40000 (the input as big-endian words, a read
/// past them an exception) through `discover`'s chain walk and profile writer; whatever the
/// map, the profile written must be one `check-config` accepts.
pub fn sunspec_chain(data: &[u8]) {
    use crate::sunspec::chain::{is_marker, Walk};
    use crate::sunspec::profile::{self, Found};
    const BASE: u16 = 40000;
    let words: Vec<u16> = data
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect();
    let read = |at: u16, n: u16| {
        let from = usize::from(at.checked_sub(BASE)?);
        words.get(from..from + usize::from(n)).map(<[u16]>::to_vec)
    };
    // A map without the marker is walked all the same, to reach the chain code.
    let _ = is_marker(&words);
    let mut walk = Walk::after_marker(BASE);
    while let Ok(Some(at)) = walk.next_header() {
        let Some(h) = read(at, 2) else { break };
        if walk.header(h[0], h[1]).is_err() {
            break;
        }
    }
    let found: Vec<Found> = walk
        .models()
        .iter()
        .filter_map(|m| {
            let n = profile::body_len(m)?;
            Some(Found {
                model: m.clone(),
                words: read(m.start, n)?,
            })
        })
        .collect();
    let Some(block) = profile::block("fuzz", "the fuzzer", &found) else {
        return;
    };
    let text = format!(
        "[site]\nid = \"s\"\ngateway = \"g\"\n[[devices]]\nid = \"bat\"\nzone = \"z\"\n\
         address = \"127.0.0.1:502\"\nprofile = \"fuzz\"\n{block}"
    );
    if let Err(e) = Config::from_toml(&text, Role::Gateway) {
        panic!("discover wrote a profile check-config refuses: {e:?}\n{block}");
    }
}

/// This thread's scratch directory, made once: `/dev/shm` when there is one, so the files are
/// real (the stores open, read and fsync them as on a disk) without a disk's latency.
fn scratch_dir() -> PathBuf {
    SCRATCH.with(|s| {
        s.borrow_mut()
            .get_or_insert_with(|| {
                let base = if Path::new("/dev/shm").is_dir() {
                    PathBuf::from("/dev/shm")
                } else {
                    std::env::temp_dir()
                };
                let dir = base.join(format!(
                    "emberwatch-fuzz-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::create_dir_all(&dir);
                dir
            })
            .clone()
    })
}

/// The scratch directory with `name` (and nothing else the last input left) in it.
fn scratch_with(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = scratch_dir();
    // What `JsonStore::save` would leave; `write` below replaces the file itself.
    let _ = std::fs::remove_file(dir.join(format!("{name}.tmp")));
    let _ = std::fs::write(dir.join(name), bytes);
    dir
}

/// The scratch directory, emptied (the outbox leaves segments and cursors behind).
fn scratch() -> PathBuf {
    let dir = scratch_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The outbox directory after a crash or a damaged disk: segment files and a cursor, recovered
/// by `Outbox::open`, then read, replayed and appended to.
///
/// Input: `[flags]`, then 16 bytes of cursor file if flag bit 0, then segment bytes (split in
/// two segments at the middle if flag bit 1).
pub fn outbox(data: &[u8]) {
    let mut rest = data;
    let flags = take(&mut rest, 1).first().copied().unwrap_or(0);
    let dir = scratch();
    let out = dir.join("outbox");
    let _ = std::fs::create_dir_all(out.join("cursors"));
    let broker = "mqtt://127.0.0.1:1883".to_string();
    if flags & 1 != 0 {
        let cursor = take(&mut rest, 16);
        // `outbox::cursor::file_name` of the broker's URL.
        let _ = std::fs::write(
            out.join("cursors").join("mqtt___127.0.0.1_1883.cursor"),
            cursor,
        );
    }
    let segments: Vec<&[u8]> = if flags & 2 != 0 {
        let (a, b) = rest.split_at(rest.len() / 2);
        vec![a, b]
    } else {
        vec![rest]
    };
    for (i, bytes) in segments.iter().enumerate() {
        let _ = std::fs::write(out.join(format!("{i:020}.seg")), bytes);
    }
    let _ = std::fs::write(
        out.join(format!("{:020}.seg.tmp", 7)),
        b"half-done compaction",
    );
    let opts = Options::new(1 << 20, 1 << 19, Duration::from_secs(7 * 86_400));
    let Ok(mut outbox) = Outbox::open(&dir, opts, std::slice::from_ref(&broker)) else {
        return;
    };
    let _ = outbox.read_from(0, 64);
    let _ = outbox.replay_from(0);
    if let Ok(pos) = outbox.cursor(&broker) {
        let _ = outbox.ack(&broker, pos);
    }
    let seq = outbox.latest_seq().unwrap_or(0).saturating_add(1);
    let _ = outbox.append(vec![Entry {
        kind: Kind::Event,
        seq,
        topic: "emberwatch/pangyo-a/alarms/room-1/rack-01/cell_temp_max/cell-overtemp".into(),
        retain: false,
        payload: b"{}".to_vec(),
    }]);
    let _ = outbox.commit();
    drop(outbox);
    let opts = Options::new(1 << 20, 1 << 19, Duration::from_secs(7 * 86_400));
    let _ = Outbox::open(&dir, opts, &[broker]);
}

/// `storage.dir/state.json` as left by an earlier run (or a disk, or a person): loaded, the
/// engine restored from it, then a tick, a poll and the zone statuses.
pub fn state_json(data: &[u8]) {
    let dir = scratch_with("state.json", data);
    let Ok((_, snapshot)) = crate::alarms::StateStore::open(&dir) else {
        return;
    };
    let mut engine = Engine::restore(cfg().clone(), snapshot);
    let now = Now::system();
    encode_all(&engine.tick(now).messages);
    encode_all(&engine.zone_statuses(now));
    let (index, _) = device(|t| matches!(t, Transport::ModbusTcp { .. }));
    let silent = Reading {
        device: index,
        at: now,
        latency: Duration::ZERO,
        outcome: Err(crate::fieldbus::LinkError::Connect {
            device: "rack-01".into(),
            address: "127.0.0.1:5020".into(),
            reason: "refused".into(),
        }),
    };
    encode_all(&engine.on_reading(&silent).messages);
    let _ = engine.snapshot();
}

/// `storage.dir/drain.json`: loaded, the coordinator resumed from it, time passing.
pub fn drain_json(data: &[u8]) {
    let dir = scratch_with(crate::drain::service::STATE_FILE, data);
    let Ok((_, persisted)) =
        crate::storage::JsonStore::open::<Persisted>(&dir, crate::drain::service::STATE_FILE)
    else {
        return;
    };
    let Some(drain) = cfg().drain.as_ref() else {
        return;
    };
    let now = Now::system();
    let mut c = Coordinator::new(topics(), drain, cfg().zones(), persisted, now);
    let mut msgs = c.resume(now).messages;
    msgs.extend(c.tick(now.after(Duration::from_secs(300))).messages);
    encode_all(&msgs);
}

/// Removes this thread's scratch directory (the AFL harness calls it on exit; tests too).
pub fn cleanup() {
    SCRATCH.with(|s| {
        if let Some(dir) = s.borrow().as_ref() {
            let _ = std::fs::remove_dir_all(dir);
        }
    });
}
