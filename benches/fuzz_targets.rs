//! How fast each fuzz target runs one input, outside AFL and without its instrumentation: the
//! ceiling of a campaign's executions per second on this machine, and where to look when a
//! campaign is slow (issue 15 asks for 10^8 executions per target).
//!
//! Run: `cargo bench --bench fuzz_targets` (release). For each target of
//! `emberwatch::fuzzing::TARGETS`, every seed in `fuzz/corpus/<target>/` runs in turn for about
//! two seconds; it prints executions per second and the median and 99th percentile time of one
//! input over the seeds. Nothing is asserted.

use std::path::Path;
use std::time::{Duration, Instant};

use emberwatch::fuzzing::{cleanup, TARGETS};

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    println!(
        "{:<14} {:>7} {:>12} {:>10} {:>10}",
        "target", "seeds", "execs/s", "p50 µs", "p99 µs"
    );
    for (name, target) in TARGETS {
        if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let inputs = seeds(name);
        if inputs.is_empty() {
            println!("{name:<14} no seeds");
            continue;
        }
        // Warm up: first use builds the shared configuration.
        for i in &inputs {
            target(i);
        }
        let mut times = Vec::new();
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            for i in &inputs {
                let t = Instant::now();
                target(i);
                times.push(t.elapsed());
                n += 1;
            }
        }
        let total = start.elapsed();
        times.sort();
        println!(
            "{:<14} {:>7} {:>12.0} {:>10.1} {:>10.1}",
            name,
            inputs.len(),
            n as f64 / total.as_secs_f64(),
            percentile(&times, 0.5).as_secs_f64() * 1e6,
            percentile(&times, 0.99).as_secs_f64() * 1e6
        );
    }
    cleanup();
}
