//! AFL++ harness for `emberwatch::fuzzing::serial_lines` (corpus: fuzz/corpus/serial_lines/).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        emberwatch::fuzzing::serial_lines(data);
    });
    emberwatch::fuzzing::cleanup();
}
