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
    /// confluent-kafka 1.0 cannot either (the same answer), nor talk to tansu 0.6.0, which
    /// closes the connection on the ApiVersions v5 request it sends (tansu advertises v0–v4;
    /// KIP-511 asks for an UNSUPPORTED_VERSION answer in the v0 layout): it runs with
    /// KAFKA_BROKERS only.
    pub fn runs(&self, client: crate::model::ClientKind) -> bool {
        use crate::model::ClientKind;
        match client {
            ClientKind::Krafka => *self != BrokerChoice::Mock,
            ClientKind::ConfluentKafka => matches!(self, BrokerChoice::External(_)),
            _ => true,
        }
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
        Ok(self.high_watermarks().await?.iter().sum())
    }

    /// Each partition's high watermark (on tansu: its records counted, as for
    /// [`Broker::high_watermark_sum`]).
    pub async fn high_watermarks(&self) -> Result<Vec<i64>, String> {
        let client = self.cluster.client().await?;
        let mut marks = Vec::with_capacity(self.partitions.max(0) as usize);
        for p in 0..self.partitions {
            let pc = client
                .partition_client(self.topic.clone(), p, UnknownTopicHandling::Retry)
                .await
                .map_err(|e| format!("partition client {p}: {e}"))?;
            marks.push(if matches!(self.cluster.backend(), Backend::Tansu) {
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
            });
        }
        Ok(marks)
    }

    /// Fails unless `group`'s committed offset on every partition of the topic is that
    /// partition's high watermark: the check for a consumer that keeps no offsets of its own
    /// (rdkafka_performance), which commits its final positions when it closes. Read with
    /// librdkafka's OffsetFetch (`committed_offsets`), the group not joined.
    pub async fn check_committed_at_end(&self, group: &str) -> Result<(), String> {
        let marks = self.high_watermarks().await?;
        let (bootstrap, topic, group) = (self.bootstrap(), self.topic.clone(), group.to_string());
        let committed = tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", &group)
                .create()
                .map_err(|e| format!("offset reader: {e}"))?;
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..marks.len() as i32 {
                tpl.add_partition(&topic, p);
            }
            let got = consumer
                .committed_offsets(tpl, Duration::from_secs(30))
                .map_err(|e| format!("committed offsets of {group}: {e}"))?;
            Ok::<_, String>((marks, got.to_topic_map()))
        })
        .await
        .map_err(|e| format!("offset reader: {e}"))??;
        let (marks, got) = committed;
        for (p, hw) in marks.iter().enumerate() {
            let at = got.get(&(self.topic.clone(), p as i32));
            match at {
                Some(rdkafka::Offset::Offset(o)) if *o == *hw => {}
                other => {
                    return Err(format!(
                        "partition {p}: committed {other:?}, high watermark {hw}"
                    ))
                }
            }
        }
        Ok(())
    }

    /// How many Fetch requests read partition `p` from offset 0 to its end, on the mock cluster
    /// (which answers one batch per partition per Fetch): the number of batches the fill
    /// wrote there. `None` on other brokers.
    pub async fn mock_batches_in_partition(&self, p: i32) -> Result<Option<u64>, String> {
        if !matches!(self.cluster.backend(), Backend::MockCluster) {
            return Ok(None);
        }
        let client = self.cluster.client().await?;
        let pc = client
            .partition_client(self.topic.clone(), p, UnknownTopicHandling::Retry)
            .await
            .map_err(|e| format!("partition client {p}: {e}"))?;
        let (mut next, mut fetches) = (0i64, 0u64);
        loop {
            let (records, _) = pc
                .fetch_records(next, 1..8 * 1024 * 1024, 100)
                .await
                .map_err(|e| format!("reading back partition {p}: {e}"))?;
            match records.iter().map(|r| r.offset).max() {
                Some(last) if last >= next => {
                    next = last + 1;
                    fetches += 1;
                }
                _ => break Ok(Some(fetches)),
            }
        }
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
