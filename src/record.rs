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
///
/// A record with one header (the common case: a trace id, an event id) keeps it inline, and a
/// name of up to 22 bytes is stored without a heap allocation, so the consumer decodes such
/// records without allocating per record.
#[derive(Clone, Default)]
pub struct Headers(HeaderList);

/// The headers themselves: none, one inline, or a list.
#[derive(Clone, Default)]
enum HeaderList {
    #[default]
    Empty,
    One(HeaderName, Bytes),
    Many(Vec<(HeaderName, Bytes)>),
}

/// Bytes of a header name kept inline (beyond that, a boxed string).
const INLINE_NAME: usize = 22;

/// A header name: short names inline, longer ones boxed. Always valid UTF-8 (built from
/// `&str` only).
#[derive(Clone)]
enum HeaderName {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Boxed(Box<str>),
}

impl HeaderName {
    fn new(name: &str) -> Self {
        if name.len() <= INLINE_NAME {
            let mut bytes = [0u8; INLINE_NAME];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            HeaderName::Inline {
                len: name.len() as u8,
                bytes,
            }
        } else {
            HeaderName::Boxed(name.into())
        }
    }

    fn from_string(name: String) -> Self {
        if name.len() <= INLINE_NAME {
            HeaderName::new(&name)
        } else {
            HeaderName::Boxed(name.into_boxed_str())
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Built from a `&str` prefix of at most INLINE_NAME bytes: always valid UTF-8.
            HeaderName::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            HeaderName::Boxed(s) => s,
        }
    }
}

impl Headers {
    /// No headers (allocates nothing).
    pub const fn new() -> Self {
        Headers(HeaderList::Empty)
    }

    /// Appends a header.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.push(HeaderName::from_string(name.into()), value.into());
    }

    /// Appends a header whose name was read off the wire (the consumer's decoder): a name that
    /// is not UTF-8 is kept with U+FFFD in place of its invalid bytes.
    pub(crate) fn insert_wire(&mut self, name: &[u8], value: Bytes) {
        let name = match std::str::from_utf8(name) {
            Ok(n) => HeaderName::new(n),
            Err(_) => HeaderName::from_string(String::from_utf8_lossy(name).into_owned()),
        };
        self.push(name, value);
    }

    fn push(&mut self, name: HeaderName, value: Bytes) {
        match &mut self.0 {
            HeaderList::Empty => self.0 = HeaderList::One(name, value),
            HeaderList::Many(list) => list.push((name, value)),
            HeaderList::One(..) => {
                if let HeaderList::One(n, v) = std::mem::take(&mut self.0) {
                    self.0 = HeaderList::Many(vec![(n, v), (name, value)]);
                }
            }
        }
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
    /// The value of the first header called `name`, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }
    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        let (one, rest) = match &self.0 {
            HeaderList::Empty => (None, &[][..]),
            HeaderList::One(n, v) => (Some((n, v)), &[][..]),
            HeaderList::Many(list) => (None, &list[..]),
        };
        one.into_iter()
            .chain(rest.iter().map(|(n, v)| (n, v)))
            .map(|(n, v)| (n.as_str(), v))
    }
    /// Number of headers.
    pub fn len(&self) -> usize {
        match &self.0 {
            HeaderList::Empty => 0,
            HeaderList::One(..) => 1,
            HeaderList::Many(list) => list.len(),
        }
    }
    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<N: Into<String>, V: Into<Bytes>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (n, v) in iter {
            headers.insert(n, v);
        }
        headers
    }
}

impl IntoIterator for Headers {
    type Item = (String, Bytes);
    type IntoIter = std::vec::IntoIter<(String, Bytes)>;
    fn into_iter(self) -> Self::IntoIter {
        let owned = |(n, v): (HeaderName, Bytes)| {
            let name = match n {
                HeaderName::Boxed(s) => s.into_string(),
                inline => inline.as_str().to_owned(),
            };
            (name, v)
        };
        match self.0 {
            HeaderList::Empty => Vec::new(),
            HeaderList::One(n, v) => vec![owned((n, v))],
            HeaderList::Many(list) => list.into_iter().map(owned).collect(),
        }
        .into_iter()
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

    #[test]
    fn headers_keep_order_repeats_and_long_names_in_every_shape() {
        let long = "x".repeat(INLINE_NAME + 1);
        let edge = "y".repeat(INLINE_NAME);
        let mut h = Headers::new();
        assert!(h.is_empty());
        assert_eq!(h, Headers::new());
        h.insert("trace", "a");
        assert_eq!(h.len(), 1);
        assert_eq!(h.get_str("trace"), Some("a"));
        h.insert(long.clone(), "b");
        h.insert(edge.as_str(), "c");
        h.insert("trace", "d");
        let names: Vec<&str> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["trace", long.as_str(), edge.as_str(), "trace"]);
        assert_eq!(h.get_str(&long), Some("b"));
        assert_eq!(h.get_str(&edge), Some("c"));
        // The first of a repeated name.
        assert_eq!(h.get_str("trace"), Some("a"));
        let collected: Headers = h.clone().into_iter().collect();
        assert_eq!(collected, h);
        let owned: Vec<(String, Bytes)> = h.into_iter().collect();
        assert_eq!(owned[1], (long, Bytes::from_static(b"b")));
    }

    #[test]
    fn one_header_equals_the_same_header_built_any_way() {
        let mut one = Headers::new();
        one.insert_wire(b"event_id", Bytes::from_static(b"e-1"));
        let built: Headers = [("event_id", "e-1")].into_iter().collect();
        assert_eq!(one, built);
        assert_ne!(one, Headers::new());
        let mut two = one.clone();
        two.insert("k", "v");
        assert_ne!(one, two);
        assert_eq!(format!("{one:?}"), r#"[("event_id", b"e-1")]"#);
    }

    #[test]
    fn a_wire_name_that_is_not_utf8_is_kept_lossily() {
        let mut h = Headers::new();
        h.insert_wire(b"bad\xffname", Bytes::from_static(b"v"));
        h.insert_wire(&[0xff; 40], Bytes::from_static(b"w"));
        let names: Vec<&str> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "bad\u{fffd}name");
        assert_eq!(names[1], "\u{fffd}".repeat(40));
    }
}
