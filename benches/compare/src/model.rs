//! What is measured: clients, workloads, the settings they all share, and the result line a
//! child prints.

use serde::{Deserialize, Serialize};

/// Producer settings every client gets (librdkafka names; each runner maps them).
pub const ACKS: &str = "all";
/// `linger.ms`.
pub const LINGER_MS: u64 = 5;
/// `batch.size`: the largest batch a client may build, in bytes.
pub const BATCH_BYTES: usize = 1024 * 1024;
/// Partitions of every benchmark topic.
pub const PARTITIONS: i32 = 6;

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
    /// purekafka's `Producer` / `Consumer`.
    Purekafka,
}

impl ClientKind {
    pub const ALL: [ClientKind; 4] = [
        ClientKind::Librdkafka,
        ClientKind::LibrdkafkaFuture,
        ClientKind::Rskafka,
        ClientKind::Purekafka,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Librdkafka => "librdkafka",
            ClientKind::LibrdkafkaFuture => "librdkafka-future",
            ClientKind::Rskafka => "rskafka",
            ClientKind::Purekafka => "purekafka",
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
    /// Produce at a fixed rate for a fixed time; latency from scheduled send to acknowledgement.
    ProduceLatency,
    /// Join a new consumer group on a filled topic and read `records` records.
    Consume,
    /// Join a new consumer group on a filled topic; time until the first record arrives.
    FirstRecord,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 4] = [
        WorkloadKind::Produce,
        WorkloadKind::ProduceLatency,
        WorkloadKind::Consume,
        WorkloadKind::FirstRecord,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Produce => "produce",
            WorkloadKind::ProduceLatency => "produce-latency",
            WorkloadKind::Consume => "consume",
            WorkloadKind::FirstRecord => "first-record",
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
    /// Consumer group id (consume, first-record).
    pub group: String,
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
    /// Records whose delivery failed.
    pub errors: u64,
}

/// Marks the result line among anything else a child may print.
pub const RESULT_PREFIX: &str = "COMPARE-RESULT ";
