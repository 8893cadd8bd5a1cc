//! AFL++ harness for `emberwatch::fuzzing::modbus_tcp` (corpus: fuzz/corpus/modbus_tcp/).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        emberwatch::fuzzing::modbus_tcp(data);
    });
    emberwatch::fuzzing::cleanup();
}
