//! The main job: produce a stream of order events with the batching producer, consume them
//! through a consumer group, commit after processing, and print what happened.
//!
//! ```sh
//! cargo run --example pipeline                         # starts a local test broker itself
//! KAFKA_BROKERS=127.0.0.1:9092 cargo run --example pipeline
//! PIPELINE_RECORDS=1000000 cargo run --release --example pipeline
//! ```
//!
//! With `KAFKA_BROKERS` unset it starts librdkafka's mock cluster (3 brokers; built from
//! testcontainers/mock-cluster on first use) and stops it at the end. Exits non-zero if any
//! record is missing, duplicated or out of order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use purekafka::{Client, Config, ConfigBuilder, Record};
use purekafka_testkit::{unique_name, TestCluster};
use serde::{Deserialize, Serialize};

const PARTITIONS: i32 = 6;

#[derive(Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    amount_cents: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records: u64 = std::env::var("PIPELINE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let local_broker = if std::env::var_os("KAFKA_BROKERS").is_some() {
        None
    } else {
        println!("KAFKA_BROKERS is unset: starting a local test broker (librdkafka mock cluster, 3 brokers)");
        Some(TestCluster::start_mock(3)?)
    };
    let mut config = ConfigBuilder::from_env();
    if let Some(cluster) = &local_broker {
        config = config.brokers(cluster.bootstrap_list());
    }
    let group = unique_name("pipeline-group");
    let config: Config = config
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .build()?;
    println!("brokers: {}", config.brokers().join(","));
    let client = Client::connect(config).await?;
    println!("connected; health: {:?}", client.health());

    let topic = unique_name("pipeline-orders");
    match &local_broker {
        Some(cluster) => cluster.create_topic(&topic, PARTITIONS).await?,
        None => client.create_topic(&topic, PARTITIONS, 1).await?,
    }
    println!("created topic {topic} ({PARTITIONS} partitions)");

    // Produce: enqueue waits only for buffer space; deliveries resolve per batch.
    let producer = client.producer();
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(records as usize);
    for id in 0..records {
        let order = Order {
            id,
            customer: format!("customer-{}", id % 1_000),
            amount_cents: (id * 37) % 10_000,
        };
        let record = Record::json(topic.clone(), &order)?
            .with_key(order.customer.clone())
            .with_header("source", "pipeline-example");
        deliveries.push(producer.enqueue(record).await?);
    }
    for d in deliveries {
        d.await?;
    }
    let produce_time = started.elapsed();
    let m = producer.metrics();
    producer.close().await;
    println!(
        "produced {records} records in {produce_time:.2?} ({:.0} records/s), {} batches, {} retries",
        records as f64 / produce_time.as_secs_f64(),
        m.batches_sent,
        m.retries
    );

    // Consume through the group: process, then commit what was processed.
    let consumer = client.consumer(&[topic.as_str()])?;
    let started = Instant::now();
    let mut seen = 0u64;
    let mut revenue = 0u64;
    let mut last_id_per_customer: HashMap<String, u64> = HashMap::new();
    let mut idle_since = Instant::now();
    while seen < records {
        let batch = consumer.poll(Duration::from_millis(500)).await?;
        if batch.is_empty() {
            if idle_since.elapsed() > Duration::from_secs(30) {
                return Err(format!("no records for 30 s after {seen} of {records}").into());
            }
            continue;
        }
        idle_since = Instant::now();
        for record in &batch {
            let order: Order = record.json()?;
            // Records of one key stay in order: same key, same partition.
            if let Some(prev) = last_id_per_customer.insert(order.customer.clone(), order.id) {
                if prev >= order.id {
                    return Err(
                        format!("order {} after {prev} for {}", order.id, order.customer).into(),
                    );
                }
            }
            revenue += order.amount_cents;
            seen += 1;
        }
        consumer.commit_batch(&batch).await?;
    }
    let consume_time = started.elapsed();
    let lag: i64 = consumer.lag().await?.values().sum();
    consumer.close().await?;
    println!(
        "consumed {seen} records in group {group} in {consume_time:.2?} ({:.0} records/s); revenue {}.{:02}; lag after commit {lag}",
        seen as f64 / consume_time.as_secs_f64(),
        revenue / 100,
        revenue % 100
    );
    let expected: u64 = (0..records).map(|id| (id * 37) % 10_000).sum();
    if seen != records || revenue != expected || lag != 0 {
        return Err(format!(
            "mismatch: {seen}/{records} records, revenue {revenue} vs {expected}, lag {lag}"
        )
        .into());
    }
    println!("ok: every record produced was consumed once, in order per key, and committed");
    Ok(())
}
