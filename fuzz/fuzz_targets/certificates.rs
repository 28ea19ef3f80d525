//! libFuzzer target `certificates`: see `weft::fuzzing::certificates` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft::fuzzing::certificates(data);
});
