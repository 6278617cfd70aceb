//! Fatal group errors on librdkafka's mock cluster (injected with its request-error
//! commands): they end `poll` and `run` with that error, every time, instead of rejoining in a
//! loop. The errors are injected into Heartbeat: the mock answers an injected JoinGroup or
//! FindCoordinator error with null strings that the response layout does not allow, so a
//! fatal answer to those requests is untested here.

use std::time::{Duration, Instant};

use purekafka::Consumer;
use purekafka_testkit::{unique_name, Backend};

#[macro_use]
mod support;

/// Polls until one fails; returns its Kafka error code (panics after 30 s).
async fn poll_until_error(consumer: &Consumer) -> Option<i16> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no error within 30 s");
        match consumer.poll(Duration::from_millis(200)).await {
            Ok(_) => continue,
            Err(e) => return e.kafka_code().map(|c| c.code()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_authorization_failed_ends_poll_for_good() {
    support::init_tracing();
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("group-fatal-auth");
    cluster.create_topic(&topic, 1).await.unwrap();
    let client = support::client(&cluster, &unique_name("group-fatal-auth"), &[]).await;
    // The first heartbeat answers GROUP_AUTHORIZATION_FAILED (once: a rejoin would succeed).
    cluster.push_request_errors(12, &[30]).unwrap();
    let consumer = client.consumer(&[&topic]).unwrap();
    assert_eq!(poll_until_error(&consumer).await, Some(30));
    // Not once: every later poll says so.
    for _ in 0..3 {
        let e = consumer
            .poll(Duration::from_millis(300))
            .await
            .expect_err("fatal error is kept");
        assert_eq!(e.kafka_code().map(|c| c.code()), Some(30), "{e}");
    }
    let _ = consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_instance_id_on_heartbeat_ends_poll_and_run() {
    support::init_tracing();
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("group-fatal-fenced");
    cluster.create_topic(&topic, 1).await.unwrap();
    let group = unique_name("group-fatal-fenced");
    let client = support::client(&cluster, &group, &[("group.instance.id", "fenced-1")]).await;
    let consumer = client.consumer(&[&topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment().is_empty() {
        assert!(Instant::now() < deadline, "never assigned");
        consumer.poll(Duration::from_millis(100)).await.unwrap();
    }
    // The next heartbeat is answered FENCED_INSTANCE_ID.
    cluster.push_request_errors(12, &[82]).unwrap();
    assert_eq!(poll_until_error(&consumer).await, Some(82));
    let again = consumer.poll(Duration::from_millis(300)).await.unwrap_err();
    assert_eq!(again.kafka_code().map(|c| c.code()), Some(82));
    let _ = consumer.close().await;

    // `run` ends with the error instead of polling on.
    let client = support::client(&cluster, &unique_name("group-fatal-run"), &[]).await;
    cluster.push_request_errors(12, &[30]).unwrap();
    let runner = client.consumer(&[&topic]).unwrap().runner();
    let run = tokio::time::timeout(Duration::from_secs(60), runner.run(|_r| async { Ok(()) }))
        .await
        .expect("run ended");
    let e = run.expect_err("run fails with the group error");
    assert_eq!(e.kafka_code().map(|c| c.code()), Some(30), "{e}");
}

/// Neither test broker can add partitions to a topic (no CreatePartitions), so the change
/// tested is a subscribed topic that appears (0 → 2 partitions): the leader notices it at its
/// next metadata check and rejoins, and the new partitions are consumed. Mock cluster only:
/// on tansu 0.6.0 the member gets the new partitions but its fetches return nothing (cause
/// not found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_rejoins_when_a_subscribed_topic_appears() {
    support::init_tracing();
    let cluster = support::start(Backend::MockCluster);
    let first = unique_name("group-grow-a");
    let later = unique_name("group-grow-b");
    cluster.create_topic(&first, 1).await.unwrap();
    let client = support::client(
        &cluster,
        &unique_name("group-grow"),
        &[("topic.metadata.refresh.interval.ms", "1000")],
    )
    .await;
    support::produce(&client, &first, 1, 10, 10).await;
    let consumer = client.consumer(&[&first, &later]).unwrap();
    let mut seen_first = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen_first < 10 {
        assert!(Instant::now() < deadline, "nothing from the first topic");
        seen_first += consumer
            .poll(Duration::from_millis(200))
            .await
            .unwrap()
            .len();
    }
    assert_eq!(consumer.assignment().len(), 1);

    cluster.create_topic(&later, 2).await.unwrap();
    support::produce(&client, &later, 2, 5, 5).await;
    let mut seen_later = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen_later < 10 {
        assert!(
            Instant::now() < deadline,
            "the new topic's partitions were not consumed: assignment {:?}",
            consumer.assignment()
        );
        let batch = consumer.poll(Duration::from_millis(200)).await.unwrap();
        seen_later += batch.iter().filter(|r| *r.topic == *later).count();
    }
    assert_eq!(consumer.assignment().len(), 3);
    consumer.close().await.unwrap();
}

/// The start-position lookup fails (OffsetFetch answered UNKNOWN_SERVER_ERROR, then
/// COORDINATOR_LOAD_IN_PROGRESS): it is tried again while the heartbeats go on, and every
/// partition gets a position and is consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_position_lookups_are_retried_beside_the_heartbeats() {
    support::init_tracing();
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("group-positions");
    cluster.create_topic(&topic, 3).await.unwrap();
    let client = support::client(&cluster, &unique_name("group-positions"), &[]).await;
    support::produce(&client, &topic, 3, 10, 10).await;
    cluster.push_request_errors(9, &[-1, 14, 14]).unwrap();
    let consumer = client.consumer(&[&topic]).unwrap();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < 30 {
        assert!(
            Instant::now() < deadline,
            "{seen} of 30 records: a partition was left without a position"
        );
        match consumer.poll(Duration::from_millis(200)).await {
            Ok(batch) => seen += batch.len(),
            // The first failure is reported once; the lookup goes on.
            Err(e) => assert_eq!(e.kafka_code().map(|c| c.code()), Some(-1), "{e}"),
        }
    }
    consumer.close().await.unwrap();
}
