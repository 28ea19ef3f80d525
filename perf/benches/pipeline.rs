//! Criterion micro-benchmarks: framing and crypto on one core
//! (`cargo bench`). The whole-host comparisons are in perf/run.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Instant;
use weft::noise::handshake::DataKeys;
use weft::noise::{CipherKind, Session};
use weft::wire::sleeve::{self, MessageType, Records};

fn sessions(cipher: CipherKind) -> (Session, Session) {
    let now = Instant::now();
    (
        Session::new(
            cipher,
            &DataKeys {
                send: [1; 32],
                recv: [2; 32],
            },
            1,
            2,
            now,
        ),
        Session::new(
            cipher,
            &DataKeys {
                send: [2; 32],
                recv: [1; 32],
            },
            2,
            1,
            now,
        ),
    )
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing");
    for size in [64usize, 1400] {
        let mut buf = vec![0u8; size + 64];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("emit_record_header+parse", size),
            &size,
            |b, &size| {
                b.iter(|| {
                    let n = sleeve::emit_record_header(&mut buf, 42, size).unwrap();
                    Records::new(&buf[..n])
                        .map(|r| r.unwrap().frame.len())
                        .sum::<usize>()
                })
            },
        );
    }
    group.finish();
}

fn crypto(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal+open");
    for cipher in [CipherKind::ChaChaPoly, CipherKind::AesGcm] {
        for size in [64usize, 1400] {
            let (tx, rx) = sessions(cipher);
            let mut buf = vec![0u8; size + 64];
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::new(cipher.name(), size), &size, |b, &size| {
                b.iter(|| {
                    let len = tx.seal(MessageType::Data, &mut buf, size).unwrap();
                    let counter = sleeve::Packet::new_checked(&buf[..len]).unwrap().counter();
                    rx.open(counter, &mut buf[..len]).unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, framing, crypto);
criterion_main!(benches);
