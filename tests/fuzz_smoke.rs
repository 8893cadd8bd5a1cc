//! The fuzz smoke: every committed corpus file of every fuzz target, plus deterministic
//! pseudo-random mutations of each, through the same entry points the AFL harnesses in `fuzz/`
//! call (`emberwatch::fuzzing`). No AFL needed: it runs in CI with `cargo test`.
//!
//! A campaign's crash, once its input is committed under `fuzz/corpus/<target>/`, is replayed
//! here on every run, so the fix stays proven. "Bounded work" is checked as a limit on bytes
//! allocated per input (a counting allocator), never as a time: an input must not make the
//! gateway allocate in proportion to a length field it carries.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use emberwatch::fuzzing::TARGETS;

/// Counts the largest single allocation since the last reset, for the bounded-work check.
struct Counting;

thread_local! {
    /// Per test thread: the targets run in parallel. A const-initialised `Cell` needs no
    /// allocation or destructor, so the allocator may touch it.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Mutations per corpus file: enough to reach the error paths next to every seed, few enough
/// for the whole smoke to stay well under a minute in a debug build.
const MUTATIONS: usize = 200;

/// No single allocation may exceed this plus 64 times the input: the engine, the runtime and
/// the outbox's own buffers are far below it, and a length field believed would be far above.
const ALLOC_LIMIT: usize = 8 << 20;

/// An input still running after this is a hang.
const HANG: std::time::Duration = std::time::Duration::from_secs(60);

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("corpus file");
            (p, bytes)
        })
        .collect()
}

/// xorshift64*: deterministic, so a failure names an input that can be rebuilt.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that parsers care about: boundaries of integers and of JSON/TOML syntax.
const INTERESTING: &[&[u8]] = &[
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"-1",
    b"1e309",
    b"NaN",
    b"nan",
    b"18446744073709551615",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\n",
    b"\r",
    b"=",
    b"\\u0000",
    b"1ns",
    b"999999999999h",
];

/// One havoc-style mutation of `seed`: flips, overwrites, inserts, deletes, splices.
fn mutate(seed: &[u8], rng: &mut Rng, others: &[(PathBuf, Vec<u8>)]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(b.len() + 1);
        match rng.below(8) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            2 => {
                let s = INTERESTING[rng.below(INTERESTING.len())];
                b.splice(at..at, s.iter().copied());
            }
            3 if !b.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                let at = at.min(end);
                b.drain(at..end);
            }
            4 if !b.is_empty() => {
                // Duplicate a chunk: repeated fields, frames, records.
                let from = rng.below(b.len());
                let end = (from + 1 + rng.below(64)).min(b.len());
                let chunk = b[from..end].to_vec();
                b.splice(at..at, chunk);
            }
            5 if !others.is_empty() => {
                // Splice in part of another seed of the same target.
                let o = &others[rng.below(others.len())].1;
                if !o.is_empty() {
                    let from = rng.below(o.len());
                    let end = (from + 1 + rng.below(64)).min(o.len());
                    b.splice(at..at, o[from..end].iter().copied());
                }
            }
            6 if !b.is_empty() => {
                b.truncate(rng.below(b.len()));
            }
            _ => {
                let s = INTERESTING[rng.below(INTERESTING.len())];
                let end = (at + s.len()).min(b.len());
                b.splice(at..end, s.iter().copied());
            }
        }
    }
    b
}

/// Runs one input on a thread of its own, so that a hang fails the test (naming the input)
/// instead of holding CI until its limit. The limit is for a hang, not a speed assertion: an
/// input takes milliseconds.
fn run_one(name: &str, f: emberwatch::fuzzing::Target, input: &[u8], what: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = input.to_vec();
    std::thread::spawn(move || {
        LARGEST.with(|l| l.set(0));
        let result = std::panic::catch_unwind(|| f(&owned));
        let largest = LARGEST.with(Cell::get);
        emberwatch::fuzzing::cleanup();
        let _ = tx.send((result.is_ok(), largest));
    });
    let shown = String::from_utf8_lossy(&input[..input.len().min(300)]).into_owned();
    let (ok, largest) = match rx.recv_timeout(HANG) {
        Ok(r) => r,
        Err(_) => panic!(
            "fuzz target {name} did not return within {HANG:?} on {what} ({} bytes): {shown:?}",
            input.len()
        ),
    };
    assert!(
        ok,
        "fuzz target {name} panicked on {what} ({} bytes): {shown:?}",
        input.len()
    );
    assert!(
        largest <= ALLOC_LIMIT + 64 * input.len(),
        "fuzz target {name} allocated {largest} bytes at once on {what} ({} bytes of input)",
        input.len()
    );
}

fn smoke(name: &str) {
    let f = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1;
    let seeds = corpus(name);
    assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seed");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
    for (path, bytes) in &seeds {
        run_one(name, f, bytes, &path.display().to_string());
        for i in 0..MUTATIONS {
            let m = mutate(bytes, &mut rng, &seeds);
            run_one(name, f, &m, &format!("mutation {i} of {}", path.display()));
        }
    }
}

#[test]
fn every_target_has_a_smoke_and_a_corpus() {
    let tested = [
        "modbus_tcp",
        "rtu_reply",
        "serial_lines",
        "command",
        "drain_inbound",
        "config",
        "outbox",
        "state_json",
        "drain_json",
        "sunspec_chain",
    ];
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names, tested,
        "a new fuzz target needs its smoke test below"
    );
}

#[test]
fn modbus_tcp() {
    smoke("modbus_tcp");
}

#[test]
fn rtu_reply() {
    smoke("rtu_reply");
}

#[test]
fn serial_lines() {
    smoke("serial_lines");
}

#[test]
fn command() {
    smoke("command");
}

#[test]
fn drain_inbound() {
    smoke("drain_inbound");
}

#[test]
fn config() {
    smoke("config");
}

#[test]
fn outbox() {
    smoke("outbox");
}

#[test]
fn state_json() {
    smoke("state_json");
}

#[test]
fn drain_json() {
    smoke("drain_json");
}

#[test]
fn sunspec_chain() {
    smoke("sunspec_chain");
}
