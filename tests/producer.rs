//! The producer against real brokers (librdkafka's mock cluster and tansu): volume and order,
//! Java/librdkafka-compatible partitioning, kcat interop, leader moves and injected errors,
//! size limits, backpressure, disabled mode, close and drop.
//!
//! Records are read back with rskafka's `PartitionClient::fetch_records`, always from a batch
//! start (tansu's memory storage may skip a batch when a fetch starts inside it).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use purekafka::rskafka::record::RecordAndOffset;
use purekafka::{Client, Config, ConfigBuilder, Error, Record};
use purekafka_testkit::{unique_name, Backend, TestCluster};

#[macro_use]
mod support;

fn config_for(cluster: &TestCluster) -> ConfigBuilder {
    Config::builder()
        .brokers(cluster.bootstrap_list())
        .client_id(unique_name("producer-test"))
}

async fn connect(config: ConfigBuilder) -> Client {
    // RUST_LOG=purekafka=debug shows retries and give-ups.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Client::connect(config.build().expect("config"))
        .await
        .expect("connect")
}

async fn read_topic(client: &Client, topic: &str, partitions: i32) -> Vec<Vec<RecordAndOffset>> {
    let mut all = Vec::new();
    for p in 0..partitions {
        all.push(support::read_partition(client, topic, p).await);
    }
    all
}

fn seq_of(r: &RecordAndOffset) -> usize {
    let h = r.record.headers.get("seq").expect("seq header");
    std::str::from_utf8(h).unwrap().parse().unwrap()
}

/// Checks that the topic holds exactly the records `0..count` once each, each at the offset
/// its delivery reported, in send order per partition, keys, values and headers intact.
fn check_read_back(
    partitions: &[Vec<RecordAndOffset>],
    deliveries: &[(i32, i64)],
    key_of: impl Fn(usize) -> String,
    value_of: impl Fn(usize) -> String,
) {
    let mut seen = vec![false; deliveries.len()];
    for (p, records) in partitions.iter().enumerate() {
        let mut last_seq = None;
        for r in records {
            let seq = seq_of(r);
            assert!(!seen[seq], "record {seq} read twice");
            seen[seq] = true;
            assert_eq!(
                deliveries[seq],
                (p as i32, r.offset),
                "record {seq}: delivery said {:?}, found at {p}/{}",
                deliveries[seq],
                r.offset
            );
            if let Some(last) = last_seq {
                assert!(seq > last, "partition {p}: record {seq} after {last}");
            }
            last_seq = Some(seq);
            assert_eq!(r.record.key.as_deref(), Some(key_of(seq).as_bytes()));
            assert_eq!(r.record.value.as_deref(), Some(value_of(seq).as_bytes()));
            assert_eq!(
                r.record.headers.get("source").map(Vec::as_slice),
                Some(&b"purekafka-test"[..])
            );
        }
    }
    let missing: Vec<usize> = (0..seen.len()).filter(|i| !seen[*i]).take(10).collect();
    assert!(
        missing.is_empty(),
        "records never read back: {missing:?}..."
    );
}

fn numbered(topic: &str, i: usize) -> Record {
    Record::new(topic.to_string(), format!("value-{i}-{}", "x".repeat(60)))
        .with_key(format!("key-{}", i % 9_973))
        .with_header("seq", i.to_string())
        .with_header("source", "purekafka-test")
}

fn key_of(i: usize) -> String {
    format!("key-{}", i % 9_973)
}

fn value_of(i: usize) -> String {
    format!("value-{i}-{}", "x".repeat(60))
}

on_each_backend!(
    two_hundred_thousand_records_round_trip,
    |cluster: TestCluster| async move {
        const N: usize = 200_000;
        let topic = unique_name("producer-200k");
        cluster.create_topic(&topic, 6).await.expect("create topic");
        let client = connect(config_for(&cluster).set("linger.ms", "5")).await;
        let producer = client.producer();
        let started = Instant::now();
        let mut pending = Vec::with_capacity(N);
        for i in 0..N {
            pending.push(
                producer
                    .enqueue(numbered(&topic, i))
                    .await
                    .expect("enqueue"),
            );
        }
        let mut deliveries = Vec::with_capacity(N);
        for (i, f) in pending.into_iter().enumerate() {
            let d = f.await.unwrap_or_else(|e| panic!("record {i}: {e}"));
            assert_eq!(&*d.topic, topic.as_str());
            deliveries.push((d.partition, d.offset));
        }
        let sent = started.elapsed();
        let m = producer.metrics();
        assert_eq!(m.records_sent, N as u64);
        assert_eq!(m.errors, 0);
        assert_eq!(m.queue_depth, 0);
        assert_eq!(m.buffered_bytes, 0);
        // Keyed records spread over all partitions, as murmur2 does.
        let used: std::collections::HashSet<i32> = deliveries.iter().map(|d| d.0).collect();
        assert_eq!(used.len(), 6);
        for (i, d) in deliveries.iter().enumerate().step_by(997) {
            assert_eq!(
                d.0,
                purekafka::producer::partition_for_key(key_of(i).as_bytes(), 6)
            );
        }
        producer.close().await;
        let read = read_topic(&client, &topic, 6).await;
        check_read_back(&read, &deliveries, key_of, value_of);
        eprintln!(
            "{}: {N} records sent in {sent:?} ({} batches, {:.0} records/batch)",
            cluster.backend().name(),
            m.batches_sent,
            m.avg_batch_records
        );
    }
);

on_each_backend!(
    compressed_batches_are_readable,
    |cluster: TestCluster| async move {
        for codec in ["gzip", "snappy"] {
            let topic = unique_name(&format!("producer-{codec}"));
            cluster.create_topic(&topic, 2).await.expect("create topic");
            let client = connect(config_for(&cluster).set("compression.type", codec)).await;
            let producer = client.producer();
            let results = producer
                .send_all((0..2_000).map(|i| numbered(&topic, i)))
                .await;
            let deliveries: Vec<(i32, i64)> = results
                .into_iter()
                .map(|r| {
                    let d = r.expect("delivered");
                    (d.partition, d.offset)
                })
                .collect();
            let read = read_topic(&client, &topic, 2).await;
            check_read_back(&read, &deliveries, key_of, value_of);
        }
    }
);

on_each_backend!(
    oversized_record_fails_before_sending_and_neighbours_arrive,
    |cluster: TestCluster| async move {
        let topic = unique_name("producer-too-large");
        cluster.create_topic(&topic, 1).await.expect("create topic");
        let client = connect(config_for(&cluster).set("message.max.bytes", "20000")).await;
        let producer = client.producer();
        let before = producer
            .enqueue(Record::new(topic.clone(), "before"))
            .await
            .unwrap();
        let big = Record::new(topic.clone(), vec![0u8; 30_000]).with_key("the-big-one");
        match producer.enqueue(big).await.map_err(Error::from) {
            Err(Error::RecordTooLarge {
                topic: t,
                size,
                max,
            }) => {
                assert_eq!(t, topic);
                assert!(size > 30_000, "{size}");
                assert_eq!(max, 20_000);
            }
            other => panic!("expected RecordTooLarge, got {other:?}"),
        }
        let after = producer
            .send(Record::new(topic.clone(), "after"))
            .await
            .unwrap();
        let before = before.await.unwrap();
        assert_eq!(after.offset, before.offset + 1);
        let read = support::read_partition(&client, &topic, 0).await;
        let values: Vec<&[u8]> = read
            .iter()
            .map(|r| r.record.value.as_deref().unwrap())
            .collect();
        assert_eq!(values, vec![&b"before"[..], &b"after"[..]]);

        if matches!(cluster.backend(), Backend::MockCluster) {
            // The broker's MESSAGE_TOO_LARGE is reported the same way.
            cluster.push_request_errors(0, &[10]).unwrap();
            let rejected = producer.send(Record::new(topic.clone(), "rejected")).await;
            match rejected.map_err(Error::from) {
                Err(Error::RecordTooLarge { topic: t, .. }) => assert_eq!(t, topic),
                other => panic!("expected RecordTooLarge from the broker, got {other:?}"),
            }
            producer
                .send(Record::new(topic.clone(), "fine again"))
                .await
                .expect("next record is delivered");

            // A batch of many records rejected as too large is split and sent again in
            // halves, in order (as the Java client does): nothing fails.
            cluster.push_request_errors(0, &[10, 10]).unwrap();
            let results = producer
                .send_all((0..100).map(|i| Record::new(topic.clone(), format!("split-{i}"))))
                .await;
            let offsets: Vec<i64> = results
                .into_iter()
                .map(|r| r.expect("delivered after splitting").offset)
                .collect();
            assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
            assert!(producer.metrics().retries >= 2);
            let read = support::read_partition(&client, &topic, 0).await;
            let split: Vec<String> = read
                .iter()
                .filter_map(|r| String::from_utf8(r.record.value.clone()?).ok())
                .filter(|v| v.starts_with("split-"))
                .collect();
            let expected: Vec<String> = (0..100).map(|i| format!("split-{i}")).collect();
            assert_eq!(split, expected);
        }
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_match_librdkafka_murmur2_random() {
    let cluster = TestCluster::start(Backend::MockCluster).expect("start broker");
    let keys: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| match i % 4 {
            0 => format!("user-{i}").into_bytes(),
            1 => i.to_le_bytes().to_vec(),
            2 => format!("{i:x}-{}", "k".repeat((i % 37) as usize)).into_bytes(),
            _ => (0..(i % 23)).map(|b| (b * 31 + i) as u8).collect(),
        })
        .collect();
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    for partitions in [1, 6, 7, 64] {
        let theirs = cluster
            .partitions_for_keys(partitions, &refs)
            .expect("partition-keys");
        for (key, expected) in keys.iter().zip(theirs) {
            assert_eq!(
                purekafka::producer::partition_for_key(key, partitions),
                expected,
                "key {key:?} over {partitions} partitions"
            );
        }
    }
    // And the producer really sends them there.
    let topic = unique_name("producer-keys");
    cluster.create_topic(&topic, 6).await.unwrap();
    let client = connect(config_for(&cluster)).await;
    let producer = client.producer();
    let sample: Vec<&[u8]> = refs.iter().copied().step_by(250).collect();
    let expected = cluster.partitions_for_keys(6, &sample).unwrap();
    for (key, p) in sample.iter().zip(expected) {
        let d = producer
            .send(Record::new(topic.clone(), "v").with_key(Bytes::copy_from_slice(key)))
            .await
            .unwrap();
        assert_eq!(d.partition, p);
    }
}

fn kcat(args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new("kcat");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("kcat is installed (apt-get install -y kcat)");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_reads_what_purekafka_writes_and_the_reverse() {
    let cluster = TestCluster::start(Backend::MockCluster).expect("start broker");
    let bootstrap = cluster.bootstrap();

    // purekafka → kcat, with each compression of the default build.
    for codec in ["none", "gzip", "snappy"] {
        let topic = unique_name(&format!("producer-to-kcat-{codec}"));
        cluster.create_topic(&topic, 3).await.unwrap();
        let client = connect(config_for(&cluster).set("compression.type", codec)).await;
        let producer = client.producer();
        let results = producer
            .send_all((0..300).map(|i| {
                Record::new(topic.clone(), format!("value {i}"))
                    .with_key(format!("key-{i}"))
                    .with_header("h1", format!("a{i}"))
                    .with_header("h2", "b")
            }))
            .await;
        let mut where_: HashMap<String, (i32, i64)> = HashMap::new();
        for (i, r) in results.into_iter().enumerate() {
            let d = r.unwrap();
            where_.insert(format!("key-{i}"), (d.partition, d.offset));
        }
        producer.close().await;
        let out = kcat(
            &[
                "-b",
                &bootstrap,
                "-C",
                "-t",
                &topic,
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%p|%o|%k|%s|%h\n",
            ],
            None,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 300, "{codec}: kcat read {out}");
        for line in lines {
            let f: Vec<&str> = line.split('|').collect();
            let i: usize = f[2].strip_prefix("key-").unwrap().parse().unwrap();
            assert_eq!(
                (f[0].parse::<i32>().unwrap(), f[1].parse::<i64>().unwrap()),
                where_[f[2]],
                "{codec}: {line}"
            );
            assert_eq!(f[3], format!("value {i}"), "{codec}: {line}");
            assert_eq!(f[4], format!("h1=a{i},h2=b"), "{codec}: {line}");
        }
    }

    // kcat → purekafka (read back through rskafka's fetch).
    let topic = unique_name("kcat-to-purekafka");
    cluster.create_topic(&topic, 2).await.unwrap();
    let input: String = (0..200).map(|i| format!("kk-{i}\tvv-{i}\n")).collect();
    kcat(
        &[
            "-b", &bootstrap, "-P", "-t", &topic, "-K", "\t", "-H", "src=kcat", "-H", "n=1",
        ],
        Some(&input),
    );
    let client = connect(config_for(&cluster)).await;
    let read = read_topic(&client, &topic, 2).await;
    let mut seen = 0;
    for r in read.iter().flatten() {
        let key = String::from_utf8(r.record.key.clone().unwrap()).unwrap();
        let i: usize = key.strip_prefix("kk-").unwrap().parse().unwrap();
        assert_eq!(
            r.record.value.as_deref(),
            Some(format!("vv-{i}").as_bytes())
        );
        assert_eq!(
            r.record.headers.get("src").map(Vec::as_slice),
            Some(&b"kcat"[..])
        );
        assert_eq!(
            r.record.headers.get("n").map(Vec::as_slice),
            Some(&b"1"[..])
        );
        seen += 1;
    }
    assert_eq!(seen, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_move_and_not_leader_errors_lose_nothing() {
    const N: usize = 30_000;
    let cluster = TestCluster::start(Backend::MockCluster).expect("start broker");
    let topic = unique_name("producer-leader-move");
    cluster.create_topic(&topic, 6).await.unwrap();
    // One batch in flight per partition: librdkafka's mock cluster checks sequence numbers
    // only for transactional producers, so with several in flight a batch behind a failed
    // one is accepted before it (order with 5 in flight is proven on tansu, in
    // tests/idempotence.rs).
    let client = connect(
        config_for(&cluster)
            .set("linger.ms", "2")
            .set("reconnect.backoff.ms", "20")
            .set("max.in.flight", "1"),
    )
    .await;
    let producer = client.producer();
    let mut pending = Vec::with_capacity(N);
    for i in 0..N {
        if i == N / 3 {
            for p in 0..6 {
                cluster.set_leader(&topic, p, (p % 3) + 1).unwrap();
            }
            cluster.push_request_errors(0, &[6, 6, 6]).unwrap();
        }
        if i == 2 * N / 3 {
            for p in 0..6 {
                cluster.set_leader(&topic, p, ((p + 1) % 3) + 1).unwrap();
            }
            // NOT_LEADER once more, then a dropped connection (librdkafka's _TRANSPORT: the
            // broker closes the connection instead of answering).
            cluster.push_request_errors(0, &[6, -195]).unwrap();
        }
        pending.push(producer.enqueue(numbered(&topic, i)).await.unwrap());
        if i % 1000 == 0 {
            // Let some batches go out between the faults.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut deliveries = Vec::with_capacity(N);
    for (i, f) in pending.into_iter().enumerate() {
        let d = f.await.unwrap_or_else(|e| panic!("record {i}: {e}"));
        deliveries.push((d.partition, d.offset));
    }
    let m = producer.metrics();
    assert!(m.retries >= 1, "the injected errors caused retries: {m:?}");
    assert_eq!(m.errors, 0);
    // A fresh client reads back: rskafka's metadata cache in `client` still has the old
    // leaders and takes a few backoff rounds to notice the moves.
    let reader = connect(config_for(&cluster)).await;
    let read = read_topic(&reader, &topic, 6).await;
    check_read_back(&read, &deliveries, key_of, value_of);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_fails_records_after_the_delivery_timeout() {
    let cluster = TestCluster::start(Backend::MockCluster).expect("start broker");
    let topic = unique_name("producer-timeout");
    cluster.create_topic(&topic, 1).await.unwrap();
    let client = connect(
        config_for(&cluster)
            .set("delivery.timeout.ms", "1500")
            .set("reconnect.backoff.ms", "50")
            .set("request.timeout.ms", "500"),
    )
    .await;
    let producer = client.producer();
    producer
        .send(Record::new(topic.clone(), "first"))
        .await
        .expect("delivered while the brokers are up");
    cluster.broker_down(-1).unwrap();
    let started = Instant::now();
    let result = producer.send(Record::new(topic.clone(), "lost")).await;
    let took = started.elapsed();
    match result.map_err(Error::from) {
        Err(e @ Error::RetriesExhausted { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&topic), "{text}");
            assert!(text.contains("delivery.timeout.ms"), "{text}");
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");
    assert!(producer.metrics().retries >= 1);
    assert_eq!(producer.metrics().errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_sends_lingering_batches_at_once() {
    let cluster = TestCluster::start(Backend::MockCluster).expect("start broker");
    let topic = unique_name("producer-full-linger");
    cluster.create_topic(&topic, 2).await.unwrap();
    let client = connect(
        config_for(&cluster)
            .set("linger.ms", "30000")
            .set("queue.buffering.max.kbytes", "1024")
            .set("batch.size", "262144"),
    )
    .await;
    let producer = client.producer();
    let started = Instant::now();
    let value = Bytes::from(vec![b'v'; 1000]);
    let mut pending = Vec::new();
    for _ in 0..4_000 {
        // 4 MB through a 1 MiB buffer: impossible if batches waited for their linger.
        pending.push(
            producer
                .enqueue(Record::new(topic.clone(), value.clone()))
                .await
                .unwrap(),
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    producer.flush().await;
    for f in pending {
        f.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_keeps_memory_bounded_and_loses_nothing() {
    const N: usize = 20_000;
    const BOUND: usize = 1 << 20;
    let cluster = TestCluster::start(Backend::MockCluster).expect("start broker");
    let topic = unique_name("producer-backpressure");
    cluster.create_topic(&topic, 3).await.unwrap();
    cluster.set_rtt(-1, Duration::from_millis(40)).unwrap();
    let client = connect(
        config_for(&cluster)
            .set("queue.buffering.max.kbytes", "1024")
            .set("batch.size", "65536"),
    )
    .await;
    let producer = client.producer();
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let producer = producer.clone();
        let stop = Arc::clone(&stop);
        let max_seen = Arc::clone(&max_seen);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let b = producer.metrics().buffered_bytes;
                max_seen.fetch_max(b, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let value = Bytes::from(vec![b'v'; 500]);
    let mut pending = Vec::with_capacity(N);
    let mut queue_full_seen = false;
    for i in 0..N {
        let record = Record::new(topic.clone(), value.clone())
            .with_key(format!("k{i}"))
            .with_header("seq", i.to_string());
        if !queue_full_seen {
            // The non-blocking form refuses instead of waiting and hands the record back
            // (which is then enqueued with waiting).
            match producer.try_send(record) {
                Err(refused) => match refused.into_parts() {
                    (Error::QueueFull { limit, .. }, record) => {
                        assert_eq!(limit, BOUND);
                        queue_full_seen = true;
                        pending.push((i, producer.enqueue(record).await.unwrap()));
                    }
                    (e, _) => panic!("try_send: {e}"),
                },
                Ok(f) => pending.push((i, f)),
            }
            continue;
        }
        pending.push((i, producer.enqueue(record).await.unwrap()));
    }
    let mut deliveries = vec![(-1, -1); N];
    for (i, f) in pending {
        let d = f.await.unwrap_or_else(|e| panic!("record {i}: {e}"));
        deliveries[i] = (d.partition, d.offset);
    }
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let m = producer.metrics();
    assert!(queue_full_seen, "the buffer never filled: {m:?}");
    assert!(m.buffered_bytes_peak <= BOUND, "{m:?}");
    assert!(max_seen.load(Ordering::Relaxed) <= BOUND);
    assert!(
        m.buffered_bytes_peak > BOUND / 2,
        "the test did not fill the buffer: {m:?}"
    );
    cluster.set_rtt(-1, Duration::ZERO).unwrap();
    let read = read_topic(&client, &topic, 3).await;
    let total: usize = read.iter().map(Vec::len).sum();
    assert_eq!(total, N);
    for (p, records) in read.iter().enumerate() {
        for r in records {
            assert_eq!(deliveries[seq_of(r)], (p as i32, r.offset));
        }
    }
}

on_each_backend!(
    dropping_the_producer_still_delivers_and_close_refuses_more,
    |cluster: TestCluster| async move {
        let topic = unique_name("producer-drop");
        cluster.create_topic(&topic, 2).await.expect("create topic");
        let client = connect(config_for(&cluster).set("linger.ms", "200")).await;
        let producer = client.producer();
        let mut pending = Vec::new();
        for i in 0..1_000 {
            pending.push(producer.enqueue(numbered(&topic, i)).await.unwrap());
        }
        // try_send to a topic not seen yet: its metadata is fetched in the background.
        let other = unique_name("producer-drop-other");
        cluster.create_topic(&other, 1).await.expect("create topic");
        let deferred = producer
            .try_send(Record::new(other.clone(), "late"))
            .unwrap();
        drop(producer);
        for f in pending {
            f.await.expect("delivered after the producer was dropped");
        }
        let d = deferred
            .await
            .expect("delivered after the producer was dropped");
        assert_eq!(&*d.topic, other.as_str());

        let producer = client.producer();
        let f = producer.enqueue(numbered(&topic, 1_000)).await.unwrap();
        producer.close().await;
        assert!(f.is_done(), "close waits for everything enqueued");
        f.await.unwrap();
        assert!(matches!(
            producer
                .send(numbered(&topic, 1_001))
                .await
                .map_err(Error::from),
            Err(Error::Closed(_))
        ));
        let read = read_topic(&client, &topic, 2).await;
        assert_eq!(read.iter().map(Vec::len).sum::<usize>(), 1_001);
    }
);

on_each_backend!(
    default_headers_and_json,
    |cluster: TestCluster| async move {
        let topic = unique_name("producer-json");
        cluster.create_topic(&topic, 1).await.expect("create topic");
        let client = connect(
            config_for(&cluster)
                .client_id("orders-service")
                .set("default.headers", "true")
                .set("service.version", "1.2.3"),
        )
        .await;
        let producer = client.producer();
        #[derive(serde::Serialize)]
        struct Order {
            id: u32,
        }
        let d = producer
            .send_json(topic.clone(), "order-7", &Order { id: 7 })
            .await
            .unwrap();
        let read = support::read_partition(&client, &topic, 0).await;
        let r = &read[0];
        assert_eq!(r.offset, d.offset);
        assert_eq!(r.record.value.as_deref(), Some(&b"{\"id\":7}"[..]));
        assert_eq!(r.record.key.as_deref(), Some(&b"order-7"[..]));
        let h = &r.record.headers;
        let event_id = std::str::from_utf8(&h["event_id"]).unwrap();
        assert_eq!(event_id.len(), 36, "{event_id}");
        let ts = std::str::from_utf8(&h["timestamp"]).unwrap();
        assert!(
            purekafka::rskafka::chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
            "{ts}"
        );
        assert_eq!(&h["service"][..], b"orders-service");
        assert_eq!(&h["version"][..], b"1.2.3");
    }
);

#[tokio::test]
async fn disabled_kafka_sends_nothing_and_says_so() {
    let config = Config::builder()
        .client_id("disabled-test")
        .enabled(false)
        .build()
        .unwrap();
    let client = Client::connect(config).await.unwrap();
    let producer = client.producer();
    assert!(matches!(
        producer
            .send(Record::new("t", "v"))
            .await
            .map_err(Error::from),
        Err(Error::Disabled)
    ));
    let f = producer.try_send(Record::new("t", "v")).unwrap();
    let (error, record) = f.await.expect_err("disabled").into_parts();
    assert!(matches!(error, Error::Disabled));
    assert_eq!(record, Record::new("t", "v"), "the record is handed back");
    producer.flush().await;
    producer.close().await;
}

on_each_backend!(
    acks_zero_sends_without_waiting_for_answers,
    |cluster: TestCluster| async move {
        let topic = unique_name("producer-acks0");
        cluster.create_topic(&topic, 2).await.expect("create topic");
        let client = connect(config_for(&cluster).set("acks", "0")).await;
        let producer = client.producer();
        for r in producer
            .send_all((0..500).map(|i| numbered(&topic, i)))
            .await
        {
            assert_eq!(r.expect("written").offset, -1, "acks=0 has no offsets");
        }
        // Nothing confirms the writes: wait until they show up.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let read = read_topic(&client, &topic, 2).await;
            let n: usize = read.iter().map(Vec::len).sum();
            if n == 500 {
                break;
            }
            assert!(Instant::now() < deadline, "{n} of 500 records arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_avoid_a_partition_without_leader() {
    let cluster = TestCluster::start(Backend::MockCluster).expect("start broker");
    let topic = unique_name("producer-leaderless");
    cluster.create_topic(&topic, 3).await.unwrap();
    cluster.set_leader(&topic, 0, -1).unwrap();
    let client = connect(
        config_for(&cluster)
            .set("batch.size", "2000")
            .set("linger.ms", "1"),
    )
    .await;
    let producer = client.producer();
    let results = producer
        .send_all((0..300).map(|i| Record {
            key: None,
            ..numbered(&topic, i)
        }))
        .await;
    let mut per_partition = [0usize; 3];
    for r in results {
        per_partition[r.expect("delivered").partition as usize] += 1;
    }
    assert_eq!(per_partition[0], 0, "{per_partition:?}");
    assert!(
        per_partition[1] > 0 && per_partition[2] > 0,
        "{per_partition:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_and_partition_fail_clearly() {
    let cluster = TestCluster::start(Backend::MockCluster).expect("start broker");
    let topic = unique_name("producer-partitions");
    cluster.create_topic(&topic, 2).await.unwrap();
    let client = connect(config_for(&cluster)).await;
    let producer = client.producer();
    match producer
        .send(Record::new(topic.clone(), "v").with_partition(5))
        .await
        .map_err(Error::from)
    {
        Err(e @ Error::Broker { .. }) => assert!(e.to_string().contains(&topic), "{e}"),
        other => panic!("expected an unknown partition error, got {other:?}"),
    }
    let d = producer
        .send(Record::new(topic.clone(), "v").with_partition(1))
        .await
        .unwrap();
    assert_eq!(d.partition, 1);
}
