//! Every fuzz target in `weft::fuzzing`, on the stable toolchain, as part
//! of `cargo test`: the committed corpus of each (`fuzz/corpus/TARGET/`),
//! then 100000 seeded mutations of it, without a panic. The driver is the
//! one `fuzz/` builds as `fuzz_stable` for longer runs (tests/FUZZING.md);
//! it is compiled into this test so the suite needs no second build of
//! weft. A failing input is saved to `fuzz/artifacts/TARGET/`.

#[path = "../fuzz/src/fuzz_stable.rs"]
mod driver;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Mutated inputs per target (`WEFT_FUZZ_ITERATIONS` overrides).
const ITERATIONS: u64 = 100_000;

#[test]
fn every_fuzz_target_survives_its_corpus_and_100000_mutations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let iterations = std::env::var("WEFT_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ITERATIONS);
    let targets = weft::fuzzing::TARGETS;
    for (name, _) in targets {
        let corpus = root.join("corpus").join(name);
        let seeds = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
        assert!(
            seeds > 0,
            "fuzz target {name} has no committed corpus in {}: run `cd fuzz && cargo run --release --no-default-features --bin fuzz_stable {name} --write-seeds`",
            corpus.display()
        );
    }
    // Two workers share the targets (the machines have two cores).
    let next = AtomicUsize::new(0);
    let failed: Vec<&str> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut failed = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(name, run)) = targets.get(i) else {
                            return failed;
                        };
                        let dirs: Vec<PathBuf> = vec![root.join("corpus").join(name)];
                        if !driver::fuzz(
                            name,
                            run,
                            &dirs,
                            iterations,
                            driver::DEFAULT_SEED,
                            &root.join("artifacts"),
                        ) {
                            failed.push(name);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("fuzz worker"))
            .collect()
    });
    assert!(
        failed.is_empty(),
        "fuzz targets that panicked: {failed:?} (inputs in fuzz/artifacts/)"
    );
}
