//! libFuzzer target `kube_nodes`: see `weft::fuzzing::kube_nodes` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft::fuzzing::kube_nodes(data);
});
