//! AFL++ harness for `emberwatch::fuzzing::drain_json` (corpus: fuzz/corpus/drain_json/).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        emberwatch::fuzzing::drain_json(data);
    });
    emberwatch::fuzzing::cleanup();
}
