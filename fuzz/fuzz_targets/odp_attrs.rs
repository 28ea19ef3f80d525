//! libFuzzer target `odp_attrs`: see `weft::fuzzing::odp_attrs` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft::fuzzing::odp_attrs(data);
});
