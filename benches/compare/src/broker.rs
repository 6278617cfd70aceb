//! The broker the comparison runs against: a fresh local cluster from the testkit (mock
//! cluster or tansu) or an external cluster named by `KAFKA_BROKERS`.

use std::time::Duration;

use purekafka_testkit::{unique_name, Backend, TestCluster};
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};

use crate::proc::tree_cpu_seconds;

/// Records of `value_size` bytes the mock cluster keeps in `partitions` partitions: it keeps
/// only the last 5 MiB of each (librdkafka's `rdkafka_mock.c`); a record takes its value, an
/// 8-byte key, a 26-byte header and about 20 bytes of framing; 20 % to spare.
pub fn mock_consume_cap(partitions: i32, value_size: usize) -> u64 {
    let per_record = value_size as u64 + 8 + 26 + 20;
    (5 * 1024 * 1024 / per_record) * partitions.max(1) as u64 * 8 / 10
}

/// Which broker to use, chosen once per invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerChoice {
    Mock,
    Tansu,
    External(String),
}

impl BrokerChoice {
    /// Whether `client` can talk to this broker: krafka cannot read the librdkafka mock
    /// cluster's ApiVersions answer to a request above v3 (the mock answers in the flexible
    /// layout where KIP-511 prescribes v0), so it runs on tansu and external clusters only.
    pub fn runs(&self, client: crate::model::ClientKind) -> bool {
        !(client == crate::model::ClientKind::Krafka && *self == BrokerChoice::Mock)
    }

    pub fn parse(s: &str) -> Result<BrokerChoice, String> {
        match s {
            "mock" => Ok(BrokerChoice::Mock),
            "tansu" => Ok(BrokerChoice::Tansu),
            other => Err(format!(
                "unknown broker {other:?}; expected mock or tansu (or set KAFKA_BROKERS)"
            )),
        }
    }

    /// Most records a consume run can read on this broker (see [`mock_consume_cap`]).
    pub fn consume_cap(&self, partitions: i32, value_size: usize) -> Option<u64> {
        match self {
            BrokerChoice::Mock => Some(mock_consume_cap(partitions, value_size)),
            _ => None,
        }
    }

    /// A sentence for the report.
    pub fn describe(&self) -> String {
        match self {
            BrokerChoice::Mock => {
                "librdkafka 2.12.1 mock cluster, 3 brokers, in-memory (testcontainers/mock-cluster); \
                 a fresh cluster for every produce run"
                    .into()
            }
            BrokerChoice::Tansu => {
                "tansu 0.6.0, 1 broker, memory storage (testcontainers/tansu); a fresh broker for \
                 every produce run"
                    .into()
            }
            BrokerChoice::External(b) => {
                format!("external cluster {b} (KAFKA_BROKERS); a new topic for every produce run")
            }
        }
    }
}

/// A started (or reached) cluster and one topic on it.
pub struct Broker {
    cluster: TestCluster,
    pub topic: String,
    pub partitions: i32,
}

impl Broker {
    /// Starts a cluster (or reaches the external one) and creates a fresh topic.
    pub async fn start(
        choice: &BrokerChoice,
        topic_prefix: &str,
        partitions: i32,
    ) -> Result<Broker, String> {
        let backend = match choice {
            BrokerChoice::Mock => Backend::MockCluster,
            BrokerChoice::Tansu => Backend::Tansu,
            BrokerChoice::External(b) => Backend::External(b.clone()),
        };
        let cluster = tokio::task::spawn_blocking(move || TestCluster::start(backend))
            .await
            .map_err(|e| format!("broker start: {e}"))??;
        if matches!(choice, BrokerChoice::Mock) {
            // Measure the clients' group join, not the broker's artificial wait for more
            // members (3 s by default, like Kafka's group.initial.rebalance.delay.ms).
            cluster.set_group_initial_rebalance_delay(Duration::ZERO)?;
        }
        let topic = unique_name(topic_prefix);
        cluster.create_topic(&topic, partitions).await?;
        Ok(Broker {
            cluster,
            topic,
            partitions,
        })
    }

    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap()
    }

    /// CPU seconds the broker processes have used so far (`None` for external clusters).
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.cluster.pid().and_then(tree_cpu_seconds)
    }

    /// Fails when a partition of the topic no longer starts at offset 0: the broker dropped
    /// records (retention), so a consumer reading from the earliest offset would not find all
    /// the records the fill produced.
    pub async fn check_nothing_dropped(&self) -> Result<(), String> {
        let client = self.cluster.client().await?;
        for p in 0..self.partitions {
            let pc = client
                .partition_client(self.topic.clone(), p, UnknownTopicHandling::Retry)
                .await
                .map_err(|e| format!("partition client {p}: {e}"))?;
            let earliest = pc
                .get_offset(OffsetAt::Earliest)
                .await
                .map_err(|e| format!("list offsets of partition {p}: {e}"))?;
            if earliest != 0 {
                return Err(format!(
                    "the broker dropped the first {earliest} records of partition {p} of {}                      (retention); use fewer --records",
                    self.topic
                ));
            }
        }
        Ok(())
    }

    /// The sum of the topic's high watermarks: how many records it holds. On tansu, whose
    /// ListOffsets(latest) answers without a partition's last batch (tansu 0.6.0), each
    /// partition is read back from offset 0 instead and its records counted.
    pub async fn high_watermark_sum(&self) -> Result<i64, String> {
        let client = self.cluster.client().await?;
        let mut sum = 0;
        for p in 0..self.partitions {
            let pc = client
                .partition_client(self.topic.clone(), p, UnknownTopicHandling::Retry)
                .await
                .map_err(|e| format!("partition client {p}: {e}"))?;
            sum += if matches!(self.cluster.backend(), Backend::Tansu) {
                let mut next = 0i64;
                loop {
                    let (records, _) = pc
                        .fetch_records(next, 1..4 * 1024 * 1024, 100)
                        .await
                        .map_err(|e| format!("reading back partition {p}: {e}"))?;
                    match records.iter().map(|r| r.offset).max() {
                        Some(last) if last >= next => next = last + 1,
                        _ => break next,
                    }
                }
            } else {
                pc.get_offset(OffsetAt::Latest)
                    .await
                    .map_err(|e| format!("high watermark of partition {p}: {e}"))?
            };
        }
        Ok(sum)
    }

    /// Best-effort removal of the topic on clusters that outlive the run.
    pub async fn cleanup(self) {
        if let Backend::External(_) = self.cluster.backend() {
            if let Ok(client) = self.cluster.client().await {
                if let Ok(c) = client.controller_client() {
                    let _ = c.delete_topic(&self.topic, 10_000).await;
                }
            }
        }
    }
}
