//! libFuzzer target `replay_window`: see `weft::fuzzing::replay_window` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft::fuzzing::replay_window(data);
});
