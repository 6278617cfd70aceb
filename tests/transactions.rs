//! The transactional producer (`transactional.id`) against real brokers: commit and abort
//! round trips, send_offsets_to_transaction (KIP-447) committing the group's offsets only with
//! the transaction, fencing by a second producer with the same transactional id, and the
//! coordinator's transient errors retried (mock cluster); the processing runtime's
//! exactly-once mode, including a SIGKILL and restart of `examples/exactly_once`.
//!
//! What each broker can prove: librdkafka's mock cluster runs the transaction protocol
//! (InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn) but writes
//! no commit/abort markers; tansu 0.6.0 writes the markers (read here with a raw Fetch) but
//! sends no aborted-transaction list in Fetch responses, so a read_committed consumer
//! (confluent-kafka's too) still sees aborted records there. The tests check what the broker
//! can show: the markers and their type on tansu, the transactional bit of every batch, the
//! committed offsets per outcome, and that confluent-kafka reads the committed records.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use purekafka::{
    Client, Config, ConsumerGroupMetadata, Error, ErrorCode, Producer, Record, TopicPartition,
};
use purekafka_testkit::{unique_name, Backend, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[macro_use]
mod support;

const T: Duration = Duration::from_secs(60);

/// A client whose producer is transactional with `txn_id`.
async fn txn_client(cluster: &TestCluster, txn_id: &str) -> Client {
    support::init_tracing();
    let config = Config::builder()
        .brokers(cluster.bootstrap_list())
        .client_id(unique_name("txn-test"))
        .set("transactional.id", txn_id)
        .set("transaction.timeout.ms", "60000")
        .set("linger.ms", "2")
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "500")
        .build()
        .expect("config");
    Client::connect(config).await.expect("connect")
}

fn record(topic: &str, partition: i32, key: String) -> Record {
    Record::new(topic.to_string(), key.clone())
        .with_key(key)
        .with_partition(partition)
}

/// Sends `n` records keyed `<tag>-<i>` over `partitions` and waits for their deliveries.
async fn send_n(producer: &Producer, topic: &str, partitions: i32, tag: &str, n: usize) {
    let mut pending = Vec::new();
    for i in 0..n {
        let p = (i as i32) % partitions;
        pending.push(
            producer
                .enqueue(record(topic, p, format!("{tag}-{i}")))
                .await
                .expect("enqueue in a transaction"),
        );
    }
    for f in pending {
        f.await.expect("delivered");
    }
}

/// One batch as a raw Fetch shows it.
#[derive(Debug, Clone)]
struct RawBatch {
    base_offset: i64,
    last_offset: i64,
    producer_id: i64,
    transactional: bool,
    /// `Some(true)`: a commit marker, `Some(false)`: an abort marker, `None`: data.
    control: Option<bool>,
    /// The keys of a data batch's records (uncompressed batches only, as these tests send).
    keys: Vec<String>,
    /// Their values.
    values: Vec<String>,
}

fn read_varint(buf: &mut Bytes) -> i64 {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let b = buf.get_u8();
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Parses the record batches of a Fetch response partition (v2 batches, uncompressed).
fn parse_batches(mut data: Bytes) -> Vec<RawBatch> {
    let mut out = Vec::new();
    while data.len() >= 61 {
        let base_offset = data.get_i64();
        let length = data.get_i32() as usize;
        if data.len() < length {
            break; // a partial batch at the end of the response
        }
        let mut batch = data.split_to(length);
        batch.advance(4 + 1 + 4); // leader epoch, magic, crc
        let attributes = batch.get_i16();
        let last_offset_delta = batch.get_i32();
        batch.advance(8 + 8); // timestamps
        let producer_id = batch.get_i64();
        batch.advance(2 + 4); // epoch, sequence
        let count = batch.get_i32();
        let is_control = attributes & 0x20 != 0;
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let mut control = None;
        for _ in 0..count {
            let _len = read_varint(&mut batch);
            batch.advance(1);
            let _ts = read_varint(&mut batch);
            let _od = read_varint(&mut batch);
            let key_len = read_varint(&mut batch);
            let key = if key_len >= 0 {
                batch.split_to(key_len as usize)
            } else {
                Bytes::new()
            };
            let value_len = read_varint(&mut batch);
            let value = if value_len > 0 {
                batch.split_to(value_len as usize)
            } else {
                Bytes::new()
            };
            let headers = read_varint(&mut batch);
            for _ in 0..headers {
                let kl = read_varint(&mut batch);
                batch.advance(kl as usize);
                let vl = read_varint(&mut batch);
                if vl > 0 {
                    batch.advance(vl as usize);
                }
            }
            if is_control {
                // key: version i16, type i16 (0 abort, 1 commit)
                let mut k = key;
                let _version = k.get_i16();
                control = Some(k.get_i16() == 1);
            } else {
                keys.push(String::from_utf8_lossy(&key).into_owned());
                values.push(String::from_utf8_lossy(&value).into_owned());
            }
        }
        out.push(RawBatch {
            base_offset,
            last_offset: base_offset + i64::from(last_offset_delta),
            producer_id,
            transactional: attributes & 0x10 != 0,
            control,
            keys,
            values,
        });
    }
    out
}

/// Every batch of `topic`/`partition` from offset 0, by raw Fetch v4 (read_uncommitted),
/// asked of each broker until the leader answers.
async fn raw_batches(cluster: &TestCluster, topic: &str, partition: i32) -> Vec<RawBatch> {
    let mut out: Vec<RawBatch> = Vec::new();
    let mut offset = 0i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    'outer: loop {
        assert!(
            Instant::now() < deadline,
            "raw fetch of {topic}/{partition} stalled"
        );
        for broker in cluster.bootstrap_list() {
            let Some((high_watermark, batches)) =
                fetch_once(&broker, topic, partition, offset).await
            else {
                continue;
            };
            for b in batches {
                if b.base_offset >= offset {
                    offset = b.last_offset + 1;
                    out.push(b);
                }
            }
            if offset >= high_watermark {
                break 'outer;
            }
            continue 'outer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

/// One Fetch v4 at `offset`: (high watermark, batches), or `None` when `broker` is not the
/// leader.
async fn fetch_once(
    broker: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Option<(i64, Vec<RawBatch>)> {
    const VERSION: i16 = 4;
    let mut stream = tokio::net::TcpStream::connect(broker).await.ok()?;
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("txn-test-raw")));
    let request = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(16 << 20)
        .with_isolation_level(0)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(8 << 20)])]);
    let mut body = BytesMut::new();
    header
        .encode(&mut body, FetchRequest::header_version(VERSION))
        .unwrap();
    request.encode(&mut body, VERSION).unwrap();
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await.ok()?;
    let len = stream.read_i32().await.ok()?;
    let mut response = vec![0u8; len as usize];
    stream.read_exact(&mut response).await.ok()?;
    let mut response = Bytes::from(response);
    ResponseHeader::decode(&mut response, FetchResponse::header_version(VERSION)).unwrap();
    let response = FetchResponse::decode(&mut response, VERSION).unwrap();
    let p = &response.responses[0].partitions[0];
    if p.error_code != 0 {
        return None;
    }
    let batches = p.records.clone().map(parse_batches).unwrap_or_default();
    Some((p.high_watermark, batches))
}

/// The data keys of `batches` in order, and the markers (true: commit) in order.
fn keys_and_markers(batches: &[RawBatch]) -> (Vec<String>, Vec<bool>) {
    let keys = batches
        .iter()
        .filter(|b| b.control.is_none())
        .flat_map(|b| b.keys.iter().cloned())
        .collect();
    let markers = batches.iter().filter_map(|b| b.control).collect();
    (keys, markers)
}

/// What purekafka's own group consumer (read_committed, the default) reads from `topic`:
/// (key, value) of each record, until `expected` came and 2 s more passed with nothing new.
async fn read_committed(
    cluster: &TestCluster,
    topic: &str,
    expected: usize,
) -> Vec<(String, String)> {
    let client = support::client(cluster, &unique_name("txn-reader"), &[]).await;
    let consumer = client.consumer(&[topic]).expect("consumer");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_until: Option<Instant> = None;
    loop {
        let batch = consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll");
        if !batch.is_empty() && out.len() >= expected {
            quiet_until = None; // more than expected: keep reading until it is quiet
        }
        for r in batch {
            let text = |b: &Option<Bytes>| {
                b.as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            };
            out.push((text(&r.key), text(&r.value)));
        }
        if out.len() >= expected {
            let until = *quiet_until.get_or_insert_with(|| Instant::now() + Duration::from_secs(2));
            if Instant::now() >= until {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "read {} of {expected} records of {topic}",
            out.len()
        );
    }
    consumer.close().await.expect("close");
    out
}

on_each_backend!(
    commit_and_abort_round_trip,
    |cluster: TestCluster| async move {
        let topic = unique_name("txn-round-trip");
        cluster.create_topic(&topic, 2).await.unwrap();
        let client = txn_client(&cluster, &unique_name("txn-rt")).await;
        let producer = client.producer();

        // Nothing transactional before init_transactions, and no send outside a transaction.
        assert!(matches!(
            producer.begin_transaction(),
            Err(Error::Transaction(_))
        ));
        producer
            .init_transactions(T)
            .await
            .expect("init_transactions");
        let outside = producer
            .enqueue(record(&topic, 0, "outside".into()))
            .await
            .map_err(Error::from);
        assert!(matches!(outside, Err(Error::Transaction(_))), "{outside:?}");

        producer.begin_transaction().unwrap();
        assert!(matches!(
            producer.begin_transaction(),
            Err(Error::Transaction(_))
        ));
        send_n(&producer, &topic, 2, "committed1", 10).await;
        producer.commit_transaction(T).await.expect("commit");

        producer.begin_transaction().unwrap();
        let mut pending = Vec::new();
        for i in 0..6 {
            pending.push(
                producer
                    .enqueue(record(&topic, i % 2, format!("aborted-{i}")))
                    .await
                    .unwrap(),
            );
        }
        // Half of them written, half maybe still queued when the abort comes.
        for f in pending.drain(..3) {
            f.await.expect("delivered before the abort");
        }
        producer.abort_transaction(T).await.expect("abort");
        for f in pending {
            if let Err(e) = f.await {
                assert!(matches!(e.error(), Error::Transaction(_)), "{e}");
            }
        }

        producer.begin_transaction().unwrap();
        send_n(&producer, &topic, 2, "committed2", 4).await;
        producer.commit_transaction(T).await.expect("second commit");
        // An empty transaction commits too (nothing to tell the coordinator).
        producer.begin_transaction().unwrap();
        producer.commit_transaction(T).await.expect("empty commit");
        let m = producer.metrics();
        assert!(m.producer_id >= 0 && m.producer_epoch >= 0, "{m:?}");

        for p in 0..2 {
            let batches = raw_batches(&cluster, &topic, p).await;
            let data: Vec<&RawBatch> = batches.iter().filter(|b| b.control.is_none()).collect();
            assert!(
                data.iter().all(|b| b.transactional),
                "every batch is marked transactional: {batches:?}"
            );
            let (keys, markers) = keys_and_markers(&batches);
            let expected_committed: Vec<String> = (0..10)
                .filter(|i| i % 2 == p as usize)
                .map(|i| format!("committed1-{i}"))
                .chain(
                    (0..4)
                        .filter(|i| i % 2 == p as usize)
                        .map(|i| format!("committed2-{i}")),
                )
                .collect();
            let committed: Vec<String> = keys
                .iter()
                .filter(|k| k.starts_with("committed"))
                .cloned()
                .collect();
            assert_eq!(committed, expected_committed, "partition {p}");
            match cluster.backend() {
                Backend::Tansu => {
                    // commit, abort (the partition had records of the aborted transaction:
                    // aborted-0/2/4 on 0, 1/3/5 on 1, at least the first of each was written),
                    // commit
                    assert_eq!(
                        markers,
                        vec![true, false, true],
                        "partition {p}: {batches:?}"
                    );
                    // Each marker follows its transaction's records.
                    let kinds: Vec<&str> = batches
                        .iter()
                        .map(|b| match (b.control, b.keys.first()) {
                            (Some(true), _) => "commit",
                            (Some(false), _) => "abort",
                            (None, Some(k)) if k.starts_with("committed1") => "c1",
                            (None, Some(k)) if k.starts_with("aborted") => "a",
                            (None, _) => "c2",
                        })
                        .collect();
                    let mut collapsed = kinds.clone();
                    collapsed.dedup();
                    assert_eq!(
                        collapsed,
                        vec!["c1", "commit", "a", "abort", "c2", "commit"],
                        "partition {p}: {kinds:?}"
                    );
                }
                _ => assert!(markers.is_empty(), "the mock cluster writes no markers"),
            }
        }

        // confluent-kafka (librdkafka), read_committed, reads every committed record.
        let lines = support::confluent_peer(&[
            "consume",
            "--bootstrap",
            &cluster.bootstrap(),
            "--topic",
            &topic,
            "--group",
            &unique_name("txn-peer"),
            "--isolation",
            "read_committed",
            "--count",
            "20",
            "--timeout-s",
            "20",
            "--assign-partitions",
            "2",
        ])
        .await;
        let seen: std::collections::HashSet<String> = support::peer_records(&lines)
            .into_iter()
            .filter_map(|r| r.key)
            .collect();
        for i in 0..10 {
            assert!(seen.contains(&format!("committed1-{i}")), "{seen:?}");
        }
        for i in 0..4 {
            assert!(seen.contains(&format!("committed2-{i}")), "{seen:?}");
        }
        // purekafka's consumer, read_committed: on tansu exactly the committed records (the
        // aborted ones are dropped by their ABORT marker); the mock writes no markers, so
        // there the aborted records that were written come too.
        let mut ours: Vec<String> = read_committed(&cluster, &topic, 14)
            .await
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        ours.sort();
        let mut expected: Vec<String> = (0..10)
            .map(|i| format!("committed1-{i}"))
            .chain((0..4).map(|i| format!("committed2-{i}")))
            .collect();
        expected.sort();
        match cluster.backend() {
            Backend::Tansu => assert_eq!(ours, expected, "read_committed on tansu"),
            _ => {
                ours.retain(|k| k.starts_with("committed"));
                assert_eq!(ours, expected, "the committed records on the mock");
            }
        }
        producer.close().await;
    }
);

/// On tansu: librdkafka's mock cluster hands the second instance a new epoch but does not
/// fence the first (its produce, AddPartitionsToTxn and EndTxn still succeed); the fatal path
/// is checked there with injected errors (`fencing_errors_are_fatal_on_the_mock_cluster`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_producer_with_the_same_id_fences_the_first() {
    let cluster = support::start(Backend::Tansu);
    let topic = unique_name("txn-fence");
    cluster.create_topic(&topic, 1).await.unwrap();
    let id = unique_name("txn-fence-id");
    let first_client = txn_client(&cluster, &id).await;
    let first = first_client.producer();
    first.init_transactions(T).await.unwrap();
    first.begin_transaction().unwrap();
    send_n(&first, &topic, 1, "first", 3).await;
    first.commit_transaction(T).await.unwrap();

    let second_client = txn_client(&cluster, &id).await;
    let second = second_client.producer();
    second.init_transactions(T).await.unwrap();
    assert!(
        second.metrics().producer_epoch > first.metrics().producer_epoch
            || second.metrics().producer_id != first.metrics().producer_id,
        "the second instance got a newer epoch: {:?} vs {:?}",
        second.metrics(),
        first.metrics()
    );

    // The first producer's next transaction fails fatally: fenced.
    first.begin_transaction().unwrap();
    let sent = first.enqueue(record(&topic, 0, "zombie".into())).await;
    let commit = first.commit_transaction(T).await;
    let e = commit.expect_err("a fenced producer cannot commit");
    assert!(e.is_fatal(), "{e}");
    assert_eq!(e.kafka_code(), Some(ErrorCode::ProducerFenced), "{e}");
    if let Ok(f) = sent {
        let r = f.await;
        assert!(r.is_err(), "the zombie's record is not acknowledged: {r:?}");
    }
    // ... and refuses everything after.
    let e = first.begin_transaction().unwrap_err();
    assert!(e.is_fatal(), "{e}");
    let e = first
        .enqueue(record(&topic, 0, "later".into()))
        .await
        .unwrap_err();
    assert!(e.error().is_fatal(), "{e}");
    assert!(first.abort_transaction(T).await.unwrap_err().is_fatal());

    // The new instance works.
    second.begin_transaction().unwrap();
    send_n(&second, &topic, 1, "second", 2).await;
    second.commit_transaction(T).await.unwrap();
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_errors_are_fatal_on_the_mock_cluster() {
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("txn-fenced-mock");
    cluster.create_topic(&topic, 1).await.unwrap();
    // PRODUCER_FENCED (90) from EndTxn; INVALID_PRODUCER_EPOCH (47) from AddPartitionsToTxn,
    // which a transactional producer reads as fencing; TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    // (53) from InitProducerId.
    for (api_key, code) in [(26i16, 90i16), (24, 47), (22, 53)] {
        let client = txn_client(&cluster, &unique_name("txn-fenced-mock-id")).await;
        let producer = client.producer();
        if api_key == 22 {
            cluster.push_request_errors(22, &[code]).unwrap();
            let e = producer.init_transactions(T).await.unwrap_err();
            assert!(e.is_fatal(), "{e}");
            assert!(producer.init_transactions(T).await.unwrap_err().is_fatal());
            continue;
        }
        producer.init_transactions(T).await.unwrap();
        producer.begin_transaction().unwrap();
        cluster.push_request_errors(api_key, &[code]).unwrap();
        let sent = producer
            .enqueue(record(&topic, 0, "r".into()))
            .await
            .unwrap();
        let e = producer.commit_transaction(T).await.unwrap_err();
        assert!(e.is_fatal(), "api {api_key} code {code}: {e}");
        assert_eq!(e.kafka_code(), Some(ErrorCode::ProducerFenced), "{e}");
        if api_key == 24 {
            assert!(
                sent.await.is_err(),
                "not sent: the partition was never added"
            );
        }
        assert!(producer.begin_transaction().unwrap_err().is_fatal());
        assert!(producer.abort_transaction(T).await.unwrap_err().is_fatal());
        let e = producer
            .enqueue(record(&topic, 0, "later".into()))
            .await
            .unwrap_err();
        assert!(e.error().is_fatal(), "{e}");
    }
}

/// The committed offset of `group` on `tp`, via OffsetFetch (`client.admin()`).
async fn group_offset(client: &Client, group: &str, tp: &TopicPartition) -> Option<i64> {
    let offsets: BTreeMap<TopicPartition, i64> = client
        .admin()
        .group_offsets(group)
        .await
        .expect("group offsets");
    offsets.get(tp).copied()
}

/// On tansu: librdkafka's mock cluster answers TxnOffsetCommit but stores no offsets
/// (`rd_kafka_mock_handle_TxnOffsetCommit` only checks the request), so nothing there can
/// show the commit; its retries are checked in `coordinator_errors_are_retried_on_the_mock_cluster`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_sent_to_a_transaction_commit_only_with_it() {
    support::init_tracing();
    let cluster = support::start(Backend::Tansu);
    let input = unique_name("txn-offsets-in");
    let output = unique_name("txn-offsets-out");
    cluster.create_topic(&input, 1).await.unwrap();
    cluster.create_topic(&output, 1).await.unwrap();
    let group = unique_name("txn-offsets-group");
    let tp = TopicPartition::new(input.as_str(), 0);

    // Input records, then a group member that reads them.
    let plain = support::client(&cluster, &group, &[]).await;
    support::produce(&plain, &input, 1, 10, 10).await;
    let consumer = plain.consumer(&[&input]).expect("consumer");
    let mut consumed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while consumed.len() < 10 {
        assert!(
            Instant::now() < deadline,
            "consumed {} of 10",
            consumed.len()
        );
        consumed.extend(
            consumer
                .poll(Duration::from_millis(200))
                .await
                .expect("poll"),
        );
    }
    let metadata = consumer.group_metadata();
    assert_eq!(metadata.group_id, group);
    assert!(metadata.generation_id >= 0, "{metadata:?}");
    assert!(!metadata.member_id.is_empty(), "{metadata:?}");

    let client = txn_client(&cluster, &unique_name("txn-offsets-id")).await;
    let producer = client.producer();
    producer.init_transactions(T).await.unwrap();

    // Aborted: the offsets are not committed.
    producer.begin_transaction().unwrap();
    send_n(&producer, &output, 1, "out-aborted", 3).await;
    producer
        .send_offsets_to_transaction([(tp.clone(), 4)], &metadata, T)
        .await
        .expect("send offsets");
    producer.abort_transaction(T).await.unwrap();
    assert_eq!(
        group_offset(&plain, &group, &tp).await,
        None,
        "nothing committed by an abort"
    );

    // Committed: they are.
    producer.begin_transaction().unwrap();
    send_n(&producer, &output, 1, "out-committed", 3).await;
    producer
        .send_offsets_to_transaction([(tp.clone(), 7)], &metadata, T)
        .await
        .expect("send offsets");
    assert_eq!(
        group_offset(&plain, &group, &tp).await,
        None,
        "not before the commit"
    );
    producer.commit_transaction(T).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match group_offset(&plain, &group, &tp).await {
            Some(7) => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "committed offset {other:?}, expected 7"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    producer.close().await;
    drop(consumer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_errors_are_retried_on_the_mock_cluster() {
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("txn-retries");
    cluster.create_topic(&topic, 3).await.unwrap();
    let client = txn_client(&cluster, &unique_name("txn-retries-id")).await;
    let producer = client.producer();
    // InitProducerId: CONCURRENT_TRANSACTIONS (51), then COORDINATOR_LOAD_IN_PROGRESS (14).
    cluster.push_request_errors(22, &[51, 14]).unwrap();
    producer
        .init_transactions(T)
        .await
        .expect("init after retries");

    for round in 0..3 {
        // AddPartitionsToTxn: CONCURRENT_TRANSACTIONS, NOT_COORDINATOR (16),
        // COORDINATOR_LOAD_IN_PROGRESS; EndTxn: CONCURRENT_TRANSACTIONS, NOT_COORDINATOR.
        cluster.push_request_errors(24, &[51, 16, 14]).unwrap();
        cluster.push_request_errors(26, &[51, 16]).unwrap();
        producer.begin_transaction().unwrap();
        send_n(&producer, &topic, 3, &format!("r{round}"), 30).await;
        producer
            .commit_transaction(T)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    // AddOffsetsToTxn and TxnOffsetCommit.
    cluster.push_request_errors(25, &[51, 16]).unwrap();
    cluster.push_request_errors(28, &[16, 14]).unwrap();
    producer.begin_transaction().unwrap();
    let group = unique_name("txn-retries-group");
    let tp = TopicPartition::new(topic.as_str(), 1);
    producer
        .send_offsets_to_transaction(
            [(tp.clone(), 5)],
            &ConsumerGroupMetadata::new(group.as_str()),
            T,
        )
        .await
        .expect("offsets after retries");
    producer.commit_transaction(T).await.unwrap();

    let check = txn_client(&cluster, &unique_name("txn-retries-check")).await;
    let mut keys = Vec::new();
    for p in 0..3 {
        for r in support::read_partition(&check, &topic, p).await {
            keys.push(String::from_utf8(r.record.key.unwrap()).unwrap());
        }
    }
    keys.sort();
    let mut expected: Vec<String> = (0..3)
        .flat_map(|round| (0..30).map(move |i| format!("r{round}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(keys, expected, "every record once");
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_record_dooms_the_transaction_until_it_is_aborted() {
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("txn-abortable");
    cluster.create_topic(&topic, 1).await.unwrap();
    let client = txn_client(&cluster, &unique_name("txn-abortable-id")).await;
    let producer = client.producer();
    producer.init_transactions(T).await.unwrap();
    producer.begin_transaction().unwrap();
    // A permanent produce error (INVALID_RECORD, 87) fails the record.
    cluster.push_request_errors(0, &[87]).unwrap();
    let failed = producer
        .send(record(&topic, 0, "bad".into()))
        .await
        .expect_err("the broker refused it");
    assert!(!failed.error().is_fatal(), "{failed}");
    // The transaction can no longer commit or take records ...
    let later = producer
        .enqueue(record(&topic, 0, "later".into()))
        .await
        .map_err(Error::from);
    assert!(matches!(later, Err(Error::Transaction(_))), "{later:?}");
    let e = producer.commit_transaction(T).await.expect_err("doomed");
    assert!(!e.is_fatal(), "{e}");
    // ... but the abort works and the producer goes on.
    producer.abort_transaction(T).await.expect("abort");
    producer.begin_transaction().unwrap();
    send_n(&producer, &topic, 1, "after", 3).await;
    producer
        .commit_transaction(T)
        .await
        .expect("commit after the abort");
    producer.close().await;
}

/// Committed records of `batches`, as a read_committed reader would take them from the
/// markers: a producer's data batches followed by its commit marker before its abort marker;
/// their keys (`values`: their values).
fn committed(batches: &[RawBatch], values: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut open: HashMap<i64, Vec<String>> = HashMap::new();
    for b in batches {
        let pending = open.entry(b.producer_id).or_default();
        match b.control {
            Some(true) => out.append(pending),
            Some(false) => pending.clear(),
            None if values => pending.extend(b.values.iter().cloned()),
            None => pending.extend(b.keys.iter().cloned()),
        }
    }
    out
}

/// The values of the committed records of `output`'s two partitions, sorted (read by their
/// markers), and how many data records were written there in all (aborted ones included).
async fn committed_outputs(cluster: &TestCluster, output: &str) -> (Vec<String>, usize) {
    let mut values = Vec::new();
    let mut written = 0;
    for p in 0..2 {
        let batches = raw_batches(cluster, output, p).await;
        written += batches
            .iter()
            .filter(|b| b.control.is_none())
            .map(|b| b.values.len())
            .sum::<usize>();
        values.extend(committed(&batches, true));
    }
    values.sort();
    (values, written)
}

/// The inputs `p-i` of two partitions with `per_partition` records each, sorted.
fn every_input(per_partition: usize) -> Vec<String> {
    let mut inputs: Vec<String> = (0..2)
        .flat_map(|p| (0..per_partition).map(move |i| format!("{p}-{i}")))
        .collect();
    inputs.sort();
    inputs
}

fn committed_keys(batches: &[RawBatch]) -> Vec<String> {
    committed(batches, false)
}

/// The processing runtime in exactly-once mode on tansu: the records the handler produces,
/// the dead letters and the consumed offsets commit together, transaction by transaction;
/// every input appears exactly once among the committed output or dead-letter records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_runtime_commits_output_dead_letters_and_offsets_together() {
    use purekafka::worker::RunnerConfig;
    use purekafka::HandlerError;
    const PER_PARTITION: usize = 100;
    support::init_tracing();
    let cluster = support::start(Backend::Tansu);
    let input = unique_name("eos-in");
    let output = unique_name("eos-out");
    let dlq = format!("{input}.dlq");
    for t in [&input, &output, &dlq] {
        cluster.create_topic(t, 2).await.unwrap();
    }
    let group = unique_name("eos-group");
    let txn_id = unique_name("eos-txn");
    let client = support::client(
        &cluster,
        &group,
        &[("transactional.id", txn_id.as_str()), ("linger.ms", "2")],
    )
    .await;
    support::produce(&client, &input, 2, PER_PARTITION, 50).await;
    let producer = client.producer();
    let consumer = client.consumer(&[&input]).unwrap();
    let runner = consumer
        .runner()
        .config(
            RunnerConfig::default()
                .exactly_once(true)
                .commit_interval(Duration::from_millis(200))
                .shutdown_on_signal(false)
                .retry(purekafka::worker::RetryPolicy::default().max_attempts(1)),
        )
        .producer(producer.clone());
    let handle = runner.handle();
    let out = output.clone();
    let run = tokio::spawn(runner.run(move |record| {
        let producer = producer.clone();
        let out = out.clone();
        async move {
            let value = record.value_str().unwrap_or_default().to_string();
            // Every 10th input fails for good: dead-lettered, in the same transaction.
            if value.ends_with('7') {
                return Err(HandlerError::permanent("sevens are refused"));
            }
            producer
                .send(Record::new(out, value.clone()).with_key(value))
                .await
                .map_err(HandlerError::retriable)?;
            Ok(())
        }
    }));
    let deadline = Instant::now() + Duration::from_secs(120);
    let tp = |p| TopicPartition::new(input.as_str(), p);
    loop {
        let done = group_offset(&client, &group, &tp(0)).await == Some(PER_PARTITION as i64)
            && group_offset(&client, &group, &tp(1)).await == Some(PER_PARTITION as i64);
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not commit every input"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    handle.shutdown();
    let metrics = run.await.unwrap().expect("run");
    assert_eq!(
        metrics.processed + metrics.dead_lettered,
        2 * PER_PARTITION as u64,
        "{metrics:?}"
    );

    let mut outputs = Vec::new();
    let mut dead = Vec::new();
    for p in 0..2 {
        let batches = raw_batches(&cluster, &output, p).await;
        assert!(batches
            .iter()
            .filter(|b| b.control.is_none())
            .all(|b| b.transactional));
        outputs.extend(committed_keys(&batches));
        let batches = raw_batches(&cluster, &dlq, p).await;
        assert!(batches
            .iter()
            .filter(|b| b.control.is_none())
            .all(|b| b.transactional));
        dead.extend(committed_keys(&batches));
    }
    // Dead letters keep the original key ("k<i>"); outputs are keyed by the input value.
    let mut expected_out = Vec::new();
    let mut expected_dead = Vec::new();
    for p in 0..2 {
        for i in 0..PER_PARTITION {
            let value = format!("{p}-{i}");
            if value.ends_with('7') {
                expected_dead.push(format!("k{i}"));
            } else {
                expected_out.push(value);
            }
        }
    }
    outputs.sort();
    expected_out.sort();
    dead.sort();
    expected_dead.sort();
    assert_eq!(outputs, expected_out, "every output once, committed");
    assert_eq!(dead, expected_dead, "every dead letter once, committed");
}

/// The `exactly_once` example binary, built next to this test binary by `cargo nextest run`.
fn exactly_once_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/debug
    let path = dir
        .join("examples")
        .join(format!("exactly_once{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} missing: run `cargo build --example exactly_once`",
        path.display()
    );
    path
}

fn spawn_exactly_once(cluster: &TestCluster, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(exactly_once_example())
        .args(args)
        .args([
            "--delay-ms",
            "2",
            "--set",
            "session.timeout.ms=6000",
            "--set",
            "heartbeat.interval.ms=500",
            "--set",
            "max.poll.interval.ms=20000",
            "--set",
            "linger.ms=2",
        ])
        .env("KAFKA_BROKERS", cluster.bootstrap())
        .env("RUST_LOG", "purekafka=warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the exactly_once example")
}

/// Consume-transform-produce in exactly-once mode (`examples/exactly_once`), SIGKILLed
/// midway and restarted: among the committed records (read by their markers on tansu),
/// every input's output appears exactly once, and the group's offsets cover every input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_sigkill_and_restart() {
    const PER_PARTITION: usize = 1000;
    support::init_tracing();
    let cluster = support::start(Backend::Tansu);
    let input = unique_name("eos-kill-in");
    let output = unique_name("eos-kill-out");
    cluster.create_topic(&input, 2).await.unwrap();
    cluster.create_topic(&output, 2).await.unwrap();
    let group = unique_name("eos-kill-group");
    let txn_id = unique_name("eos-kill-txn");
    let client = support::client(&cluster, &unique_name("eos-kill-admin"), &[]).await;
    support::produce(&client, &input, 2, PER_PARTITION, 100).await;
    let args = [
        group.as_str(),
        input.as_str(),
        output.as_str(),
        txn_id.as_str(),
    ];
    let committed_inputs = |client: Client, group: String, input: String| async move {
        let offsets = client
            .admin()
            .group_offsets(&group)
            .await
            .expect("group offsets");
        (0..2)
            .map(|p| {
                offsets
                    .get(&TopicPartition::new(input.as_str(), p))
                    .copied()
                    .unwrap_or(0)
            })
            .sum::<i64>()
    };

    let mut first = spawn_exactly_once(&cluster, &args);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = committed_inputs(client.clone(), group.clone(), input.clone()).await;
        if done >= 300 {
            assert!(
                done < 2 * PER_PARTITION as i64,
                "killed too late: {done} done"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first instance committed {done} inputs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill().await.expect("SIGKILL"); // kill_on_drop's signal: SIGKILL
    first.wait().await.unwrap();

    let mut second = spawn_exactly_once(&cluster, &args);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = committed_inputs(client.clone(), group.clone(), input.clone()).await;
        if done == 2 * PER_PARTITION as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the restart {done} inputs committed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let pid = second.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), second.wait())
        .await
        .expect("stops after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    let (values, written) = committed_outputs(&cluster, &output).await;
    let expected = every_input(PER_PARTITION);
    assert_eq!(
        values.len(),
        expected.len(),
        "committed outputs ({written} written)"
    );
    assert_eq!(
        values, expected,
        "every input once among the committed outputs"
    );
    eprintln!(
        "exactly_once_survives_sigkill_and_restart: {written} outputs written, {} committed",
        values.len()
    );
    // purekafka's read_committed consumer reads each input's output once (upper-cased).
    let mut read: Vec<String> = read_committed(&cluster, &output, expected.len())
        .await
        .into_iter()
        .map(|(_, v)| v.to_lowercase())
        .collect();
    read.sort();
    assert_eq!(read, expected, "read_committed by purekafka's consumer");
}

/// Exactly-once mode on the mock cluster: a commit that fails (EndTxn answered
/// INVALID_TXN_STATE) aborts the transaction and its inputs are processed again from the last
/// commit; the consumer itself commits nothing (offsets go only through transactions, which
/// the mock does not store, so the group has no committed offset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_runtime_processes_an_aborted_transaction_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use purekafka::worker::RunnerConfig;
    const PER_PARTITION: usize = 300;
    support::init_tracing();
    let cluster = support::start(Backend::MockCluster);
    let input = unique_name("eos-abort-in");
    let output = unique_name("eos-abort-out");
    cluster.create_topic(&input, 2).await.unwrap();
    cluster.create_topic(&output, 2).await.unwrap();
    let group = unique_name("eos-abort-group");
    let client = support::client(
        &cluster,
        &group,
        &[("transactional.id", unique_name("eos-abort-txn").as_str())],
    )
    .await;
    support::produce(&client, &input, 2, PER_PARTITION, 50).await;
    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let handled = Arc::new(AtomicUsize::new(0));
    let producer = client.producer();
    let runner = client
        .consumer(&[&input])
        .unwrap()
        .runner()
        .config(
            RunnerConfig::default()
                .exactly_once(true)
                .commit_interval(Duration::from_millis(100))
                .shutdown_on_signal(false),
        )
        .producer(producer.clone());
    let handle = runner.handle();
    let (out, seen, count) = (output.clone(), Arc::clone(&calls), Arc::clone(&handled));
    let run = tokio::spawn(runner.run(move |record| {
        let (producer, out, seen, count) = (
            producer.clone(),
            out.clone(),
            Arc::clone(&seen),
            Arc::clone(&count),
        );
        async move {
            let value = record.value_str().unwrap_or_default().to_string();
            // At least 0.5 s of work left when the error is pushed: a periodic commit
            // (every 100 ms) takes it, not the last one.
            tokio::time::sleep(Duration::from_millis(2)).await;
            producer
                .send(Record::new(out, value.clone()))
                .await
                .map_err(purekafka::HandlerError::retriable)?;
            *seen.lock().unwrap().entry(value).or_default() += 1;
            count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }));
    let deadline = Instant::now() + Duration::from_secs(120);
    while handled.load(Ordering::SeqCst) < 30 {
        assert!(Instant::now() < deadline, "nothing handled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The next commit with records fails: the transaction is aborted, processed again.
    cluster.push_request_errors(26, &[48]).unwrap();
    loop {
        let distinct = calls.lock().unwrap().len();
        if distinct == 2 * PER_PARTITION {
            break;
        }
        assert!(Instant::now() < deadline, "{distinct} inputs handled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.shutdown();
    run.await.unwrap().expect("the run goes on after the abort");
    let again = calls.lock().unwrap().values().filter(|n| **n > 1).count();
    assert!(
        again > 0,
        "the aborted transaction's inputs were processed again"
    );
    let offsets = client.admin().group_offsets(&group).await.unwrap();
    assert!(
        offsets.is_empty(),
        "the consumer committed nothing itself: {offsets:?}"
    );
}

/// Starts an exactly-once runner on `client` (group member, transactional producer) copying
/// every input value to `output` after `delay`.
fn start_eos_runner(
    client: &Client,
    input: &str,
    output: &str,
    delay: Duration,
) -> (
    purekafka::worker::RunHandle,
    tokio::task::JoinHandle<purekafka::Result<purekafka::worker::RunMetrics>>,
) {
    use purekafka::worker::RunnerConfig;
    let producer = client.producer();
    let runner = client
        .consumer(&[input])
        .unwrap()
        .runner()
        .config(
            RunnerConfig::default()
                .exactly_once(true)
                .commit_interval(Duration::from_millis(200))
                .shutdown_on_signal(false),
        )
        .producer(producer.clone());
    let handle = runner.handle();
    let output = output.to_string();
    let run = tokio::spawn(runner.run(move |record| {
        let (producer, output) = (producer.clone(), output.clone());
        async move {
            tokio::time::sleep(delay).await;
            let value = record.value_str().unwrap_or_default().to_string();
            producer
                .send(Record::new(output, value))
                .await
                .map_err(purekafka::HandlerError::retriable)?;
            Ok(())
        }
    }));
    (handle, run)
}

/// Two exactly-once runners in one group on tansu, the second joining midway: the rebalance
/// aborts the first one's open transaction (its partitions may move), and among the
/// committed outputs every input appears once.
///
/// Ignored in the suite: it passes alone (4 of 4 runs, 14:30 UTC) but failed once under the
/// full parallel suite, with one commit interval's inputs (10 per partition, on both
/// partitions) committed twice: the members' start positions after the rejoin were older than
/// the last committed transaction's offsets. tansu 0.6.0 is the cause, read in its source
/// (`tansu-storage/src/dynostore.rs`): `txn_end` applies a transaction's offsets only once
/// every overlapping transaction is prepared (here the other runner's is open), and
/// `offset_fetch` ignores `require_stable`, so it answers the old offsets instead of
/// UNSTABLE_OFFSET_COMMIT (which purekafka retries). A trial that ended the transaction in
/// the revoke hook before rejoining (Java's pattern) made it fail every time on tansu, for
/// the same reason. Run it with `--run-ignored all`; it needs a broker with KIP-447's
/// stable offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu 0.6.0 lacks KIP-447 fencing; flaky under load, see the doc comment"]
async fn exactly_once_runners_hand_partitions_over_in_a_rebalance() {
    const PER_PARTITION: usize = 1500;
    support::init_tracing();
    let cluster = support::start(Backend::Tansu);
    let input = unique_name("eos-rebalance-in");
    let output = unique_name("eos-rebalance-out");
    cluster.create_topic(&input, 2).await.unwrap();
    cluster.create_topic(&output, 2).await.unwrap();
    let group = unique_name("eos-rebalance-group");
    let member = |id: &str| {
        let txn = unique_name(id);
        let (cluster, group) = (&cluster, group.clone());
        async move { support::client(cluster, &group, &[("transactional.id", txn.as_str())]).await }
    };
    let a = member("eos-rebalance-a").await;
    support::produce(&a, &input, 2, PER_PARTITION, 100).await;
    let committed_inputs = |client: Client| {
        let (group, input) = (group.clone(), input.clone());
        async move {
            let offsets = client.admin().group_offsets(&group).await.expect("offsets");
            (0..2)
                .map(|p| {
                    offsets
                        .get(&TopicPartition::new(input.as_str(), p))
                        .copied()
                        .unwrap_or(0)
                })
                .sum::<i64>()
        }
    };
    let (handle_a, run_a) = start_eos_runner(&a, &input, &output, Duration::from_millis(3));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = committed_inputs(a.clone()).await;
        if done >= 200 {
            assert!(
                done < 2 * PER_PARTITION as i64,
                "B would join too late: {done} done"
            );
            break;
        }
        assert!(Instant::now() < deadline, "A committed {done} inputs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = member("eos-rebalance-b").await;
    let (handle_b, run_b) = start_eos_runner(&b, &input, &output, Duration::from_millis(3));
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = committed_inputs(a.clone()).await;
        if done == 2 * PER_PARTITION as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "{done} inputs committed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    handle_a.shutdown();
    handle_b.shutdown();
    let ma = run_a.await.unwrap().expect("run A");
    let mb = run_b.await.unwrap().expect("run B");

    let (values, written) = committed_outputs(&cluster, &output).await;
    let expected = every_input(PER_PARTITION);
    eprintln!(
        "exactly_once_runners_hand_partitions_over_in_a_rebalance: A processed {}, B {}, {written} outputs written, {} committed",
        ma.processed,
        mb.processed,
        values.len()
    );
    assert!(mb.processed > 0, "B took part");
    assert_eq!(
        values, expected,
        "every input once among the committed outputs"
    );
    let mut read: Vec<String> = read_committed(&cluster, &output, expected.len())
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    read.sort();
    assert_eq!(read, expected, "read_committed by purekafka's consumer");
}

/// Interop on tansu: confluent-kafka (librdkafka) initialising the same transactional id
/// fences our producer (fatal from then on), and its transaction commits after ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confluent_kafka_producer_with_the_same_id_fences_ours() {
    let cluster = support::start(Backend::Tansu);
    let topic = unique_name("txn-fence-peer");
    cluster.create_topic(&topic, 1).await.unwrap();
    let id = unique_name("txn-fence-peer-id");
    let client = txn_client(&cluster, &id).await;
    let ours = client.producer();
    ours.init_transactions(T).await.unwrap();
    ours.begin_transaction().unwrap();
    send_n(&ours, &topic, 1, "ours", 3).await;
    ours.commit_transaction(T).await.unwrap();

    let lines = support::confluent_peer(&[
        "produce-txn",
        "--bootstrap",
        &cluster.bootstrap(),
        "--topic",
        &topic,
        "--txn-id",
        &id,
        "--prefix",
        "peer",
        "--commit",
        "2",
    ])
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");

    ours.begin_transaction().unwrap();
    let _ = ours.enqueue(record(&topic, 0, "zombie".into())).await;
    let e = ours
        .commit_transaction(T)
        .await
        .expect_err("fenced by the peer");
    assert!(e.is_fatal(), "{e}");
    assert_eq!(e.kafka_code(), Some(ErrorCode::ProducerFenced), "{e}");

    let batches = raw_batches(&cluster, &topic, 0).await;
    let mut keys = committed_keys(&batches);
    keys.sort();
    assert_eq!(
        keys,
        vec!["ours-0", "ours-1", "ours-2", "peer-0-0", "peer-0-1"],
        "{batches:?}"
    );
}
