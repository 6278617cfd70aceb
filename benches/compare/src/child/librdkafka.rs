//! librdkafka through rust-rdkafka.
//!
//! `librdkafka`: the fastest APIs: `BaseProducer` with a delivery callback (polled from the
//! sending thread, as librdkafka's own `rdkafka_performance` does) and `BaseConsumer` polled
//! in a loop. `librdkafka-future`: `FutureProducer` and `StreamConsumer`, what many async
//! users run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer,
    ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientContext, Message};

use super::{
    consume_result, consume_target, produce_count, produce_result, record_key, value, ConsumeCheck,
    InOrder, Pacer,
};
use crate::model::{
    ChildResult, ChildSpec, ClientKind, WorkloadKind, ACKS, BATCH_BYTES, BUFFER_KBYTES,
    BUFFER_MESSAGES, PREFETCH_KBYTES,
};

/// The opaque of the warm-up record (not counted).
const WARMUP: usize = usize::MAX;

pub fn run(spec: &ChildSpec) -> Result<ChildResult, String> {
    match (spec.client, spec.workload) {
        (ClientKind::Librdkafka, WorkloadKind::Produce | WorkloadKind::ProduceLatency) => {
            base_produce(spec)
        }
        (ClientKind::Librdkafka, _) => base_consume(spec),
        (_, WorkloadKind::Produce | WorkloadKind::ProduceLatency) => {
            super::runtime()?.block_on(future_produce(spec))
        }
        (_, _) => super::runtime()?.block_on(stream_consume(spec)),
    }
}

/// The producer settings shared by every client, in librdkafka's names (also given to
/// rdkafka_performance with `-X`).
pub fn producer_settings(spec: &ChildSpec) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("acks", ACKS.into()),
        ("linger.ms", spec.linger_ms.to_string()),
        ("batch.size", BATCH_BYTES.to_string()),
        // Bytes, not a record count, bound a batch (librdkafka's default is 10,000 records).
        ("batch.num.messages", "1000000".into()),
        ("message.max.bytes", (BATCH_BYTES + 64 * 1024).to_string()),
        ("compression.type", spec.compression.clone()),
        // The buffer bound every client gets: 64 MiB (librdkafka's default is 1 GiB or
        // 100,000 messages); the message count is raised so that bytes are the bound.
        ("queue.buffering.max.kbytes", BUFFER_KBYTES.to_string()),
        ("queue.buffering.max.messages", BUFFER_MESSAGES.to_string()),
        // purekafka sets TCP_NODELAY on every connection; so does librdkafka with this.
        ("socket.nagle.disable", "true".into()),
        // The same for every client of a row: on in the default rows (purekafka's default),
        // off in the -idem-off rows.
        ("enable.idempotence", spec.idempotence.to_string()),
    ];
    // purekafka's zstd (ruzstd) has one level, "Fastest", which stands for zstd's level 1;
    // librdkafka's default is 3. lz4 needs nothing: librdkafka's default level 0 is LZ4's
    // fast mode, lz4_flex's only one (64 KiB independent blocks, no content checksum on both).
    if spec.compression == "zstd" {
        v.push(("compression.level", "1".into()));
    }
    v
}

fn producer_config(spec: &ChildSpec) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &spec.brokers);
    for (k, v) in producer_settings(spec) {
        c.set(k, v);
    }
    debug_from_env(&mut c);
    c
}

/// The group consumer settings of the librdkafka clients, in librdkafka's names (also given to
/// rdkafka_performance's consumer with `-X`), without `bootstrap.servers` and `group.id`.
pub fn consumer_settings() -> Vec<(&'static str, String)> {
    vec![
        ("auto.offset.reset", "earliest".into()),
        // librdkafka's defaults, spelled out: purekafka's consumer gets the same.
        ("enable.auto.commit", "true".into()),
        ("auto.commit.interval.ms", "5000".into()),
        // In librdkafka's favour: when a partition's local queue is over its thresholds,
        // librdkafka postpones that partition's next fetch by this much (default 1000 ms). On
        // the mock cluster, which answers 1 MiB batches at once, most runs with the default
        // stall for that second (200,000 records take ~1.07 s instead of ~0.1 s).
        ("fetch.queue.backoff.ms", "10".into()),
        // The prefetch bound purekafka gets too (librdkafka's default, spelled out).
        ("queued.max.messages.kbytes", PREFETCH_KBYTES.to_string()),
        // librdkafka's default, spelled out so that rdkafka_performance (which sets 1,000,000
        // for itself) gets the same.
        ("queued.min.messages", "100000".into()),
        ("max.partition.fetch.bytes", "1048576".into()),
        ("fetch.max.bytes", "52428800".into()),
        ("fetch.wait.max.ms", "500".into()),
        // purekafka reads uncommitted (it has no transactions); librdkafka's default is
        // read_committed.
        ("isolation.level", "read_uncommitted".into()),
        ("socket.nagle.disable", "true".into()),
        ("enable.partition.eof", "false".into()),
    ]
}

fn consumer_config(spec: &ChildSpec) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &spec.brokers)
        .set("group.id", &spec.group);
    for (k, v) in consumer_settings() {
        c.set(k, v);
    }
    debug_from_env(&mut c);
    c
}

/// `COMPARE_RDKAFKA_DEBUG=fetch,broker` turns on librdkafka's debug contexts (to stderr of the
/// child, shown by `run` only when the child fails), for diagnosing a run.
/// `COMPARE_RDKAFKA_SET=key=value,key=value` overrides librdkafka settings, to explore how a
/// setting changes a figure (runs with it are not like for like: say so when quoting them).
fn debug_from_env(c: &mut ClientConfig) {
    if let Ok(d) = std::env::var("COMPARE_RDKAFKA_DEBUG") {
        c.set("debug", d);
    }
    if let Ok(pairs) = std::env::var("COMPARE_RDKAFKA_SET") {
        for kv in pairs.split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                c.set(k.trim(), v.trim());
            }
        }
    }
}

/// Counts deliveries; in latency runs also records each record's latency (the opaque is the
/// record's index in the schedule).
struct Ctx {
    delivered: AtomicU64,
    errors: AtomicU64,
    /// Warm-up records acknowledged.
    warm: AtomicU64,
    /// Records of the run (the last acknowledgement stops the clock).
    total: u64,
    /// When the last record of the run was acknowledged (seen by the callback).
    last_ack: OnceLock<Instant>,
    /// Set (once) when a paced run starts sending.
    pacer: OnceLock<Pacer>,
    latencies: Mutex<Vec<u32>>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log_to_stderr(level, fac, msg);
    }
}

/// librdkafka's log lines (errors, and debug contexts when `COMPARE_RDKAFKA_DEBUG` is set)
/// go to the child's stderr, which `run` shows when a child fails.
fn log_to_stderr(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    eprintln!("{:?} {:?} {fac} {msg}", std::time::SystemTime::now(), level);
}

/// The consumers' context: only logging.
struct ConsumerCtx;

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log_to_stderr(level, fac, msg);
    }
}

impl ConsumerContext for ConsumerCtx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        if index == WARMUP {
            if result.is_ok() {
                self.warm.fetch_add(1, Ordering::Relaxed);
            } else {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let seen = self.delivered.load(Ordering::Relaxed) + self.errors.load(Ordering::Relaxed) + 1;
        if seen == self.total {
            let _ = self.last_ack.set(Instant::now());
        }
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(pacer) = self.pacer.get() {
                    let us = pacer.latency_us(index as u64, Instant::now());
                    self.latencies.lock().unwrap().push(us);
                }
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn new_ctx(paced: bool, total: u64) -> Ctx {
    Ctx {
        delivered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        warm: AtomicU64::new(0),
        total,
        last_ack: OnceLock::new(),
        pacer: OnceLock::new(),
        latencies: Mutex::new(Vec::with_capacity(if paced { total as usize } else { 0 })),
    }
}

fn ctx_result(spec: &ChildSpec, ctx: &Ctx, paced: bool, elapsed: Duration) -> ChildResult {
    let latencies = paced.then(|| std::mem::take(&mut *ctx.latencies.lock().unwrap()));
    produce_result(
        spec,
        ctx.delivered.load(Ordering::Relaxed),
        ctx.errors.load(Ordering::Relaxed),
        elapsed,
        latencies,
    )
}

/// Serves the delivery reports waiting now (rust-rdkafka's `poll(ZERO)` serves one event,
/// which may carry many reports); returns how many records were reported.
fn serve(producer: &BaseProducer<Ctx>) -> u64 {
    let ctx = producer.context();
    let seen = |c: &Ctx| {
        c.delivered.load(Ordering::Relaxed)
            + c.errors.load(Ordering::Relaxed)
            + c.warm.load(Ordering::Relaxed)
    };
    let before = seen(ctx);
    loop {
        let n = seen(ctx);
        producer.poll(Duration::ZERO);
        if seen(ctx) == n {
            return n - before;
        }
    }
}

/// Serves reports until one arrives, without spinning: 100 µs sleeps between empty polls.
fn serve_some(producer: &BaseProducer<Ctx>) {
    while serve(producer) == 0 && producer.in_flight_count() > 0 {
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Sends one record and waits for its acknowledgement, before any clock starts.
fn warm_up(
    spec: &ChildSpec,
    payload: &[u8],
    send: impl Fn(BaseRecord<'_, [u8], [u8], usize>) -> Result<(), String>,
    acked: impl Fn() -> bool,
    wait: impl Fn(),
) -> Result<(), String> {
    let key = super::key(produce_count(spec));
    let mut record = BaseRecord::with_opaque_to(&spec.topic, WARMUP).payload(payload);
    if spec.keyed {
        record = record.key(&key[..]);
    }
    send(record)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !acked() {
        if Instant::now() > deadline {
            return Err("librdkafka: warm-up record not acknowledged in 60 s".into());
        }
        wait();
    }
    Ok(())
}

/// Throughput: `BaseProducer`, every delivery report served from the sending thread (all
/// waiting reports every 1,000 sends, as rdkafka_performance does); the clock stops at the
/// last acknowledgement the callback sees.
fn base_produce(spec: &ChildSpec) -> Result<ChildResult, String> {
    if spec.workload == WorkloadKind::ProduceLatency {
        return threaded_paced_produce(spec);
    }
    let total = produce_count(spec);
    let paced = false;
    let payload = value(spec.value_size);
    let ctx = new_ctx(paced, total);
    let producer: BaseProducer<Ctx> = producer_config(spec)
        .create_with_context(ctx)
        .map_err(|e| format!("librdkafka producer: {e}"))?;

    let send = |mut record: BaseRecord<'_, [u8], [u8], usize>| -> Result<(), String> {
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    serve_some(&producer);
                }
                Err((e, _)) => return Err(format!("librdkafka send: {e}")),
            }
        }
    };
    warm_up(
        spec,
        &payload,
        send,
        || {
            producer.context().warm.load(Ordering::Relaxed) > 0
                || producer.context().errors.load(Ordering::Relaxed) > 0
        },
        || producer.poll(Duration::from_millis(10)),
    )?;
    if producer.context().errors.load(Ordering::Relaxed) > 0 {
        return Err("librdkafka: the warm-up record failed".into());
    }

    let start = Instant::now();
    for i in 0..total {
        let key = record_key(spec, i);
        let mut record = BaseRecord::with_opaque_to(&spec.topic, i as usize).payload(&payload[..]);
        if let Some(k) = &key {
            record = record.key(&k[..]);
        }
        if spec.dedup {
            // The consume topic's records carry a unique `event_id` header (the runtime's
            // dedup key); only the fill does this, it is not measured.
            let id = format!("{i:016x}");
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "event_id",
                value: Some(id.as_bytes()),
            }));
        }
        send(record)?;
        if i % 1000 == 0 {
            serve(&producer);
        }
    }
    // Every report served: poll until nothing is in flight (no flush() and its 100 ms tail).
    let deadline = Instant::now() + Duration::from_secs(120);
    while producer.in_flight_count() > 0 {
        if Instant::now() > deadline {
            return Err("librdkafka: records still in flight after 120 s".into());
        }
        serve_some(&producer);
    }
    serve(&producer);
    let ctx = producer.context();
    let end = ctx.last_ack.get().copied().unwrap_or_else(Instant::now);
    Ok(ctx_result(spec, ctx, paced, end - start))
}

/// Fixed rate: `ThreadedProducer`, whose own thread serves delivery callbacks as they come
/// while the sending thread sleeps between sends. (Polling a `BaseProducer` with sub-
/// millisecond timeouts instead spins: rust-rdkafka rounds timeouts down to milliseconds.)
fn threaded_paced_produce(spec: &ChildSpec) -> Result<ChildResult, String> {
    let total = produce_count(spec);
    let payload = value(spec.value_size);
    let producer: ThreadedProducer<Ctx> = producer_config(spec)
        .create_with_context(new_ctx(true, total))
        .map_err(|e| format!("librdkafka producer: {e}"))?;
    warm_up(
        spec,
        &payload,
        |r| {
            producer
                .send(r)
                .map_err(|(e, _)| format!("librdkafka send: {e}"))
        },
        || {
            producer.context().warm.load(Ordering::Relaxed) > 0
                || producer.context().errors.load(Ordering::Relaxed) > 0
        },
        || std::thread::sleep(Duration::from_millis(1)),
    )?;
    let pacer = producer
        .context()
        .pacer
        .get_or_init(|| Pacer::new(spec.rate, total));
    let start = pacer.start;
    let mut next = 0u64;
    while next < total {
        let due = pacer.due(Instant::now());
        while next < due {
            let key = record_key(spec, next);
            let mut record =
                BaseRecord::with_opaque_to(&spec.topic, next as usize).payload(&payload[..]);
            pacer.sending(next);
            if let Some(k) = &key {
                record = record.key(&k[..]);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(format!("librdkafka send: {e}")),
                }
            }
            next += 1;
        }
        // Ticks of at least 1 ms, like the tokio timer the async runners wait on.
        let wait = pacer
            .scheduled(next)
            .saturating_duration_since(Instant::now());
        std::thread::sleep(wait.max(Duration::from_millis(1)));
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| format!("librdkafka flush: {e}"))?;
    let elapsed = start.elapsed();
    Ok(ctx_result(spec, producer.context(), true, elapsed))
}

/// The warm-up record through a `FutureProducer`, acknowledged before any clock starts.
async fn future_warm_up(
    producer: &FutureProducer,
    spec: &ChildSpec,
    payload: &[u8],
) -> Result<(), String> {
    let key = super::key(produce_count(spec));
    let mut record = FutureRecord::to(&spec.topic).payload(payload);
    if spec.keyed {
        record = record.key(&key[..]);
    }
    producer
        .send(record, Duration::from_secs(60))
        .await
        .map(|_| ())
        .map_err(|(e, _)| format!("librdkafka: the warm-up record failed: {e}"))
}

/// Throughput through `FutureProducer`: futures reaped in send order.
async fn future_produce_throughput(spec: &ChildSpec) -> Result<ChildResult, String> {
    let total = produce_count(spec);
    let payload = value(spec.value_size);
    let producer: FutureProducer = producer_config(spec)
        .create()
        .map_err(|e| format!("librdkafka future producer: {e}"))?;
    future_warm_up(&producer, spec, &payload).await?;
    let mut pending = InOrder::new();
    let start = Instant::now();
    for i in 0..total {
        let key = record_key(spec, i);
        let mut record = FutureRecord::to(&spec.topic).payload(&payload[..]);
        if let Some(k) = &key {
            record = record.key(&k[..]);
        }
        loop {
            match producer.send_result(record) {
                Ok(fut) => {
                    pending.push(fut.map(flatten));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    pending.wait_one().await;
                }
                Err((e, _)) => return Err(format!("librdkafka send: {e}")),
            }
        }
        if i.is_multiple_of(1024) {
            pending.reap_ready(|_| true);
        }
    }
    pending.drain().await;
    let elapsed = start.elapsed();
    Ok(produce_result(
        spec,
        pending.delivered,
        pending.errors,
        elapsed,
        None,
    ))
}

fn flatten(r: FutureDelivery) -> Result<(), ()> {
    match r {
        Ok(Ok(_)) => Ok(()),
        _ => Err(()),
    }
}

/// Fixed rate through `FutureProducer`: every acknowledgement is seen when it arrives.
async fn future_produce(spec: &ChildSpec) -> Result<ChildResult, String> {
    if spec.workload != WorkloadKind::ProduceLatency {
        return future_produce_throughput(spec).await;
    }
    let total = produce_count(spec);
    let paced = true;
    let payload = value(spec.value_size);
    let producer: FutureProducer = producer_config(spec)
        .create()
        .map_err(|e| format!("librdkafka future producer: {e}"))?;
    let mut pending = FuturesUnordered::new();
    let mut delivered = 0u64;
    let mut errors = 0u64;
    let mut latencies = paced.then(|| Vec::with_capacity(total as usize));
    future_warm_up(&producer, spec, &payload).await?;
    let pacer = Pacer::new(spec.rate, total);
    let start = Instant::now();

    let mut next = 0u64;
    while next < total {
        let due = if paced {
            pacer.due(Instant::now())
        } else {
            total
        };
        while next < due {
            let key = record_key(spec, next);
            let mut record = FutureRecord::to(&spec.topic).payload(&payload[..]);
            if let Some(k) = &key {
                record = record.key(&k[..]);
            }
            if paced {
                pacer.sending(next);
            }
            loop {
                match producer.send_result(record) {
                    Ok(fut) => {
                        let i = next;
                        pending.push(fut.map(move |r| (i, r)));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        // Wait for an acknowledgement to make room.
                        match pending.next().await {
                            Some((i, r)) => {
                                tally(i, r, &mut delivered, &mut errors, &mut latencies, &pacer)
                            }
                            None => tokio::time::sleep(Duration::from_millis(1)).await,
                        }
                    }
                    Err((e, _)) => return Err(format!("librdkafka send: {e}")),
                }
            }
            next += 1;
            if next.is_multiple_of(1024) {
                while let Some(Some((i, r))) = pending.next().now_or_never() {
                    tally(i, r, &mut delivered, &mut errors, &mut latencies, &pacer);
                }
            }
        }
        if paced && next < total {
            let until = pacer.scheduled(next);
            // Collect acknowledgements while waiting for the next record's turn.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => break,
                    Some((i, r)) = pending.next() => tally(i, r, &mut delivered, &mut errors, &mut latencies, &pacer),
                }
            }
        }
    }
    while let Some((i, r)) = pending.next().await {
        tally(i, r, &mut delivered, &mut errors, &mut latencies, &pacer);
    }
    let elapsed = start.elapsed();
    Ok(produce_result(spec, delivered, errors, elapsed, latencies))
}

type FutureDelivery = Result<
    rdkafka::producer::future_producer::OwnedDeliveryResult,
    futures::channel::oneshot::Canceled,
>;

fn tally(
    i: u64,
    r: FutureDelivery,
    delivered: &mut u64,
    errors: &mut u64,
    latencies: &mut Option<Vec<u32>>,
    pacer: &Pacer,
) {
    match r {
        Ok(Ok(_)) => {
            *delivered += 1;
            if let Some(l) = latencies {
                l.push(pacer.latency_us(i, Instant::now()));
            }
        }
        _ => *errors += 1,
    }
}

fn base_consume(spec: &ChildSpec) -> Result<ChildResult, String> {
    let target = consume_target(spec);
    let start = Instant::now();
    let consumer: BaseConsumer<ConsumerCtx> = consumer_config(spec)
        .create_with_context(ConsumerCtx)
        .map_err(|e| format!("librdkafka consumer: {e}"))?;
    consumer
        .subscribe(&[&spec.topic])
        .map_err(|e| format!("subscribe: {e}"))?;
    let mut check = ConsumeCheck::new(spec.partitions);
    let mut first: Option<Instant> = None;
    let mut last_progress = Instant::now();
    while check.count < target {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                check.see(m.partition(), m.offset(), m.key(), m.payload())?;
                last_progress = Instant::now();
            }
            Some(Err(e)) => return Err(format!("librdkafka poll: {e}")),
            None => {
                if last_progress.elapsed() > super::STALL_TIMEOUT {
                    return Err(format!(
                        "librdkafka consumer stalled at {}/{target} records",
                        check.count
                    ));
                }
            }
        }
    }
    let end = Instant::now();
    let first = first.unwrap_or(end);
    let result = consume_result(&check, first - start, end - start);
    consumer.unsubscribe();
    Ok(result)
}

async fn stream_consume(spec: &ChildSpec) -> Result<ChildResult, String> {
    let target = consume_target(spec);
    let start = Instant::now();
    let consumer: StreamConsumer<ConsumerCtx> = consumer_config(spec)
        .create_with_context(ConsumerCtx)
        .map_err(|e| format!("librdkafka stream consumer: {e}"))?;
    consumer
        .subscribe(&[&spec.topic])
        .map_err(|e| format!("subscribe: {e}"))?;
    let mut check = ConsumeCheck::new(spec.partitions);
    let mut first: Option<Instant> = None;
    while check.count < target {
        match tokio::time::timeout(super::STALL_TIMEOUT, consumer.recv()).await {
            Ok(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                check.see(m.partition(), m.offset(), m.key(), m.payload())?;
            }
            Ok(Err(e)) => return Err(format!("librdkafka recv: {e}")),
            Err(_) => {
                return Err(format!(
                    "librdkafka consumer stalled at {}/{target} records",
                    check.count
                ))
            }
        }
    }
    let end = Instant::now();
    let first = first.unwrap_or(end);
    let result = consume_result(&check, first - start, end - start);
    consumer.unsubscribe();
    Ok(result)
}
