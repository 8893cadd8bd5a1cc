//! AFL++ harness for `emberwatch::fuzzing::rtu_reply` (corpus: fuzz/corpus/rtu_reply/).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        emberwatch::fuzzing::rtu_reply(data);
    });
    emberwatch::fuzzing::cleanup();
}
