//! A topic's partition count grows while clients run (issue 13): the running producer
//! notices it (`metadata.max.age.ms` / `topic.metadata.refresh.interval.ms`, and at once for
//! a record that names a partition beyond the known count) and keyed records then go to
//! `murmur2(key) % new count`, where the Java client and librdkafka put them; the group
//! leader rejoins so that the new partitions are consumed.
//!
//! No broker here answers CreatePartitions (tansu 0.6.0 and librdkafka's mock cluster lack
//! it), so the topics grow in tansu's SQLite storage (`tests/support/tansu_sql.rs`): a real
//! broker then answers Metadata, Produce and Fetch with the new partitions.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use purekafka::{Client, Config, Delivery, Record};
use purekafka_testkit::unique_name;

#[macro_use]
mod support;
use support::tansu_sql::TansuSql;

/// The Java client's partition for `key` among `n` partitions, computed here without
/// purekafka: `Utils.toPositive(Utils.murmur2(key)) % n` (MurmurHash2, seed 0x9747b28c).
fn java_partition(key: &[u8], n: i32) -> i32 {
    let m: u32 = 0x5bd1_e995;
    let len = key.len();
    let mut h: u32 = 0x9747_b28c ^ len as u32;
    let mut i = 0;
    while i + 4 <= len {
        let mut k = key[i] as u32
            | (key[i + 1] as u32) << 8
            | (key[i + 2] as u32) << 16
            | (key[i + 3] as u32) << 24;
        k = k.wrapping_mul(m);
        k ^= k >> 24;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m) ^ k;
        i += 4;
    }
    let rest = &key[i..];
    if rest.len() == 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    ((h as i32) & 0x7fff_ffff) % n
}

#[test]
fn java_partition_matches_kafkas_own_murmur2_vectors() {
    // org.apache.kafka.common.utils.UtilsTest#testMurmur2: hashes, made positive.
    for (key, hash) in [
        (&b"21"[..], -973_932_308i32),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ] {
        let n = i32::MAX;
        assert_eq!(java_partition(key, n), (hash & 0x7fff_ffff) % n, "{key:?}");
    }
}

async fn connect(broker: &TansuSql, extra: &[(&str, &str)]) -> Client {
    let config = Config::builder()
        .brokers(vec![broker.bootstrap()])
        .set("linger.ms", "5")
        .set_all(extra.iter().copied())
        .build()
        .unwrap();
    Client::connect(config).await.expect("connect to tansu-sql")
}

/// Enqueues every record, then awaits them all (a pipeline, not one at a time).
async fn send_all(producer: &purekafka::Producer, records: Vec<Record>) -> Vec<Delivery> {
    let mut pending = Vec::new();
    for r in records {
        pending.push(producer.enqueue(r).await.expect("enqueued"));
    }
    let mut out = Vec::new();
    for p in pending {
        out.push(p.await.expect("delivered"));
    }
    out
}

fn keyed(topic: &str, keys: &[String], phase: &str) -> Vec<Record> {
    keys.iter()
        .map(|k| Record::new(topic.to_string(), format!("{phase}/{k}")).with_key(k.clone()))
        .collect()
}

/// Reads partitions `0..partitions` with confluent-kafka until `count` records arrived:
/// (partition, offset) → value.
async fn read_back(
    broker: &TansuSql,
    topic: &str,
    partitions: i32,
    count: usize,
) -> BTreeMap<(i32, i64), String> {
    let lines = support::confluent_peer(&[
        "consume",
        "--bootstrap",
        &broker.bootstrap(),
        "--topic",
        topic,
        "--group",
        &unique_name("growth-reader"),
        "--isolation",
        "read_uncommitted",
        "--count",
        &count.to_string(),
        "--timeout-s",
        "20",
        "--assign-partitions",
        &partitions.to_string(),
    ])
    .await;
    let mut out = BTreeMap::new();
    for r in support::peer_records(&lines) {
        let value = r.value.expect("every record has a value");
        assert!(
            out.insert((r.partition, r.offset), value).is_none(),
            "{}/{} read twice",
            r.partition,
            r.offset
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_follow_the_grown_partition_count_once_the_producer_notices() {
    support::init_tracing();
    let broker = TansuSql::start();
    let topic = unique_name("growth-keys");
    let client = connect(&broker, &[("metadata.max.age.ms", "500")]).await;
    client.create_topic(&topic, 2, 1).await.unwrap();
    let producer = client.producer();
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();

    // Before: murmur2 % 2.
    let before = send_all(&producer, keyed(&topic, &keys, "before")).await;
    for (k, d) in keys.iter().zip(&before) {
        assert_eq!(d.partition, java_partition(k.as_bytes(), 2), "{k} before");
    }

    broker.grow_topic(&topic, 5);

    // Meanwhile a stream of keyed records flows (enqueued back to back, awaited later), so
    // records are queued and in flight when the producer notices.
    let streaming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let stream = {
        let (producer, topic, streaming) = (producer.clone(), topic.clone(), streaming.clone());
        tokio::spawn(async move {
            let mut pending = Vec::new();
            let mut i = 0usize;
            // Until told to stop (the producer has noticed), then 100 more.
            let mut after_stop = 0;
            while after_stop < 100 {
                if !streaming.load(std::sync::atomic::Ordering::Acquire) {
                    after_stop += 1;
                }
                let key = format!("stream-{}", i % 40);
                let value = format!("stream/{key}/{i}");
                let record = Record::new(topic.clone(), value.clone()).with_key(key.clone());
                pending.push((
                    key,
                    value,
                    producer.enqueue(record).await.expect("enqueued"),
                ));
                i += 1;
                if i.is_multiple_of(20) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let mut out = Vec::new();
            for (key, value, p) in pending {
                out.push((key, value, p.await.expect("stream record delivered")));
            }
            out
        })
    };

    // The producer runs on; one probe at a time until one lands where only the new count
    // puts it. Until then each lands where the old count puts it, and never back after.
    let mut probes: Vec<(String, Delivery)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut noticed = false;
    let mut j = 0;
    while !noticed {
        assert!(
            Instant::now() < deadline,
            "the producer did not notice the new partitions within 60 s"
        );
        let key = format!("probe-{j}");
        j += 1;
        let (old, new) = (
            java_partition(key.as_bytes(), 2),
            java_partition(key.as_bytes(), 5),
        );
        let record = Record::new(topic.clone(), format!("probe/{key}")).with_key(key.clone());
        let d = producer.send(record).await.expect("probe delivered");
        assert!(
            d.partition == old || d.partition == new,
            "{key} on {} (old count: {old}, new: {new})",
            d.partition
        );
        noticed = d.partition == new && new != old;
        probes.push((key, d));
        if !noticed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    streaming.store(false, std::sync::atomic::Ordering::Release);
    let streamed = stream.await.unwrap();
    // Each streamed key went to its old partition, then to its new one, and never back.
    let mut moved_at: BTreeMap<&str, bool> = BTreeMap::new();
    for (key, value, d) in &streamed {
        let (old, new) = (
            java_partition(key.as_bytes(), 2),
            java_partition(key.as_bytes(), 5),
        );
        let on_new = d.partition == new && new != old;
        assert!(
            d.partition == old || d.partition == new,
            "{value} on {} (old {old}, new {new})",
            d.partition
        );
        let was_moved = moved_at.entry(key.as_str()).or_insert(false);
        assert!(
            !*was_moved || d.partition == new,
            "{value} went back to {old}"
        );
        *was_moved |= on_new;
    }
    assert!(
        moved_at.values().any(|m| *m),
        "some streamed key moved to its new partition"
    );

    // After: every key on murmur2 % 5 (keys whose partition changed move once).
    let after = send_all(&producer, keyed(&topic, &keys, "after")).await;
    let mut moved = 0;
    for ((k, a), b) in keys.iter().zip(&after).zip(&before) {
        assert_eq!(a.partition, java_partition(k.as_bytes(), 5), "{k} after");
        moved += usize::from(a.partition != b.partition);
    }
    assert!(moved > 0, "some keys changed partition");

    // librdkafka's murmur2_random partitioner (the Java-compatible one) puts the same keys
    // on the same partitions of the grown topic.
    let bootstrap = broker.bootstrap();
    let mut args = vec!["produce-keys", "--bootstrap", &bootstrap, "--topic", &topic];
    args.push("--keys");
    args.extend(keys.iter().map(String::as_str));
    let peer = support::confluent_peer(&args).await;
    assert_eq!(peer.len(), keys.len());
    for ((line, k), a) in peer.iter().zip(&keys).zip(&after) {
        assert_eq!(line["key"].as_str(), Some(k.as_str()));
        assert_eq!(
            line["partition"].as_i64(),
            Some(i64::from(a.partition)),
            "{k}: confluent-kafka and purekafka disagree"
        );
    }
    producer.close().await;

    // Read back by an independent client: everything once, where its delivery said, in the
    // order it was sent per partition.
    // Our records by the sequence they were sent in (the probes and the stream overlap).
    let sequences: Vec<Vec<(String, &Delivery)>> = vec![
        keys.iter()
            .zip(&before)
            .map(|(k, d)| (format!("before/{k}"), d))
            .collect(),
        probes
            .iter()
            .map(|(k, d)| (format!("probe/{k}"), d))
            .collect(),
        streamed.iter().map(|(_, v, d)| (v.clone(), d)).collect(),
        keys.iter()
            .zip(&after)
            .map(|(k, d)| (format!("after/{k}"), d))
            .collect(),
    ];
    let total = sequences.iter().map(Vec::len).sum::<usize>() + peer.len();
    let read = read_back(&broker, &topic, 5, total).await;
    assert_eq!(
        read.len(),
        total,
        "records lost or extra:\n{}",
        broker.log()
    );
    let mut values = HashSet::new();
    for sequence in &sequences {
        let mut last_offset: BTreeMap<i32, i64> = BTreeMap::new();
        for (value, d) in sequence {
            assert_eq!(
                read.get(&(d.partition, d.offset)),
                Some(value),
                "{value} at {}/{}",
                d.partition,
                d.offset
            );
            assert!(values.insert(value.clone()), "{value} sent twice");
            let last = last_offset.entry(d.partition).or_insert(-1);
            assert!(*last < d.offset, "{value} out of order in {}", d.partition);
            *last = d.offset;
        }
    }
    for line in &peer {
        let at = (
            line["partition"].as_i64().unwrap() as i32,
            line["offset"].as_i64().unwrap(),
        );
        assert_eq!(read.get(&at).map(String::as_str), line["key"].as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_for_a_partition_beyond_the_known_count_makes_the_producer_look_again() {
    support::init_tracing();
    let broker = TansuSql::start();
    let topic = unique_name("growth-explicit");
    // The periodic refresh is far off (the default, 5 minutes): only the record's own
    // partition makes the producer look.
    let client = connect(&broker, &[]).await;
    client.create_topic(&topic, 2, 1).await.unwrap();
    let producer = client.producer();
    let first = producer
        .send(Record::new(topic.clone(), "first").with_partition(1))
        .await
        .unwrap();
    assert_eq!(first.partition, 1);

    // `send` refreshes the topic's metadata and appends once the partition exists.
    broker.grow_topic(&topic, 5);
    let d = producer
        .send(Record::new(topic.clone(), "to-four").with_partition(4))
        .await
        .expect("partition 4 exists now");
    assert_eq!(d.partition, 4);

    // `try_send` cannot wait: it refuses the record, and asks the sender to refresh; a
    // later `try_send` finds the partition.
    broker.grow_topic(&topic, 7);
    let refused = producer
        .try_send(Record::new(topic.clone(), "to-six").with_partition(6))
        .expect_err("partition 6 is not known yet");
    assert_eq!(
        refused.error().kafka_code().map(|c| c.code()),
        Some(3),
        "{}",
        refused.error()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let to_six = loop {
        match producer.try_send(Record::new(topic.clone(), "to-six").with_partition(6)) {
            Ok(f) => break f.await.expect("delivered to partition 6"),
            Err(e) => {
                assert!(Instant::now() < deadline, "never learnt partition 6: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(to_six.partition, 6);
    // A partition the topic does not have still fails, after the look.
    let e = producer
        .send(Record::new(topic.clone(), "nowhere").with_partition(9))
        .await
        .expect_err("no partition 9");
    assert_eq!(e.error().kafka_code().map(|c| c.code()), Some(3), "{e:?}");
    producer.close().await;
    let read = read_back(&broker, &topic, 7, 3).await;
    let values: Vec<(i32, &str)> = read.iter().map(|((p, _), v)| (*p, v.as_str())).collect();
    assert_eq!(values, vec![(1, "first"), (4, "to-four"), (6, "to-six")]);
}

/// Adds a poll's records to `seen` (partition → values in order).
fn count(batch: Vec<purekafka::ConsumedRecord>, seen: &mut BTreeMap<i32, Vec<String>>) {
    for r in batch {
        let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
        seen.entry(r.partition).or_default().push(v);
    }
}

/// The leader notices the growth and rejoins. tansu 0.6.0's coordinator rebalances a formed
/// group only when a rejoining member's subscription metadata changed
/// (tansu-broker/src/coordinator/group/administrator.rs, `Formed::join`); Apache Kafka's
/// rebalances whenever the leader rejoins. The member's subscription carries its view of the
/// partition counts in its user data, so the rejoin's metadata differs on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_leader_rejoins_and_consumes_partitions_added_to_a_topic() {
    support::init_tracing();
    let broker = TansuSql::start();
    let topic = unique_name("growth-group");
    let client = connect(
        &broker,
        &[
            ("group.id", &unique_name("growth-group")),
            ("auto.offset.reset", "earliest"),
            ("topic.metadata.refresh.interval.ms", "500"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "500"),
        ],
    )
    .await;
    client.create_topic(&topic, 2, 1).await.unwrap();
    let producer = client.producer();
    let to = |p: i32, v: &str| Record::new(topic.clone(), v.to_string()).with_partition(p);
    let first: Vec<Record> = (0..2).map(|p| to(p, &format!("old-{p}"))).collect();
    send_all(&producer, first).await;

    let consumer = client.consumer(&[&topic]).unwrap();
    let mut seen: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.values().map(Vec::len).sum::<usize>() < 2 {
        assert!(Instant::now() < deadline, "nothing consumed: {seen:?}");
        count(
            consumer.poll(Duration::from_millis(200)).await.unwrap(),
            &mut seen,
        );
    }
    assert_eq!(consumer.assignment().len(), 2);

    broker.grow_topic(&topic, 4);
    let added: Vec<Record> = (2..4).map(|p| to(p, &format!("new-{p}"))).collect();
    send_all(&producer, added).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the new partitions were not consumed: assignment {:?}, seen {seen:?}\n{}",
            consumer.assignment(),
            broker.log()
        );
        count(
            consumer.poll(Duration::from_millis(200)).await.unwrap(),
            &mut seen,
        );
    }
    assert_eq!(consumer.assignment().len(), 4);
    for p in 0..4 {
        let want = if p < 2 { "old" } else { "new" };
        assert_eq!(seen[&p], vec![format!("{want}-{p}")], "partition {p}");
    }
    consumer.close().await.unwrap();
    producer.close().await;
}

/// A broker of our own (kafka-protocol's codecs, over a real socket) that answers
/// ApiVersions, Metadata (itself as broker 1 and controller) and CreatePartitions, refusing
/// a count of 2 or less with INVALID_PARTITIONS as Kafka does for a count not above the
/// current one; it records what CreatePartitions asked for. No broker here implements
/// CreatePartitions, so this checks the request and the per-topic outcomes.
async fn create_partitions_peer() -> (String, std::sync::Arc<std::sync::Mutex<Vec<(String, i32)>>>)
{
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::{
        ApiVersionsResponse, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse,
        MetadataResponse, ResponseHeader,
    };
    use kafka_protocol::protocol::{
        decode_request_header_from_buffer, Decodable, Encodable, HeaderVersion, StrBytes,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = std::sync::Arc::clone(&asked);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let asked = std::sync::Arc::clone(&recorded);
            tokio::spawn(async move {
                loop {
                    let Ok(len) = socket.read_i32().await else {
                        return;
                    };
                    let mut frame = BytesMut::zeroed(len as usize);
                    if socket.read_exact(&mut frame).await.is_err() {
                        return;
                    }
                    let mut frame = frame.freeze();
                    let header = decode_request_header_from_buffer(&mut frame).unwrap();
                    let version = header.request_api_version;
                    let mut body = BytesMut::new();
                    let header_version = match header.request_api_key {
                        18 => {
                            let key = |k: i16, max: i16| {
                                ApiVersion::default()
                                    .with_api_key(k)
                                    .with_min_version(0)
                                    .with_max_version(max)
                            };
                            ApiVersionsResponse::default()
                                .with_api_keys(vec![key(18, 3), key(3, 12), key(37, 3)])
                                .encode(&mut body, version)
                                .unwrap();
                            0 // ApiVersions answers with header v0 always
                        }
                        3 => {
                            MetadataResponse::default()
                                .with_brokers(vec![MetadataResponseBroker::default()
                                    .with_node_id(BrokerId(1))
                                    .with_host(StrBytes::from_static_str("127.0.0.1"))
                                    .with_port(i32::from(port))])
                                .with_controller_id(BrokerId(1))
                                .encode(&mut body, version)
                                .unwrap();
                            MetadataResponse::header_version(version)
                        }
                        37 => {
                            let request = CreatePartitionsRequest::decode(&mut frame, version)
                                .expect("a CreatePartitions request");
                            let mut results = Vec::new();
                            for t in request.topics {
                                asked.lock().unwrap().push((t.name.0.to_string(), t.count));
                                let refused = t.count <= 2;
                                results.push(
                                    CreatePartitionsTopicResult::default()
                                        .with_name(t.name)
                                        .with_error_code(if refused { 37 } else { 0 })
                                        .with_error_message(refused.then(|| {
                                            StrBytes::from_static_str("the topic has 2 already")
                                        })),
                                );
                            }
                            CreatePartitionsResponse::default()
                                .with_results(results)
                                .encode(&mut body, version)
                                .unwrap();
                            CreatePartitionsResponse::header_version(version)
                        }
                        other => panic!("unexpected API key {other}"),
                    };
                    let mut head = BytesMut::new();
                    ResponseHeader::default()
                        .with_correlation_id(header.correlation_id)
                        .encode(&mut head, header_version)
                        .unwrap();
                    let mut out = BytesMut::new();
                    out.put_i32((head.len() + body.len()) as i32);
                    out.extend_from_slice(&head);
                    out.extend_from_slice(&body);
                    if socket.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("127.0.0.1:{port}"), asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_create_partitions_asks_the_controller_and_reports_each_topic() {
    support::init_tracing();
    let (addr, asked) = create_partitions_peer().await;
    let client = Client::connect(Config::builder().brokers(vec![addr]).build().unwrap())
        .await
        .expect("connect to the peer");
    let outcomes = client
        .admin()
        .create_partitions(&[("orders", 6), ("audit", 2)])
        .await
        .expect("answered");
    assert_eq!(
        *asked.lock().unwrap(),
        vec![("orders".to_string(), 6), ("audit".to_string(), 2)]
    );
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes[0].topic, "orders");
    assert!(outcomes[0].result.is_ok(), "{:?}", outcomes[0].result);
    assert_eq!(outcomes[1].topic, "audit");
    let refused = outcomes[1]
        .result
        .as_ref()
        .expect_err("not above the count");
    assert_eq!(
        refused.kafka_code().map(|c| c.code()),
        Some(37),
        "{refused}"
    );
    assert!(refused.to_string().contains("audit"), "{refused}");
    // A count below 1 is refused before anything is sent.
    let e = client
        .admin()
        .create_partitions(&[("orders", 0)])
        .await
        .expect_err("no partitions");
    assert!(e.to_string().contains("orders"), "{e}");
    assert_eq!(asked.lock().unwrap().len(), 2);
}

/// tansu 0.6.0 and librdkafka's mock cluster do not list CreatePartitions in ApiVersions:
/// the call fails at once with an error that names the API, instead of being retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_create_partitions_is_refused_by_brokers_without_it() {
    support::init_tracing();
    for backend in [
        purekafka_testkit::Backend::Tansu,
        purekafka_testkit::Backend::MockCluster,
    ] {
        let cluster = support::start(backend.clone());
        let client = support::client(&cluster, &unique_name("growth-admin"), &[]).await;
        let topic = unique_name("growth-admin");
        cluster.create_topic(&topic, 2).await.unwrap();
        let e = client
            .admin()
            .create_partitions(&[(&topic, 4)])
            .await
            .expect_err("the broker has no CreatePartitions");
        assert!(
            matches!(e.kind(), purekafka::ErrorKind::Unsupported),
            "{backend:?}: {e}"
        );
        assert!(
            e.to_string().contains("CreatePartitions"),
            "{backend:?}: {e}"
        );
        assert!(!e.is_retriable(), "{backend:?}: {e}");
    }
}
