//! purekafka's own wire layer, beside rskafka: connections that speak the Kafka protocol with
//! the `kafka-protocol` crate's codecs.
//!
//! rskafka keeps its protocol module private and has no group, offset-commit or leader
//! metadata APIs; and the producer's hot path sends batches it encoded itself. Both go
//! through this layer: [`BrokerConnection`] (frames, correlation ids, ApiVersions, SASL) and
//! [`Cluster`] (metadata cache and one connection per broker).

mod cluster;
mod connection;
mod sasl;
mod transport;

#[allow(unused_imports)]
pub(crate) use cluster::{Cluster, Metadata, PartitionMetadata, TopicMetadata};
pub(crate) use connection::BrokerConnection;
pub(crate) use sasl::unsecured_jwt;
