//! The 1.0 API additions against real brokers: `store_offset(s)` with
//! `enable.auto.offset.store = false` (librdkafka's semantics) and `Producer::flush_timeout`.

use std::collections::BTreeMap;
use std::time::Duration;

use purekafka::{Client, Config, ConsumedRecord, Consumer, Error, Record, TopicPartition};
use purekafka_testkit::{unique_name, Backend, TestCluster};

#[macro_use]
mod support;

async fn poll_n(consumer: &Consumer, n: usize, limit: Duration) -> Vec<ConsumedRecord> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < n && tokio::time::Instant::now() < deadline {
        got.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    got
}

async fn committed(client: &Client, group: &str) -> BTreeMap<TopicPartition, i64> {
    client
        .admin()
        .group_offsets(group)
        .await
        .expect("group offsets")
}

on_each_backend!(
    store_offset_decides_what_auto_commit_and_close_commit,
    |cluster: TestCluster| async move {
        let topic = unique_name("store-offset");
        let group = unique_name("store-offset-group");
        cluster.create_topic(&topic, 1).await.unwrap();
        let c = support::client(
            &cluster,
            &group,
            &[
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "200"),
                ("enable.auto.offset.store", "false"),
            ],
        )
        .await;
        support::produce(&c, &topic, 1, 20, 20).await;
        let consumer = c.consumer(&[&topic]).unwrap();
        let got = poll_n(&consumer, 20, Duration::from_secs(30)).await;
        assert_eq!(got.len(), 20);
        // Polling again does not store anything by itself: nothing is committed.
        consumer.poll(Duration::from_millis(100)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(committed(&c, &group).await.is_empty());

        // Storing record 9 lets auto-commit commit offset 10, and only that.
        consumer.store_offset(&got[9]);
        let tp = TopicPartition::new(topic.as_str(), 0);
        let mut seen = BTreeMap::new();
        for _ in 0..100 {
            consumer.poll(Duration::from_millis(100)).await.unwrap();
            seen = committed(&c, &group).await;
            if !seen.is_empty() {
                break;
            }
        }
        assert_eq!(seen, BTreeMap::from([(tp.clone(), 10)]));

        // close commits what was stored: offset 15, not the 20 polled.
        consumer.store_offsets([(tp.clone(), 15)]);
        consumer.close().await.unwrap();
        assert_eq!(committed(&c, &group).await, BTreeMap::from([(tp, 15)]));
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_timeout_ends_the_wait_not_the_records() {
    if Backend::from_env().is_some() {
        return; // needs the mock cluster's fault injection
    }
    support::init_tracing();
    let cluster = TestCluster::start_mock(3).expect("mock cluster");
    let topic = unique_name("flush-timeout");
    cluster.create_topic(&topic, 1).await.unwrap();
    cluster.set_leader(&topic, 0, 2).unwrap();
    let config = Config::builder()
        .brokers(cluster.bootstrap_list())
        .set("delivery.timeout.ms", "120000")
        .set("request.timeout.ms", "3000")
        .build()
        .unwrap();
    let client = Client::connect(config).await.unwrap();
    let producer = client.producer();
    producer
        .send(Record::new(topic.clone(), "first"))
        .await
        .expect("delivered");
    producer
        .flush_timeout(Duration::from_secs(30))
        .await
        .expect("nothing pending: flush returns at once");

    cluster.broker_down(2).unwrap();
    let pending = producer
        .enqueue(Record::new(topic.clone(), "second"))
        .await
        .unwrap();
    match producer.flush_timeout(Duration::from_millis(500)).await {
        Err(Error::Timeout { operation, after }) => {
            assert_eq!(operation, "flush");
            assert_eq!(after, Duration::from_millis(500));
        }
        other => panic!(
            "expected a flush timeout with the leader down, got {other:?}; the record: {:?}",
            pending.await
        ),
    }
    cluster.broker_up(2).unwrap();
    producer
        .flush_timeout(Duration::from_secs(60))
        .await
        .expect("flushed once the leader is back");
    let delivery = pending.await.expect("the record was kept and delivered");
    assert_eq!(delivery.offset, 1);
    producer.close().await;
}

/// One listener call: its kind and the partitions' ids.
type Event = (&'static str, Vec<i32>);

/// Records listener events.
#[derive(Clone, Default)]
struct Events(std::sync::Arc<std::sync::Mutex<Vec<Event>>>);

impl Events {
    fn push(&self, kind: &'static str, ps: &[TopicPartition]) {
        let parts = ps.iter().map(|tp| tp.partition).collect();
        self.0.lock().unwrap().push((kind, parts));
    }
    fn kinds(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().iter().map(|e| e.0).collect()
    }
}

impl purekafka::RebalanceListener for Events {
    fn on_assigned(&self, ps: &[TopicPartition]) {
        self.push("assigned", ps);
    }
    fn on_revoked(&self, ps: &[TopicPartition]) {
        self.push("revoked", ps);
    }
    fn on_lost(&self, ps: &[TopicPartition]) {
        self.push("lost", ps);
    }
}

async fn poll_until(consumer: &Consumer, events: &Events, kind: &str, nth: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while events.kinds().iter().filter(|k| **k == kind).count() < nth {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} #{nth}: events {:?}",
            events.kinds()
        );
        let _ = consumer.poll(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_listener_sees_partitions_lost_when_the_session_runs_out() {
    if Backend::from_env().is_some() {
        return; // needs the mock cluster's fault injection
    }
    support::init_tracing();
    let cluster = support::start(Backend::MockCluster);
    let topic = unique_name("listener");
    let group = unique_name("listener-group");
    cluster.create_topic(&topic, 2).await.unwrap();
    cluster.set_coordinator(&group, 1).unwrap();
    cluster.set_leader(&topic, 0, 2).unwrap();
    cluster.set_leader(&topic, 1, 3).unwrap();
    let c = support::client(&cluster, &group, &[]).await;
    let consumer = c.consumer(&[&topic]).unwrap();
    let events = Events::default();
    consumer.set_rebalance_listener(events.clone());
    poll_until(&consumer, &events, "assigned", 1, Duration::from_secs(30)).await;
    assert_eq!(events.0.lock().unwrap()[0], ("assigned", vec![0, 1]));

    // The coordinator is unreachable for longer than session.timeout.ms (6 s): the member
    // cannot know whether it still owns its partitions, so they are lost, not revoked.
    cluster.broker_down(1).unwrap();
    poll_until(&consumer, &events, "lost", 1, Duration::from_secs(60)).await;
    cluster.broker_up(1).unwrap();
    poll_until(&consumer, &events, "assigned", 2, Duration::from_secs(60)).await;
    let kinds = events.kinds();
    assert_eq!(&kinds[..3], &["assigned", "lost", "assigned"], "{kinds:?}");
    assert_eq!(events.0.lock().unwrap()[1], ("lost", vec![0, 1]));
    consumer.close().await.unwrap();
}
