//! Shared by the integration tests: tracing set-up, starting a broker, and a macro that runs
//! one test body on each local backend.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::time::Duration;

/// Processes started under a watchdog (tansu, stunnel).
pub mod process;
/// tansu with SQLite storage, and topics grown in its database.
pub mod tansu_sql;

use purekafka::rskafka::client::partition::Compression;
use purekafka::rskafka::record::Record as RsRecord;
use purekafka::{Client, Config};
use purekafka_testkit::{Backend, TestCluster};

/// Logs to the test's output; `RUST_LOG=purekafka=debug` shows retries and give-ups.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "purekafka=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Starts a broker of `backend`; on the mock cluster the first group rebalance waits 200 ms
/// instead of librdkafka's 3 s, so group tests do not idle.
pub fn start(backend: Backend) -> TestCluster {
    let cluster = TestCluster::start(backend).expect("start broker");
    if *cluster.backend() == Backend::MockCluster {
        cluster
            .set_group_initial_rebalance_delay(Duration::from_millis(200))
            .expect("set the initial rebalance delay");
    }
    cluster
}

/// A client of `cluster` in consumer group `group`, reading from the earliest offset, with
/// short group timers for tests (session 6 s, heartbeat 0.5 s, max poll interval 20 s);
/// `extra` overrides or adds keys.
pub async fn client(cluster: &TestCluster, group: &str, extra: &[(&str, &str)]) -> Client {
    let config = Config::builder()
        .brokers(cluster.bootstrap_list())
        .group_id(group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("max.poll.interval.ms", "20000")
        .set_all(extra.iter().copied())
        .build()
        .expect("test configuration");
    Client::connect(config).await.expect("connect")
}

/// Produces `per_partition` records to each partition, values `p-i`, in batches of `batch`
/// (through rskafka, so consumer tests do not depend on the producer).
pub async fn produce(
    client: &Client,
    topic: &str,
    partitions: i32,
    per_partition: usize,
    batch: usize,
) {
    let mut tasks = Vec::new();
    for p in 0..partitions {
        let pc = client.partition_client(topic, p).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while i < per_partition {
                let n = batch.min(per_partition - i);
                let records: Vec<RsRecord> = (i..i + n)
                    .map(|j| RsRecord {
                        key: Some(format!("k{j}").into_bytes()),
                        value: Some(format!("{p}-{j}").into_bytes()),
                        headers: Default::default(),
                        timestamp: chrono::Utc::now(),
                    })
                    .collect();
                pc.produce(records, Compression::NoCompression)
                    .await
                    .unwrap();
                i += n;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Runs `$body` (a closure taking the started `TestCluster`) as two tests, `mock_cluster`
/// and `tansu`, in a module named `$name`; with `PUREKAFKA_TEST_BROKERS` set, both run
/// against that cluster instead.
#[allow(unused_macros)] // the consumer tests name their backends one by one
macro_rules! on_each_backend {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mock_cluster() {
                crate::support::init_tracing();
                let backend = Backend::from_env().unwrap_or(Backend::MockCluster);
                ($body)(crate::support::start(backend)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tansu() {
                crate::support::init_tracing();
                let backend = Backend::from_env().unwrap_or(Backend::Tansu);
                ($body)(crate::support::start(backend)).await;
            }
        }
    };
}

/// Every record of `topic`/`partition` from its earliest offset, in offset order, read by
/// rskafka (an independent implementation) batch by batch.
pub async fn read_partition(
    client: &Client,
    topic: &str,
    partition: i32,
) -> Vec<purekafka::rskafka::record::RecordAndOffset> {
    let pc = client
        .partition_client(topic, partition)
        .await
        .expect("partition client");
    let end = pc
        .get_offset(purekafka::rskafka::client::partition::OffsetAt::Latest)
        .await
        .expect("latest offset");
    let mut offset = pc
        .get_offset(purekafka::rskafka::client::partition::OffsetAt::Earliest)
        .await
        .expect("earliest offset");
    let mut out: Vec<purekafka::rskafka::record::RecordAndOffset> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while offset < end {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic}/{partition} stalled at {offset} of {end}"
        );
        let (records, _) = pc
            .fetch_records(offset, 1..16_000_000, 500)
            .await
            .expect("fetch");
        for r in records {
            if r.offset >= offset {
                offset = r.offset + 1;
                out.push(r);
            }
        }
    }
    out
}

/// One record as the confluent-kafka peer (`tests/support/confluent_peer.py`) read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// Partition the record was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Key as UTF-8, if any.
    pub key: Option<String>,
    /// Value as UTF-8, if any.
    pub value: Option<String>,
}

/// Runs Confluent's Python client (librdkafka underneath), an independent implementation, with
/// `args` (see the commands in `tests/support/confluent_peer.py`); returns the JSON objects it
/// printed, one per line. Panics with its stderr when it fails. Installed by
/// scripts/setup-test-env.sh (`pip install confluent-kafka`).
pub async fn confluent_peer(args: &[&str]) -> Vec<serde_json::Value> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/confluent_peer.py"
    );
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run python3 (confluent-kafka peer)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "confluent-kafka peer {args:?} failed: {}\nstdout: {stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("peer prints JSON lines"))
        .collect()
}

/// What the confluent-kafka peer read with `consume` (records only, in arrival order).
pub fn peer_records(lines: &[serde_json::Value]) -> Vec<PeerRecord> {
    lines
        .iter()
        .filter(|l| l.get("offset").is_some())
        .map(|l| PeerRecord {
            partition: l["partition"].as_i64().expect("partition") as i32,
            offset: l["offset"].as_i64().expect("offset"),
            key: l["key"].as_str().map(str::to_owned),
            value: l["value"].as_str().map(str::to_owned),
        })
        .collect()
}
