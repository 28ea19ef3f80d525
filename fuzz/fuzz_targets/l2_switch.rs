//! libFuzzer target `l2_switch`: see `weft::fuzzing::l2_switch` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft::fuzzing::l2_switch(data);
});
