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

use purekafka::rskafka::client::partition::Compression;
use purekafka::rskafka::record::Record as RsRecord;
use purekafka::{Client, Config, RunnerConfig};
use purekafka_testkit::{unique_name, Backend, TestCluster};

fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    #[allow(unsafe_code)]
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let records: usize = arg("--records", "1000000").parse()?;
    let size: usize = arg("--size", "100").parse()?;
    let partitions: i32 = arg("--partitions", "6").parse()?;
    let backend_name = arg("--backend", "mock");

    let mut _cluster = None;
    let brokers: Vec<String> = match std::env::var("KAFKA_BROKERS") {
        Ok(b) => b.split(',').map(str::to_string).collect(),
        Err(_) => {
            let backend = match backend_name.as_str() {
                "tansu" => Backend::Tansu,
                _ => Backend::MockCluster,
            };
            let cluster = TestCluster::start(backend)?;
            let list = cluster.bootstrap_list();
            _cluster = Some(cluster);
            list
        }
    };
    let topic = unique_name("bench");
    let group = unique_name("bench-group");
    let config = Config::builder()
        .brokers(brokers.clone())
        .group_id(&group)
        .set("auto.offset.reset", "earliest")
        .build()?;
    let client = Client::connect(config).await?;
    match &_cluster {
        Some(c) => c.create_topic(&topic, partitions).await?,
        None => client.create_topic(&topic, partitions, 1).await?,
    }

    // Fill the topic (not timed).
    let fill = Instant::now();
    let value = vec![b'x'; size];
    let per = records.div_ceil(partitions as usize);
    let mut tasks = Vec::new();
    for p in 0..partitions {
        let pc = client.partition_client(&topic, p).await?;
        let value = value.clone();
        let n = per.min(records - per * p as usize);
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while i < n {
                let k = 5_000.min(n - i);
                let batch: Vec<RsRecord> = (0..k)
                    .map(|_| RsRecord {
                        key: None,
                        value: Some(value.clone()),
                        headers: Default::default(),
                        timestamp: chrono::Utc::now(),
                    })
                    .collect();
                pc.produce(batch, Compression::NoCompression).await?;
                i += k;
            }
            Ok::<_, purekafka::rskafka::client::error::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    eprintln!("filled {records} records in {:?}", fill.elapsed());

    // Run a no-op handler over every record (timed).
    let runner = client.consumer(&[&topic])?.runner().config(RunnerConfig {
        concurrency: partitions as usize,
        shutdown_on_signal: false,
        ..RunnerConfig::default()
    });
    let handle = runner.handle();
    let cpu0 = cpu_time();
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
    let cpu = cpu_time() - cpu0;
    handle.shutdown();
    let metrics = run.await??;
    let first = first.unwrap_or_default();
    let reading = elapsed - first;
    let records = metrics.processed as usize;

    let command: Vec<String> = std::env::args().collect();
    println!(
        "command: cargo run --release --example run_bench -- {}",
        command[1..].join(" ")
    );
    println!(
        "broker: {}",
        if _cluster.is_some() {
            backend_name.as_str()
        } else {
            "KAFKA_BROKERS"
        }
    );
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
