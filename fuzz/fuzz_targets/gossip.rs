//! libFuzzer target `gossip`: see `weft::fuzzing::gossip` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft::fuzzing::gossip(data);
});
