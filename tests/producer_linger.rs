//! `linger.ms` against real brokers (librdkafka's mock cluster and tansu): a batch is not sent
//! before its linger is up (the sender wakes at the deadline to the microsecond and may take a
//! batch at most 0.1 ms early), and the timer thread behind it lives exactly as long as the
//! producer's sender.
//!
//! Only lower bounds on time are checked (a loaded machine can only make a batch later), never
//! how soon after its deadline a batch goes: that is measured in benches/compare.

use std::time::{Duration, Instant};

use purekafka::{Client, Config, ConfigBuilder, Record};
use purekafka_testkit::{unique_name, Backend, TestCluster};

#[macro_use]
mod support;

/// The tests of this file run one at a time even under `cargo test` (one process for all):
/// the thread check counts every producer's timer thread in the process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the producer may take a batch early by (`TIMER_SLACK` in src/producer/accumulator.rs).
const EARLY: Duration = Duration::from_micros(100);

fn config_for(cluster: &TestCluster) -> ConfigBuilder {
    Config::builder()
        .brokers(cluster.bootstrap_list())
        .client_id(unique_name("linger-test"))
}

async fn connect(config: ConfigBuilder) -> Client {
    Client::connect(config.build().expect("config"))
        .await
        .expect("connect")
}

on_each_backend!(
    a_batch_is_not_sent_before_its_linger_is_up,
    |cluster: TestCluster| async move {
        let _serial = SERIAL.lock().await;
        let topic = unique_name("linger-bound");
        cluster.create_topic(&topic, 2).await.expect("create topic");
        let linger = Duration::from_millis(300);
        let client = connect(config_for(&cluster).set("linger.ms", "300")).await;
        let producer = client.producer();
        // The metadata is loaded and the connection open before anything is timed.
        producer
            .send(Record::new(topic.clone(), "warm-up").with_partition(0))
            .await
            .expect("warm-up");

        // Partition 0's batch opens with `a` (its deadline is counted from then); `b` opens
        // partition 1's batch 100 ms later; `c` joins partition 0's open batch.
        let t0 = Instant::now();
        let a = producer
            .enqueue(Record::new(topic.clone(), "a").with_partition(0))
            .await
            .expect("enqueue a");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t1 = Instant::now();
        let b = producer
            .enqueue(Record::new(topic.clone(), "b").with_partition(1))
            .await
            .expect("enqueue b");
        let c = producer
            .enqueue(Record::new(topic.clone(), "c").with_partition(0))
            .await
            .expect("enqueue c");

        let a = a.await.expect("a delivered");
        let a_at = Instant::now();
        let c = c.await.expect("c delivered");
        let b = b.await.expect("b delivered");
        let b_at = Instant::now();
        assert!(
            a_at >= t0 + linger - EARLY,
            "partition 0's batch was acknowledged {:?} after its first record, before its linger",
            a_at - t0
        );
        assert!(
            b_at >= t1 + linger - EARLY,
            "partition 1's batch was acknowledged {:?} after its first record, before its linger",
            b_at - t1
        );
        // `a` and `c` went in one batch: consecutive offsets, one acknowledgement.
        assert_eq!((a.partition, c.partition, b.partition), (0, 0, 1));
        assert_eq!(c.offset, a.offset + 1);
        producer.close().await;

        let p0 = support::read_partition(&client, &topic, 0).await;
        let values: Vec<_> = p0
            .iter()
            .map(|r| r.record.value.clone().unwrap_or_default())
            .collect();
        assert_eq!(values, [&b"warm-up"[..], b"a", b"c"]);
        let p1 = support::read_partition(&client, &topic, 1).await;
        assert_eq!(p1.len(), 1);
        assert_eq!(p1[0].offset, b.offset);
    }
);

/// Threads of this process named like the producer's timer thread.
#[cfg(target_os = "linux")]
fn timer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "purekafka-timer")
        .count()
}

/// Waits (up to a generous bound) until `f` holds; says whether it did.
#[cfg(target_os = "linux")]
async fn eventually(f: impl Fn() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(30);
    while !f() {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_linger_timer_thread_lives_as_long_as_the_sender() {
    let _serial = SERIAL.lock().await;
    let backend = Backend::from_env().unwrap_or(Backend::MockCluster);
    let cluster = support::start(backend);
    let topic = unique_name("linger-thread");
    cluster.create_topic(&topic, 1).await.expect("create topic");
    // An earlier test's producer (under `cargo test`) may still be ending its thread.
    assert!(eventually(|| timer_threads() == 0).await);

    let client = connect(config_for(&cluster).set("linger.ms", "5")).await;
    let producer = client.producer();
    producer
        .send(Record::new(topic.clone(), "lingered"))
        .await
        .expect("delivered");
    assert_eq!(
        timer_threads(),
        1,
        "one timer thread for the producer's sender"
    );
    producer.close().await;
    assert!(
        eventually(|| timer_threads() == 0).await,
        "the timer thread outlived its producer"
    );

    // Dropping the last handle (no close) stops the sender and its thread too.
    let producer = client.producer();
    producer
        .send(Record::new(topic.clone(), "dropped"))
        .await
        .expect("delivered");
    assert_eq!(timer_threads(), 1);
    drop(producer);
    assert!(
        eventually(|| timer_threads() == 0).await,
        "the timer thread outlived its dropped producer"
    );

    // Without linger there is nothing to time: no thread.
    let client = connect(config_for(&cluster).set("linger.ms", "0")).await;
    let producer = client.producer();
    producer
        .send(Record::new(topic.clone(), "at once"))
        .await
        .expect("delivered");
    assert_eq!(timer_threads(), 0, "linger.ms=0 starts no timer thread");
    producer.close().await;
    assert_eq!(support::read_partition(&client, &topic, 0).await.len(), 3);
}
