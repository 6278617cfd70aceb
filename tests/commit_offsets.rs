//! Commits against real brokers (librdkafka's mock cluster and tansu): committed offsets
//! never move backwards (an older explicit commit, racing `commit_async` tasks), and a clean
//! `close()` with auto-commit commits what the last poll returned.

use std::time::{Duration, Instant};

use purekafka::{ConsumedRecord, Consumer};
use purekafka_testkit::{unique_name, Backend, TestCluster};

#[macro_use]
mod support;

/// Polls until `n` records came (panics after 60 s).
async fn poll_n(consumer: &Consumer, n: usize) -> Vec<ConsumedRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "got {} of {n} records",
            got.len()
        );
        got.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    got
}

async fn committed(consumer: &Consumer, topic: &str, partition: i32) -> Option<i64> {
    consumer
        .committed(&[(topic, partition)])
        .await
        .unwrap()
        .values()
        .next()
        .copied()
}

on_each_backend!(
    committed_offsets_never_move_backwards,
    |cluster: TestCluster| async move {
        let topic = unique_name("commit-backwards");
        cluster.create_topic(&topic, 1).await.unwrap();
        let group = unique_name("commit-backwards-group");
        let client = support::client(&cluster, &group, &[]).await;
        support::produce(&client, &topic, 1, 300, 100).await;
        let consumer = client.consumer(&[&topic]).unwrap();
        let records = poll_n(&consumer, 300).await;
        assert!(records.windows(2).all(|w| w[0].offset < w[1].offset));

        // An explicit commit of an older record after a newer one leaves the newer.
        consumer.commit(&records[199]).await.unwrap();
        consumer.commit(&records[10]).await.unwrap();
        assert_eq!(committed(&consumer, &topic, 0).await, Some(200));

        // Many asynchronous commits racing, one per record, in order: the last one wins
        // however their requests are scheduled.
        for r in &records {
            consumer.commit_async(std::slice::from_ref(r));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while committed(&consumer, &topic, 0).await != Some(300) {
            assert!(
                Instant::now() < deadline,
                "the last async commit never landed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Late tasks (earlier records) must not pull it back.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(committed(&consumer, &topic, 0).await, Some(300));
        consumer.close().await.unwrap();
    }
);

on_each_backend!(
    close_with_auto_commit_commits_the_last_poll,
    |cluster: TestCluster| async move {
        let topic = unique_name("commit-close-auto");
        cluster.create_topic(&topic, 2).await.unwrap();
        let group = unique_name("commit-close-auto-group");
        // The interval is long: only close commits.
        let client = support::client(
            &cluster,
            &group,
            &[
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "600000"),
            ],
        )
        .await;
        support::produce(&client, &topic, 2, 40, 40).await;
        let consumer = client.consumer(&[&topic]).unwrap();
        poll_n(&consumer, 80).await;
        consumer.close().await.unwrap();

        let reader = support::client(&cluster, &group, &[]).await;
        let check = reader.consumer(&[&topic]).unwrap();
        for p in 0..2 {
            assert_eq!(
                committed(&check, &topic, p).await,
                Some(40),
                "partition {p}: close committed the last poll"
            );
        }

        // Without auto-commit, close commits only what a later poll marked processed: the
        // last poll's records stay uncommitted.
        let topic2 = unique_name("commit-close-manual");
        cluster.create_topic(&topic2, 1).await.unwrap();
        let group2 = unique_name("commit-close-manual-group");
        let client2 = support::client(&cluster, &group2, &[]).await;
        support::produce(&client2, &topic2, 1, 30, 30).await;
        let consumer2 = client2.consumer(&[&topic2]).unwrap();
        poll_n(&consumer2, 30).await;
        consumer2.close().await.unwrap();
        let reader2 = support::client(&cluster, &group2, &[]).await;
        let check2 = reader2.consumer(&[&topic2]).unwrap();
        let left = committed(&check2, &topic2, 0).await.unwrap_or(0);
        assert!(
            left < 30,
            "the last poll stays uncommitted without auto-commit: {left}"
        );
    }
);
