//! Records/s through `Consumer::run` with a no-op handler (dedup off, default options).
//!
//! ```text
//! cargo run --release --example run_bench -- [--records 1000000] [--size 100] \
//!     [--partitions 6] [--backend mock|tansu]
//! ```
//!
//! Starts a test broker (librdkafka's mock cluster by default; `KAFKA_BROKERS=host:port` uses
//! an existing cluster instead), fills a fresh topic through rskafka, then times the runner
//! from start until its handler has seen every record, and prints records/s and the client's
//! CPU time per record (getrusage of this process, running phase only; the broker runs in
//! another process). Compare with `consume_bench` (plain poll loop) for the runtime's cost.

use std::time::{Duration, Instant};

use purekafka::RunnerConfig;

#[path = "support/bench.rs"]
mod bench;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    bench::init_tracing();
    let filled = bench::FilledTopic::prepare().await?;
    let (client, topic) = (&filled.client, &filled.topic);
    let (records, size, partitions) = (filled.records, filled.size, filled.partitions);

    // Run a no-op handler over every record (timed).
    let runner = client.consumer(&[topic.as_str()])?.runner().config(
        RunnerConfig::default()
            .concurrency(partitions as usize)
            .shutdown_on_signal(false),
    );
    let handle = runner.handle();
    let cpu0 = bench::cpu_time();
    let t0 = Instant::now();
    let run = tokio::spawn(runner.run(|_record| async { Ok(()) }));
    let mut first = None;
    let mut last_report = Instant::now();
    // librdkafka's mock cluster keeps a bounded log per partition: with many records the
    // earliest offset moves past 0 and fewer than `records` are readable. So the run also
    // ends when nothing new was processed for 2 s; the rate counts up to the last progress.
    let (mut last_done, mut last_progress) = (0usize, Instant::now());
    loop {
        let done = handle.metrics().processed as usize;
        if first.is_none() && done > 0 {
            first = Some(t0.elapsed());
        }
        if done != last_done {
            (last_done, last_progress) = (done, Instant::now());
        }
        if done >= records || (done > 0 && last_progress.elapsed() > Duration::from_secs(2)) {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("{done} of {records} processed");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let idle = if last_done >= records {
        Duration::ZERO
    } else {
        last_progress.elapsed()
    };
    let elapsed = t0.elapsed() - idle;
    let cpu = bench::cpu_time() - cpu0;
    handle.shutdown();
    let metrics = run.await??;
    let first = first.unwrap_or_default();
    let reading = elapsed - first;
    let records = metrics.processed as usize;

    bench::print_command("run_bench");
    println!("broker: {}", filled.broker);
    println!(
        "records: {} x {size} B over {partitions} partitions, no-op handler",
        metrics.processed
    );
    println!("join to first record: {:.1} ms", first.as_secs_f64() * 1e3);
    println!(
        "run: {:.3} s, {:.0} records/s",
        reading.as_secs_f64(),
        records as f64 / reading.as_secs_f64(),
    );
    println!(
        "client CPU: {:.3} s total, {:.3} µs/record (includes the 1 ms progress poll of this program)",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / records as f64
    );
    Ok(())
}
