//! Foundation: connecting, reconnecting, health and configuration errors, against real
//! brokers (librdkafka's mock cluster and tansu) started by the testkit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use purekafka::rskafka::client::partition::{Compression, OffsetAt};
use purekafka::rskafka::record::Record as RsRecord;
use purekafka::{Client, Config, Error, Health, ReconnectPolicy};
use purekafka_testkit::{unique_name, Backend, TestCluster};

#[macro_use]
mod support;

fn config_for(cluster: &TestCluster) -> purekafka::ConfigBuilder {
    Config::builder()
        .brokers(cluster.bootstrap_list())
        .client_id(unique_name("foundation"))
}

on_each_backend!(
    connect_list_produce_and_read_back,
    |cluster: TestCluster| async move {
        let topic = unique_name("foundation-rw");
        let client = Client::connect(config_for(&cluster).build().unwrap())
            .await
            .expect("connect");
        assert_eq!(client.health(), Health::Connected);
        if matches!(cluster.backend(), Backend::MockCluster) {
            // librdkafka's mock cluster does not serve CreateTopics; it has its own command.
            cluster.create_topic(&topic, 2).await.expect("create topic");
        } else {
            client
                .create_topic(&topic, 2, 1)
                .await
                .expect("create topic");
        }
        let topics = client.list_topics().await.expect("list topics");
        let info = topics
            .iter()
            .find(|t| t.name == topic)
            .unwrap_or_else(|| panic!("{topic} not in {topics:?}"));
        assert_eq!(info.partitions, vec![0, 1]);
        assert_eq!(client.partition_count(&topic).await.unwrap(), 2);

        let partition = client
            .partition_client(&topic, 1)
            .await
            .expect("partition client");
        let record = RsRecord {
            key: Some(b"key-1".to_vec()),
            value: Some(b"hello purekafka".to_vec()),
            headers: [("h".to_string(), b"v".to_vec())].into_iter().collect(),
            timestamp: purekafka::rskafka::chrono::Utc::now(),
        };
        let offsets = partition
            .produce(vec![record.clone()], Compression::NoCompression)
            .await
            .expect("produce");
        assert_eq!(offsets.len(), 1);
        let start = partition.get_offset(OffsetAt::Earliest).await.unwrap();
        let (records, high_watermark) = partition
            .fetch_records(start, 1..1_000_000, 1_000)
            .await
            .expect("fetch");
        assert_eq!(high_watermark, offsets[0] + 1);
        let got = records
            .iter()
            .find(|r| r.offset == offsets[0])
            .expect("the produced record is read back");
        assert_eq!(got.record.key, record.key);
        assert_eq!(got.record.value, record.value);
        assert_eq!(got.record.headers, record.headers);
    }
);

on_each_backend!(
    unknown_topic_is_a_clear_error,
    |cluster: TestCluster| async move {
        let client = Client::connect(config_for(&cluster).build().unwrap())
            .await
            .unwrap();
        let missing = unique_name("no-such-topic");
        match client.partition_count(&missing).await {
            Err(Error::UnknownTopic(t)) => assert_eq!(t, missing),
            other => panic!("expected UnknownTopic, got {other:?}"),
        }
    }
);

/// A port on 127.0.0.1 where nothing listens (bound, then released).
/// A port nothing listens on, held for the whole test: a socket bound to it but not listening
/// (connections to it are refused), so that no other test's broker or proxy can take the port
/// meanwhile (a port freed at once was once taken by a parallel test's process 0.3 s later).
fn dead_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

#[tokio::test]
async fn nothing_listening_gives_growing_delays_then_a_clear_error() {
    let (_held, port) = dead_port();
    let broker = format!("127.0.0.1:{port}");
    let delays = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&delays);
    let config = Config::builder()
        .brokers([broker.clone()])
        .reconnect(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(50))
                .multiplier(2.0)
                .max_delay(Duration::from_millis(800))
                .jitter(0.0)
                .max_elapsed(Some(Duration::from_secs(3))),
        )
        .on_retry(move |e| seen.lock().unwrap().push((e.attempt, e.delay)))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = Client::connect(config).await.expect_err("nothing listens");
    let elapsed = started.elapsed();
    let delays = delays.lock().unwrap().clone();
    assert!(delays.len() >= 4, "retries seen: {delays:?}");
    for pair in delays.windows(2) {
        assert!(pair[1].1 >= pair[0].1, "delays must not shrink: {delays:?}");
        assert_eq!(pair[1].0, pair[0].0 + 1);
    }
    assert_eq!(delays[0].1, Duration::from_millis(50));
    assert!(delays.last().unwrap().1 > delays[0].1, "{delays:?}");
    // No attempt is scheduled past the budget: the give-up comes once the next delay would
    // cross 3 s, so between 3 s − max_delay and 3 s (plus scheduling slack).
    assert!(
        elapsed >= Duration::from_millis(2200) && elapsed < Duration::from_secs(5),
        "gave up after {elapsed:?}"
    );
    match &err {
        Error::Connect {
            brokers, attempts, ..
        } => {
            assert_eq!(brokers, &vec![broker.clone()]);
            assert_eq!(*attempts as usize, delays.len() + 1);
        }
        other => panic!("expected Error::Connect, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&broker) && text.contains("attempts"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_started_two_seconds_after_connect_is_found() {
    if Backend::from_env().is_some() {
        return; // needs a broker it can start itself
    }
    let (held, port) = dead_port();
    let retries = Arc::new(Mutex::new(0u32));
    let seen = Arc::clone(&retries);
    let config = Config::builder()
        .brokers([format!("127.0.0.1:{port}")])
        .reconnect(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(100))
                .max_delay(Duration::from_millis(500))
                .max_elapsed(Some(Duration::from_secs(60))),
        )
        .on_retry(move |_| *seen.lock().unwrap() += 1)
        .build()
        .unwrap();
    let connecting = tokio::spawn(Client::connect(config));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !connecting.is_finished(),
        "connect returned before any broker existed"
    );
    // The port is let go only now, for the broker to take.
    drop(held);
    let cluster = tokio::task::spawn_blocking(move || TestCluster::start_tansu_on(port))
        .await
        .unwrap()
        .expect("start tansu on the chosen port");
    let client = connecting
        .await
        .unwrap()
        .expect("connects once the broker is up");
    assert!(
        *retries.lock().unwrap() >= 2,
        "expected retries before the broker came up"
    );
    client.list_topics().await.expect("usable");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_down_and_up_health_follows_and_callers_see_no_error() {
    if Backend::from_env().is_some() {
        return; // needs the mock cluster's fault injection
    }
    let cluster = TestCluster::start_mock(3).expect("mock cluster");
    let topic = unique_name("foundation-health");
    cluster.create_topic(&topic, 3).await.unwrap();
    let config = config_for(&cluster)
        .set("health.check.interval.ms", "100")
        .set("request.timeout.ms", "2000")
        .reconnect(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(100))
                .max_delay(Duration::from_millis(500))
                .max_elapsed(Some(Duration::from_secs(60))),
        )
        .build()
        .unwrap();
    let client = Client::connect(config).await.unwrap();
    assert_eq!(client.health(), Health::Connected);

    for id in 1..=3 {
        cluster.broker_down(id).unwrap();
    }
    // An operation started during the outage is retried, not failed.
    let during = {
        let client = client.clone();
        tokio::spawn(async move { client.list_topics().await })
    };
    let mut saw_reconnecting = false;
    for _ in 0..100 {
        if let Health::Reconnecting { attempt, .. } = client.health() {
            assert!(attempt >= 1);
            saw_reconnecting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_reconnecting, "health stayed {:?}", client.health());
    assert!(
        !during.is_finished(),
        "the operation must wait for the brokers"
    );

    for id in 1..=3 {
        cluster.broker_up(id).unwrap();
    }
    let topics = during
        .await
        .unwrap()
        .expect("the operation succeeds once brokers are back");
    assert!(topics.iter().any(|t| t.name == topic));
    // Connected once every broker is reachable again (the probe reconnects each one).
    let mut connected = false;
    for _ in 0..600 {
        if client.health() == Health::Connected {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connected, "health stayed {:?}", client.health());
}

#[tokio::test]
async fn disabled_client_connects_to_nothing() {
    let config = Config::builder().enabled(false).build().unwrap();
    let client = Client::connect(config).await.unwrap();
    assert_eq!(client.health(), Health::Disabled);
    assert!(client.health().is_ok());
    assert!(matches!(client.list_topics().await, Err(Error::Disabled)));
}

/// The number of established TCP connections this process holds to `ports` (sockets found
/// through /proc/self/fd, matched against /proc/self/net/tcp{,6} by inode).
fn sockets_to(ports: &[u16]) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut count = 0;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" {
                continue; // not ESTABLISHED
            }
            let remote_port = f[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port.is_some_and(|p| ports.contains(&p)) && inodes.contains(f[9]) {
                count += 1;
            }
        }
    }
    count
}

fn broker_ports(cluster: &TestCluster) -> Vec<u16> {
    cluster
        .bootstrap_list()
        .iter()
        .filter_map(|b| b.rsplit(':').next()?.parse().ok())
        .collect()
}

on_each_backend!(
    no_rskafka_connection_until_rskafka_is_called,
    |cluster: TestCluster| async move {
        let ports = broker_ports(&cluster);
        assert_eq!(sockets_to(&ports), 0, "no client yet");
        let client = Client::connect(
            config_for(&cluster)
                .set("health.check.interval.ms", "0")
                .build()
                .unwrap(),
        )
        .await
        .expect("connect");
        client.list_topics().await.expect("list topics");
        if !matches!(cluster.backend(), Backend::MockCluster) {
            // Topic administration and producing go through purekafka's own connections.
            let topic = unique_name("foundation-lazy");
            client.create_topic(&topic, 1, 1).await.expect("create");
            let producer = client.producer();
            producer
                .send(purekafka::Record::new(topic.clone(), "v"))
                .await
                .expect("produce");
            producer.close().await;
            client.delete_topic(&topic).await.expect("delete");
        }
        let before = sockets_to(&ports);
        // Bootstrap, metadata and admin share one connection per broker; on the single tansu
        // broker that is exactly one socket.
        assert!(before >= 1, "purekafka's own connection is open");
        if !matches!(cluster.backend(), Backend::MockCluster) {
            assert_eq!(before, 1, "one wire connection to the one broker");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            sockets_to(&ports),
            before,
            "nothing opened in the background"
        );

        let rs = client.rskafka().await.expect("rskafka client");
        rs.list_topics().await.expect("rskafka lists topics");
        let after = sockets_to(&ports);
        assert!(
            after > before,
            "rskafka() opened its connection only now ({before} before, {after} after)"
        );
        // The escape hatch is built once.
        client.rskafka().await.expect("rskafka client again");
        assert_eq!(sockets_to(&ports), after);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_leader_down_health_reconnecting_then_connected() {
    if Backend::from_env().is_some() {
        return; // needs the mock cluster's fault injection
    }
    support::init_tracing();
    let cluster = TestCluster::start_mock(3).expect("mock cluster");
    let topic = unique_name("foundation-leader-down");
    cluster.create_topic(&topic, 1).await.unwrap();
    cluster.set_leader(&topic, 0, 2).unwrap();
    let client = Client::connect(
        config_for(&cluster)
            .set("health.check.interval.ms", "200")
            .set("request.timeout.ms", "3000")
            .set("delivery.timeout.ms", "120000")
            .reconnect(
                ReconnectPolicy::default()
                    .initial_delay(Duration::from_millis(100))
                    .max_delay(Duration::from_millis(500))
                    .max_elapsed(Some(Duration::from_secs(120))),
            )
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let producer = client.producer();
    let first = producer
        .send(purekafka::Record::new(topic.clone(), "before"))
        .await
        .expect("produce to the leader");
    assert_eq!(first.partition, 0);
    assert_eq!(client.health(), Health::Connected);

    cluster.broker_down(2).unwrap();
    let during = {
        let producer = producer.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            producer
                .send(purekafka::Record::new(topic.clone(), "during"))
                .await
        })
    };
    let mut saw = None;
    for _ in 0..400 {
        if let h @ Health::Reconnecting { .. } = client.health() {
            saw = Some(h);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let saw = saw.unwrap_or_else(|| panic!("health stayed {:?}", client.health()));
    if let Health::Reconnecting { last_error, .. } = &saw {
        assert!(!last_error.is_empty());
    }

    cluster.broker_up(2).unwrap();
    let mut connected = false;
    for _ in 0..400 {
        if client.health() == Health::Connected {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connected, "health stayed {:?}", client.health());
    let delivered = tokio::time::timeout(Duration::from_secs(60), during)
        .await
        .expect("the send completes once the leader is back")
        .unwrap()
        .expect("delivered");
    assert!(delivered.offset > first.offset);
    producer.close().await;
}
