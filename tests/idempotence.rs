//! The idempotent producer (on by default) against real brokers: 200k records through tansu
//! pauses (SIGSTOP/SIGCONT) and through the mock cluster's leader moves, broker outages and
//! injected NOT_LEADER_OR_FOLLOWER / REQUEST_TIMED_OUT, read back once each and in order per
//! partition, by rskafka (an independent reader) and by purekafka's consumer; a resend that
//! tansu writes once with idempotence and more than once without; KIP-360 epoch bumps and the
//! fallback to a new producer id; fatal errors.
//!
//! librdkafka's mock cluster checks sequence numbers only for transactional producers, so it
//! cannot refuse a batch that overtook a failed one: order with 5 batches in flight, and
//! deduplication, are proven on tansu; on the mock, order is checked with one batch in flight
//! and loss/duplicates with five.

use std::process::Command;
use std::time::{Duration, Instant};

use purekafka::{Client, Config, ConfigBuilder, DeliveryFuture, Record};
use purekafka_testkit::{unique_name, Backend, TestCluster};

#[macro_use]
mod support;

fn config_for(cluster: &TestCluster) -> ConfigBuilder {
    Config::builder()
        .brokers(cluster.bootstrap_list())
        .client_id(unique_name("idempotence-test"))
}

async fn connect(config: ConfigBuilder) -> Client {
    support::init_tracing();
    Client::connect(config.build().expect("config"))
        .await
        .expect("connect")
}

fn record(topic: &str, i: usize) -> Record {
    Record::new(topic.to_string(), format!("value-{i}"))
        .with_key(format!("key-{}", i % 101))
        .with_header("seq", i.to_string())
}

fn seq_of(headers_seq: Option<&[u8]>) -> usize {
    std::str::from_utf8(headers_seq.expect("seq header"))
        .unwrap()
        .parse()
        .unwrap()
}

/// The `seq` headers of every record of `topic`/`partition`, in offset order, read by rskafka
/// batch by batch.
async fn read_partition(client: &Client, topic: &str, partition: i32) -> Vec<usize> {
    support::read_partition(client, topic, partition)
        .await
        .into_iter()
        .map(|r| seq_of(r.record.headers.get("seq").map(Vec::as_slice)))
        .collect()
}

/// Every partition's `seq` headers in offset order, read by purekafka's group consumer
/// until `expected` records came and then 2 s more (to see any extra copy).
async fn consume_all(
    cluster: &TestCluster,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<Vec<usize>> {
    let client = support::client(cluster, &unique_name("idempotence-reader"), &[]).await;
    let consumer = client.consumer(&[topic]).expect("consumer");
    let mut out = vec![Vec::new(); partitions as usize];
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut quiet_until = None;
    loop {
        let batch = consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll");
        total += batch.len();
        for r in &batch {
            out[r.partition as usize].push(seq_of(r.headers.get("seq").map(|v| &v[..])));
        }
        if total >= expected {
            let until = *quiet_until.get_or_insert_with(|| Instant::now() + Duration::from_secs(2));
            if Instant::now() >= until {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "consumed {total} of {expected} records"
        );
    }
    consumer.close().await.expect("close");
    out
}

/// Each of `0..n` exactly once over all partitions; within a partition in increasing order.
fn check_once_each(what: &str, partitions: &[Vec<usize>], n: usize, in_order: bool) {
    let mut seen = vec![0u32; n];
    for (p, seqs) in partitions.iter().enumerate() {
        let mut last = None;
        for &s in seqs {
            assert!(s < n, "{what}: unexpected seq {s}");
            seen[s] += 1;
            if in_order {
                if let Some(l) = last {
                    assert!(s > l, "{what}: partition {p}: record {s} after {l}");
                }
            }
            last = Some(s);
        }
    }
    let dups: Vec<usize> = (0..n).filter(|&i| seen[i] > 1).take(10).collect();
    let lost: Vec<usize> = (0..n).filter(|&i| seen[i] == 0).take(10).collect();
    assert!(
        dups.is_empty(),
        "{what}: records written more than once: {dups:?}..."
    );
    assert!(
        lost.is_empty(),
        "{what}: records never read back: {lost:?}..."
    );
}

/// Awaits every delivery; panics on the first failure.
async fn all_delivered(pending: Vec<DeliveryFuture>) {
    for (i, f) in pending.into_iter().enumerate() {
        f.await.unwrap_or_else(|e| panic!("record {i}: {e}"));
    }
}

/// The tansu broker's process id (the child of the testkit's watchdog shell).
fn tansu_broker_pid(cluster: &TestCluster) -> u32 {
    let sh = cluster.pid().expect("tansu runs");
    let children = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children"))
        .expect("children of the watchdog");
    // The watchdog's other child is `cat`; the broker is the one named tansu.
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|comm| comm.trim().starts_with("tansu"))
        })
        .expect("the tansu process")
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Resumes a stopped process even when the test fails midway.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_pauses_neither_lose_nor_duplicate_nor_reorder_200k_records() {
    const N: usize = 200_000;
    const PARTITIONS: i32 = 4;
    let cluster = support::start(Backend::Tansu);
    let topic = unique_name("idem-pauses");
    cluster.create_topic(&topic, PARTITIONS).await.unwrap();
    let client = connect(
        config_for(&cluster)
            .set("request.timeout.ms", "1000")
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "500")
            .set("reconnect.max.elapsed.ms", "0")
            .set("batch.size", "16384"),
    )
    .await;
    let producer = client.producer();
    assert_eq!(producer.metrics().producer_id, -1);
    let broker = tansu_broker_pid(&cluster);
    let _resume = Resume(broker);
    let pauser = tokio::spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            signal(broker, "-STOP");
            tokio::time::sleep(Duration::from_millis(1_800)).await;
            signal(broker, "-CONT");
        }
    });
    let mut pending = Vec::with_capacity(N);
    for i in 0..N {
        pending.push(producer.enqueue(record(&topic, i)).await.unwrap());
        if i % 20_000 == 0 {
            // Spread the records over the pauses.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    all_delivered(pending).await;
    pauser.await.unwrap();
    let m = producer.metrics();
    assert!(m.retries >= 1, "the pauses caused resends: {m:?}");
    assert!(
        m.producer_id >= 0,
        "an idempotent producer has an id: {m:?}"
    );
    assert_eq!(m.errors, 0);
    let reader = connect(config_for(&cluster)).await;
    let mut by_rskafka = Vec::new();
    for p in 0..PARTITIONS {
        by_rskafka.push(read_partition(&reader, &topic, p).await);
    }
    check_once_each("rskafka", &by_rskafka, N, true);
    let by_purekafka = consume_all(&cluster, &topic, PARTITIONS, N).await;
    check_once_each("purekafka consumer", &by_purekafka, N, true);
    assert_eq!(by_rskafka, by_purekafka);
}

/// Sends record 0, then record 1 while tansu is stopped: the request times out, the batch is
/// resent (more than once) and tansu, once resumed, reads the unanswered requests too.
/// Returns how often each record was written, or `None` when the pause did not catch the
/// request (no resend happened: seen once in ~20 runs under load, cause not found).
async fn resend_while_stopped(idempotence: bool) -> Option<(usize, usize)> {
    let cluster = support::start(Backend::Tansu);
    let topic = unique_name("idem-resend");
    cluster.create_topic(&topic, 1).await.unwrap();
    let client = connect(
        config_for(&cluster)
            .set(
                "enable.idempotence",
                if idempotence { "true" } else { "false" },
            )
            .set("request.timeout.ms", "800")
            .set("reconnect.backoff.ms", "200")
            .set("reconnect.max.elapsed.ms", "0")
            .set("linger.ms", "0"),
    )
    .await;
    let producer = client.producer();
    producer
        .send(record(&topic, 0))
        .await
        .expect("first record");
    let broker = tansu_broker_pid(&cluster);
    let resume = Resume(broker);
    signal(broker, "-STOP");
    let pending = producer.enqueue(record(&topic, 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    drop(resume); // SIGCONT
    let d = pending.await.expect("the resent record is acknowledged");
    assert_eq!(d.partition, 0);
    if producer.metrics().retries == 0 {
        tracing::warn!("the pause did not catch the request; trying again");
        return None;
    }
    let reader = connect(config_for(&cluster)).await;
    let seqs = read_partition(&reader, &topic, 0).await;
    Some((
        seqs.iter().filter(|&&s| s == 0).count(),
        seqs.iter().filter(|&&s| s == 1).count(),
    ))
}

/// [`resend_while_stopped`] until a resend happened (at most three tries).
async fn resent(idempotence: bool) -> (usize, usize) {
    for _ in 0..3 {
        if let Some(copies) = resend_while_stopped(idempotence).await {
            return copies;
        }
    }
    panic!("three pauses of tansu never made the producer resend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_is_written_once_with_idempotence_and_again_without() {
    assert_eq!(resent(true).await, (1, 1));
    let (first, resent) = resent(false).await;
    assert_eq!(first, 1);
    assert!(
        resent >= 2,
        "without idempotence tansu writes the resent batch again ({resent} copies)"
    );
}

/// 200k records through the mock cluster's faults: leader moves, NOT_LEADER_OR_FOLLOWER
/// and REQUEST_TIMED_OUT answers, a broker down and up again.
async fn mock_faults(max_in_flight: &str) {
    const N: usize = 200_000;
    const PARTITIONS: i32 = 6;
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("idem-mock-faults");
    cluster.create_topic(&topic, PARTITIONS).await.unwrap();
    let client = connect(
        config_for(&cluster)
            .set("max.in.flight", max_in_flight)
            .set("linger.ms", "2")
            .set("batch.size", "16384")
            .set("reconnect.backoff.ms", "20")
            .set("reconnect.backoff.max.ms", "200")
            .set("reconnect.max.elapsed.ms", "0"),
    )
    .await;
    let producer = client.producer();
    let mut pending = Vec::with_capacity(N);
    for i in 0..N {
        match i {
            i if i == N / 5 => {
                for p in 0..PARTITIONS {
                    cluster.set_leader(&topic, p, (p % 3) + 1).unwrap();
                }
                cluster.push_request_errors(0, &[6, 6, 6]).unwrap();
            }
            i if i == 2 * N / 5 => cluster.push_request_errors(0, &[7, 7, 6, 7]).unwrap(),
            i if i == 3 * N / 5 => {
                cluster.broker_down(2).unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
                cluster.broker_up(2).unwrap();
            }
            i if i == 4 * N / 5 => {
                for p in 0..PARTITIONS {
                    cluster.set_leader(&topic, p, ((p + 1) % 3) + 1).unwrap();
                }
                cluster.push_request_errors(0, &[6, 7]).unwrap();
            }
            _ => {}
        }
        pending.push(producer.enqueue(record(&topic, i)).await.unwrap());
        if i % 5_000 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    all_delivered(pending).await;
    let m = producer.metrics();
    assert!(m.retries >= 1, "the faults caused resends: {m:?}");
    assert!(m.producer_id >= 0, "{m:?}");
    // A fresh client: `client`'s rskafka cache still has the old leaders.
    let reader = connect(config_for(&cluster)).await;
    let mut by_rskafka = Vec::new();
    for p in 0..PARTITIONS {
        by_rskafka.push(read_partition(&reader, &topic, p).await);
    }
    let in_order = max_in_flight == "1";
    check_once_each("rskafka", &by_rskafka, N, in_order);
    let by_purekafka = consume_all(&cluster, &topic, PARTITIONS, N).await;
    check_once_each("purekafka consumer", &by_purekafka, N, in_order);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_faults_one_in_flight_lose_duplicate_and_reorder_nothing() {
    mock_faults("1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_faults_five_in_flight_lose_and_duplicate_nothing() {
    mock_faults("5").await;
}

/// Sends `n` records and waits for them.
async fn send_some(producer: &purekafka::Producer, topic: &str, from: usize, n: usize) {
    let mut pending = Vec::new();
    for i in from..from + n {
        pending.push(producer.enqueue(record(topic, i)).await.unwrap());
    }
    all_delivered(pending).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_errors_reset_the_producer_id_and_nothing_is_lost() {
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("idem-kip360");
    cluster.create_topic(&topic, 2).await.unwrap();
    let client = connect(config_for(&cluster).set("reconnect.backoff.ms", "20")).await;
    let producer = client.producer();
    send_some(&producer, &topic, 0, 100).await;
    let first = producer.metrics();
    assert!(
        first.producer_id >= 0 && first.producer_epoch >= 0,
        "{first:?}"
    );
    assert_eq!(first.producer_id_resets, 0);

    // OUT_OF_ORDER_SEQUENCE_NUMBER for the first unacknowledged batch: the next epoch of the
    // same id, or (the mock cluster refuses bumps for non-transactional producers with
    // INVALID_PRODUCER_ID_MAPPING, tansu with UNKNOWN_SERVER_ERROR) a new id.
    cluster.push_request_errors(0, &[45]).unwrap();
    send_some(&producer, &topic, 100, 100).await;
    let second = producer.metrics();
    assert_ne!(
        (second.producer_id, second.producer_epoch),
        (first.producer_id, first.producer_epoch),
        "{second:?}"
    );
    assert_eq!(second.producer_id_resets, 1);

    // UNKNOWN_PRODUCER_ID, and the bump refused with UNKNOWN_SERVER_ERROR: a new id again.
    cluster.push_request_errors(0, &[59]).unwrap();
    cluster.push_request_errors(22, &[-1]).unwrap();
    send_some(&producer, &topic, 200, 100).await;
    let third = producer.metrics();
    assert_ne!(third.producer_id, second.producer_id, "{third:?}");
    assert_eq!(third.producer_id_resets, 2);
    assert_eq!(third.errors, 0);

    let reader = connect(config_for(&cluster)).await;
    let read = vec![
        read_partition(&reader, &topic, 0).await,
        read_partition(&reader, &topic, 1).await,
    ];
    check_once_each("rskafka", &read, 300, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_errors_fail_every_later_send() {
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("idem-fatal");
    cluster.create_topic(&topic, 1).await.unwrap();

    // Fenced while producing.
    let client = connect(config_for(&cluster)).await;
    let producer = client.producer();
    producer
        .send(record(&topic, 0))
        .await
        .expect("first record");
    cluster.push_request_errors(0, &[90]).unwrap();
    let code = |r: Result<purekafka::Delivery, purekafka::SendError>| {
        r.expect_err("fails").error().kafka_code().map(|c| c.code())
    };
    assert_eq!(code(producer.send(record(&topic, 1)).await), Some(90));
    assert_eq!(code(producer.send(record(&topic, 2)).await), Some(90));
    assert_eq!(
        producer
            .try_send(record(&topic, 3))
            .err()
            .and_then(|e| e.error().kafka_code())
            .map(|c| c.code()),
        Some(90)
    );

    // No permission to write idempotently: the producer id is refused.
    let client = connect(config_for(&cluster)).await;
    cluster.push_request_errors(22, &[31]).unwrap();
    let producer = client.producer();
    assert_eq!(code(producer.send(record(&topic, 4)).await), Some(31));
    assert_eq!(code(producer.send(record(&topic, 5)).await), Some(31));

    // Without idempotence there is no producer id to refuse.
    let client = connect(config_for(&cluster).set("enable.idempotence", "false")).await;
    cluster.push_request_errors(22, &[31]).unwrap();
    let producer = client.producer();
    producer
        .send(record(&topic, 6))
        .await
        .expect("no InitProducerId");
    assert_eq!(producer.metrics().producer_id, -1);
    cluster.command("clear-request-errors 22").unwrap();
}

/// The `produce` example binary, built next to this test binary by `cargo test` /
/// `cargo nextest run` (which build examples too).
fn produce_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/debug
    let path = dir
        .join("examples")
        .join(format!("produce{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} missing: run `cargo build --example produce`",
        path.display()
    );
    path
}

/// Runs the produce example with `args` and `stdin`; returns exit code, stdout, stderr.
fn run_produce(cluster: &TestCluster, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(produce_example())
        .args(args)
        .env("KAFKA_BROKERS", cluster.bootstrap())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn produce");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("produce runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_example_takes_any_key_with_set() {
    let cluster = support::start(Backend::Tansu);
    let topic = unique_name("idem-produce-example");
    cluster.create_topic(&topic, 1).await.unwrap();
    let (code, out, err) = run_produce(
        &cluster,
        &[&topic, "--set", "enable.idempotence=false", "-X", "acks=1"],
        "a\tone\nb\ttwo\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["0 0", "0 1"], "{err}");
    // The keys are applied: idempotence asked for together with acks=1 is refused.
    let (code, _, err) = run_produce(
        &cluster,
        &[
            &topic,
            "--set",
            "enable.idempotence=true",
            "--set",
            "acks=1",
        ],
        "x\n",
    );
    assert_eq!(code, 2);
    assert!(err.contains("acks") && err.contains("idempotent"), "{err}");
    let (code, _, err) = run_produce(&cluster, &[&topic, "--set", "no.such.key=1"], "x\n");
    assert_eq!(code, 2);
    assert!(err.contains("no.such.key"), "{err}");
    let (code, _, err) = run_produce(&cluster, &[&topic, "--set", "novalue"], "x\n");
    assert_eq!(code, 2);
    assert!(err.contains("--set needs KEY=VALUE"), "{err}");
}

on_each_backend!(
    try_send_before_metadata_keeps_key_order_and_flush_waits,
    |cluster: TestCluster| async move {
        const N: usize = 3_000;
        let topic = unique_name("idem-try-send-first");
        cluster.create_topic(&topic, 3).await.unwrap();
        let client = connect(config_for(&cluster)).await;
        let producer = client.producer();
        // The producer has never seen the topic: every record waits for its metadata.
        let pending: Vec<DeliveryFuture> = (0..N)
            .map(|i| {
                producer
                    .try_send(record(&topic, i))
                    .expect("room in the buffer")
            })
            .collect();
        producer.flush().await;
        let m = producer.metrics();
        assert_eq!(
            m.records_sent + m.errors,
            N as u64,
            "flush returned before the waiting records were sent: {m:?}"
        );
        all_delivered(pending).await;
        let reader = connect(config_for(&cluster)).await;
        let mut read = Vec::new();
        for p in 0..3 {
            read.push(read_partition(&reader, &topic, p).await);
        }
        check_once_each("rskafka", &read, N, true);
    }
);
