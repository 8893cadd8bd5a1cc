//! AFL++ harness for `emberwatch::fuzzing::sunspec_chain` (corpus: fuzz/corpus/sunspec_chain/).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        emberwatch::fuzzing::sunspec_chain(data);
    });
    emberwatch::fuzzing::cleanup();
}
