//! The fire-and-forget producer (`Client::detached_producer`) against real brokers: every
//! record reported exactly once, per batch, with offsets that match what the broker holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use purekafka::producer::BatchReport;
use purekafka::{Client, Config, Record};
use purekafka_testkit::{unique_name, Backend, TestCluster};

#[macro_use]
mod support;

async fn connect(cluster: &TestCluster, extra: &[(&str, &str)]) -> Client {
    let config = Config::builder()
        .brokers(cluster.bootstrap_list())
        .client_id(unique_name("detached-test"))
        .set_all(extra.iter().copied())
        .build()
        .expect("config");
    Client::connect(config).await.expect("connect")
}

/// (partition, first offset, records, error text) of each report.
type Reports = Arc<Mutex<Vec<(i32, i64, u32, Option<String>)>>>;

fn collector() -> (Reports, impl Fn(BatchReport) + Send + Sync + 'static) {
    let reports: Reports = Arc::default();
    let r = Arc::clone(&reports);
    let f = move |report: BatchReport| {
        let (offset, error) = match &report.result {
            Ok(o) => (*o, None),
            Err(e) => (-1, Some(e.to_string())),
        };
        r.lock()
            .unwrap()
            .push((report.partition, offset, report.records, error));
    };
    (reports, f)
}

on_each_backend!(
    every_record_is_reported_once_per_batch,
    |cluster: TestCluster| async move {
        const N: u32 = 60_000;
        let topic = unique_name("detached");
        cluster.create_topic(&topic, 3).await.expect("create topic");
        let client = connect(&cluster, &[("linger.ms", "5")]).await;
        let (reports, on_report) = collector();
        let producer = client.detached_producer(on_report);
        for i in 0..N {
            producer
                .send(Record::new(topic.clone(), format!("value-{i}")).with_key(format!("k{i}")))
                .await
                .expect("send");
        }
        producer.close().await;
        let reports = reports.lock().unwrap().clone();
        let total: u32 = reports.iter().map(|r| r.2).sum();
        assert_eq!(total, N, "every record reported exactly once");
        assert!(
            reports.iter().all(|r| r.3.is_none()),
            "no failures: {reports:?}"
        );
        // Fewer reports than records: one per batch.
        assert!(
            reports.len() < (N / 10) as usize,
            "{} reports for {N} records",
            reports.len()
        );
        // Per partition, the reported ranges tile the partition from 0 to its high watermark.
        let mut by_partition: HashMap<i32, Vec<(i64, u32)>> = HashMap::new();
        for (p, o, n, _) in &reports {
            by_partition.entry(*p).or_default().push((*o, *n));
        }
        for p in 0..3 {
            let mut ranges = by_partition.remove(&p).unwrap_or_default();
            ranges.sort();
            let mut next = 0i64;
            for (o, n) in ranges {
                assert_eq!(
                    o, next,
                    "partition {p}: reports leave no gap and no overlap"
                );
                next += i64::from(n);
            }
            // The broker holds exactly what was reported: read the partition back from 0.
            // (Read, not ListOffsets: tansu 0.6 answers a latest offset without its last
            // batch.)
            let pc = client.partition_client(&topic, p).await.unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let mut offset = 0i64;
            loop {
                let (records, _) = pc
                    .fetch_records(offset, 1..1024 * 1024, 200)
                    .await
                    .expect("fetch");
                let before = offset;
                for r in records.iter().filter(|r| r.offset >= before) {
                    assert_eq!(r.offset, offset, "partition {p}: offsets without gaps");
                    offset += 1;
                }
                if offset == before {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "reading back stalled");
            }
            assert_eq!(
                offset, next,
                "partition {p}: the broker holds what was reported"
            );
        }
    }
);

on_each_backend!(
    every_accepted_record_is_reported_refused_ones_are_not,
    |cluster: TestCluster| async move {
        // A record to a topic that does not exist is refused by `send` (and not reported)
        // or, where the broker creates topics on demand, queued and reported: either way
        // every record `send` accepted is reported exactly once.
        let topic = unique_name("detached-fail");
        cluster.create_topic(&topic, 1).await.expect("create topic");
        let client = connect(&cluster, &[("linger.ms", "1")]).await;
        let (reports, on_report) = collector();
        let producer = client.detached_producer(on_report);
        producer
            .send(Record::new(topic.clone(), "fine"))
            .await
            .expect("send");
        let missing = unique_name("detached-missing-topic");
        let refused = producer.send(Record::new(missing, "nowhere")).await;
        producer.close().await;
        let reports = reports.lock().unwrap().clone();
        let total: u32 = reports.iter().map(|r| r.2).sum();
        match refused {
            // Refused at once: only the good record was reported.
            Err(_) => assert_eq!(total, 1, "{reports:?}"),
            // Queued (the broker creates topics on demand, or the failure came later): both
            // are reported, each exactly once.
            Ok(()) => assert_eq!(total, 2, "{reports:?}"),
        }
        assert!(reports.iter().any(|r| r.3.is_none() && r.1 == 0));
    }
);
