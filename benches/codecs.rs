//! CPU per record of each codec, through the exact code the client runs (`purekafka::codec`):
//! a batch of 1,000 JSON-like records of about 120 bytes (a realistic event payload, with
//! repeated field names and varying values) compressed and decompressed.
//!
//! `cargo bench --bench codecs` (pure Rust: flate2, snap, lz4_flex, ruzstd), and
//! `cargo bench --bench codecs --features zstd-c` for the C libraries. Criterion
//! prints the time per batch and records/s; divide by 1,000 for the time per record. Figures
//! are in the README; nothing here asserts a timing.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use purekafka::codec;
use purekafka::config::Compression;

const RECORDS: usize = 1_000;

fn batch() -> Vec<u8> {
    let mut out = Vec::new();
    let mut x: u64 = 42;
    for i in 0..RECORDS {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let record = format!(
            r#"{{"event_id":"{:016x}","type":"order.created","customer":{},"amount_cents":{},"currency":"EUR","seq":{i}}}"#,
            x,
            x % 100_000,
            (x >> 20) % 1_000_000
        );
        out.push(record.len() as u8);
        out.extend_from_slice(record.as_bytes());
    }
    out
}

fn bench(c: &mut Criterion) {
    let input = batch();
    let mut g = c.benchmark_group(format!("codec_{RECORDS}_records_{}_bytes", input.len()));
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for (name, compression) in [
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        let packed = codec::compress(compression, &input).unwrap();
        println!(
            "{name}: {} -> {} bytes ({:.1} %)",
            input.len(),
            packed.len(),
            100.0 * packed.len() as f64 / input.len() as f64
        );
        g.bench_function(format!("{name}/compress"), |b| {
            b.iter(|| codec::compress(compression, black_box(&input)).unwrap())
        });
        let id = codec::codec_id(compression);
        g.bench_function(format!("{name}/decompress"), |b| {
            b.iter(|| codec::decompress(id, black_box(&packed)).unwrap().len())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
