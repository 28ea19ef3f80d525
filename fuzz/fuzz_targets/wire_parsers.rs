//! libFuzzer target: every weft wire parser, accessor and builder on the
//! input, with the invariants in `weft::wire::totality`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft::fuzzing::wire_parsers(data);
});
