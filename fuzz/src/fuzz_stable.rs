//! Stable-toolchain fuzz driver for the `wire_parsers` checks.
//!
//! Replays every file in the corpus directories given as arguments
//! (default `corpus/wire_parsers`), then runs a bounded number of inputs
//! mutated from the corpus with a seeded xorshift generator, so a run is
//! reproducible: `fuzz_stable [--iterations N] [--seed S] [DIR...]`.
//! A failing input is written to `artifacts/wire_parsers/` before the
//! panic is re-raised.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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

fn save_crash(input: &[u8]) -> PathBuf {
    let dir = Path::new("artifacts/wire_parsers");
    let _ = fs::create_dir_all(dir);
    let name: String = input.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("crash-stable-{}-{name}", input.len()));
    let _ = fs::write(&path, input);
    path
}

fn run_one(input: &[u8]) -> bool {
    let outcome = panic::catch_unwind(|| weft::wire::totality::exercise_all(input));
    if outcome.is_err() {
        let path = save_crash(input);
        eprintln!(
            "fuzz_stable: input of {} bytes failed; saved to {}",
            input.len(),
            path.display()
        );
        return false;
    }
    true
}

fn main() -> ExitCode {
    let mut iterations: u64 = 200_000;
    let mut seed: u64 = 0x5eed_f00d_cafe_d00d;
    let mut dirs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iterations" => {
                iterations = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--iterations needs a number")
            }
            "--seed" => {
                seed = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seed needs a number")
            }
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    if dirs.is_empty() {
        dirs.push(PathBuf::from("corpus/wire_parsers"));
    }
    let mut corpus = load_corpus(&dirs);
    println!("fuzz_stable: replaying {} corpus inputs", corpus.len());
    for input in &corpus {
        if !run_one(input) {
            return ExitCode::FAILURE;
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
        if !run_one(&input) {
            return ExitCode::FAILURE;
        }
    }
    println!("fuzz_stable: {iterations} mutated inputs passed (seed {seed})");
    ExitCode::SUCCESS
}
