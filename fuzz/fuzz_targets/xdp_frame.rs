//! libFuzzer target `xdp_frame`: see `weft::fuzzing::xdp_frame` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft::fuzzing::xdp_frame(data);
});
