//! End-to-end producer throughput: N records of S bytes to a topic, acks=all, linger 5 ms,
//! printing records/s, MB/s and the client's CPU time per record (getrusage of this process
//! only: the broker runs in its own process).
//!
//! ```sh
//! # against librdkafka's mock cluster (3 brokers, 6 partitions), started by the testkit:
//! cargo run --release --example produce_perf -- --records 1000000 --size 100
//! # against any cluster:
//! KAFKA_BROKERS=127.0.0.1:9092 cargo run --release --example produce_perf -- --topic perf
//! ```
//!
//! Options: `--records N` (1,000,000), `--size BYTES` (100), `--partitions P` (6, for the
//! topic it creates on the mock cluster), `--topic NAME`, `--keyed` (keys `k<i % 100000>`;
//! default keyless, sticky partitioning), `--set key=value` (any producer option, repeatable),
//! `--rtt-ms MS` (mock cluster only: every broker answers MS later, as a remote broker would;
//! what batches in flight per partition, `max.in.flight`, are for).

use std::time::Instant;

use bytes::Bytes;
use purekafka::{Client, Config, Record};
use purekafka_testkit::{unique_name, TestCluster};

fn max_rss_kib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: as above.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init().ru_maxrss
    }
}

#[path = "support/bench.rs"]
mod bench;

#[tokio::main]
async fn main() -> purekafka::Result<()> {
    let mut records = 1_000_000usize;
    let mut size = 100usize;
    let mut partitions = 6i32;
    let mut topic = None;
    let mut keyed = false;
    let mut rtt_ms = 0u64;
    let mut sets: Vec<(String, String)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("option needs a value");
        match a.as_str() {
            "--records" => records = value().parse().expect("--records N"),
            "--size" => size = value().parse().expect("--size BYTES"),
            "--partitions" => partitions = value().parse().expect("--partitions P"),
            "--topic" => topic = Some(value()),
            "--keyed" => keyed = true,
            "--rtt-ms" => rtt_ms = value().parse().expect("--rtt-ms MS"),
            "--set" => {
                let kv = value();
                let (k, v) = kv.split_once('=').expect("--set key=value");
                sets.push((k.into(), v.into()));
            }
            other => panic!("unknown argument {other}"),
        }
    }

    // A mock cluster of 3 brokers unless KAFKA_BROKERS names a cluster.
    let mut _mock = None;
    let (brokers, topic) = match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => (b, topic.unwrap_or_else(|| "perf".into())),
        _ => {
            let cluster = TestCluster::start_mock(3).expect("start mock cluster");
            let topic = topic.unwrap_or_else(|| unique_name("perf"));
            cluster
                .create_topic(&topic, partitions)
                .await
                .expect("create topic");
            if rtt_ms > 0 {
                cluster
                    .set_rtt(-1, std::time::Duration::from_millis(rtt_ms))
                    .expect("set rtt");
            }
            let b = cluster.bootstrap();
            _mock = Some(cluster);
            (b, topic)
        }
    };
    let mut builder = Config::builder()
        .brokers(brokers.split(','))
        .client_id("produce-perf")
        .set("acks", "all")
        .set("linger.ms", "5");
    for (k, v) in &sets {
        builder = builder.set(k, v);
    }
    let client = Client::connect(builder.build()?).await?;
    let producer = client.producer();
    let value = Bytes::from(vec![b'x'; size]);
    // Warm up: metadata and connections.
    producer
        .send(Record::new(topic.clone(), value.clone()))
        .await?;
    let keys: Vec<Bytes> = if keyed {
        (0..100_000).map(|i| Bytes::from(format!("k{i}"))).collect()
    } else {
        Vec::new()
    };

    let cpu0 = bench::cpu_time();
    let t0 = Instant::now();
    let mut pending = Vec::with_capacity(records);
    for i in 0..records {
        let mut r = Record::new(topic.clone(), value.clone());
        if keyed {
            r.key = Some(keys[i % keys.len()].clone());
        }
        pending.push(producer.enqueue(r).await?);
    }
    let enqueued = t0.elapsed();
    let mut failed = 0usize;
    for f in pending {
        if f.await.is_err() {
            failed += 1;
        }
    }
    let elapsed = t0.elapsed();
    let cpu = bench::cpu_time() - cpu0;
    let m = producer.metrics();
    producer.close().await;

    let secs = elapsed.as_secs_f64();
    println!(
        "command: produce_perf --records {records} --size {size} --partitions {partitions} ({}, acks=all, linger.ms=5{})",
        if keyed { "keyed" } else { "keyless" },
        sets.iter()
            .map(|(k, v)| format!(", {k}={v}"))
            .collect::<String>()
    );
    println!("records:          {records} ({failed} failed)");
    println!(
        "elapsed:          {secs:.3} s (enqueue done after {:.3} s)",
        enqueued.as_secs_f64()
    );
    println!(
        "throughput:       {:.0} records/s, {:.1} MB/s of values",
        records as f64 / secs,
        (records * size) as f64 / secs / 1e6
    );
    println!(
        "client CPU:       {:.3} s = {:.3} µs/record",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / records as f64
    );
    println!("peak RSS:         {} MiB", max_rss_kib() / 1024);
    println!(
        "batches:          {} (avg {:.0} records, {} bytes), retries {}",
        m.batches_sent, m.avg_batch_records, m.avg_batch_bytes, m.retries
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
