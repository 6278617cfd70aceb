//! The four Kafka codecs against librdkafka (kcat 1.7.1, librdkafka 2.0.2) on librdkafka's
//! mock cluster, with the default features (pure Rust: flate2, snap, lz4_flex, ruzstd):
//! batches kcat writes with gzip, snappy, lz4 and zstd are read exactly by a purekafka group
//! consumer, and batches purekafka writes with each codec are read exactly by kcat.
//!
//! `librdkafka_reads_multi_block_zstd_batches_purekafka_writes` does the same for zstd batches
//! of several 128 KiB zstd blocks (purekafka's own match finder, matches across blocks).
//!
//! Each direction first checks, with a raw Fetch, that the stored batches really carry the
//! codec (librdkafka sends a batch uncompressed when compression does not pay), so a
//! passing test cannot be one that silently compared plain batches.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use purekafka::{Client, Config, Record};
use purekafka_testkit::{unique_name, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[macro_use]
mod support;

const CODECS: [(&str, i16); 4] = [("gzip", 1), ("snappy", 2), ("lz4", 3), ("zstd", 4)];
const RECORDS: usize = 200;

/// Everything in partition 0 of `topic`, read by kcat (librdkafka) from the beginning, one
/// line per record in kcat's `-f` `format`.
fn kcat_partition_0(bootstrap: &str, topic: &str, format: &str) -> String {
    kcat(
        &[
            "-b",
            bootstrap,
            "-C",
            "-t",
            topic,
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-f",
            format,
        ],
        None,
    )
}

fn kcat(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("kcat")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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

/// A value that compresses well and differs per record.
fn value(i: usize) -> String {
    format!(
        "value {i:05} {}",
        "the same words again and again ".repeat(8)
    )
}

/// One mock broker (so every partition's leader is the bootstrap broker) with a short first
/// rebalance.
fn mock() -> TestCluster {
    let cluster = TestCluster::start_mock(1).expect("start mock cluster");
    cluster
        .set_group_initial_rebalance_delay(Duration::from_millis(200))
        .unwrap();
    cluster
}

/// The codec ids of every batch stored in `topic`/0 on `broker`, read with a raw Fetch v4 so
/// nothing decompresses them on the way.
async fn stored_codecs(broker: &str, topic: &str) -> Vec<i16> {
    let mut stream = tokio::net::TcpStream::connect(broker).await.unwrap();
    let version = 4;
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(64 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(64 << 20)])]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("codec-test")));
    let mut body = BytesMut::new();
    header.encode(&mut body, 1).unwrap();
    request.encode(&mut body, version).unwrap();
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.put_slice(&body);
    stream.write_all(&frame).await.unwrap();
    let len = stream.read_i32().await.unwrap() as usize;
    assert!(len < 128 << 20, "response frame of {len} bytes");
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.unwrap();
    let mut buf = Bytes::from(buf);
    let head = ResponseHeader::decode(&mut buf, 0).unwrap();
    assert_eq!(head.correlation_id, 7);
    let response = FetchResponse::decode(&mut buf, version).unwrap();
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0, "fetch of {topic}/0");
    let mut records = partition.records.clone().unwrap_or_default();
    let mut codecs = Vec::new();
    while records.remaining() >= 61 {
        let batch_len = i32::from_be_bytes(records[8..12].try_into().unwrap()) as usize;
        if records.remaining() < 12 + batch_len {
            break; // a partial batch at the end of the response
        }
        let batch = records.split_to(12 + batch_len);
        assert_eq!(batch[16], 2, "magic 2 record batch");
        codecs.push(i16::from_be_bytes([batch[21], batch[22]]) & 0x7);
    }
    codecs
}

async fn connect(cluster: &TestCluster, extra: &[(&str, &str)]) -> Client {
    support::init_tracing();
    let config = Config::builder()
        .brokers(cluster.bootstrap_list())
        .client_id(unique_name("codec-test"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set_all(extra.iter().copied())
        .build()
        .unwrap();
    Client::connect(config).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purekafka_reads_batches_librdkafka_compressed_with_each_codec() {
    let cluster = mock();
    let bootstrap = cluster.bootstrap();
    for (codec, id) in CODECS {
        let topic = unique_name(&format!("kcat-{codec}"));
        cluster.create_topic(&topic, 1).await.unwrap();
        let input: String = (0..RECORDS)
            .map(|i| format!("key-{i}\t{}\n", value(i)))
            .collect();
        kcat(
            &[
                "-b",
                &bootstrap,
                "-P",
                "-t",
                &topic,
                "-p",
                "0",
                "-K",
                "\t",
                "-z",
                codec,
                "-H",
                "src=kcat",
                "-X",
                "linger.ms=200",
            ],
            Some(&input),
        );
        let codecs = stored_codecs(&bootstrap, &topic).await;
        assert!(
            !codecs.is_empty() && codecs.iter().all(|c| *c == id),
            "{codec}: kcat's batches are stored with codecs {codecs:?}"
        );

        let group = unique_name(&format!("codec-group-{codec}"));
        let client = connect(&cluster, &[("group.id", group.as_str())]).await;
        let consumer = client.consumer(&[&topic]).unwrap();
        let mut seen: BTreeMap<i64, (String, String, String)> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < RECORDS {
            assert!(
                Instant::now() < deadline,
                "{codec}: read {} of {RECORDS}",
                seen.len()
            );
            for r in consumer.poll(Duration::from_millis(500)).await.unwrap() {
                seen.insert(
                    r.offset,
                    (
                        r.key_str().unwrap().to_string(),
                        r.value_str().unwrap().to_string(),
                        r.headers.get_str("src").unwrap_or_default().to_string(),
                    ),
                );
            }
        }
        consumer.close().await.unwrap();
        drop(client);
        for (i, (offset, (k, v, h))) in seen.iter().enumerate() {
            assert_eq!(*offset, i as i64, "{codec}");
            assert_eq!(k, &format!("key-{i}"), "{codec}");
            assert_eq!(v, &value(i), "{codec}");
            assert_eq!(h, "kcat", "{codec}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_reads_batches_purekafka_compressed_with_each_codec() {
    let cluster = mock();
    let bootstrap = cluster.bootstrap();
    for (codec, id) in CODECS {
        let topic = unique_name(&format!("purekafka-{codec}"));
        cluster.create_topic(&topic, 1).await.unwrap();
        let client = connect(
            &cluster,
            &[("compression.type", codec), ("linger.ms", "50")],
        )
        .await;
        let producer = client.producer();
        let results = producer
            .send_all((0..RECORDS).map(|i| {
                Record::new(topic.clone(), value(i))
                    .with_key(format!("key-{i}"))
                    .with_partition(0)
                    .with_header("src", "purekafka")
            }))
            .await;
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap().offset, i as i64, "{codec}");
        }
        producer.close().await;
        let codecs = stored_codecs(&bootstrap, &topic).await;
        assert!(
            !codecs.is_empty() && codecs.iter().all(|c| *c == id),
            "{codec}: purekafka's batches are stored with codecs {codecs:?}"
        );
        let out = kcat_partition_0(&bootstrap, &topic, "%o|%k|%s|%h\n");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), RECORDS, "{codec}: kcat read {out}");
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(
                *line,
                format!("{i}|key-{i}|{}|src=purekafka", value(i)),
                "{codec}"
            );
        }
    }
}

/// A ~1 KiB printable value built from a pool of pseudo-random words, so a batch of them has
/// matches at every distance, many reaching back across zstd's 128 KiB blocks.
fn wordy_value(i: usize) -> String {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = format!("{i:06}");
    while out.len() < 1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // 512 distinct words: 8 hex digits of a fixed scramble of the word's number.
        let word = (x % 512).wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32;
        out.push_str(&format!(" {word:08x}"));
    }
    out
}

/// purekafka's zstd frames for batches far larger than one zstd block (several 128 KiB
/// blocks, matches across block boundaries) are read exactly by librdkafka's C zstd (kcat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_reads_multi_block_zstd_batches_purekafka_writes() {
    const LARGE: usize = 1200;
    let cluster = mock();
    let bootstrap = cluster.bootstrap();
    let topic = unique_name("purekafka-zstd-large");
    cluster.create_topic(&topic, 1).await.unwrap();
    let client = connect(
        &cluster,
        &[
            ("compression.type", "zstd"),
            // Long enough that, even on a loaded machine, every record is queued before the
            // linger runs out: batches close when full (1 MiB), not on time.
            ("linger.ms", "1000"),
            ("batch.size", "1048576"),
        ],
    )
    .await;
    let producer = client.producer();
    let results = producer
        .send_all((0..LARGE).map(|i| {
            Record::new(topic.clone(), wordy_value(i))
                .with_key(format!("key-{i}"))
                .with_partition(0)
        }))
        .await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap().offset, i as i64);
    }
    producer.close().await;
    let codecs = stored_codecs(&bootstrap, &topic).await;
    // 1200 records of ~1 KiB in at most 4 batches: at least one batch holds over 256 KiB,
    // so its frame has three or more blocks.
    assert!(
        !codecs.is_empty() && codecs.len() <= 4 && codecs.iter().all(|c| *c == 4),
        "batches stored with codecs {codecs:?}"
    );
    let out = kcat_partition_0(&bootstrap, &topic, "%o|%k|%s\n");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), LARGE, "kcat read {} records", lines.len());
    for (i, line) in lines.iter().enumerate() {
        assert!(
            *line == format!("{i}|key-{i}|{}", wordy_value(i)),
            "record {i} differs: {line}"
        );
    }
}
