//! A failed send hands the record back (rust-rdkafka's `(KafkaError, OwnedMessage)`), so the
//! caller can retry or route it: before it is queued (too large for the client, unknown topic,
//! closed producer), while it waits for its topic's metadata (`try_send`), and after it was
//! encoded into a batch (the broker refuses it as too large, retries run out), through
//! `send`, `try_send`, the delivery future and the detached producer's callback. Each record
//! that comes back is compared field by field, bytes included, with the one sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use purekafka::producer::BatchReport;
use purekafka::{Client, Config, ConfigBuilder, Error, ErrorKind, Record, SendError};
use purekafka_testkit::{unique_name, Backend, TestCluster};

#[macro_use]
mod support;

fn config_for(cluster: &TestCluster) -> ConfigBuilder {
    Config::builder()
        .brokers(cluster.bootstrap_list())
        .client_id(unique_name("send-errors"))
}

async fn connect(config: ConfigBuilder) -> Client {
    Client::connect(config.build().expect("config"))
        .await
        .expect("connect")
}

/// A record with every field set (and some left empty), binary bytes included.
fn sample(topic: &str, i: usize) -> Record {
    let value: Vec<u8> = (0..200 + i * 7).map(|b| (b * 31 + i) as u8).collect();
    let mut r = Record::new(topic.to_string(), value)
        .with_header("trace", format!("t-{i}"))
        .with_header("bin", vec![0u8, 255, i as u8])
        .with_header("trace", "repeated name")
        .with_timestamp(1_700_000_000_000 + i as i64);
    if i % 4 != 3 {
        r = r.with_key(format!("key-{i}"));
    }
    r
}

/// The record handed back is the one sent: topic, key, value, headers and timestamp equal
/// byte for byte; the partition is the one it was given (`None` if it failed before that).
fn assert_handed_back(back: &SendError, sent: &Record, partition: Option<i32>) {
    let r = back.record();
    assert_eq!(r.topic, sent.topic, "topic ({})", back.error());
    assert_eq!(r.key, sent.key, "key ({})", back.error());
    assert_eq!(r.value, sent.value, "value ({})", back.error());
    assert_eq!(r.headers, sent.headers, "headers ({})", back.error());
    assert_eq!(r.timestamp, sent.timestamp, "timestamp ({})", back.error());
    assert_eq!(r.partition, partition, "partition ({})", back.error());
}

/// A detached producer whose callback keeps every report.
fn detached(
    client: &Client,
) -> (
    purekafka::producer::DetachedProducer,
    Arc<Mutex<Vec<BatchReport>>>,
) {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&reports);
    let producer = client.detached_producer(move |report| r.lock().unwrap().push(report));
    (producer, reports)
}

on_each_backend!(
    closed_producer_hands_the_record_back,
    |cluster: TestCluster| async move {
        let topic = unique_name("send-errors-closed");
        cluster.create_topic(&topic, 1).await.unwrap();
        let client = connect(config_for(&cluster)).await;
        let producer = client.producer();
        producer
            .send(sample(&topic, 0))
            .await
            .expect("delivered while open");
        producer.close().await;
        let sent = sample(&topic, 1);
        let back = producer.send(sent.clone()).await.expect_err("closed");
        assert!(matches!(back.error(), Error::Closed(_)), "{}", back.error());
        assert_handed_back(&back, &sent, None);
        let back = producer.try_send(sent.clone()).expect_err("closed");
        assert_handed_back(&back, &sent, None);

        let (detached, _) = detached(&client);
        detached.close().await;
        let back = detached.send(sent.clone()).await.expect_err("closed");
        assert_eq!(back.error().kind(), ErrorKind::Closed);
        assert_handed_back(&back, &sent, None);
        // `?` in a function returning purekafka::Result keeps working: the record is dropped.
        let as_error: purekafka::Result<()> = (|| Ok(detached.try_send(sent)?))();
        assert!(matches!(as_error, Err(Error::Closed(_))));
    }
);

on_each_backend!(
    too_large_for_the_client_hands_the_record_back,
    |cluster: TestCluster| async move {
        let topic = unique_name("send-errors-client-limit");
        cluster.create_topic(&topic, 1).await.unwrap();
        let client = connect(config_for(&cluster).set("message.max.bytes", "20000")).await;
        let producer = client.producer();
        let mut sent = sample(&topic, 2);
        sent.value = Some(vec![7u8; 30_000].into());
        let back = producer.send(sent.clone()).await.expect_err("too large");
        assert_eq!(back.error().kind(), ErrorKind::RecordTooLarge);
        assert_handed_back(&back, &sent, None);
        // Sent again smaller, it goes through.
        let mut again = back.into_record();
        again.value = Some(vec![7u8; 1_000].into());
        producer
            .send(again)
            .await
            .expect("a smaller record is delivered");
    }
);

/// tansu creates no topic on its own: a record for a topic that does not exist comes back,
/// from `send` (before it is queued) and from `try_send`'s future (it waited for the topic's
/// metadata), and in the detached producer's report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_hands_the_record_back_on_tansu() {
    support::init_tracing();
    let cluster = support::start(Backend::from_env().unwrap_or(Backend::Tansu));
    let missing = unique_name("send-errors-missing");
    let client = connect(config_for(&cluster)).await;
    let producer = client.producer();

    let sent = sample(&missing, 3);
    let back = producer
        .send(sent.clone())
        .await
        .expect_err("unknown topic");
    assert_eq!(
        back.error().kind(),
        ErrorKind::UnknownTopic,
        "{}",
        back.error()
    );
    assert_handed_back(&back, &sent, None);

    let sent: Vec<Record> = (4..8).map(|i| sample(&missing, i)).collect();
    let futures: Vec<_> = sent
        .iter()
        .map(|r| {
            producer
                .try_send(r.clone())
                .expect("queued for the topic's metadata")
        })
        .collect();
    for (f, sent) in futures.into_iter().zip(&sent) {
        let back = f.await.expect_err("unknown topic");
        assert_eq!(
            back.error().kind(),
            ErrorKind::UnknownTopic,
            "{}",
            back.error()
        );
        assert_handed_back(&back, sent, None);
    }

    let (detached, reports) = detached(&client);
    for r in &sent {
        detached.try_send(r.clone()).expect("queued");
    }
    detached.flush().await;
    let reports = std::mem::take(&mut *reports.lock().unwrap());
    let back: Vec<&Record> = reports.iter().flat_map(|r| &r.failed_records).collect();
    assert_eq!(back.len(), sent.len(), "every record comes back once");
    for (back, sent) in back.into_iter().zip(&sent) {
        assert_eq!(back.key, sent.key);
        assert_eq!(back.value, sent.value);
        assert_eq!(back.headers, sent.headers);
        assert_eq!(back.timestamp, sent.timestamp);
    }
    assert!(reports
        .iter()
        .all(|r| r.result.is_err() && *r.topic == *missing));
}

/// The broker refuses a one-record batch as too large (MESSAGE_TOO_LARGE, injected into the
/// mock cluster): the record is decoded back out of its compressed batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_for_the_broker_hands_the_record_back() {
    support::init_tracing();
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("send-errors-broker-limit");
    cluster.create_topic(&topic, 2).await.unwrap();
    for compression in ["none", "gzip", "lz4"] {
        let client = connect(config_for(&cluster).set("compression.type", compression)).await;
        let producer = client.producer();
        producer
            .send(sample(&topic, 0).with_partition(1))
            .await
            .expect("topic known");
        cluster.push_request_errors(0, &[10]).unwrap();
        let sent = sample(&topic, 9).with_partition(1);
        let back = producer.send(sent.clone()).await.expect_err("too large");
        assert_eq!(
            back.error().kind(),
            ErrorKind::RecordTooLarge,
            "{}",
            back.error()
        );
        assert_handed_back(&back, &sent, Some(1));
        // Retried as it came back, it is written.
        let d = producer.send(back.into_record()).await.expect("retried");
        assert_eq!(d.partition, 1);
        producer.close().await;
    }
}

/// Retries run out while the broker is down: every record of the batches comes back (from
/// the futures and from the detached producer's reports), in order, with its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_hand_every_record_back() {
    support::init_tracing();
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("send-errors-down");
    cluster.create_topic(&topic, 3).await.unwrap();
    let config = config_for(&cluster)
        .set("compression.type", "gzip")
        .set("linger.ms", "20")
        .set("delivery.timeout.ms", "1500")
        .set("request.timeout.ms", "500");
    let client = connect(config).await;
    let producer = client.producer();
    producer
        .send(sample(&topic, 0))
        .await
        .expect("delivered while up");
    let (detached, reports) = detached(&client);
    detached.send(sample(&topic, 0)).await.unwrap();
    detached.flush().await;
    reports.lock().unwrap().clear();

    cluster.broker_down(-1).unwrap();
    let sent: Vec<Record> = (0..40).map(|i| sample(&topic, i)).collect();
    let mut futures = Vec::new();
    for r in &sent {
        futures.push(producer.enqueue(r.clone()).await.expect("queued"));
        detached.send(r.clone()).await.expect("queued");
    }
    let mut partitions = Vec::new();
    for (f, sent) in futures.into_iter().zip(&sent) {
        let back = tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("resolved within delivery.timeout.ms")
            .expect_err("the brokers are down");
        assert!(back.record().partition.is_some());
        partitions.push(back.record().partition);
        assert_handed_back(&back, sent, back.record().partition);
    }
    // Records of one key went to one partition; a retry of what came back goes there again.
    for (sent, p) in sent.iter().zip(&partitions) {
        if let Some(key) = &sent.key {
            let n = 3;
            assert_eq!(*p, Some(purekafka::producer::partition_for_key(key, n)));
        }
    }
    tokio::time::timeout(Duration::from_secs(60), detached.flush())
        .await
        .expect("every record reported");
    let reports = std::mem::take(&mut *reports.lock().unwrap());
    let mut back: Vec<Record> = reports
        .iter()
        .inspect(|r| {
            assert!(r.result.is_err());
            assert_eq!(r.failed_records.len(), r.records as usize);
        })
        .flat_map(|r| r.failed_records.iter().cloned())
        .collect();
    assert_eq!(back.len(), sent.len(), "every record comes back once");
    back.sort_by_key(|r| r.timestamp);
    for (back, sent) in back.iter().zip(&sent) {
        assert_eq!(back.key, sent.key);
        assert_eq!(back.value, sent.value);
        assert_eq!(back.headers, sent.headers);
        assert_eq!(back.timestamp, sent.timestamp);
    }
}

/// The broker fences the idempotent producer (PRODUCER_FENCED, injected): the batch in flight
/// and every batch still queued behind it fail, and each of their records comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_hands_back_what_was_queued() {
    support::init_tracing();
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("send-errors-fenced");
    cluster.create_topic(&topic, 1).await.unwrap();
    // One record per batch, one batch in flight: the others wait in the queue.
    let config = config_for(&cluster)
        .set("batch.size", "1")
        .set("max.in.flight.requests.per.connection", "1")
        .set("compression.type", "snappy");
    let client = connect(config).await;
    let producer = client.producer();
    producer.send(sample(&topic, 0)).await.expect("delivered");
    cluster.push_request_errors(0, &[90]).unwrap();
    let sent: Vec<Record> = (1..30)
        .map(|i| sample(&topic, i).with_partition(0))
        .collect();
    // A record enqueued after the fencing is refused at once; either way it comes back.
    let mut outcomes = Vec::new();
    for r in &sent {
        outcomes.push(producer.enqueue(r.clone()).await);
    }
    for (outcome, sent) in outcomes.into_iter().zip(&sent) {
        let back = match outcome {
            Err(refused) => refused,
            Ok(f) => tokio::time::timeout(Duration::from_secs(60), f)
                .await
                .expect("resolved")
                .expect_err("fenced"),
        };
        assert!(back.error().is_fatal(), "{}", back.error());
        let partition = back.record().partition;
        assert_handed_back(&back, sent, partition);
        assert_eq!(partition, Some(0));
    }
    cluster.command("clear-request-errors 0").unwrap();
}
