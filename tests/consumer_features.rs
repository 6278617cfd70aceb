//! Consumer features beyond the main paths: auto-commit, `commit_async`, static membership,
//! `max.poll.interval.ms`, `close_on_shutdown_signal` (through the `consume` example) and the
//! example's exit code on an unreachable broker.
//!
//! Each test makes its own broker, topic and group, so they run in parallel. Deadlines are
//! generous; nothing here measures time.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use purekafka::{ConsumedRecord, Consumer, TopicPartition};
use purekafka_testkit::{unique_name, Backend, TestCluster};
use tokio::time::Instant;

#[macro_use]
mod support;
use support::{client, produce};

/// Polls (without committing) until `n` records came; returns them.
async fn poll_n(consumer: &Consumer, n: usize, limit: Duration) -> Vec<ConsumedRecord> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records in {limit:?}",
            got.len()
        );
        got.extend(consumer.poll(Duration::from_millis(100)).await.unwrap());
    }
    got
}

/// Asks the coordinator until the committed offsets of partitions `0..partitions` all equal
/// `expected`, or `limit` passes.
async fn wait_committed(
    consumer: &Consumer,
    topic: &str,
    partitions: i32,
    expected: i64,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    let tps: Vec<(&str, i32)> = (0..partitions).map(|p| (topic, p)).collect();
    loop {
        let committed = consumer.committed(&tps).await.unwrap();
        if committed.len() == partitions as usize && committed.values().all(|&o| o == expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "committed {committed:?}, expected {expected} on {partitions} partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn partitions_of(consumer: &Consumer) -> Vec<i32> {
    consumer
        .assignment()
        .iter()
        .map(|tp| tp.partition)
        .collect()
}

// ---------------------------------------------------------------------------------------
// enable.auto.commit + auto.commit.interval.ms

on_each_backend!(
    auto_commit_commits_polled_records,
    |cluster: TestCluster| async move {
        let topic = unique_name("autocommit");
        let group = unique_name("autocommit-group");
        cluster.create_topic(&topic, 2).await.unwrap();
        let c = client(
            &cluster,
            &group,
            &[
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "200"),
            ],
        )
        .await;
        produce(&c, &topic, 2, 50, 50).await;
        let consumer = c.consumer(&[&topic]).unwrap();
        let got = poll_n(&consumer, 100, Duration::from_secs(30)).await;
        assert_eq!(got.len(), 100);
        // The next poll marks the records processed; the auto-commit task commits them without
        // any commit call, and without close.
        consumer.poll(Duration::from_millis(100)).await.unwrap();
        wait_committed(&consumer, &topic, 2, 50, Duration::from_secs(15)).await;
        drop(consumer);

        // Nothing is committed by a consumer with auto-commit off (the default).
        let group2 = unique_name("manual-group");
        let c2 = client(&cluster, &group2, &[]).await;
        let manual = c2.consumer(&[&topic]).unwrap();
        poll_n(&manual, 100, Duration::from_secs(30)).await;
        manual.poll(Duration::from_millis(100)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let committed = manual.committed(&[(&topic, 0), (&topic, 1)]).await.unwrap();
        assert!(
            committed.is_empty(),
            "committed without auto-commit: {committed:?}"
        );
        drop(manual);
    }
);

// ---------------------------------------------------------------------------------------
// commit_async

on_each_backend!(
    commit_async_commits_in_the_background,
    |cluster: TestCluster| async move {
        let topic = unique_name("async");
        let group = unique_name("async-group");
        cluster.create_topic(&topic, 2).await.unwrap();
        let c = client(&cluster, &group, &[]).await;
        produce(&c, &topic, 2, 30, 30).await;
        let consumer = c.consumer(&[&topic]).unwrap();
        let got = poll_n(&consumer, 60, Duration::from_secs(30)).await;
        consumer.commit_async(&got);
        wait_committed(&consumer, &topic, 2, 30, Duration::from_secs(15)).await;

        // A part of a partition: the highest offset + 1 of the given records.
        let part: Vec<ConsumedRecord> = got
            .iter()
            .filter(|r| r.partition == 0 && r.offset < 10)
            .cloned()
            .collect();
        let mut offsets = std::collections::HashMap::new();
        offsets.insert(TopicPartition::new(topic.as_str(), 0), 0);
        consumer.commit_offsets(offsets).await.unwrap();
        consumer.commit_async(&part);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let committed = consumer.committed(&[(&topic, 0)]).await.unwrap();
            if committed.values().next() == Some(&10) {
                break;
            }
            assert!(Instant::now() < deadline, "committed {committed:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(consumer);
    }
);

// ---------------------------------------------------------------------------------------
// Static membership (group.instance.id, KIP-345)

/// A consumer that polls on its own task until `stop`, counting revokes.
struct Polling {
    consumer: Arc<Consumer>,
    revokes: Arc<AtomicUsize>,
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// Counts non-empty revokes (lost partitions included, the listener's default).
struct CountRevokes(Arc<AtomicUsize>);

impl purekafka::consumer::RebalanceListener for CountRevokes {
    fn on_revoked(&self, partitions: &[TopicPartition]) {
        if !partitions.is_empty() {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn spawn_polling(consumer: Consumer) -> Polling {
    let consumer = Arc::new(consumer);
    let revokes = Arc::new(AtomicUsize::new(0));
    consumer.set_rebalance_listener(CountRevokes(Arc::clone(&revokes)));
    let stop = Arc::new(tokio::sync::Notify::new());
    let task = {
        let consumer = Arc::clone(&consumer);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    b = consumer.poll(Duration::from_millis(100)) => { b.unwrap(); }
                    _ = stop.notified() => return,
                }
            }
        })
    };
    Polling {
        consumer,
        revokes,
        stop,
        task,
    }
}

impl Polling {
    async fn stop(self) -> Arc<Consumer> {
        self.stop.notify_one();
        self.task.await.unwrap();
        self.consumer
    }
}

/// Waits until the members' assignments split `partitions` partitions between them, each
/// member holding some; returns each member's partitions.
async fn wait_split(members: &[&Consumer], partitions: usize, limit: Duration) -> Vec<Vec<i32>> {
    let deadline = Instant::now() + limit;
    loop {
        let sets: Vec<Vec<i32>> = members.iter().map(|m| partitions_of(m)).collect();
        let unique: HashSet<i32> = sets.iter().flatten().copied().collect();
        if sets.iter().all(|s| !s.is_empty())
            && unique.len() == partitions
            && sets.iter().map(Vec::len).sum::<usize>() == partitions
        {
            return sets;
        }
        assert!(Instant::now() < deadline, "no split: {sets:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On tansu (and Kafka) a static member that restarts gets its partitions back without the
/// others being revoked. librdkafka's mock cluster keeps `group.instance.id` only for leader
/// election: a rejoin with a known instance id is a new member and rebalances the group, so
/// there only the close half (no LeaveGroup) and an eventual split are checked.
async fn static_member_restart_keeps_partitions(cluster: TestCluster) {
    let kip345 = *cluster.backend() != Backend::MockCluster;
    let topic = unique_name("static");
    let group = unique_name("static-group");
    cluster.create_topic(&topic, 4).await.unwrap();
    // A session far longer than the checks below: partitions move only if a leaves (or on
    // the mock cluster, once a's session expired).
    let session = if kip345 { "30000" } else { "8000" };
    let instance = |id: &'static str| {
        vec![
            ("session.timeout.ms", session),
            ("heartbeat.interval.ms", "500"),
            ("group.instance.id", id),
        ]
    };
    let ca = client(&cluster, &group, &instance("member-a")).await;
    let cb = client(&cluster, &group, &instance("member-b")).await;
    let a = spawn_polling(ca.consumer(&[&topic]).unwrap());
    let b = spawn_polling(cb.consumer(&[&topic]).unwrap());
    wait_split(&[&a.consumer, &b.consumer], 4, Duration::from_secs(60)).await;
    // Let the group settle (a second member joining may rebalance once more).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let split = wait_split(&[&a.consumer, &b.consumer], 4, Duration::from_secs(30)).await;
    let b_revokes = b.revokes.load(Ordering::SeqCst);

    // Member a closes: a static member sends no LeaveGroup, so b keeps its partitions.
    let a_consumer = a.stop().await;
    a_consumer.close().await.unwrap();
    drop(a_consumer);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(partitions_of(&b.consumer), split[1], "b's partitions moved");
    assert_eq!(b.revokes.load(Ordering::SeqCst), b_revokes, "b was revoked");

    // a restarts with the same instance id.
    let ca2 = client(&cluster, &group, &instance("member-a")).await;
    let a2 = spawn_polling(ca2.consumer(&[&topic]).unwrap());
    if kip345 {
        // It gets its partitions back; b is not revoked.
        let deadline = Instant::now() + Duration::from_secs(20);
        while partitions_of(&a2.consumer) != split[0] {
            assert!(
                Instant::now() < deadline,
                "restarted a holds {:?}, had {:?}",
                partitions_of(&a2.consumer),
                split[0]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(partitions_of(&b.consumer), split[1]);
        assert_eq!(
            b.revokes.load(Ordering::SeqCst),
            b_revokes,
            "the restart rebalanced b"
        );
    } else {
        wait_split(&[&a2.consumer, &b.consumer], 4, Duration::from_secs(60)).await;
    }
    for m in [a2, b] {
        m.stop().await.close().await.unwrap();
    }
}

on_each_backend!(static_member_restart, |cluster: TestCluster| async move {
    static_member_restart_keeps_partitions(cluster).await;
});

// ---------------------------------------------------------------------------------------
// max.poll.interval.ms

on_each_backend!(
    max_poll_interval_leaves_and_next_poll_rejoins,
    |cluster: TestCluster| async move {
        let topic = unique_name("maxpoll");
        let group = unique_name("maxpoll-group");
        cluster.create_topic(&topic, 2).await.unwrap();
        // b polls all along; a stops polling for longer than max.poll.interval.ms. (The mock
        // cluster waits session.timeout.ms - 1 s for members after a leave, so keep it short.)
        let settings = [
            ("max.poll.interval.ms", "3000"),
            ("session.timeout.ms", "4000"),
        ];
        let ca = client(&cluster, &group, &settings).await;
        let cb = client(&cluster, &group, &settings).await;
        let a = ca.consumer(&[&topic]).unwrap();
        let b = spawn_polling(cb.consumer(&[&topic]).unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(partitions_of(&a).len() == 1 && partitions_of(&b.consumer).len() == 1) {
            assert!(
                Instant::now() < deadline,
                "no split: a {:?}, b {:?}",
                partitions_of(&a),
                partitions_of(&b.consumer)
            );
            a.poll(Duration::from_millis(100)).await.unwrap();
        }

        // a does not poll: it gives up its partition and leaves; b gets both.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(partitions_of(&a).is_empty() && partitions_of(&b.consumer).len() == 2) {
            assert!(
                Instant::now() < deadline,
                "a did not leave: a {:?}, b {:?}",
                partitions_of(&a),
                partitions_of(&b.consumer)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The next poll rejoins: one partition each again.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(partitions_of(&a).len() == 1 && partitions_of(&b.consumer).len() == 1) {
            assert!(
                Instant::now() < deadline,
                "a did not rejoin: a {:?}, b {:?}",
                partitions_of(&a),
                partitions_of(&b.consumer)
            );
            a.poll(Duration::from_millis(100)).await.unwrap();
        }
        // Let the group settle before closing (the mock cluster refuses commits until every
        // member has synced).
        let settle = Instant::now() + Duration::from_secs(1);
        while Instant::now() < settle {
            a.poll(Duration::from_millis(100)).await.unwrap();
        }
        a.close().await.unwrap();
        // a's LeaveGroup starts a rebalance; the mock cluster refuses b's final commit while
        // it lasts (Kafka accepts commits of the current generation then).
        if let Err(e) = b.stop().await.close().await {
            assert_eq!(
                e.kafka_code(),
                Some(purekafka::ErrorCode::RebalanceInProgress),
                "closing b: {e}"
            );
        }
    }
);

// ---------------------------------------------------------------------------------------
// The consume example: SIGTERM → commit + leave, exit 0; unreachable broker → non-zero.

/// The `consume` example binary, built next to this test binary by `cargo test` /
/// `cargo nextest run` (which build examples too).
fn consume_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/debug
    let path = dir
        .join("examples")
        .join(format!("consume{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} missing: run `cargo build --example consume`",
        path.display()
    );
    path
}

#[cfg(unix)]
async fn sigterm_commits_leaves_and_exits_zero(cluster: TestCluster) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let topic = unique_name("sigterm");
    let group = unique_name("sigterm-group");
    cluster.create_topic(&topic, 2).await.unwrap();
    let c = client(&cluster, &group, &[]).await;
    produce(&c, &topic, 2, 20, 20).await;

    // Long session and poll intervals: another member gets the partitions quickly only if
    // the example leaves the group. (The mock cluster holds the group in a rebalance for
    // session.timeout.ms - 1 s after its last member leaves, so there the session is
    // shorter, and the "left group" line, logged on the LeaveGroup response, is the proof.)
    let mock = *cluster.backend() == Backend::MockCluster;
    let session = if mock { "10000" } else { "45000" };
    let mut child = Command::new(consume_example())
        .args([&group, &topic, "--from-beginning"])
        .args(["--set", &format!("session.timeout.ms={session}")])
        .args(["--set", &format!("max.poll.interval.ms={session}")])
        .args(["--set", "heartbeat.interval.ms=500"])
        .env("KAFKA_BROKERS", cluster.bootstrap())
        .env("RUST_LOG", "purekafka=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(40)
            .count()
    });
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lines.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the example printed < 40 records"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lines.join().unwrap(), 40);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the example did not exit after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = log.join().unwrap();
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter().any(|l| l.contains("left group")),
        "no LeaveGroup in the log:\n{}",
        log.join("\n")
    );

    // Everything printed is committed, and (on the mock cluster) a new member takes both
    // partitions long before the example's session would have expired. tansu 0.6.0 lets no
    // new member in before a left member's session runs out, even after answering its
    // LeaveGroup (confluent-kafka members see the same), so there only the commits and the
    // LeaveGroup in the log are checked.
    let next = c.consumer(&[&topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while mock && partitions_of(&next).len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the new member has {:?}: the example did not leave",
            partitions_of(&next)
        );
        let batch = next.poll(Duration::from_millis(100)).await.unwrap();
        assert!(batch.is_empty(), "committed records read again");
    }
    wait_committed(&next, &topic, 2, 20, Duration::from_secs(10)).await;
    next.close().await.unwrap();
}

#[cfg(unix)]
on_each_backend!(consume_example_sigterm, |cluster: TestCluster| async move {
    sigterm_commits_leaves_and_exits_zero(cluster).await;
});

#[tokio::test]
async fn consume_example_fails_on_an_unreachable_broker() {
    // A port nothing listens on: bind one, note it, close it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(consume_example())
        .args(["g", "t", "--set", "reconnect.max.elapsed.ms=1000"])
        .env("KAFKA_BROKERS", format!("127.0.0.1:{port}"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the example kept trying an unreachable broker")
        .unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err)
        .await
        .unwrap();
    assert!(!status.success(), "exit {status:?}");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.starts_with("consume: "), "{err}");

    // A bad --set is a usage error (exit 2), before any connection.
    let out = tokio::process::Command::new(consume_example())
        .args(["g", "t", "--set", "novalue"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
