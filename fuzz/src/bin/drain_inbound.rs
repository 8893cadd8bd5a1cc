//! AFL++ harness for `emberwatch::fuzzing::drain_inbound` (corpus: fuzz/corpus/drain_inbound/).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        emberwatch::fuzzing::drain_inbound(data);
    });
    emberwatch::fuzzing::cleanup();
}
