//! Stable-toolchain fuzz driver for every target in `weft::fuzzing`.
//!
//! `fuzz_stable TARGET|all [--iterations N] [--seed S] [DIR...]` replays
//! every file in the corpus directories (default `corpus/TARGET`), then
//! runs N inputs mutated from the corpus with a seeded xorshift generator,
//! so a run is reproducible, and prints inputs per second.
//! `fuzz_stable TARGET|all --write-seeds` writes the target's seed inputs
//! (real encodings made by weft, `weft::fuzzing::seeds`) to `corpus/TARGET/`.
//! A failing input is written to `artifacts/TARGET/` and the run fails.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// The seed of the mutation generator unless `--seed` says otherwise.
pub const DEFAULT_SEED: u64 = 0x5eed_f00d_cafe_d00d;

/// Deterministic xorshift64* generator: no dependency, reproducible runs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            0
        } else {
            (self.next() % bound as u64) as usize
        }
    }
}

/// Interesting values for length and type fields.
const MAGIC: &[u8] = &[
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x08, 0x11, 0x14, 0x28, 0x2c, 0x3a, 0x40, 0x45, 0x4f,
    0x60, 0x7f, 0x80, 0x81, 0xfe, 0xff,
];

/// One random edit of `input`, libFuzzer style.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    match rng.below(8) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = MAGIC[rng.below(MAGIC.len())];
        }
        2 if !input.is_empty() => {
            let new_len = rng.below(input.len());
            input.truncate(new_len);
        }
        3 if input.len() < 4096 => {
            let i = rng.below(input.len() + 1);
            input.insert(i, rng.next() as u8);
        }
        4 if input.len() >= 2 => {
            // Overwrite a 16-bit field with a length near the input length.
            let i = rng.below(input.len() - 1);
            let delta = rng.below(80) as i64 - 40;
            let value = (input.len() as i64 + delta).clamp(0, 0xffff) as u16;
            input[i..i + 2].copy_from_slice(&value.to_be_bytes());
        }
        5 if !input.is_empty() => {
            let i = rng.below(input.len());
            input.remove(i);
        }
        6 if input.len() < 4096 => {
            let extra = rng.below(64);
            for _ in 0..extra {
                input.push(rng.next() as u8);
            }
        }
        _ => {
            if input.is_empty() {
                input.push(rng.next() as u8);
            } else {
                let i = rng.below(input.len());
                input[i] = rng.next() as u8;
            }
        }
    }
}

fn load_corpus(dirs: &[PathBuf]) -> Vec<Vec<u8>> {
    let mut corpus = Vec::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            eprintln!(
                "fuzz_stable: cannot read corpus directory {}, skipping it",
                dir.display()
            );
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            match fs::read(&path) {
                Ok(bytes) => corpus.push(bytes),
                Err(err) => eprintln!("fuzz_stable: skipping {}: {err}", path.display()),
            }
        }
    }
    corpus
}

fn save_crash(artifacts: &Path, target: &str, input: &[u8]) -> PathBuf {
    let dir = artifacts.join(target);
    let dir = dir.as_path();
    let _ = fs::create_dir_all(dir);
    let name: String = input.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("crash-stable-{}-{name}", input.len()));
    let _ = fs::write(&path, input);
    path
}

fn run_one(artifacts: &Path, target: &str, run: weft::fuzzing::Target, input: &[u8]) -> bool {
    let outcome = panic::catch_unwind(|| run(input));
    if outcome.is_err() {
        let path = save_crash(artifacts, target, input);
        eprintln!(
            "fuzz_stable: input of {} bytes failed; saved to {}",
            input.len(),
            path.display()
        );
        return false;
    }
    true
}

/// Writes the target's seeds to `corpus/TARGET/`.
#[allow(dead_code)]
fn write_seeds(target: &str) -> Result<usize, String> {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let seeds = weft::fuzzing::seeds(target);
    for (name, bytes) in &seeds {
        let path = dir.join(format!("seed-{name}"));
        fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(seeds.len())
}

/// Replays the corpus, then `iterations` mutated inputs; a failing input
/// is saved under `artifacts/TARGET/`. Also run by `tests/fuzz_stable.rs`
/// in the main crate's `cargo test` (which includes this file).
pub fn fuzz(
    target: &str,
    run: weft::fuzzing::Target,
    dirs: &[PathBuf],
    iterations: u64,
    seed: u64,
    artifacts: &Path,
) -> bool {
    let mut corpus = load_corpus(dirs);
    let started = Instant::now();
    for input in &corpus {
        if !run_one(artifacts, target, run, input) {
            return false;
        }
    }
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut rng = Rng(seed | 1);
    for _ in 0..iterations {
        let mut input = corpus[rng.below(corpus.len())].clone();
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut input);
        }
        if !run_one(artifacts, target, run, &input) {
            return false;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let total = iterations + corpus.len() as u64;
    println!(
        "fuzz_stable: {target}: {} corpus + {iterations} mutated inputs passed in {secs:.1} s ({:.0} inputs/s, seed {seed})",
        corpus.len(),
        total as f64 / secs.max(1e-9)
    );
    true
}

#[allow(dead_code)]
fn usage() -> ExitCode {
    let names: Vec<&str> = weft::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
    eprintln!(
        "usage: fuzz_stable TARGET|all [--iterations N] [--seed S] [--write-seeds] [DIR...]\ntargets: {}",
        names.join(", ")
    );
    ExitCode::from(2)
}

#[allow(dead_code)] // not called where tests/fuzz_stable.rs includes this file
fn main() -> ExitCode {
    let mut iterations: u64 = 200_000;
    let mut seed: u64 = DEFAULT_SEED;
    let mut dirs = Vec::new();
    let mut target = None;
    let mut seeds_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iterations" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) => iterations = n,
                None => return usage(),
            },
            "--seed" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) => seed = n,
                None => return usage(),
            },
            "--write-seeds" => seeds_only = true,
            _ if target.is_none() => target = Some(arg),
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    let Some(target) = target else {
        return usage();
    };
    let targets: Vec<(&str, weft::fuzzing::Target)> = if target == "all" {
        weft::fuzzing::TARGETS.to_vec()
    } else {
        match weft::fuzzing::target(&target) {
            Some(run) => vec![(
                weft::fuzzing::TARGETS
                    .iter()
                    .find(|(n, _)| *n == target)
                    .map(|(n, _)| *n)
                    .unwrap_or("?"),
                run,
            )],
            None => return usage(),
        }
    };
    // Quiet: a target's own panics are reported by run_one.
    panic::set_hook(Box::new(|info| eprintln!("fuzz_stable: panic: {info}")));
    for (name, run) in targets {
        if seeds_only {
            match write_seeds(name) {
                Ok(n) => println!("fuzz_stable: {name}: wrote {n} seeds to corpus/{name}/"),
                Err(e) => {
                    eprintln!("fuzz_stable: {e}");
                    return ExitCode::FAILURE;
                }
            }
            continue;
        }
        let dirs = if dirs.is_empty() {
            vec![Path::new("corpus").join(name)]
        } else {
            dirs.clone()
        };
        if !fuzz(name, run, &dirs, iterations, seed, Path::new("artifacts")) {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
