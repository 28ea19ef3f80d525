//! libFuzzer target `control`: see `weft::fuzzing::control` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft::fuzzing::control(data);
});
