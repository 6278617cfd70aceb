//! The broker the comparison runs against: a fresh local cluster from the testkit (mock
//! cluster or tansu) or an external cluster named by `KAFKA_BROKERS`.

use std::time::Duration;

use purekafka_testkit::{unique_name, Backend, TestCluster};
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};

use crate::model::PARTITIONS;
use crate::proc::tree_cpu_seconds;

/// See [`BrokerChoice::consume_cap`].
pub const MOCK_CONSUME_CAP: u64 = 200_000;

/// Which broker to use, chosen once per invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerChoice {
    Mock,
    Tansu,
    External(String),
}

impl BrokerChoice {
    pub fn parse(s: &str) -> Result<BrokerChoice, String> {
        match s {
            "mock" => Ok(BrokerChoice::Mock),
            "tansu" => Ok(BrokerChoice::Tansu),
            other => Err(format!(
                "unknown broker {other:?}; expected mock or tansu (or set KAFKA_BROKERS)"
            )),
        }
    }

    /// Most records a consume run can read on this broker. librdkafka's mock cluster keeps
    /// only the last 5 MiB (or 100,000 batches) of each partition and drops older batches, so
    /// 6 partitions hold about 260,000 records of 100 B: consume runs on it read 200,000.
    pub fn consume_cap(&self) -> Option<u64> {
        match self {
            BrokerChoice::Mock => Some(MOCK_CONSUME_CAP),
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
}

impl Broker {
    /// Starts a cluster (or reaches the external one) and creates a fresh 6-partition topic.
    pub async fn start(choice: &BrokerChoice, topic_prefix: &str) -> Result<Broker, String> {
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
        cluster.create_topic(&topic, PARTITIONS).await?;
        Ok(Broker { cluster, topic })
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
        for p in 0..PARTITIONS {
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
