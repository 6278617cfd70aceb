//! Dead letters that cannot be written for good: too large for the dead-letter producer, a
//! missing dead-letter topic, a broker refusing the write as not authorized. Each is counted,
//! reported to the breaker, and handled per `DlqFailurePolicy`: `Stop` ends `run` with the
//! error and leaves the record uncommitted; `Skip` commits past it. A missing topic is
//! created when `dlq_create_topic` allows it, with the source topic's partition count.

use std::time::Duration;

use purekafka::{
    BreakerConfig, Client, Config, DlqFailurePolicy, Error, HandlerError, ReconnectPolicy, Record,
    RunnerConfig,
};
use purekafka_testkit::{unique_name, Backend, TestCluster};

#[macro_use]
mod support;
use support::{init_tracing, start};

/// A record too large for a dead-letter producer limited to 10 kB.
const BIG: usize = 20_000;

async fn client(cluster: &TestCluster, group: Option<&str>, extra: &[(&str, &str)]) -> Client {
    let mut b = Config::builder()
        .brokers(cluster.bootstrap_list())
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("linger.ms", "1")
        .set_all(extra.iter().copied());
    if let Some(g) = group {
        b = b.group_id(g);
    }
    Client::connect(b.build().unwrap()).await.unwrap()
}

fn runner_config(policy: DlqFailurePolicy, template: &str, create: bool) -> RunnerConfig {
    RunnerConfig::default()
        .dlq_topic_template(template)
        .dlq_retry(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(200))
                .max_elapsed(None),
        )
        .dlq_permanent_failure(policy)
        .dlq_create_topic(create)
        .breaker(BreakerConfig::default().failure_threshold(0))
        .commit_interval(Duration::from_millis(100))
        .shutdown_on_signal(false)
}

/// Produces `values` to partition 0 of a new one-partition `topic`.
async fn source(
    cluster: &TestCluster,
    admin: &Client,
    topic: &str,
    partitions: i32,
    values: &[Vec<u8>],
) {
    cluster.create_topic(topic, partitions).await.unwrap();
    let producer = admin.producer();
    for v in values {
        producer
            .send(Record::new(topic.to_string(), v.clone()).with_partition(0))
            .await
            .unwrap();
    }
    producer.close().await;
}

/// Runs a handler that fails every record permanently (so each goes to the dead-letter
/// topic) until the run ends on its own or `metrics` says all `n` records are settled.
async fn run_all_failing(
    client: &Client,
    topic: &str,
    config: RunnerConfig,
    dlq_producer: Option<purekafka::Producer>,
    n: u64,
) -> (purekafka::Result<purekafka::RunMetrics>, i64) {
    let consumer = client.consumer(&[topic]).unwrap();
    let mut runner = consumer.runner().config(config);
    if let Some(p) = dlq_producer {
        runner = runner.producer(p);
    }
    let handle = runner.handle();
    let run = tokio::spawn(runner.run(|_r| async { Err(HandlerError::permanent("bad record")) }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let m = handle.metrics();
        if run.is_finished() || m.dead_lettered + m.dlq_skipped >= n {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.shutdown();
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("run returns")
        .unwrap();
    // The group's commit for partition 0, read by a fresh member of the same group.
    let probe = client.consumer(&[topic]).unwrap();
    let committed = probe
        .committed(&[(topic, 0)])
        .await
        .unwrap()
        .into_values()
        .next()
        .unwrap_or(-1);
    (result, committed)
}

async fn too_large(backend: Backend, policy: DlqFailurePolicy) {
    init_tracing();
    let cluster = start(backend);
    let admin = client(&cluster, None, &[]).await;
    let topic = unique_name("dlq-large");
    let dlq = format!("{topic}.dlq");
    cluster.create_topic(&dlq, 1).await.unwrap();
    // Offsets 0 and 2 are small, 1 is too large for the dead-letter producer.
    source(
        &cluster,
        &admin,
        &topic,
        1,
        &[vec![1; 10], vec![2; BIG], vec![3; 10]],
    )
    .await;
    let group = unique_name("dlq-large-group");
    let c = client(&cluster, Some(&group), &[]).await;
    let small = client(&cluster, None, &[("message.max.bytes", "10000")]).await;
    let (result, committed) = run_all_failing(
        &c,
        &topic,
        runner_config(policy, "{topic}.dlq", false),
        Some(small.producer()),
        3,
    )
    .await;
    match policy {
        DlqFailurePolicy::Stop => {
            let err = result.expect_err("the run stops");
            assert!(matches!(err, Error::RecordTooLarge { .. }), "{err}");
            assert_eq!(committed, 1, "the too-large record stays uncommitted");
        }
        DlqFailurePolicy::Skip => {
            let m = result.expect("the run goes on");
            assert_eq!(m.dlq_permanent_failures, 1, "{m:?}");
            assert_eq!(m.dlq_skipped, 1, "{m:?}");
            assert_eq!(m.dead_lettered, 2, "{m:?}");
            assert_eq!(committed, 3, "committed past the skipped record");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_stops_the_run() {
    too_large(Backend::MockCluster, DlqFailurePolicy::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_is_skipped_with_skip() {
    too_large(Backend::MockCluster, DlqFailurePolicy::Skip).await;
}

async fn topic_missing(backend: Backend, policy: DlqFailurePolicy, create: bool) {
    init_tracing();
    let cluster = start(backend);
    let admin = client(&cluster, None, &[]).await;
    let topic = unique_name("dlq-missing");
    source(&cluster, &admin, &topic, 3, &[vec![1; 10], vec![2; 10]]).await;
    let group = unique_name("dlq-missing-group");
    let c = client(&cluster, Some(&group), &[]).await;
    let (result, committed) = run_all_failing(
        &c,
        &topic,
        runner_config(policy, "{topic}.missing-dlq", create),
        None,
        2,
    )
    .await;
    let dlq = format!("{topic}.missing-dlq");
    if create {
        let m = result.expect("the run goes on");
        assert_eq!(m.dead_lettered, 2, "{m:?}");
        assert_eq!(m.dlq_permanent_failures, 0, "{m:?}");
        assert_eq!(committed, 2);
        assert_eq!(
            admin.partition_count(&dlq).await.unwrap(),
            3,
            "created with the source topic's partition count"
        );
    } else {
        match policy {
            DlqFailurePolicy::Stop => {
                let err = result.expect_err("the run stops");
                assert!(
                    matches!(err, Error::UnknownTopic(_))
                        || err.kafka_code() == Some(purekafka::ErrorCode::UnknownTopicOrPartition),
                    "{err}"
                );
                assert_eq!(committed, -1, "nothing committed");
            }
            DlqFailurePolicy::Skip => {
                let m = result.expect("the run goes on");
                assert_eq!(m.dlq_skipped, 2, "{m:?}");
                assert_eq!(committed, 2);
            }
        }
        assert!(
            admin.partition_count(&dlq).await.is_err(),
            "not created without dlq_create_topic"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_missing_stops_the_run() {
    topic_missing(Backend::Tansu, DlqFailurePolicy::Stop, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_missing_is_skipped_with_skip() {
    topic_missing(Backend::Tansu, DlqFailurePolicy::Skip, false).await;
}

/// On tansu: the mock cluster has no controller for CreateTopics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_missing_is_created_when_allowed() {
    topic_missing(Backend::Tansu, DlqFailurePolicy::Stop, true).await;
}

/// The broker refuses the dead-letter write (TOPIC_AUTHORIZATION_FAILED, injected on the
/// mock cluster's Produce): the run stops with that error, nothing past it committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_authorized_stops_the_run() {
    init_tracing();
    let cluster = start(Backend::MockCluster);
    let admin = client(&cluster, None, &[]).await;
    let topic = unique_name("dlq-auth");
    cluster
        .create_topic(&format!("{topic}.dlq"), 1)
        .await
        .unwrap();
    source(&cluster, &admin, &topic, 1, &[vec![1; 10]]).await;
    // Produce (api key 0) fails with TOPIC_AUTHORIZATION_FAILED (29), several times over.
    cluster.push_request_errors(0, &[29; 8]).unwrap();
    let group = unique_name("dlq-auth-group");
    let c = client(&cluster, Some(&group), &[]).await;
    let (result, committed) = run_all_failing(
        &c,
        &topic,
        runner_config(DlqFailurePolicy::Stop, "{topic}.dlq", false),
        None,
        1,
    )
    .await;
    let err = result.expect_err("the run stops");
    assert_eq!(
        err.kafka_code(),
        Some(purekafka::ErrorCode::TopicAuthorizationFailed),
        "{err}"
    );
    assert_eq!(committed, -1, "the record stays uncommitted");
}
