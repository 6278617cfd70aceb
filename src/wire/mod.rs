//! purekafka's own wire layer: every connection the client opens, speaking the Kafka protocol
//! with the `kafka-protocol` crate's codecs. Bootstrap, metadata, the health probe, topic and
//! group administration, producing, fetching and the group coordinator all go through
//! [`BrokerConnection`] (frames, correlation ids, ApiVersions, SASL) and [`Cluster`]
//! (metadata cache and one shared connection per broker). rskafka is only the optional raw
//! escape hatch behind `Client::rskafka()`, built on its first call.

pub(crate) mod admin;
mod cluster;
mod connection;
mod sasl;
mod transport;
pub(crate) mod txn;

#[allow(unused_imports)]
pub(crate) use cluster::{Cluster, Metadata, PartitionMetadata, TopicMetadata};
pub(crate) use connection::BrokerConnection;
pub(crate) use sasl::unsecured_jwt;
