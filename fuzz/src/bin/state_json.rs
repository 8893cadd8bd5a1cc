//! AFL++ harness for `emberwatch::fuzzing::state_json` (corpus: fuzz/corpus/state_json/).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        emberwatch::fuzzing::state_json(data);
    });
    emberwatch::fuzzing::cleanup();
}
