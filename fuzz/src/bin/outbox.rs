//! AFL++ harness for `emberwatch::fuzzing::outbox` (corpus: fuzz/corpus/outbox/).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        emberwatch::fuzzing::outbox(data);
    });
    emberwatch::fuzzing::cleanup();
}
