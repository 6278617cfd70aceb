//! Shared by the benchmark examples (`consume_bench`, `run_bench`, `produce_perf`): command
//! line arguments, this process's CPU time, and a broker with a filled topic.

#![allow(dead_code)] // each example uses a different part

use std::time::{Duration, Instant};

use purekafka::rskafka::client::partition::Compression;
use purekafka::rskafka::record::Record as RsRecord;
use purekafka::{Client, Config};
use purekafka_testkit::{unique_name, Backend, TestCluster};

/// User + system CPU time of this process so far (getrusage).
pub fn cpu_time() -> Duration {
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

/// The value after `name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// Logs to stderr when `RUST_LOG` is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
}

/// A connected client and a fresh topic filled with `--records` values of `--size` bytes over
/// `--partitions` partitions, on `KAFKA_BROKERS` or a broker started here (`--backend mock`
/// (default) or `tansu`).
pub struct FilledTopic {
    /// The broker started for the run (kept alive), if `KAFKA_BROKERS` was unset.
    pub cluster: Option<TestCluster>,
    /// Which broker: `mock`, `tansu` or `KAFKA_BROKERS`.
    pub broker: String,
    /// Client in the group `group`.
    pub client: Client,
    /// The topic.
    pub topic: String,
    /// Records written.
    pub records: usize,
    /// Value size in bytes.
    pub size: usize,
    /// Partitions of the topic.
    pub partitions: i32,
}

impl FilledTopic {
    /// Starts or finds the broker, creates the topic and fills it through rskafka (not timed
    /// by the callers; printed on stderr).
    pub async fn prepare() -> Result<FilledTopic, Box<dyn std::error::Error>> {
        let records: usize = arg("--records", "1000000").parse()?;
        let size: usize = arg("--size", "100").parse()?;
        let partitions: i32 = arg("--partitions", "6").parse()?;
        let (cluster, broker, brokers) = match std::env::var("KAFKA_BROKERS") {
            Ok(b) => (
                None,
                "KAFKA_BROKERS".to_string(),
                b.split(',').map(str::to_string).collect(),
            ),
            Err(_) => {
                let name = arg("--backend", "mock");
                let backend = match name.as_str() {
                    "tansu" => Backend::Tansu,
                    _ => Backend::MockCluster,
                };
                let cluster = TestCluster::start(backend)?;
                let list = cluster.bootstrap_list();
                (Some(cluster), name, list)
            }
        };
        let topic = unique_name("bench");
        let config = Config::builder()
            .brokers(brokers)
            .group_id(unique_name("bench-group"))
            .set("auto.offset.reset", "earliest")
            .build()?;
        let client = Client::connect(config).await?;
        match &cluster {
            Some(c) => c.create_topic(&topic, partitions).await?,
            None => client.create_topic(&topic, partitions, 1).await?,
        }
        let filled = FilledTopic {
            cluster,
            broker,
            client,
            topic,
            records,
            size,
            partitions,
        };
        filled.fill().await?;
        Ok(filled)
    }

    async fn fill(&self) -> Result<(), Box<dyn std::error::Error>> {
        let started = Instant::now();
        let value = vec![b'x'; self.size];
        let per = self.records.div_ceil(self.partitions as usize);
        let mut tasks = Vec::new();
        for p in 0..self.partitions {
            let pc = self.client.partition_client(&self.topic, p).await?;
            let value = value.clone();
            let n = per.min(self.records - per * p as usize);
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
        eprintln!("filled {} records in {:?}", self.records, started.elapsed());
        Ok(())
    }
}

/// Prints the command that produced the figures.
pub fn print_command(example: &str) {
    let command: Vec<String> = std::env::args().collect();
    println!(
        "command: cargo run --release --example {example} -- {}",
        command[1..].join(" ")
    );
}
