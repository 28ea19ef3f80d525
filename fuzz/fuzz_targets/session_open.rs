//! libFuzzer target `session_open`: see `weft::fuzzing::session_open` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft::fuzzing::session_open(data);
});
