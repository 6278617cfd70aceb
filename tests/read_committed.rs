//! `isolation.level` against real brokers, with transactions written by an independent client
//! (confluent-kafka over librdkafka 2.16, `tests/support/confluent_peer.py`) interleaved with
//! non-transactional records of librdkafka and of our own producer.
//!
//! What each broker proves (found by reading their Fetch responses byte by byte):
//! - tansu 0.6.0 writes COMMIT / ABORT markers and bounds read_committed fetches at the last
//!   stable offset, but always sends an empty aborted-transactions list. So on tansu these
//!   tests prove: control records are never returned, records of aborted transactions are
//!   dropped (through their ABORT markers in the same response), an open transaction stops a
//!   read_committed consumer and not a read_uncommitted one, positions and commits pass the
//!   trailing markers. The aborted-list path (what Apache Kafka sends) is proven by the unit
//!   tests in src/consumer/decode.rs over batches captured from tansu.
//! - librdkafka's mock cluster writes no markers and filters nothing: there the test proves
//!   that nothing is lost or duplicated and that the order holds, with isolation_level=1
//!   fetches.

use std::process::Stdio;
use std::time::{Duration, Instant};

use purekafka::admin::OffsetSpec;
use purekafka::{Client, ConsumedRecord, Consumer, Record, TopicPartition};
use purekafka_testkit::{unique_name, Backend, TestCluster};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[macro_use]
mod support;

/// The end offset (high watermark) of partition 0 of `topic`.
async fn end_offset(client: &Client, topic: &str) -> i64 {
    let tp = TopicPartition::new(topic, 0);
    client
        .admin()
        .list_offsets(std::slice::from_ref(&tp), OffsetSpec::Latest)
        .await
        .unwrap()[&tp]
}

/// Polls until the consumer's position on partition 0 of `topic` reaches `end` (panics after
/// 60 s), then polls once more so that everything returned counts as processed.
async fn read_to(consumer: &Consumer, topic: &str, end: i64) -> Vec<ConsumedRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while consumer.position(topic, 0) != Some(end) {
        assert!(
            Instant::now() < deadline,
            "position {:?}, expected {end}; got {} records",
            consumer.position(topic, 0),
            got.len()
        );
        got.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    got.extend(consumer.poll(Duration::from_millis(10)).await.unwrap());
    got
}

fn keys(records: &[ConsumedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

/// One record written: its key, and whether read_committed must return it (committed or not
/// transactional).
struct Written {
    key: String,
    committed: bool,
}

/// Runs `produce-steps` and returns its records in write order, plus the number of
/// transactions ended (each wrote one marker on a broker that writes them).
async fn produce_steps(
    cluster: &TestCluster,
    topic: &str,
    prefix: &str,
    steps: &[&str],
) -> (Vec<Written>, usize) {
    let bootstrap = cluster.bootstrap();
    let mut args = vec![
        "produce-steps",
        "--bootstrap",
        &bootstrap,
        "--topic",
        topic,
        "--prefix",
        prefix,
    ];
    args.extend_from_slice(steps);
    let lines = support::confluent_peer(&args).await;
    let mut written: Vec<(i64, Written)> = lines
        .iter()
        .map(|l| {
            (
                l["seq"].as_i64().expect("seq"),
                Written {
                    key: l["key"].as_str().expect("key").to_owned(),
                    committed: l["outcome"] != "abort",
                },
            )
        })
        .collect();
    written.sort_by_key(|(seq, _)| *seq);
    let ends = steps
        .iter()
        .filter(|s| s.ends_with(":commit") || s.ends_with(":abort"))
        .count();
    (written.into_iter().map(|(_, w)| w).collect(), ends)
}

on_each_backend!(
    read_committed_returns_exactly_the_committed_records,
    |cluster: TestCluster| async move {
        let topic = unique_name("rc-exact");
        cluster.create_topic(&topic, 1).await.unwrap();
        let writer = support::client(&cluster, &unique_name("rc-writer"), &[]).await;

        // Transactions of two producers interleaved with each other and with plain
        // (non-transactional) records; then plain records of our producer; then more
        // transactions, ending on an aborted one (its data and marker trail the log).
        let (mut written, mut markers) = produce_steps(
            &cluster,
            &topic,
            "p1",
            &[
                "a+3", "plain+1", "b+2", "a+2", "b:commit", "a:abort", "plain+2", "a+2",
                "a:commit", "b+1", "b:abort",
            ],
        )
        .await;
        let producer = writer.producer();
        for i in 0..3 {
            let key = format!("ours-{i}");
            producer
                .send(Record::new(topic.clone(), key.clone()).with_key(key.clone()))
                .await
                .unwrap();
            written.push(Written {
                key,
                committed: true,
            });
        }
        producer.close().await;
        let (more, more_markers) = produce_steps(
            &cluster,
            &topic,
            "p2",
            &[
                "c+2", "c:abort", "plain+1", "c+1", "d+2", "c:commit", "d:abort",
            ],
        )
        .await;
        written.extend(more);
        markers += more_markers;
        let all: Vec<String> = written.iter().map(|w| w.key.clone()).collect();
        let committed: Vec<String> = written
            .iter()
            .filter(|w| w.committed)
            .map(|w| w.key.clone())
            .collect();
        assert_eq!((all.len(), committed.len(), markers), (22, 12, 7));

        let end = end_offset(&writer, &topic).await;
        let tansu = *cluster.backend() == Backend::Tansu;
        // tansu writes one marker per ended transaction; the mock cluster writes none.
        assert_eq!(end, 22 + if tansu { 7 } else { 0 });

        // Our consumer, default configuration (read_committed).
        let group = unique_name("rc-exact-group");
        let client = support::client(&cluster, &group, &[]).await;
        let consumer = client.consumer(&[&topic]).unwrap();
        let got = read_to(&consumer, &topic, end).await;
        assert!(
            got.windows(2).all(|w| w[0].offset < w[1].offset),
            "offsets not increasing"
        );
        let expected = if tansu { &committed } else { &all };
        assert_eq!(&keys(&got), expected);
        // Nothing is left behind the last record: the position passed the trailing
        // aborted data and markers, so the lag is 0 and close commits the end.
        let tp = TopicPartition::new(topic.as_str(), 0);
        assert_eq!(consumer.lag().await.unwrap().get(&tp), Some(&0));
        consumer.close().await.unwrap();
        let successor = client.consumer(&[&topic]).unwrap();
        let committed_offset = successor.committed(&[(topic.as_str(), 0)]).await.unwrap();
        assert_eq!(committed_offset.get(&tp), Some(&end));
        drop(successor);

        // read_uncommitted: every data record, in order, never a control record.
        let client = support::client(
            &cluster,
            &unique_name("ru-group"),
            &[("isolation.level", "read_uncommitted")],
        )
        .await;
        let consumer = client.consumer(&[&topic]).unwrap();
        let got_all = read_to(&consumer, &topic, end).await;
        assert_eq!(keys(&got_all), all);
        consumer.close().await.unwrap();

        // confluent-kafka's read_committed consumer on the same topic. librdkafka (as Java)
        // drops aborted records only through the aborted-transactions list of the Fetch
        // response, which neither broker sends: it returns every data record on both. On
        // the committed records, offsets and order, it agrees with ours.
        let bootstrap = cluster.bootstrap();
        let count = all.len().to_string();
        let lines = support::confluent_peer(&[
            "consume",
            "--bootstrap",
            &bootstrap,
            "--topic",
            &topic,
            "--group",
            &unique_name("rc-peer"),
            "--isolation",
            "read_committed",
            "--count",
            &count,
            "--timeout-s",
            "20",
            "--assign-partitions",
            "1",
        ])
        .await;
        let peer = support::peer_records(&lines);
        let peer_keys: Vec<String> = peer.iter().filter_map(|r| r.key.clone()).collect();
        assert_eq!(peer_keys, all, "confluent-kafka read_committed");
        let peer_committed: Vec<(i64, String)> = peer
            .iter()
            .filter(|r| committed.contains(r.key.as_ref().unwrap()))
            .map(|r| (r.offset, r.key.clone().unwrap()))
            .collect();
        let ours: Vec<(i64, String)> = got.iter().map(|r| r.offset).zip(keys(&got)).collect();
        let ours_committed: Vec<(i64, String)> = ours
            .into_iter()
            .filter(|(_, k)| committed.contains(k))
            .collect();
        assert_eq!(ours_committed, peer_committed);
    }
);

/// A transaction held open by the peer, `hold-txn`; ended with `finish`.
struct HeldTxn {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl HeldTxn {
    async fn open(cluster: &TestCluster, topic: &str, records: usize) -> HeldTxn {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/confluent_peer.py"
        );
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .args([
                "hold-txn",
                "--bootstrap",
                &cluster.bootstrap(),
                "--topic",
                topic,
            ])
            .args(["--txn-id", &unique_name("held"), "--prefix", "h"])
            .args(["--records", &records.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run python3 (confluent-kafka peer)");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
            .await
            .expect("hold-txn opened its transaction in time")
            .unwrap()
            .expect("hold-txn printed a line");
        assert!(line.contains("open"), "{line}");
        HeldTxn { child, stdout }
    }

    async fn finish(mut self, outcome: &str) {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin
            .write_all(format!("{outcome}\n").as_bytes())
            .await
            .unwrap();
        let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .expect("hold-txn ended its transaction in time")
            .unwrap()
            .expect("hold-txn printed its outcome");
        assert!(line.contains(outcome), "{line}");
        assert!(self.child.wait().await.unwrap().success());
    }
}

/// tansu only: the mock cluster has no last stable offset (it answers the high watermark).
async fn open_transaction_bounds_read_committed(outcome: &str) {
    support::init_tracing();
    let cluster = support::start(Backend::from_env().unwrap_or(Backend::Tansu));
    let topic = unique_name("rc-open");
    cluster.create_topic(&topic, 1).await.unwrap();
    let writer = support::client(&cluster, &unique_name("rc-open-writer"), &[]).await;

    // Held records at 0-2, then two records of our (idempotent, non-transactional) producer.
    let held = HeldTxn::open(&cluster, &topic, 3).await;
    let producer = writer.producer();
    for i in 0..2 {
        let key = format!("after-{i}");
        producer
            .send(Record::new(topic.clone(), key.clone()).with_key(key))
            .await
            .unwrap();
    }
    producer.close().await;

    // read_uncommitted reads up to the high watermark: all five.
    let client = support::client(
        &cluster,
        &unique_name("rc-open-ru"),
        &[("isolation.level", "read_uncommitted")],
    )
    .await;
    let uncommitted = client.consumer(&[&topic]).unwrap();
    let got = read_to(&uncommitted, &topic, 5).await;
    assert_eq!(
        keys(&got),
        ["h-held-0", "h-held-1", "h-held-2", "after-0", "after-1"]
    );
    uncommitted.close().await.unwrap();

    // read_committed stops at the open transaction (the last stable offset, 0): nothing,
    // although the records after it are not transactional.
    let client = support::client(&cluster, &unique_name("rc-open-rc"), &[]).await;
    let consumer = client.consumer(&[&topic]).unwrap();
    // Poll until the group assigned the partition (seconds on tansu), then 3 s more.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut until = None;
    while until.is_none_or(|t| Instant::now() < t) {
        assert!(Instant::now() < deadline, "no position after 60 s");
        let polled = consumer.poll(Duration::from_millis(200)).await.unwrap();
        assert!(polled.is_empty(), "returned {:?}", keys(&polled));
        if until.is_none() && consumer.position(&topic, 0).is_some() {
            until = Some(Instant::now() + Duration::from_secs(3));
        }
    }
    assert_eq!(consumer.position(&topic, 0), Some(0));

    held.finish(outcome).await;
    // Then the held records (if committed), the later ones, and past the marker at 5.
    let got = read_to(&consumer, &topic, 6).await;
    let mut expected = vec!["after-0", "after-1"];
    if outcome == "commit" {
        expected.splice(0..0, ["h-held-0", "h-held-1", "h-held-2"]);
    }
    assert_eq!(keys(&got), expected);
    consumer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transaction_bounds_read_committed_then_commit_tansu() {
    open_transaction_bounds_read_committed("commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transaction_bounds_read_committed_then_abort_tansu() {
    open_transaction_bounds_read_committed("abort").await;
}
