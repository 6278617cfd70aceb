//! Records: what is produced ([`Record`]) and what is consumed ([`ConsumedRecord`]).
//!
//! Keys, values and header values are [`Bytes`], so they move from the caller to the wire
//! (and from the wire to the caller) without copies. Topics are `Cow<'static, str>`: a literal
//! topic name costs no allocation per record.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Result;

/// Record headers: an ordered list of `name → bytes`; a name may repeat, as Kafka allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Bytes)>);

impl Headers {
    /// No headers (allocates nothing).
    pub const fn new() -> Self {
        Headers(Vec::new())
    }
    /// Appends a header.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.0.push((name.into(), value.into()));
    }
    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    /// The value of the first header called `name`, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }
    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }
    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<String>, V: Into<Bytes>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Headers(
            iter.into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

impl IntoIterator for Headers {
    type Item = (String, Bytes);
    type IntoIter = std::vec::IntoIter<(String, Bytes)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A record to produce.
///
/// ```
/// use purekafka::Record;
///
/// let r = Record::new("orders", "{\"id\":1}")
///     .with_key("customer-7")
///     .with_header("source", "checkout");
/// assert_eq!(r.topic, "orders");
/// assert_eq!(r.headers.get_str("source"), Some("checkout"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The topic.
    pub topic: Cow<'static, str>,
    /// An explicit partition; `None` lets the partitioner choose.
    pub partition: Option<i32>,
    /// The key; records with the same key go to the same partition.
    pub key: Option<Bytes>,
    /// The value; `None` is a tombstone on compacted topics.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Headers,
    /// Timestamp in milliseconds since the Unix epoch; `None` means "now" at send time.
    pub timestamp: Option<i64>,
}

impl Record {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<Cow<'static, str>>, value: impl Into<Bytes>) -> Self {
        Record {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Headers::new(),
            timestamp: None,
        }
    }

    /// A record whose value is `value` serialized as JSON.
    pub fn json<T: Serialize + ?Sized>(
        topic: impl Into<Cow<'static, str>>,
        value: &T,
    ) -> Result<Self> {
        Ok(Record::new(topic, serde_json::to_vec(value)?))
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Sets an explicit partition.
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
    /// Appends a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name, value);
        self
    }
    /// Sets the timestamp (milliseconds since the Unix epoch).
    pub fn with_timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }
}

/// A record read from a partition. The consumer makes them; tests of a handler build one
/// with [`new`](Self::new) and the `with_*` setters.
///
/// ```
/// use purekafka::ConsumedRecord;
///
/// let r = ConsumedRecord::new("orders", 0, 42)
///     .with_key("customer-7")
///     .with_value("{\"id\":1}");
/// assert_eq!(r.value_str(), Some("{\"id\":1}"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumedRecord {
    /// The topic (shared between the records of a partition: no allocation per record).
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The record's offset in its partition.
    pub offset: i64,
    /// The key.
    pub key: Option<Bytes>,
    /// The value (`None` for a tombstone).
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Headers,
    /// Timestamp in milliseconds since the Unix epoch.
    pub timestamp: i64,
}

impl ConsumedRecord {
    /// A record at `offset` of `topic`/`partition`, without key, value (a tombstone) or
    /// headers, timestamp 0.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32, offset: i64) -> Self {
        ConsumedRecord {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            value: None,
            headers: Headers::new(),
            timestamp: 0,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the value.
    pub fn with_value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch).
    pub fn with_timestamp(mut self, millis: i64) -> Self {
        self.timestamp = millis;
        self
    }

    /// Decodes the value as JSON into `T`. A missing value or a value that does not decode
    /// is an [`Error::Json`](crate::Error::Json).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let value = self.value.as_deref().unwrap_or(b"null");
        Ok(serde_json::from_slice(value)?)
    }

    /// The key as UTF-8 text, if it is.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value as UTF-8 text, if it is.
    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Order {
        id: u32,
    }

    #[test]
    fn json_round_trip_and_bad_payload() {
        let r = Record::json("orders", &Order { id: 7 }).unwrap();
        let consumed = ConsumedRecord {
            topic: Arc::from("orders"),
            partition: 0,
            offset: 0,
            key: None,
            value: r.value.clone(),
            headers: Headers::new(),
            timestamp: 0,
        };
        assert_eq!(consumed.json::<Order>().unwrap(), Order { id: 7 });
        let bad = ConsumedRecord {
            value: Some(Bytes::from_static(b"{not json")),
            ..consumed
        };
        assert!(matches!(bad.json::<Order>(), Err(crate::Error::Json(_))));
    }
}
