//! CPU per record of each codec, through the exact code the client runs (`purekafka::codec`):
//! a batch of 1,000 JSON-like records of about 120 bytes (a realistic event payload, with
//! repeated field names and varying values) compressed and decompressed.
//!
//! `cargo bench --bench codecs` (pure Rust: flate2, snap, lz4_flex, ruzstd), and
//! `cargo bench --bench codecs --features zstd-c` for the C libraries. Criterion
//! prints the time per batch and records/s; divide by 1,000 for the time per record. Figures
//! are in the README; nothing here asserts a timing.
//!
//! The `zstd_matchers_*` groups compare zstd encoders in MB/s of input, each printing its
//! output size: purekafka's own match finder (`codec::zstd_matcher`, what the client runs
//! without `zstd-c`), ruzstd's built-in matcher (`compress_to_vec`, what the client ran
//! before), and with `--features zstd-c` libzstd at level 1. Inputs: the JSON batch above,
//! and batches of benches/compare's records (the same pseudo-random 6-bit-ASCII value in
//! every record, as that benchmark produces) of 1 KiB and 100 B values.

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

/// benches/compare's record value (`child::value`): `size` pseudo-random bytes from a
/// 64-symbol alphabet, the same in every record.
fn compare_value(size: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u32 = 0x9E37_79B9;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ALPHABET[(x >> 26) as usize]
        })
        .collect()
}

/// A record section of `count` keyless records carrying `compare_value(size)`, framed as
/// Kafka's v2 records are (length, attributes, timestamp and offset deltas, key -1, value,
/// no headers) with varints.
fn compare_batch(size: usize, count: usize) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push(z as u8 | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
    let value = compare_value(size);
    let mut out = Vec::new();
    for i in 0..count {
        let mut body = vec![0u8]; // attributes
        varint(&mut body, (i / 50) as i64); // timestamp delta
        varint(&mut body, i as i64); // offset delta
        varint(&mut body, -1); // no key
        varint(&mut body, size as i64);
        body.extend_from_slice(&value);
        varint(&mut body, 0); // no headers
        varint(&mut out, body.len() as i64);
        out.extend_from_slice(&body);
    }
    out
}

/// A zstd encoder under test: input → one frame.
type Encoder = fn(&[u8]) -> Vec<u8>;

fn zstd_matchers(c: &mut Criterion) {
    for (name, input) in [
        ("json_1000x120B", batch()),
        ("compare_64x1KiB", compare_batch(1024, 64)),
        ("compare_500x100B", compare_batch(100, 500)),
    ] {
        let mut g = c.benchmark_group(format!("zstd_matchers_{name}_{}_bytes", input.len()));
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.measurement_time(Duration::from_secs(3));
        g.warm_up_time(Duration::from_secs(1));
        let encoders: Vec<(&str, Encoder)> = vec![
            ("fast_matcher", |input| {
                let mut out = bytes::BytesMut::new();
                codec::zstd_matcher::compress_frame(input, &mut out);
                out.to_vec()
            }),
            ("ruzstd_matcher", |input| {
                ruzstd::encoding::compress_to_vec(
                    input,
                    ruzstd::encoding::CompressionLevel::Fastest,
                )
            }),
            #[cfg(feature = "zstd-c")]
            ("libzstd_level1", |input| {
                zstd::bulk::compress(input, 1).unwrap()
            }),
        ];
        for (encoder, compress) in encoders {
            let packed = compress(&input);
            println!(
                "zstd {name} {encoder}: {} -> {} bytes ({:.1} %)",
                input.len(),
                packed.len(),
                100.0 * packed.len() as f64 / input.len() as f64
            );
            g.bench_function(encoder, |b| b.iter(|| compress(black_box(&input))));
        }
        g.finish();
    }
}

criterion_group!(benches, bench, zstd_matchers);
criterion_main!(benches);
