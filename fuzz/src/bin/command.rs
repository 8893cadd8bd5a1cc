//! AFL++ harness for `emberwatch::fuzzing::command` (corpus: fuzz/corpus/command/).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        emberwatch::fuzzing::command(data);
    });
    emberwatch::fuzzing::cleanup();
}
