//! The processing runtime (`Consumer::run` / `run_json`, dedup, retries, DLQ, circuit
//! breaker, shutdown) against real brokers: librdkafka's mock cluster and tansu.
//!
//! Every test makes its own cluster, topics and groups (`unique_name`), so they run in
//! parallel. Dead-letter topics are created explicitly (tansu does not auto-create topics).
//! The test that makes the broker refuse dead-letter writes runs on the mock cluster only
//! (tansu has no fault injection).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use purekafka::dedup::{DedupKey, Deduplicator};
use purekafka::dlq;
use purekafka::worker::{RetryPolicy, RunHandle, RunMetrics};
use purekafka::{
    BreakerConfig, BreakerState, Client, Config, ConsumedRecord, HandlerError, ReconnectPolicy,
    Record, RunnerConfig,
};
use purekafka_testkit::{unique_name, Backend, TestCluster};
use tokio::time::Instant;

#[macro_use]
mod support;
use support::{init_tracing, start};

async fn client(cluster: &TestCluster, group: &str) -> Client {
    let config = Config::builder()
        .brokers(cluster.bootstrap_list())
        .group_id(group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("max.poll.interval.ms", "20000")
        .set("linger.ms", "1")
        .build()
        .unwrap();
    Client::connect(config).await.unwrap()
}

/// Fast retries for tests (the defaults are sized for services).
fn test_config() -> RunnerConfig {
    RunnerConfig::default()
        .retry(
            RetryPolicy::default().max_attempts(5).backoff(
                ReconnectPolicy::default()
                    .initial_delay(Duration::from_millis(10))
                    .max_delay(Duration::from_millis(50))
                    .max_elapsed(Some(Duration::from_secs(10))),
            ),
        )
        .dlq_retry(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(200))
                .max_elapsed(None),
        )
        .commit_interval(Duration::from_millis(100))
        .shutdown_on_signal(false)
}

/// Sends `records`, returns the end offset (next offset) of each partition written.
async fn produce(client: &Client, records: Vec<Record>) -> BTreeMap<i32, i64> {
    let producer = client.producer();
    let mut ends = BTreeMap::new();
    for d in producer.send_all(records).await {
        let d = d.expect("delivered");
        let e = ends.entry(d.partition).or_insert(0);
        *e = (*e).max(d.offset + 1);
    }
    producer.close().await;
    ends
}

/// Waits until `done(metrics)` or panics after `limit`, printing the metrics.
async fn wait_for(handle: &RunHandle, limit: Duration, done: impl Fn(&RunMetrics) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let m = handle.metrics();
        if done(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out; metrics: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The group's committed offsets for partitions `0..partitions` of `topic`.
async fn committed(client: &Client, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer = client.consumer(&[topic]).unwrap();
    let tps: Vec<(&str, i32)> = (0..partitions).map(|p| (topic, p)).collect();
    consumer
        .committed(&tps)
        .await
        .unwrap()
        .into_iter()
        .map(|(tp, o)| (tp.partition, o))
        .collect()
}

/// Reads `n` records of `topic` with a fresh group (then waits a little for extras).
async fn read_n(cluster: &TestCluster, topic: &str, n: usize) -> Vec<ConsumedRecord> {
    let c = client(cluster, &unique_name("reader")).await;
    let consumer = c.consumer(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "read {} of {n} from {topic}",
            out.len()
        );
        out.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    // Anything beyond n (a duplicate dead letter) shows up here.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        out.extend(consumer.poll(Duration::from_millis(100)).await.unwrap());
    }
    consumer.close().await.unwrap();
    out
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Event {
    n: u64,
}

on_each_backend!(
    ten_thousand_with_poison_and_flaky_records,
    |cluster: TestCluster| async move {
        const N: u64 = 10_000;
        let topic = unique_name("orders");
        let group = unique_name("orders-group");
        let dlq_topic = format!("{topic}.dlq");
        cluster.create_topic(&topic, 4).await.unwrap();
        cluster.create_topic(&dlq_topic, 2).await.unwrap();
        let c = client(&cluster, &group).await;

        // 1 in 100 is poison (not JSON); 1 in 50 (others) fails twice before succeeding.
        let poison = |n: u64| n.is_multiple_of(100);
        let flaky = |n: u64| n % 50 == 25;
        let records: Vec<Record> = (0..N)
            .map(|n| {
                let value = if poison(n) {
                    format!("{{poison {n}")
                } else {
                    serde_json::to_string(&Event { n }).unwrap()
                };
                Record::new(topic.clone(), value)
                    .with_key(format!("k{n}"))
                    .with_header("trace", format!("t{n}"))
            })
            .collect();
        let ends = produce(&c, records).await;

        let processed: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
        let failures: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
        let runner = c
            .consumer(&[&topic])
            .unwrap()
            .runner()
            // Flaky records of different partitions may fail in a row; keep the breaker out of
            // this test (it has its own).
            .config(test_config().breaker(BreakerConfig::default().failure_threshold(0)));
        let handle = runner.handle();
        let (p, f) = (processed.clone(), failures.clone());
        let run = tokio::spawn(runner.run_json(move |e: Event, _r| {
            let (p, f) = (p.clone(), f.clone());
            async move {
                if flaky(e.n) {
                    let mut f = f.lock().unwrap();
                    let tries = f.entry(e.n).or_insert(0);
                    if *tries < 2 {
                        *tries += 1;
                        return Err(HandlerError::retriable(format!("flaky {}", e.n)));
                    }
                }
                *p.lock().unwrap().entry(e.n).or_insert(0) += 1;
                Ok(())
            }
        }));
        wait_for(&handle, Duration::from_secs(120), |m| {
            m.processed == N - N / 100 && m.dead_lettered == N / 100
        })
        .await;
        handle.shutdown();
        let metrics = run.await.unwrap().unwrap();
        assert_eq!(metrics.retries, 2 * (N / 50), "{metrics:?}");
        assert_eq!(metrics.dropped, 0);

        // Every good record exactly once.
        let processed = processed.lock().unwrap().clone();
        assert_eq!(processed.len() as u64, N - N / 100);
        assert!(
            processed.values().all(|&c| c == 1),
            "a record was processed twice"
        );
        assert!((0..N)
            .filter(|&n| !poison(n))
            .all(|n| processed.contains_key(&n)));

        // Every poison record in the DLQ, once, with the six headers and its key/value.
        let dead = read_n(&cluster, &dlq_topic, (N / 100) as usize).await;
        assert_eq!(dead.len() as u64, N / 100, "dead letters");
        let mut seen = std::collections::HashSet::new();
        for r in &dead {
            let key = r.key_str().unwrap();
            let n: u64 = key[1..].parse().unwrap();
            assert!(poison(n), "{key} is not poison");
            assert!(seen.insert(n), "{key} dead-lettered twice");
            assert_eq!(r.value_str().unwrap(), format!("{{poison {n}"));
            assert_eq!(r.headers.get_str("trace"), Some(&*format!("t{n}")));
            assert_eq!(r.headers.get_str(dlq::HEADER_TOPIC), Some(&*topic));
            let partition: i32 = r
                .headers
                .get_str(dlq::HEADER_PARTITION)
                .unwrap()
                .parse()
                .unwrap();
            assert!((0..4).contains(&partition));
            let offset: i64 = r
                .headers
                .get_str(dlq::HEADER_OFFSET)
                .unwrap()
                .parse()
                .unwrap();
            assert!(offset >= 0 && offset < ends[&partition]);
            assert!(r
                .headers
                .get_str(dlq::HEADER_ERROR)
                .unwrap()
                .contains("decode"));
            assert_eq!(r.headers.get_str(dlq::HEADER_ATTEMPTS), Some("0"));
            let at = r.headers.get_str(dlq::HEADER_FAILED_AT).unwrap();
            chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339");
        }

        // Committed offsets reach the end of every partition.
        assert_eq!(committed(&c, &topic, 4).await, ends);
    }
);

on_each_backend!(
    same_event_id_is_processed_once_until_ttl_expiry,
    |cluster: TestCluster| async move {
        let topic = unique_name("events");
        cluster.create_topic(&topic, 2).await.unwrap();
        cluster
            .create_topic(&format!("{topic}.dlq"), 1)
            .await
            .unwrap();
        let c = client(&cluster, &unique_name("events-group")).await;
        // Five events, each sent twice (as a producer retry would), with different record keys
        // (so they may land in different partitions) and the same event_id header.
        let batch = |round: u32| -> Vec<Record> {
            (0..10)
                .map(|i| {
                    Record::new(topic.clone(), format!("payload {i}"))
                        .with_key(format!("r{round}-{i}"))
                        .with_header("event_id", format!("e{}", i % 5))
                })
                .collect()
        };
        produce(&c, batch(0)).await;

        let calls: Arc<Mutex<Vec<String>>> = Arc::default();
        let dedup = Deduplicator::new(1_000, Duration::from_secs(3));
        let runner = c
            .consumer(&[&topic])
            .unwrap()
            .runner()
            .config(test_config())
            .dedup(dedup, DedupKey::Header("event_id".into()));
        let handle = runner.handle();
        let seen = calls.clone();
        let run = tokio::spawn(runner.run(move |r| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(r.headers.get_str("event_id").unwrap().to_string());
                Ok(())
            }
        }));
        wait_for(&handle, Duration::from_secs(60), |m| {
            m.processed + m.duplicates_skipped == 10
        })
        .await;
        let m = handle.metrics();
        assert_eq!((m.processed, m.duplicates_skipped), (5, 5), "{m:?}");

        // After the TTL the same events are new again.
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        produce(&c, batch(1)).await;
        wait_for(&handle, Duration::from_secs(60), |m| {
            m.processed + m.duplicates_skipped == 20
        })
        .await;
        handle.shutdown();
        let m = run.await.unwrap().unwrap();
        assert_eq!((m.processed, m.duplicates_skipped), (10, 10), "{m:?}");
        let mut calls = calls.lock().unwrap().clone();
        calls.sort();
        let expected: Vec<String> = (0..5)
            .flat_map(|i| [format!("e{i}"), format!("e{i}")])
            .collect();
        assert_eq!(calls, expected, "each event once per TTL window");
    }
);

/// Runs a handler over `topic` in `group` until all `n` records are processed, then kills
/// the run (drops it: no commit, no LeaveGroup, as a crashed process). Commits are
/// effectively off (1 h interval), so nothing of this run is committed.
async fn process_then_kill(c: &Client, topic: &str, n: u64, dedup: &Deduplicator) {
    let runner = c
        .consumer(&[topic])
        .unwrap()
        .runner()
        .config(test_config().commit_interval(Duration::from_secs(3600)))
        .dedup(dedup.clone(), DedupKey::RecordKey);
    let handle = runner.handle();
    let run = tokio::spawn(runner.run(|_r| async { Ok(()) }));
    wait_for(&handle, Duration::from_secs(60), |m| m.processed == n).await;
    run.abort();
    let _ = run.await;
}

/// A successor run in the same group; returns its counters once it has seen all `n`.
async fn successor(c: &Client, topic: &str, n: u64, dedup: &Deduplicator) -> RunMetrics {
    let runner = c
        .consumer(&[topic])
        .unwrap()
        .runner()
        .config(test_config())
        .dedup(dedup.clone(), DedupKey::RecordKey);
    let handle = runner.handle();
    let run = tokio::spawn(runner.run(|_r| async { Ok(()) }));
    wait_for(&handle, Duration::from_secs(90), |m| {
        m.processed + m.duplicates_skipped == n
    })
    .await;
    handle.shutdown();
    run.await.unwrap().unwrap()
}

on_each_backend!(
    killed_before_commit_successors,
    |cluster: TestCluster| async move {
        const N: u64 = 300;
        let topic = unique_name("kill");
        cluster.create_topic(&topic, 2).await.unwrap();
        cluster
            .create_topic(&format!("{topic}.dlq"), 1)
            .await
            .unwrap();
        let group_a = unique_name("kill-same-process");
        let group_b = unique_name("kill-new-process");
        let ca = client(&cluster, &group_a).await;
        let cb = client(&cluster, &group_b).await;
        let ends = produce(
            &ca,
            (0..N)
                .map(|i| Record::new(topic.clone(), format!("v{i}")).with_key(format!("k{i}")))
                .collect(),
        )
        .await;

        // Same process: the successor shares the dedup cache, so it processes nothing twice
        // even though nothing was committed; it commits the skipped records.
        let shared = Deduplicator::new(100_000, Duration::from_secs(600));
        process_then_kill(&ca, &topic, N, &shared).await;
        assert!(
            committed(&ca, &topic, 2).await.is_empty(),
            "the killed run committed nothing"
        );
        let m = successor(&ca, &topic, N, &shared).await;
        assert_eq!((m.processed, m.duplicates_skipped), (0, N), "{m:?}");
        assert_eq!(committed(&ca, &topic, 2).await, ends);

        // New process: a fresh cache stands in for the successor's process memory. The
        // uncommitted records are processed again: delivery is at-least-once across processes.
        process_then_kill(
            &cb,
            &topic,
            N,
            &Deduplicator::new(100_000, Duration::from_secs(600)),
        )
        .await;
        let m = successor(
            &cb,
            &topic,
            N,
            &Deduplicator::new(100_000, Duration::from_secs(600)),
        )
        .await;
        assert_eq!(
            (m.processed, m.duplicates_skipped),
            (N, 0),
            "at-least-once: {m:?}"
        );
        assert_eq!(committed(&cb, &topic, 2).await, ends);
    }
);

/// The broker refuses the dead-letter writes (INVALID_RECORD, permanent for the producer):
/// the poison record is not committed, the write is retried, and it lands once the errors
/// stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_write_failures_keep_the_record_uncommitted_until_it_lands() {
    init_tracing();
    let cluster = start(Backend::MockCluster);
    let topic = unique_name("dlqfail");
    let dlq_topic = format!("{topic}.dlq");
    cluster.create_topic(&topic, 1).await.unwrap();
    cluster.create_topic(&dlq_topic, 1).await.unwrap();
    let c = client(&cluster, &unique_name("dlqfail-group")).await;
    let ends = produce(
        &c,
        vec![
            Record::new(topic.clone(), r#"{"n":1}"#),
            Record::new(topic.clone(), "poison").with_key("bad"),
            Record::new(topic.clone(), r#"{"n":3}"#),
        ],
    )
    .await;
    assert_eq!(ends, BTreeMap::from([(0, 3)]));
    // The next 6 Produce requests fail: 50+100+200+200+200 ms of retries at least.
    cluster.push_request_errors(0, &[87; 6]).unwrap();

    let runner = c
        .consumer(&[&topic])
        .unwrap()
        .runner()
        .config(test_config());
    let handle = runner.handle();
    let run = tokio::spawn(runner.run_json(|_e: Event, _r| async { Ok(()) }));
    wait_for(&handle, Duration::from_secs(30), |m| {
        m.dlq_write_failures >= 3
    })
    .await;
    // Commits ran meanwhile (100 ms interval): the poison record (offset 1) is not committed.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let during = committed(&c, &topic, 1).await;
    assert!(
        during.get(&0).is_none_or(|&o| o <= 1),
        "committed past the poison record: {during:?}"
    );
    assert_eq!(handle.metrics().dead_lettered, 0);

    wait_for(&handle, Duration::from_secs(30), |m| {
        m.dead_lettered == 1 && m.processed == 2
    })
    .await;
    handle.shutdown();
    let m = run.await.unwrap().unwrap();
    assert_eq!(m.dlq_write_failures, 6, "{m:?}");
    assert_eq!(committed(&c, &topic, 1).await, ends);
    let dead = read_n(&cluster, &dlq_topic, 1).await;
    assert_eq!(dead.len(), 1, "exactly one dead letter");
    assert_eq!(dead[0].key_str(), Some("bad"));
    assert_eq!(dead[0].value_str(), Some("poison"));
    assert_eq!(dead[0].headers.get_str(dlq::HEADER_OFFSET), Some("1"));
}

on_each_backend!(
    breaker_opens_pauses_and_closes,
    |cluster: TestCluster| async move {
        const N: u64 = 30;
        let topic = unique_name("breaker");
        cluster.create_topic(&topic, 1).await.unwrap();
        cluster
            .create_topic(&format!("{topic}.dlq"), 1)
            .await
            .unwrap();
        let c = client(&cluster, &unique_name("breaker-group")).await;
        produce(
            &c,
            (0..N)
                .map(|i| Record::new(topic.clone(), format!("v{i}")))
                .collect(),
        )
        .await;

        let down = Arc::new(AtomicBool::new(true));
        let calls = Arc::new(AtomicU64::new(0));
        let runner = c.consumer(&[&topic]).unwrap().runner().config(
            test_config()
                .breaker(
                    BreakerConfig::default()
                        .failure_threshold(3)
                        .cool_down(Duration::from_millis(800)),
                )
                .retry(
                    RetryPolicy::default().max_attempts(u32::MAX).backoff(
                        ReconnectPolicy::default()
                            .initial_delay(Duration::from_millis(10))
                            .max_delay(Duration::from_millis(20))
                            .max_elapsed(None),
                    ),
                ),
        );
        let handle = runner.handle();
        let (d, k) = (down.clone(), calls.clone());
        let run = tokio::spawn(runner.run(move |_r| {
            let (d, k) = (d.clone(), k.clone());
            async move {
                k.fetch_add(1, Ordering::SeqCst);
                if d.load(Ordering::SeqCst) {
                    Err(HandlerError::retriable("dependency down"))
                } else {
                    Ok(())
                }
            }
        }));
        wait_for(&handle, Duration::from_secs(60), |m| {
            m.breaker_state == BreakerState::Open
        })
        .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "opened after 3 consecutive failures"
        );
        // Open: no handler call during the cool-down.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "no call while open");
        // Half-open trial fails → open again; the dependency recovers → the next trial closes.
        wait_for(&handle, Duration::from_secs(10), |m| m.breaker_opened >= 2).await;
        down.store(false, Ordering::SeqCst);
        wait_for(&handle, Duration::from_secs(30), |m| {
            m.breaker_state == BreakerState::Closed && m.processed == N
        })
        .await;
        handle.shutdown();
        let m = run.await.unwrap().unwrap();
        assert_eq!(m.dead_lettered, 0);
        assert!(m.breaker_opened >= 2, "{m:?}");
    }
);

/// With a handler that does not finish, the records handed to the partitions' tasks stop at
/// `max_pending` plus one poll (10,000 records), not at `max_pending_per_partition` for every
/// partition; once the handler goes on, every record is processed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_waiting_for_handlers_stay_under_max_pending_in_all() {
    init_tracing();
    const N: u64 = 30_000;
    const MAX_PENDING: u64 = 2_000;
    const ONE_POLL: u64 = 10_000;
    let cluster = start(Backend::MockCluster);
    let topic = unique_name("max-pending");
    cluster.create_topic(&topic, 6).await.unwrap();
    let c = client(&cluster, &unique_name("max-pending-group")).await;
    let records: Vec<Record> = (0..N)
        .map(|i| Record::new(topic.clone(), format!("{i}")).with_key(format!("k{i}")))
        .collect();
    produce(&c, records).await;

    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let runner = c
        .consumer(&[&topic])
        .unwrap()
        .runner()
        .config(test_config().max_pending(MAX_PENDING as usize));
    let handle = runner.handle();
    let (gate, log) = (go.clone(), seen.clone());
    let run = tokio::spawn(runner.run(move |r| {
        let (gate, log) = (gate.clone(), log.clone());
        async move {
            gate.acquire().await.unwrap().forget();
            let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).to_string();
            log.lock().unwrap().push(v.parse().unwrap());
            Ok(())
        }
    }));
    // Without the total bound every partition would take up to 20,000: all 30,000 records.
    wait_for(&handle, Duration::from_secs(60), |m| {
        m.pending >= MAX_PENDING
    })
    .await;
    let mut most = 0;
    for _ in 0..100 {
        most = most.max(handle.metrics().pending);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        most <= MAX_PENDING + ONE_POLL,
        "{most} records waited for handlers (max_pending {MAX_PENDING})"
    );

    go.add_permits(N as usize);
    wait_for(&handle, Duration::from_secs(120), |m| m.processed == N).await;
    handle.shutdown();
    let m = run.await.unwrap().unwrap();
    assert_eq!(m.processed, N, "{m:?}");
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "each record once");
}
