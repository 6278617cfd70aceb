//! Starts each local backend, creates a topic, and reads it back through rskafka; checks the
//! mock cluster's fault commands and cleanup on drop.

use std::net::TcpStream;
use std::time::Duration;

use purekafka_testkit::{unique_name, Backend, TestCluster};

async fn topic_roundtrip(backend: Backend) {
    let cluster = TestCluster::start(backend.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cluster.backend(), &backend);
    let topic = unique_name("testkit-topic");
    cluster
        .create_topic(&topic, 3)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = cluster.client().await.unwrap();
    let topics = client.list_topics().await.unwrap();
    let t = topics
        .iter()
        .find(|t| t.name == topic)
        .unwrap_or_else(|| panic!("{topic} missing from {topics:?}"));
    assert_eq!(
        t.partitions.iter().copied().collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

fn accepts(addr: &str) -> bool {
    TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)).is_ok()
}

#[tokio::test]
async fn mock_cluster_creates_topic() {
    topic_roundtrip(Backend::MockCluster).await;
}

#[tokio::test]
async fn tansu_creates_topic() {
    topic_roundtrip(Backend::Tansu).await;
}

#[tokio::test]
async fn external_creates_topic_when_configured() {
    match Backend::from_env() {
        Some(b) => topic_roundtrip(b).await,
        None => eprintln!("PUREKAFKA_TEST_BROKERS not set: nothing to check"),
    }
}

#[test]
fn mock_fault_commands_round_trip() {
    let cluster = TestCluster::start_mock(3).unwrap();
    assert_eq!(cluster.bootstrap_list().len(), 3);
    assert_eq!(cluster.command("broker-down 1"), Ok(String::new()));
    assert_eq!(cluster.command("broker-up 1"), Ok(String::new()));
    cluster.broker_down(2).unwrap();
    cluster.broker_up(2).unwrap();
    cluster.command("create-topic faults 2").unwrap();
    cluster.set_leader("faults", 0, 3).unwrap();
    cluster.set_coordinator("some-group", 2).unwrap();
    cluster.push_request_errors(0, &[6, 6]).unwrap();
    cluster.push_broker_request_errors(1, 1, &[6]).unwrap();
    cluster.set_rtt(1, Duration::from_millis(5)).unwrap();
    cluster
        .set_group_initial_rebalance_delay(Duration::from_millis(0))
        .unwrap();
    assert!(cluster.broker_down(9).is_err());
    assert!(cluster.command("no-such-command").is_err());
    // Metadata ignores pushed errors in the mock: refused rather than silently queued.
    assert!(cluster.push_request_errors(3, &[6]).is_err());
}

#[test]
fn mock_partitioner_matches_java_murmur2() {
    let cluster = TestCluster::start_mock(1).unwrap();
    // Positive murmur2 hashes from librdkafka's unit test (Java-compatible).
    let keys: [&[u8]; 3] = [b"kafka", b"giberish123456789", b""];
    let parts = cluster.partitions_for_keys(i32::MAX, &keys).unwrap();
    assert_eq!(parts, vec![0x5067_cf64, 0x0f55_2b0c, 0x106e_08d9]);
    assert_eq!(
        cluster.partition_for_key(i32::MAX, b"kafka"),
        Ok(0x5067_cf64)
    );
    let p = cluster.partition_for_key(6, b"some key").unwrap();
    assert!((0..6).contains(&p));
}

#[test]
fn commands_need_the_mock_backend() {
    let cluster = TestCluster::start(Backend::External("127.0.0.1:1".into())).unwrap();
    let err = cluster.broker_down(1).unwrap_err();
    assert!(err.contains("mock cluster"), "{err}");
}

#[test]
fn mock_cluster_stops_on_drop() {
    let cluster = TestCluster::start_mock(2).unwrap();
    let addrs = cluster.bootstrap_list();
    assert!(addrs.iter().all(|a| accepts(a)));
    drop(cluster);
    assert!(addrs.iter().all(|a| !accepts(a)));
}

#[test]
fn tansu_stops_on_drop() {
    let cluster = TestCluster::start(Backend::Tansu).unwrap_or_else(|e| panic!("{e}"));
    let addr = cluster.bootstrap();
    assert!(accepts(&addr));
    let log = cluster.log_path().unwrap().to_path_buf();
    drop(cluster);
    assert!(!accepts(&addr));
    assert!(!log.exists(), "log of a clean shutdown is removed");
}

#[test]
fn unique_names_differ() {
    let a = unique_name("t");
    let b = unique_name("t");
    assert_ne!(a, b);
    assert!(a.starts_with("t-"));
    assert!(a
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'));
}

#[test]
fn backend_env_and_names() {
    assert_eq!(
        Backend::all_local(),
        vec![Backend::MockCluster, Backend::Tansu]
    );
    assert_eq!(Backend::MockCluster.name(), "mock");
    assert_eq!(Backend::External("h:1".into()).to_string(), "external(h:1)");
}

#[test]
fn test_cluster_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TestCluster>();
}
