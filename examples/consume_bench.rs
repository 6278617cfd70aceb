//! Consumer throughput: one group consumer reading N records of S bytes.
//!
//! ```text
//! cargo run --release --example consume_bench -- [--records 1000000] [--size 100] \
//!     [--partitions 6] [--backend mock|tansu]
//! ```
//!
//! Starts a test broker (librdkafka's mock cluster by default; `KAFKA_BROKERS=host:port` uses
//! an existing cluster instead), fills a fresh topic through rskafka, then times a purekafka
//! consumer from its first poll until it has read every record, and prints records/s, MB/s,
//! the client's CPU time per record (getrusage of this process, consuming phase only) and the
//! time from the first poll (join) to the first record. The broker runs in another process,
//! so its CPU is not counted.

use std::time::{Duration, Instant};

#[path = "support/bench.rs"]
mod bench;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    bench::init_tracing();
    let filled = bench::FilledTopic::prepare().await?;
    let (client, topic) = (&filled.client, &filled.topic);
    let (records, size, partitions) = (filled.records, filled.size, filled.partitions);

    // Consume (timed).
    let consumer = client.consumer(&[topic.as_str()])?;
    let cpu0 = bench::cpu_time();
    let t0 = Instant::now();
    let mut first = None;
    let mut got = 0usize;
    let mut bytes = 0usize;
    while got < records {
        let batch = consumer.poll(Duration::from_secs(5)).await?;
        if first.is_none() && !batch.is_empty() {
            first = Some(t0.elapsed());
        }
        got += batch.len();
        if batch.is_empty() {
            eprintln!(
                "no records for 5 s; {got} read so far, lag {:?}",
                consumer.lag().await?
            );
        }
        bytes += batch
            .iter()
            .map(|r| r.value.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>();
    }
    let elapsed = t0.elapsed();
    let cpu = bench::cpu_time() - cpu0;
    let first = first.unwrap_or_default();
    // Throughput from the first record on (the join time is reported on its own).
    let reading = elapsed - first;
    consumer.close().await?;

    bench::print_command("consume_bench");
    println!("broker: {}", filled.broker);
    println!("records: {got} x {size} B over {partitions} partitions ({bytes} value bytes)");
    println!("join to first record: {:.1} ms", first.as_secs_f64() * 1e3);
    println!(
        "read: {:.3} s, {:.0} records/s, {:.1} MB/s",
        reading.as_secs_f64(),
        got as f64 / reading.as_secs_f64(),
        bytes as f64 / reading.as_secs_f64() / 1e6
    );
    println!(
        "client CPU: {:.3} s total, {:.3} µs/record",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / got as f64
    );
    Ok(())
}
