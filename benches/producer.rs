//! Micro-benchmarks of the producer's client-side path, no broker involved:
//!
//! - `per_record/*`: partition + reserve + encode into the batch (the whole per-record path of
//!   `Producer::enqueue`), plus closing, CRC and acknowledging the batches, per 100-byte record;
//! - `murmur2`, `crc32c` and `batch_encode` on their own.
//!
//! `cargo bench --bench producer`; throughput is reported per record (elements) or byte.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::FutureExt;
use purekafka::config::Compression;
use purekafka::producer::bench::Harness;
use purekafka::producer::murmur2;
use purekafka::Record;

const RECORDS: usize = 10_000;

fn records(keyed: bool) -> Vec<Record> {
    let value = Bytes::from(vec![b'x'; 100]);
    (0..RECORDS)
        .map(|i| {
            let r = Record::new("bench", value.clone());
            if keyed {
                r.with_key(format!("key-{i}"))
            } else {
                r
            }
        })
        .collect()
}

fn per_record(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_record");
    group.throughput(Throughput::Elements(RECORDS as u64));
    for (name, keyed, compression) in [
        ("keyed_100B", true, Compression::None),
        ("keyless_100B", false, Compression::None),
        ("keyed_100B_snappy", true, Compression::Snappy),
    ] {
        let input = records(keyed);
        let harness = Harness::new("bench", 6, 1 << 20, compression);
        let mut futures = Vec::with_capacity(RECORDS);
        group.bench_function(name, |b| {
            b.iter(|| {
                for r in &input {
                    // What a caller does: hand over a record (clone = refcounts), keep the future.
                    futures.push(harness.enqueue(r.clone()).expect("enqueued"));
                }
                black_box(harness.complete_all());
                for f in futures.drain(..) {
                    black_box(f.now_or_never().expect("resolved").expect("ok"));
                }
            })
        });
    }
    group.finish();
}

fn murmur(c: &mut Criterion) {
    let key = b"customer-1234567";
    let mut group = c.benchmark_group("murmur2");
    group.throughput(Throughput::Bytes(key.len() as u64));
    group.bench_function("16B_key", |b| b.iter(|| murmur2(black_box(key))));
    group.finish();
}

fn crc(c: &mut Criterion) {
    let data = vec![7u8; 1 << 20];
    let mut group = c.benchmark_group("crc32c");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("1MiB", |b| b.iter(|| crc32c::crc32c(black_box(&data))));
    group.finish();
}

fn batch_encode(c: &mut Criterion) {
    // One partition: records go into one batch after another; measures encode + close + CRC.
    let input = records(false);
    let mut group = c.benchmark_group("batch_encode");
    group.throughput(Throughput::Elements(RECORDS as u64));
    let harness = Harness::new("bench", 1, 1 << 20, Compression::None);
    group.bench_function("10k_x_100B_one_partition", |b| {
        b.iter(|| {
            for r in &input {
                drop(harness.enqueue(r.clone()).expect("enqueued"));
            }
            black_box(harness.complete_all())
        })
    });
    group.finish();
}

criterion_group!(benches, per_record, murmur, crc, batch_encode);
criterion_main!(benches);
