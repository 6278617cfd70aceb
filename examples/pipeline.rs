//! The main job: produce a batch of events, consume them back, print what happened.
//!
//! ```sh
//! cargo run --example pipeline                         # starts a local test broker itself
//! KAFKA_BROKERS=127.0.0.1:9092 cargo run --example pipeline
//! ```
//!
//! With `KAFKA_BROKERS` unset it starts librdkafka's mock cluster (built from
//! testcontainers/mock-cluster on first use) and stops it at the end.

use std::time::Instant;

use purekafka::rskafka::client::partition::{Compression, OffsetAt};
use purekafka::rskafka::record::Record as RsRecord;
use purekafka::{Client, Config, ConfigBuilder};
use purekafka_testkit::{unique_name, TestCluster};

const RECORDS: usize = 10_000;
const PARTITIONS: i32 = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_local_broker, config) = if std::env::var_os("KAFKA_BROKERS").is_some() {
        (None, Config::from_env()?)
    } else {
        println!("KAFKA_BROKERS is unset: starting a local test broker (librdkafka mock cluster)");
        let cluster = TestCluster::start_mock(3)?;
        let config = ConfigBuilder::from_env()
            .brokers(cluster.bootstrap_list())
            .build()?;
        (Some(cluster), config)
    };
    println!("brokers: {}", config.brokers().join(","));
    let client = Client::connect(config).await?;
    println!("connected, health: {:?}", client.health());

    let topic = unique_name("pipeline");
    match &_local_broker {
        Some(cluster) => cluster.create_topic(&topic, PARTITIONS).await?,
        None => client.create_topic(&topic, PARTITIONS, 1).await?,
    }
    println!("created topic {topic} with {PARTITIONS} partitions");

    let started = Instant::now();
    let mut produced = 0;
    for p in 0..PARTITIONS {
        let partition = client.partition_client(&topic, p).await?;
        let records: Vec<RsRecord> = (0..RECORDS)
            .filter(|i| (*i as i32) % PARTITIONS == p)
            .map(|i| RsRecord {
                key: Some(format!("order-{i}").into_bytes()),
                value: Some(format!("{{\"order\":{i},\"amount\":{}}}", i * 3).into_bytes()),
                headers: Default::default(),
                timestamp: purekafka::rskafka::chrono::Utc::now(),
            })
            .collect();
        produced += records.len();
        partition
            .produce(records, Compression::NoCompression)
            .await?;
    }
    let produce_time = started.elapsed();
    println!("produced {produced} records in {produce_time:?}");

    let started = Instant::now();
    let mut consumed = 0;
    for p in 0..PARTITIONS {
        let partition = client.partition_client(&topic, p).await?;
        let mut offset = partition.get_offset(OffsetAt::Earliest).await?;
        let end = partition.get_offset(OffsetAt::Latest).await?;
        while offset < end {
            let (records, _high_watermark) =
                partition.fetch_records(offset, 1..1_000_000, 500).await?;
            for r in &records {
                offset = offset.max(r.offset + 1);
                consumed += 1;
            }
        }
    }
    println!("consumed {consumed} records in {:?}", started.elapsed());
    if consumed != produced {
        return Err(format!("consumed {consumed} of {produced} records").into());
    }
    println!("ok: every record produced was read back");
    Ok(())
}
