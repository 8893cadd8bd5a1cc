//! AFL++ harness for `emberwatch::fuzzing::config` (corpus: fuzz/corpus/config/).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        emberwatch::fuzzing::config(data);
    });
    emberwatch::fuzzing::cleanup();
}
