//! `Deduplicator::check_and_mark` throughput with a 1 M-key capacity.
//!
//! `cargo bench --bench dedup`
//!
//! - `claim_complete_new`: a new key each time (claim: a keyed hash, a stripe lock, one
//!   hash-table probe and insert; complete: one more probe under the stripe lock), cycling
//!   over 2 M keys, so the cache stays full and forgets its oldest generation every 125k keys;
//! - `duplicate_hit`: keys already marked done (the skip path);
//! - `claim_complete_new_2_threads`: two threads claiming distinct new keys at once.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use purekafka::dedup::{Check, Deduplicator};

const CAPACITY: u64 = 1_000_000;

fn keys(n: usize, prefix: &str) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}-event-{i:010}")))
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("dedup_1M");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));

    let new_keys = keys(2 * CAPACITY as usize, "n");
    let dedup = Deduplicator::new(CAPACITY, Duration::from_secs(3600));
    let mut i = 0usize;
    g.bench_function("claim_complete_new", |b| {
        b.iter(|| {
            let k = new_keys[i % new_keys.len()].clone();
            i += 1;
            if let Check::Claimed(c) = dedup.check_and_mark(k) {
                c.complete();
            }
        })
    });

    let hot = keys(CAPACITY as usize, "h");
    let dedup = Deduplicator::new(CAPACITY, Duration::from_secs(3600));
    for k in &hot {
        if let Check::Claimed(c) = dedup.check_and_mark(k.clone()) {
            c.complete();
        }
    }
    let mut i = 0usize;
    g.bench_function("duplicate_hit", |b| {
        b.iter(|| {
            let k = hot[i % hot.len()].clone();
            i += 1;
            black_box(matches!(dedup.check_and_mark(k), Check::Duplicate))
        })
    });

    let dedup = Deduplicator::new(CAPACITY, Duration::from_secs(3600));
    let (a, b2) = new_keys.split_at(CAPACITY as usize);
    g.throughput(Throughput::Elements(2));
    g.bench_function("claim_complete_new_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for part in [a, b2] {
                    let dedup = &dedup;
                    s.spawn(move || {
                        for j in 0..iters as usize {
                            let k = part[j % part.len()].clone();
                            if let Check::Claimed(c) = dedup.check_and_mark(k) {
                                c.complete();
                            }
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
