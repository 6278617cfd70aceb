//! The client under real network faults: tansu behind a fault proxy (tests/support/
//! fault_proxy.rs) that black-holes, delays, resets, cuts a response mid-frame or stops
//! reading, and tansu frozen with SIGSTOP. Under each fault, during a produce of 100k records
//! and during a group consume: no acknowledged record is lost, nothing is committed before
//! it was processed, the client recovers once the fault ends, and `flush` / `close` return
//! within their deadlines while it lasts.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use purekafka::{Client, Config, Record};
use purekafka_testkit::{unique_name, TestCluster};
use tokio::time::Instant;

#[macro_use]
mod support;
#[path = "support/fault_proxy.rs"]
mod fault_proxy;
use fault_proxy::{Fault, FaultProxy};

/// How long each fault lasts (short of every deadline below, so the client must recover).
const FAULT_FOR: Duration = Duration::from_secs(4);
const RECORDS: usize = 100_000;
const PARTITIONS: i32 = 3;
const DELAY: Duration = Duration::from_millis(300);

/// tansu advertising the proxy's address, so every client connection goes through it.
struct Rig {
    proxy: FaultProxy,
    tansu: TestCluster,
}

impl Rig {
    async fn start() -> Rig {
        support::init_tracing();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proxy = FaultProxy::start("127.0.0.1:0", format!("127.0.0.1:{port}"))
            .await
            .expect("start the proxy");
        let advertised = proxy.addr().port();
        // Blocking (waits for tansu to answer through the proxy, which runs on this runtime).
        let tansu = tokio::task::spawn_blocking(move || {
            TestCluster::start_tansu_advertising(port, advertised)
        })
        .await
        .unwrap()
        .expect("start tansu");
        Rig { proxy, tansu }
    }

    /// A client through the proxy: short request timeout so that faults are noticed, long
    /// enough delivery and reconnect budgets to outlast them.
    async fn client(&self, group: Option<&str>, extra: &[(&str, &str)]) -> Client {
        let mut builder = Config::builder()
            .brokers([self.proxy.addr().to_string()])
            .client_id(unique_name("faults"))
            .set("request.timeout.ms", "3000")
            .set("delivery.timeout.ms", "120000")
            .set("reconnect.max.elapsed.ms", "120000")
            .set("reconnect.backoff.max.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "30000")
            .set("heartbeat.interval.ms", "1000")
            .set_all(extra.iter().copied());
        if let Some(g) = group {
            builder = builder.group_id(g);
        }
        Client::connect(builder.build().unwrap())
            .await
            .expect("connect")
    }

    /// Applies `fault` for [`FAULT_FOR`], then clears it (SIGSTOP/SIGCONT for `None`).
    fn fault_for_a_while(&self, fault: Option<Fault>) -> tokio::task::JoinHandle<()> {
        match fault {
            Some(f) => {
                self.proxy.set(f);
                let switch = self.proxy.switch();
                tokio::spawn(async move {
                    tokio::time::sleep(FAULT_FOR).await;
                    switch.set(Fault::None);
                })
            }
            None => {
                let pid = tansu_pid(&self.tansu);
                signal(pid, "STOP");
                tokio::spawn(async move {
                    tokio::time::sleep(FAULT_FOR).await;
                    signal(pid, "CONT");
                })
            }
        }
    }
}

/// The tansu process (the testkit's watchdog `sh` runs it as its only child).
fn tansu_pid(cluster: &TestCluster) -> u32 {
    let sh = cluster.pid().expect("tansu runs locally");
    let children =
        std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children")).expect("children");
    children
        .split_whitespace()
        .next()
        .expect("tansu process")
        .parse()
        .unwrap()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Every value of `topic`, read back with rskafka through the (healed) proxy.
async fn values(client: &Client, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        for r in support::read_partition(client, topic, p).await {
            out.push(String::from_utf8(r.record.value.unwrap_or_default()).unwrap());
        }
    }
    out
}

/// 100k records produced while `fault` strikes a quarter of the way in: every record is
/// acknowledged once the fault ends, every acknowledged record is in the topic, and close
/// returns.
async fn produce_through(fault: Option<Fault>) {
    let rig = Rig::start().await;
    let client = rig.client(None, &[]).await;
    let topic = unique_name("faults-produce");
    client.create_topic(&topic, PARTITIONS, 1).await.unwrap();
    let producer = client.producer();
    let mut pending = Vec::with_capacity(RECORDS);
    let mut healer = None;
    for i in 0..RECORDS {
        if i == RECORDS / 4 {
            // Let the first quarter reach the broker, so the fault hits requests in flight.
            tokio::time::sleep(Duration::from_millis(200)).await;
            healer = Some(rig.fault_for_a_while(fault));
        }
        let record = Record::new(topic.clone(), i.to_string()).with_key(i.to_string());
        pending.push(producer.enqueue(record).await.expect("enqueue"));
    }
    let mut acked = HashSet::new();
    let mut failed = Vec::new();
    for (i, delivery) in pending.into_iter().enumerate() {
        match delivery.await {
            Ok(_) => {
                acked.insert(i.to_string());
            }
            Err(e) => failed.push((i, e.to_string())),
        }
    }
    healer.unwrap().await.unwrap();
    if fault != Some(Fault::Delay(DELAY)) {
        // The fault was felt: requests in flight failed and were retried.
        assert!(producer.metrics().retries > 0, "no retry under {fault:?}");
    }
    tokio::time::timeout(Duration::from_secs(120), producer.close())
        .await
        .expect("close returns");
    assert!(
        failed.is_empty(),
        "{} records failed although the fault ended within the delivery timeout, first: {:?}",
        failed.len(),
        failed.first()
    );
    let stored: HashSet<String> = values(&client, &topic).await.into_iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|v| !stored.contains(*v)).collect();
    assert!(lost.is_empty(), "{} acknowledged records lost", lost.len());
    assert_eq!(acked.len(), RECORDS);
}

/// A group consumer reading 20k records while `fault` strikes: every record is processed,
/// commits (only of processed records) end at the end offsets, and close returns.
async fn consume_through(fault: Option<Fault>) {
    const PER_PARTITION: usize = 7_000;
    let rig = Rig::start().await;
    let admin = rig.client(None, &[]).await;
    let topic = unique_name("faults-consume");
    admin.create_topic(&topic, PARTITIONS, 1).await.unwrap();
    support::produce(&admin, &topic, PARTITIONS, PER_PARTITION, 500).await;
    let group = unique_name("faults-group");
    let client = rig.client(Some(&group), &[]).await;
    let consumer = client.consumer(&[&topic]).unwrap();
    let total = PER_PARTITION * PARTITIONS as usize;
    let mut seen: BTreeMap<i32, HashSet<i64>> = BTreeMap::new();
    let mut processed: BTreeMap<i32, i64> = BTreeMap::new();
    let mut healer = None;
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut count = 0;
    while count < total {
        assert!(Instant::now() < deadline, "consumed {count} of {total}");
        if healer.is_none() && count >= total / 4 {
            healer = Some(rig.fault_for_a_while(fault));
        }
        let batch = match consumer.poll(Duration::from_millis(200)).await {
            Ok(b) => b,
            Err(e) => {
                // Errors during the fault are expected; the consumer must carry on after.
                tracing::info!(error = %e, "poll failed during the fault");
                continue;
            }
        };
        for r in &batch {
            if seen.entry(r.partition).or_default().insert(r.offset) {
                count += 1;
            }
            let p = processed.entry(r.partition).or_insert(0);
            *p = (*p).max(r.offset + 1);
        }
        // Commit what was processed; a commit failing during the fault is retried by the
        // next one (commits are cumulative).
        if !batch.is_empty() {
            if let Err(e) = consumer.commit_batch(&batch).await {
                tracing::info!(error = %e, "commit failed during the fault");
            }
        }
    }
    healer.unwrap().await.unwrap();
    // The last commit after the fault covers everything processed.
    let mut last = BTreeMap::new();
    for (p, next) in &processed {
        last.insert(purekafka::TopicPartition::new(topic.as_str(), *p), *next);
    }
    let offsets = last.clone().into_iter().collect();
    consumer
        .commit_offsets(offsets)
        .await
        .expect("commit after the fault");
    let parts: Vec<(&str, i32)> = (0..PARTITIONS).map(|p| (topic.as_str(), p)).collect();
    let committed = consumer.committed(&parts).await.expect("committed offsets");
    for p in 0..PARTITIONS {
        let offsets = &seen[&p];
        assert_eq!(
            offsets.len(),
            PER_PARTITION,
            "partition {p} fully processed"
        );
        let c = committed[&purekafka::TopicPartition::new(topic.as_str(), p)];
        assert!(
            c <= processed[&p],
            "partition {p}: committed {c} beyond processed {}",
            processed[&p]
        );
        assert_eq!(
            c, PER_PARTITION as i64,
            "partition {p}: committed to the end"
        );
    }
    tokio::time::timeout(Duration::from_secs(120), consumer.close())
        .await
        .expect("close returns")
        .expect("close succeeds after the fault");
}

macro_rules! under {
    ($name:ident, $fault:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn produce_100k() {
                produce_through($fault).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn group_consume() {
                consume_through($fault).await;
            }
        }
    };
}

under!(black_hole, Some(Fault::BlackHole));
under!(delay, Some(Fault::Delay(DELAY)));
under!(reset, Some(Fault::Reset));
under!(cut_response, Some(Fault::CutResponse));
under!(stall, Some(Fault::Stall));
under!(sigstop, None);

/// While the broker is unreachable for good, `flush` and `close` return within
/// `delivery.timeout.ms` (plus one request timeout), and the records fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_and_close_keep_their_deadline_under_a_black_hole() {
    let rig = Rig::start().await;
    let client = rig.client(None, &[("delivery.timeout.ms", "6000")]).await;
    let topic = unique_name("faults-deadline");
    client.create_topic(&topic, PARTITIONS, 1).await.unwrap();
    let producer = client.producer();
    producer
        .send(Record::new(topic.clone(), "before"))
        .await
        .expect("delivered before the fault");
    rig.proxy.set(Fault::BlackHole);
    let mut pending = Vec::new();
    for i in 0..1000 {
        pending.push(
            producer
                .enqueue(Record::new(topic.clone(), i.to_string()))
                .await
                .unwrap(),
        );
    }
    // Generous bounds (a loaded machine): the point is that they return at all, where a
    // write to a broker that never answers used to wait for the kernel (~15 minutes).
    tokio::time::timeout(Duration::from_secs(90), producer.flush())
        .await
        .expect("flush returns while the broker is black-holed");
    for d in pending {
        assert!(d.await.is_err(), "no acknowledgement through a black hole");
    }
    tokio::time::timeout(Duration::from_secs(90), producer.close())
        .await
        .expect("close returns while the broker is black-holed");
    rig.proxy.set(Fault::None);
}

/// A broker older than 2.4 answers ApiVersions v3 with UNSUPPORTED_VERSION in the v0 layout
/// (KIP-511). A shim in front of tansu answers so on every connection, then relays the rest:
/// the client reads that answer, retries at v0 and produces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kip_511_v0_layout_answer_then_produce() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    support::init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shim = listener.local_addr().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&refused);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let count = std::sync::Arc::clone(&count);
            tokio::spawn(async move {
                let Ok(mut broker) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    return;
                };
                loop {
                    // Requests are read whole; ApiVersions above v2 is refused in the v0
                    // layout (error 35, an empty int32-counted array), the rest relayed.
                    let Ok(len) = client.read_i32().await else {
                        return;
                    };
                    let mut frame = vec![0u8; len.clamp(0, 1 << 26) as usize];
                    if client.read_exact(&mut frame).await.is_err() {
                        return;
                    }
                    let key = i16::from_be_bytes([frame[0], frame[1]]);
                    let version = i16::from_be_bytes([frame[2], frame[3]]);
                    if key == 18 && version > 2 {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let mut answer = Vec::new();
                        answer.extend_from_slice(&10i32.to_be_bytes());
                        answer.extend_from_slice(&frame[4..8]); // correlation id
                        answer.extend_from_slice(&35i16.to_be_bytes());
                        answer.extend_from_slice(&0i32.to_be_bytes());
                        if client.write_all(&answer).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let mut out = len.to_be_bytes().to_vec();
                    out.extend_from_slice(&frame);
                    if broker.write_all(&out).await.is_err() {
                        return;
                    }
                    // One response per request (no acks=0 here).
                    let Ok(rlen) = broker.read_i32().await else {
                        return;
                    };
                    let mut response = vec![0u8; rlen.clamp(0, 1 << 26) as usize];
                    if broker.read_exact(&mut response).await.is_err() {
                        return;
                    }
                    let mut out = rlen.to_be_bytes().to_vec();
                    out.extend_from_slice(&response);
                    if client.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let advertised = shim.port();
    let _tansu =
        tokio::task::spawn_blocking(move || TestCluster::start_tansu_advertising(port, advertised))
            .await
            .unwrap()
            .expect("start tansu");
    let config = Config::builder()
        .brokers([shim.to_string()])
        .build()
        .unwrap();
    let client = Client::connect(config).await.expect("connect");
    let topic = unique_name("kip511");
    client.create_topic(&topic, 1, 1).await.unwrap();
    let producer = client.producer();
    for i in 0..100 {
        producer
            .send(Record::new(topic.clone(), i.to_string()))
            .await
            .expect("produced through a pre-2.4 style ApiVersions answer");
    }
    producer.close().await;
    assert!(refused.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

/// While the coordinator is black-holed for good, the consumer's `close` (commit, leave)
/// returns within a few request timeouts instead of retrying for the reconnect budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_close_keeps_its_deadline_under_a_black_hole() {
    let rig = Rig::start().await;
    let admin = rig.client(None, &[]).await;
    let topic = unique_name("faults-close");
    admin.create_topic(&topic, 1, 1).await.unwrap();
    support::produce(&admin, &topic, 1, 100, 100).await;
    let group = unique_name("faults-close-group");
    let client = rig.client(Some(&group), &[]).await;
    let consumer = client.consumer(&[&topic]).unwrap();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < 100 {
        assert!(Instant::now() < deadline, "consumed {seen} of 100");
        seen += consumer
            .poll(Duration::from_millis(200))
            .await
            .unwrap()
            .len();
    }
    rig.proxy.set(Fault::BlackHole);
    // request.timeout.ms is 3 s and the reconnect budget 120 s: without a deadline of its
    // own, close would retry the commit for two minutes.
    let closed = tokio::time::timeout(Duration::from_secs(60), consumer.close()).await;
    assert!(
        closed.is_ok(),
        "close returned while the broker is black-holed"
    );
    rig.proxy.set(Fault::None);
}

/// A measurement, not a check (`cargo test --release --test network_faults
/// timer_lateness -- --ignored --nocapture`): how late a 10 ms ticker (standing in for the
/// heartbeat and linger timers) runs on the same runtime while 200k 1 KiB records are
/// produced, without compression and with gzip (which compresses each closed batch on the
/// runtime's threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run in release"]
async fn timer_lateness_during_compressed_produce() {
    let cluster = support::start(purekafka_testkit::Backend::MockCluster);
    for codec in ["none", "gzip", "none", "gzip"] {
        let config = Config::builder()
            .brokers(cluster.bootstrap_list())
            .set("compression.type", codec)
            .set("linger.ms", "5")
            .build()
            .unwrap();
        let client = Client::connect(config).await.unwrap();
        let topic = unique_name("lateness");
        cluster.create_topic(&topic, 4).await.unwrap();
        let producer = client.producer();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let mut late = Vec::new();
                let mut next = Instant::now() + Duration::from_millis(10);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep_until(next).await;
                    late.push(Instant::now().duration_since(next));
                    next += Duration::from_millis(10);
                }
                late
            })
        };
        let value = bytes::Bytes::from(
            (0..1024u32)
                .map(|i| (i * 7 % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        let started = Instant::now();
        let mut pending = Vec::new();
        for i in 0..200_000u32 {
            let r = Record::new(topic.clone(), value.clone()).with_key(i.to_string());
            pending.push(producer.enqueue(r).await.unwrap());
        }
        for p in pending {
            p.await.unwrap();
        }
        let took = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut late = ticker.await.unwrap();
        late.sort();
        let pct = |q: f64| late[((late.len() - 1) as f64 * q) as usize];
        eprintln!(
            "compression={codec}: 200k x 1 KiB in {took:?}; ticker lateness p50 {:?} p99 {:?} max {:?} ({} ticks)",
            pct(0.5),
            pct(0.99),
            late.last().unwrap(),
            late.len()
        );
        producer.close().await;
    }
}
