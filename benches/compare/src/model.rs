//! What is measured: clients, workloads, the settings they all share, and the result line a
//! child prints.

use serde::{Deserialize, Serialize};

/// Producer settings every client gets (librdkafka names; each runner maps them).
pub const ACKS: &str = "all";
/// `batch.size`: the largest batch a client may build, in bytes.
pub const BATCH_BYTES: usize = 1024 * 1024;
/// The producer's buffer bound, `queue.buffering.max.kbytes` (64 MiB) for every client that
/// has one; librdkafka's message-count bound is raised out of the way.
pub const BUFFER_KBYTES: usize = 64 * 1024;
/// librdkafka's `queue.buffering.max.messages`: high enough that bytes are the bound.
pub const BUFFER_MESSAGES: usize = 10_000_000;
/// The consumer's prefetch bound, `queued.max.messages.kbytes`, for both group consumers.
pub const PREFETCH_KBYTES: usize = 64 * 1024;
/// Partitions of every produce topic.
pub const PARTITIONS: i32 = 6;
/// Partitions of the consume topic (default of `--consume-partitions`): 48, the shape of the
/// independent set-up in issue 14 (1,000,000 × 100 B over 48 partitions); the mock cluster keeps
/// 5 MiB per partition, so 48 partitions hold up to ~1.3M such records.
pub const CONSUME_PARTITIONS: i32 = 48;
/// `linger.ms` of the producer that fills the consume topic (not measured): long enough that
/// its batches fill to `batch.size` (1 MiB). The mock cluster answers a Fetch with one batch
/// per partition and finds it by walking the partition's batch list from the start
/// (`rd_kafka_mock_msgset_find`); with the 5 ms fill, batches held ~100 records and that
/// walk, repeated per Fetch, capped every consumer at the broker (0.4–0.9 µs of broker CPU per
/// record). With batches of hundreds of KiB a Fetch returns that much per partition, as a
/// real broker does with `max.partition.fetch.bytes=1048576` whatever the batch size.
pub const FILL_LINGER_MS: u64 = 1000;
/// Records every producer sends and sees acknowledged before its clock (or pacer) starts.
pub const WARMUP_RECORDS: u64 = 1;

/// A measured client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// rust-rdkafka's fastest APIs: `BaseProducer` with a delivery callback, `BaseConsumer`.
    Librdkafka,
    /// rust-rdkafka's async APIs: `FutureProducer`, `StreamConsumer`.
    LibrdkafkaFuture,
    /// rskafka used directly: `PartitionClient::produce` / `fetch_records`, no groups.
    Rskafka,
    /// purekafka's `Producer` / `Consumer`: the fire-and-forget `DetachedProducer` (one
    /// report per batch) for throughput, `enqueue` + `DeliveryFuture` for latency.
    Purekafka,
    /// librdkafka's own benchmark tool, `examples/rdkafka_performance.c`, built by this
    /// crate's build script against the librdkafka that rdkafka-sys builds.
    RdkafkaPerformance,
    /// The same tool with `-D`: each payload is first copied into a buffer of its own
    /// (malloc + memcpy, handed over with `RD_KAFKA_MSG_F_FREE`), as an application whose
    /// records are not one static buffer has it: beside the default row, never instead of it.
    RdkafkaPerformanceCopy,
    /// krafka 0.28 (pure Rust): `Producer::enqueue` + `DeliveryHandle`, producer only, not on
    /// the librdkafka mock cluster (its ApiVersions answer breaks KIP-511).
    Krafka,
    /// confluent-kafka 1.0 (Confluent's Rust client, translated from the Java client):
    /// `KafkaProducer::send` with a completion callback per record, producer only, not on the
    /// librdkafka mock cluster (its ApiVersions answer breaks KIP-511).
    ConfluentKafka,
}

impl ClientKind {
    pub const ALL: [ClientKind; 8] = [
        ClientKind::RdkafkaPerformance,
        ClientKind::RdkafkaPerformanceCopy,
        ClientKind::Librdkafka,
        ClientKind::LibrdkafkaFuture,
        ClientKind::Rskafka,
        ClientKind::Krafka,
        ClientKind::ConfluentKafka,
        ClientKind::Purekafka,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Librdkafka => "librdkafka",
            ClientKind::LibrdkafkaFuture => "librdkafka-future",
            ClientKind::Rskafka => "rskafka",
            ClientKind::Purekafka => "purekafka",
            ClientKind::RdkafkaPerformance => "rdkafka_performance",
            ClientKind::RdkafkaPerformanceCopy => "rdkafka_performance-copy",
            ClientKind::Krafka => "krafka",
            ClientKind::ConfluentKafka => "confluent-kafka",
        }
    }

    /// Whether the client can run `workload` with these settings (rdkafka_performance sends
    /// one fixed key or none, has no fixed-rate percentiles and its idempotent start-up would
    /// be inside its window; rskafka has no groups, no
    /// idempotent producer and is built with snappy only; only purekafka has the processing
    /// runtime).
    pub fn supports(
        self,
        workload: WorkloadKind,
        keyed: bool,
        compression: &str,
        idempotence: bool,
    ) -> bool {
        match (self, workload) {
            (_, WorkloadKind::Runtime) => self == ClientKind::Purekafka,
            // With idempotence the tool spends ~0.5 s acquiring its producer id inside its
            // timed window (no warm-up record; 1M × 100 B: 1.21 M/s and 137 MiB against
            // 3.76 M/s and 24 MiB without), so it runs the -idem-off rows only.
            (
                ClientKind::RdkafkaPerformance | ClientKind::RdkafkaPerformanceCopy,
                WorkloadKind::Produce,
            ) => !keyed && !idempotence,
            // `-G group -c N`: a group consumer (it checks less; see
            // child/rdkafka_performance_consumer.rs).
            (ClientKind::RdkafkaPerformance, WorkloadKind::Consume) => true,
            (ClientKind::RdkafkaPerformance | ClientKind::RdkafkaPerformanceCopy, _) => false,
            (ClientKind::Krafka, WorkloadKind::Produce) => true,
            (ClientKind::Krafka, _) => false,
            (ClientKind::ConfluentKafka, WorkloadKind::Produce) => true,
            (ClientKind::ConfluentKafka, _) => false,
            (ClientKind::Rskafka, WorkloadKind::Produce | WorkloadKind::ProduceLatency) => {
                matches!(compression, "none" | "snappy") && !idempotence
            }
            _ => true,
        }
    }

    pub fn parse(s: &str) -> Result<ClientKind, String> {
        ClientKind::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown client {s:?}; expected one of: {}",
                    ClientKind::ALL.map(|c| c.name()).join(", ")
                )
            })
    }

    /// Whether the client is librdkafka's own tool (run directly, not as `compare child`).
    pub fn is_rdkafka_performance(self) -> bool {
        matches!(
            self,
            ClientKind::RdkafkaPerformance | ClientKind::RdkafkaPerformanceCopy
        )
    }

    /// Whether this build can run the client (purekafka needs the `purekafka` feature).
    pub fn available(self) -> bool {
        self != ClientKind::Purekafka || cfg!(feature = "purekafka")
    }
}

/// What a child does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Produce `records` records as fast as the client goes; done when all are acknowledged.
    Produce,
    /// Produce at a fixed rate for a fixed time; latency from the start of each record's send
    /// call to the acknowledgement the caller sees (see `child::Pacer`).
    ProduceLatency,
    /// Join a new consumer group on a filled topic and read `records` records.
    Consume,
    /// Join a new consumer group on a filled topic; time until the first record arrives.
    FirstRecord,
    /// The processing runtime (`Consumer::runner().run`) with a no-op handler over a filled
    /// topic, dedup off or on (purekafka only).
    Runtime,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 5] = [
        WorkloadKind::Produce,
        WorkloadKind::ProduceLatency,
        WorkloadKind::Consume,
        WorkloadKind::FirstRecord,
        WorkloadKind::Runtime,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Produce => "produce",
            WorkloadKind::ProduceLatency => "produce-latency",
            WorkloadKind::Consume => "consume",
            WorkloadKind::FirstRecord => "first-record",
            WorkloadKind::Runtime => "runtime",
        }
    }

    pub fn parse(s: &str) -> Result<WorkloadKind, String> {
        WorkloadKind::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown workload {s:?}; expected one of: {}",
                    WorkloadKind::ALL.map(|w| w.name()).join(", ")
                )
            })
    }
}

/// Everything a child needs to run one measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSpec {
    pub client: ClientKind,
    pub workload: WorkloadKind,
    pub brokers: String,
    pub topic: String,
    /// Records to produce or to read (produce, consume); ignored by the others.
    pub records: u64,
    /// Value size in bytes (produce workloads).
    pub value_size: usize,
    /// Records per second (produce-latency).
    pub rate: u64,
    /// Seconds of producing at `rate` (produce-latency).
    pub duration_s: f64,
    /// Consumer group id (consume, first-record, runtime).
    pub group: String,
    /// Records carry an 8-byte key (`i` big-endian); otherwise none.
    pub keyed: bool,
    /// `linger.ms`.
    pub linger_ms: u64,
    /// `compression.type`: none, snappy, lz4, zstd, gzip.
    pub compression: String,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Runtime: deduplicate on the `event_id` header (1M keys).
    pub dedup: bool,
    /// Producers: `enable.idempotence` (the same for every client of a row).
    pub idempotence: bool,
}

impl ChildSpec {
    /// The arguments after `compare child`.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--client".into(),
            self.client.name().into(),
            "--workload".into(),
            self.workload.name().into(),
            "--brokers".into(),
            self.brokers.clone(),
            "--topic".into(),
            self.topic.clone(),
            "--records".into(),
            self.records.to_string(),
            "--value-size".into(),
            self.value_size.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--duration-s".into(),
            self.duration_s.to_string(),
            "--group".into(),
            self.group.clone(),
            "--keyed".into(),
            self.keyed.to_string(),
            "--linger-ms".into(),
            self.linger_ms.to_string(),
            "--compression".into(),
            self.compression.clone(),
            "--partitions".into(),
            self.partitions.to_string(),
            "--dedup".into(),
            self.dedup.to_string(),
            "--idempotence".into(),
            self.idempotence.to_string(),
        ]
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// The JSON line a child prints on stdout (prefixed with [`RESULT_PREFIX`]).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ChildResult {
    /// Records produced and acknowledged, or read.
    pub records: u64,
    /// Value bytes of those records.
    pub bytes: u64,
    /// Seconds from the start of the workload (client created) to its end.
    pub elapsed_s: f64,
    /// Milliseconds from creating the consumer / subscribing to the first record.
    pub first_record_ms: Option<f64>,
    /// Produce latency (produce-latency only).
    pub latency: Option<Latency>,
    /// Records whose delivery failed, or consume errors (gaps, duplicates).
    pub errors: u64,
    /// Consume: wrapping sum over every record read of its key and value bytes (the
    /// orchestrator compares it with what was produced).
    #[serde(default)]
    pub checksum: Option<u64>,
    /// Records the client sent before its clock started (warm-up), already acknowledged.
    #[serde(default)]
    pub warmup: u64,
    /// The child's own peak RSS (`VmHWM`, KiB), read just before it printed this line.
    #[serde(default)]
    pub vm_hwm_kib: Option<u64>,
}

/// Marks the result line among anything else a child may print.
pub const RESULT_PREFIX: &str = "COMPARE-RESULT ";
