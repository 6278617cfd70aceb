//! # purekafka
//!
//! A pure-Rust Apache Kafka client: no librdkafka, no C toolchain for the default build, and a
//! static (musl) binary that runs in a `FROM scratch` container.
//!
//! Every connection is purekafka's own (`kafka-protocol` codecs over tokio): bootstrap,
//! metadata, producing, fetching, consumer groups, administration and the health probe.
//! Configuration comes from the environment or librdkafka-style keys ([`Config`]); the
//! [`Client`] reconnects with exponential backoff ([`ReconnectPolicy`]) and keeps a health
//! view ([`Health`]) for service health endpoints. [`rskafka`] is only the raw escape hatch
//! behind [`Client::rskafka`], built on its first call.
//!
//! ```no_run
//! use purekafka::{Client, Config};
//!
//! #[tokio::main]
//! async fn main() -> purekafka::Result<()> {
//!     // KAFKA_BROKERS=127.0.0.1:9092 KAFKA_CLIENT_ID=demo
//!     let config = Config::from_env()?;
//!     let client = Client::connect(config).await?;
//!     for topic in client.list_topics().await? {
//!         println!("{}: {} partitions", topic.name, topic.partitions.len());
//!     }
//!     Ok(())
//! }
//! ```
//!
//! ## Producing
//!
//! [`Client::producer`] gives a [`Producer`]: records are batched per partition, partitioned
//! by murmur2 of the key exactly as the Java client and librdkafka, and acknowledged through
//! a [`DeliveryFuture`] per record (one shared completion per batch, no channel per record).
//!
//! ```no_run
//! # async fn demo(client: purekafka::Client) -> purekafka::Result<()> {
//! use purekafka::Record;
//!
//! let producer = client.producer();
//! let delivery = producer
//!     .send(Record::new("orders", "{\"id\":1}").with_key("customer-7"))
//!     .await?;
//! println!("{}/{} @ {}", delivery.topic, delivery.partition, delivery.offset);
//! producer.close().await;
//! # Ok(()) }
//! ```
//!
//! ## Processing records
//!
//! [`Consumer::run`] / [`Consumer::run_json`] (or [`Consumer::runner`] for options) run a
//! handler per record in partition order: dedup ([`Deduplicator`]) → handler → retries with
//! backoff ([`HandlerError::retriable`]) → dead-letter topic ([`DeadLetterRouter`]) → commit,
//! with a [`CircuitBreaker`], graceful shutdown ([`RunHandle`]) and [`RunMetrics`]. See
//! [`worker`].
//!
//! ## Features
//!
//! The default build is pure Rust and needs no C compiler: plaintext, TLS (rustls with the
//! `rustls-graviola` provider, see [`tls`]), SASL (PLAIN, SCRAM), and gzip, snappy, lz4
//! (`lz4_flex`) and zstd (`ruzstd`). `tls-ring` / `tls-aws-lc-rs` choose another TLS provider
//! (C compiler needed); `rskafka-tls` gives the raw rskafka client TLS.

#![deny(rust_2018_idioms, unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod breaker;
pub mod client;
pub mod codec;
pub mod config;
pub mod consumer;
pub(crate) mod coordinator;
pub mod dedup;
pub mod dlq;
pub mod error;
mod error_code;
pub mod handler;
pub mod health;
pub mod producer;
pub mod reconnect;
pub mod record;
pub mod tls;
mod varint;
pub(crate) mod wire;
pub mod worker;

pub use admin::Admin;
pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker};
pub use bytes::Bytes;
pub use client::{Client, TopicInfo};
pub use config::{Config, ConfigBuilder};
pub use consumer::{Consumer, ConsumerGroupMetadata, RebalanceListener, TopicPartition};
pub use dedup::{DedupKey, Deduplicator};
pub use dlq::DeadLetterRouter;
pub use error::{Error, ErrorCode, ErrorKind, Result};
pub use handler::HandlerError;
pub use health::Health;
pub use producer::{Delivery, DeliveryFuture, Producer, ProducerMetrics, SendError};
pub use reconnect::{ReconnectPolicy, RetryEvent};
pub use record::{ConsumedRecord, Headers, Record};
pub use rskafka;
pub use worker::{
    DecodeErrorPolicy, DlqFailurePolicy, RetryPolicy, RunHandle, RunMetrics, Runner, RunnerConfig,
};
