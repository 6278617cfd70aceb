//! Decoding fetched record batches into [`ConsumedRecord`]s without copying.
//!
//! Keys, values and header values are `Bytes` slices of the fetch response frame (or of the
//! decompressed buffer of a compressed batch): no allocation per record beyond the record
//! itself (headers allocate their names only when present). `kafka-protocol`'s
//! `RecordBatchDecoder` slices too, but builds its own record type (with an `IndexMap` of
//! headers and producer fields) that would then be converted; decoding straight into
//! `ConsumedRecord` skips that step.
//!
//! Input is untrusted: every length and count read off the wire is checked against the bytes
//! actually present before use, nothing is allocated at a size read off the wire, offsets
//! that overflow are errors, and (with `check.crcs`) each v2 batch's CRC32C is verified. An
//! error concerns one partition: records of the complete batches before it are kept, the
//! failing batch contributes none. Legacy message sets (magic 0 and 1, Kafka before 0.11)
//! are decoded too, uncompressed or gzip/snappy-compressed, with their CRC32 checked.
//!
//! Transactions: control batches (commit / abort markers) are never returned. With
//! `read_committed`, data batches of aborted transactions are dropped as the Java client's
//! fetcher does: the Fetch response lists, per partition, the aborted transactions
//! (producer id, first offset) overlapping the data; a producer id becomes "aborted" once a
//! batch reaches its first offset and stays so until that producer's ABORT marker, and
//! transactional batches of an aborted producer id are skipped. Brokers that send no such
//! list (tansu 0.6.0 writes the markers but always sends an empty list) are covered when the
//! marker is in the same response: a transactional batch whose producer's next marker in the
//! response is an ABORT belongs to an aborted transaction (a producer has at most one open
//! transaction per partition, and its marker closes it). Skipped batches still move
//! `next_offset`, so positions pass them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::error::{Error, Result};
use crate::producer::batch::batch_crc;
use crate::record::{ConsumedRecord, Headers};

/// Size of a v2 batch header up to and including `records count`.
const BATCH_HEADER: usize = 61;

fn corrupt(what: &str) -> Error {
    Error::Protocol(what.to_string())
}

/// Reads a zig-zag varint.
fn varint(buf: &mut Bytes) -> Result<i64> {
    crate::varint::get_varlong(buf).map_err(|e| match e {
        crate::varint::VarintError::Truncated => corrupt("truncated varint"),
        crate::varint::VarintError::TooLong => corrupt("varint too long"),
    })
}

/// Reads a zig-zag varint off a slice cursor (one-byte values take the short path).
#[inline]
fn slice_varint(cur: &mut &[u8]) -> Result<i64> {
    match cur.first() {
        Some(&b) if b < 0x80 => {
            *cur = &cur[1..];
            Ok(i64::from(b >> 1) ^ -i64::from(b & 1))
        }
        _ => varint_from(cur),
    }
}

fn varint_from(cur: &mut &[u8]) -> Result<i64> {
    crate::varint::get_varlong(cur).map_err(|e| match e {
        crate::varint::VarintError::Truncated => corrupt("truncated varint"),
        crate::varint::VarintError::TooLong => corrupt("varint too long"),
    })
}

/// A length-prefixed (varint) byte field off a slice cursor; length -1 (or less) is null.
#[inline]
fn slice_field<'a>(cur: &mut &'a [u8]) -> Result<Option<&'a [u8]>> {
    let len = slice_varint(cur)?;
    if len < 0 {
        return Ok(None);
    }
    if cur.len() < len as usize {
        return Err(corrupt("field longer than its record"));
    }
    let (field, rest) = cur.split_at(len as usize);
    *cur = rest;
    Ok(Some(field))
}

/// A length-prefixed (varint) byte field; length -1 is null.
fn nullable_bytes(buf: &mut Bytes) -> Result<Option<Bytes>> {
    let len = varint(buf)?;
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    if buf.remaining() < len {
        return Err(corrupt("field longer than its record"));
    }
    Ok(Some(buf.split_to(len)))
}

/// What decoding a partition's records produced.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// Records at or after the fetch offset, in order.
    pub(crate) records: Vec<ConsumedRecord>,
    /// The offset after the last complete batch seen (may pass records skipped as control
    /// records, aborted transactions or below the fetch offset); `None` when no complete
    /// batch was present.
    pub(crate) next_offset: Option<i64>,
}

/// Smallest encoded v2 record: length, attributes, timestamp delta, offset delta, key
/// length, value length, header count (one byte each).
const MIN_RECORD: usize = 7;

/// An aborted transaction as a Fetch response lists it for a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AbortedTransaction {
    pub(crate) producer_id: i64,
    pub(crate) first_offset: i64,
}

/// Batch attribute bits (record batch v2).
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

/// `read_committed` bookkeeping over one partition's data (see the module docs).
#[derive(Debug, Default)]
struct ReadCommitted {
    /// The response's aborted transactions by first offset; `next` is the first not reached.
    aborted: Vec<AbortedTransaction>,
    next: usize,
    /// Producer ids inside an aborted transaction at the current batch.
    aborted_pids: HashSet<i64>,
    /// Per producer id, its markers later in this response: (offset, is ABORT), in order;
    /// empty when the response holds no ABORT marker. Read from `data` on the first
    /// transactional batch, so that non-transactional data costs no second pass.
    later: Option<HashMap<i64, VecDeque<(i64, bool)>>>,
    data: Bytes,
    check_crcs: bool,
}

impl ReadCommitted {
    fn new(aborted: &[AbortedTransaction], data: &Bytes, check_crcs: bool) -> ReadCommitted {
        let mut aborted = aborted.to_vec();
        aborted.sort_by_key(|a| a.first_offset);
        ReadCommitted {
            aborted,
            next: 0,
            aborted_pids: HashSet::new(),
            later: None,
            data: data.clone(),
            check_crcs,
        }
    }

    /// The markers of the whole response by producer id (see `later`).
    fn markers(data: &Bytes, check_crcs: bool) -> HashMap<i64, VecDeque<(i64, bool)>> {
        let mut markers = Vec::new();
        for_each_marker(data, check_crcs, |offset, pid, abort| {
            markers.push((offset, pid, abort));
        });
        let mut later: HashMap<i64, VecDeque<(i64, bool)>> = HashMap::new();
        if markers.iter().any(|m| m.2) {
            for (offset, pid, abort) in markers {
                later.entry(pid).or_default().push_back((offset, abort));
            }
        }
        later
    }

    /// A batch of `pid` ending at `last_offset` is next: every listed aborted transaction
    /// that began at or before it is open from here on (Java's
    /// `consumeAbortedTransactionsUpTo`).
    fn reach(&mut self, last_offset: i64) {
        while let Some(a) = self.aborted.get(self.next) {
            if a.first_offset > last_offset {
                break;
            }
            self.aborted_pids.insert(a.producer_id);
            self.next += 1;
        }
    }

    /// Whether a transactional data batch of `pid` at `base_offset` belongs to an aborted
    /// transaction: listed as such, or followed in this response by its producer's ABORT.
    fn is_aborted(&mut self, pid: i64, base_offset: i64) -> bool {
        if self.aborted_pids.contains(&pid) {
            return true;
        }
        let (data, check_crcs) = (&self.data, self.check_crcs);
        let later = self
            .later
            .get_or_insert_with(|| ReadCommitted::markers(data, check_crcs));
        let Some(markers) = later.get_mut(&pid) else {
            return false;
        };
        while markers.front().is_some_and(|m| m.0 < base_offset) {
            markers.pop_front();
        }
        markers.front().is_some_and(|m| m.1)
    }
}

/// Calls `f(offset, producer id, is ABORT)` for each control batch of `data`, in order,
/// stopping at the first partial, malformed or (with `check_crcs`) corrupt batch: the
/// decoding pass reports that one, and markers behind it must not be trusted.
fn for_each_marker(data: &Bytes, check_crcs: bool, mut f: impl FnMut(i64, i64, bool)) {
    let mut at = 0usize;
    while data.len() - at >= 17 {
        let base_offset = (&data[at..at + 8]).get_i64();
        let batch_len = (&data[at + 8..at + 12]).get_i32();
        let magic = data[at + 16];
        let min_len = match magic {
            2 => BATCH_HEADER - 12,
            0 => 14,
            1 => 22,
            _ => return,
        };
        if batch_len < 0 || (batch_len as usize) < min_len {
            return;
        }
        let total = 12 + batch_len as usize;
        if data.len() - at < total {
            return;
        }
        let batch = &data[at..at + total];
        at += total;
        if magic != 2 {
            continue;
        }
        let attributes = (&batch[21..23]).get_i16();
        if attributes & CONTROL == 0 {
            continue;
        }
        if check_crcs && (&batch[17..21]).get_u32() != batch_crc(&batch[21..]) {
            return;
        }
        let pid = (&batch[43..51]).get_i64();
        match control_is_abort(data.slice(at - total + BATCH_HEADER..at), attributes) {
            Ok(abort) => f(base_offset, pid, abort),
            Err(_) => return,
        }
    }
}

/// Whether a control batch (its records section and attributes) holds an ABORT marker: the
/// first record's key is (version: i16, type: i16), type 0 = ABORT, 1 = COMMIT (as Java's
/// `ControlRecordType.parse`, which reads any version as version 0).
fn control_is_abort(records: Bytes, attributes: i16) -> Result<bool> {
    let mut records = match attributes & 0x07 {
        0 => records,
        codec => crate::codec::decompress(codec, &records)
            .map(|out| Bytes::from(out.into_owned()))
            .map_err(|e| corrupt(&format!("control batch: {e}")))?,
    };
    let len = varint(&mut records)?;
    if len < 1 || records.remaining() < len as usize {
        return Err(corrupt("control record longer than its batch"));
    }
    let mut rec = records.split_to(len as usize);
    rec.advance(1); // attributes
    varint(&mut rec)?; // timestamp delta
    varint(&mut rec)?; // offset delta
    match nullable_bytes(&mut rec)? {
        Some(key) if key.len() >= 4 => Ok((&key[2..4]).get_i16() == 0),
        _ => Err(corrupt("control record without a (version, type) key")),
    }
}

/// Decodes the record batches of one partition's fetch response, keeping records with an
/// offset of at least `from`. `aborted` is `Some` with `read_committed` (the response's
/// aborted transactions for the partition), `None` with `read_uncommitted`. On error, `out`
/// holds what the complete batches before the failing one produced.
pub(crate) fn decode_batches(
    mut data: Bytes,
    topic: &Arc<str>,
    partition: i32,
    from: i64,
    check_crcs: bool,
    aborted: Option<&[AbortedTransaction]>,
    out: &mut Decoded,
) -> Result<()> {
    let mut txn = aborted.map(|a| ReadCommitted::new(a, &data, check_crcs));
    // Offset, length, and the magic byte that says which layout follows.
    while data.len() >= 17 {
        let base_offset = (&data[0..8]).get_i64();
        let batch_len = (&data[8..12]).get_i32();
        let magic = data[16];
        let at = |what: &str| {
            Error::Protocol(format!(
                "{topic}/{partition}: corrupt record batch at offset {base_offset}: {what}"
            ))
        };
        let min_len = match magic {
            2 => BATCH_HEADER - 12,
            0 => 14,
            1 => 22,
            other => {
                return Err(at(&format!(
                    "unknown magic {other} (record batches v2, message sets v0 and v1 are known)"
                )))
            }
        };
        if batch_len < 0 || (batch_len as usize) < min_len {
            return Err(at(&format!("length {batch_len} is below the header's")));
        }
        let total = 12 + batch_len as usize;
        if data.len() < total {
            // A partial batch at the end of the response (cut by max bytes): fetched again.
            break;
        }
        let batch = data.split_to(total);
        let kept = out.records.len();
        let decoded = match magic {
            2 => decode_v2(batch, topic, partition, from, check_crcs, txn.as_mut(), out),
            _ => decode_legacy(batch, topic, partition, from, check_crcs, 0, out),
        };
        if let Err(e) = decoded {
            out.records.truncate(kept);
            return Err(match e {
                Error::Protocol(m) if !m.starts_with(&**topic) => at(&m),
                e => e,
            });
        }
    }
    Ok(())
}

/// One v2 record batch (its whole bytes, header included).
fn decode_v2(
    mut batch: Bytes,
    topic: &Arc<str>,
    partition: i32,
    from: i64,
    check_crcs: bool,
    txn: Option<&mut ReadCommitted>,
    out: &mut Decoded,
) -> Result<()> {
    let base_offset = (&batch[0..8]).get_i64();
    if check_crcs {
        let stored = (&batch[17..21]).get_u32();
        let computed = batch_crc(&batch[21..]);
        if stored != computed {
            return Err(Error::Protocol(format!(
                "CRC32C mismatch (stored {stored:#010x}, computed {computed:#010x})"
            )));
        }
    }
    batch.advance(21); // base offset, length, leader epoch, magic, crc
    let attributes = batch.get_i16();
    let last_offset_delta = batch.get_i32();
    let base_timestamp = batch.get_i64();
    let max_timestamp = batch.get_i64();
    let producer_id = batch.get_i64();
    batch.advance(2 + 4); // producer epoch, base sequence
    let count = batch.get_i32();
    let next = base_offset
        .checked_add(i64::from(last_offset_delta))
        .and_then(|o| o.checked_add(1))
        .filter(|_| last_offset_delta >= 0 && base_offset >= 0)
        .ok_or_else(|| corrupt("offsets out of range"))?;
    if count < 0 {
        return Err(corrupt("negative record count"));
    }
    let is_control = attributes & CONTROL != 0;
    if let Some(txn) = txn.filter(|_| producer_id >= 0) {
        txn.reach(next - 1);
        if is_control {
            // Only a producer inside an aborted transaction needs its marker's type.
            if txn.aborted_pids.contains(&producer_id)
                && control_is_abort(batch.clone(), attributes)?
            {
                txn.aborted_pids.remove(&producer_id);
            }
        } else if attributes & TRANSACTIONAL != 0 && txn.is_aborted(producer_id, base_offset) {
            out.next_offset = Some(next);
            return Ok(());
        }
    }
    if is_control || next <= from {
        out.next_offset = Some(next);
        return Ok(());
    }
    let log_append_time = attributes & 0x08 != 0;
    let records = match attributes & 0x07 {
        0 => batch,
        codec => decompress(codec, batch, topic, partition)?,
    };
    // Bounded by the bytes present, not by the count read off the wire.
    out.records
        .reserve((count as usize).min(records.len() / MIN_RECORD));
    // The records are read through a slice cursor; only keys, values and header values
    // become `Bytes` (slices of `records`, one reference count each).
    let data: &[u8] = &records;
    let mut cur = data;
    for _ in 0..count {
        let len = slice_varint(&mut cur)?;
        if len < 0 || cur.len() < len as usize {
            return Err(corrupt("record longer than its batch"));
        }
        let (rec, rest) = cur.split_at(len as usize);
        cur = rest;
        let Some((_attributes, mut rec)) = rec.split_first() else {
            return Err(corrupt("empty record"));
        };
        let ts_delta = slice_varint(&mut rec)?;
        let offset_delta = slice_varint(&mut rec)?;
        let key = slice_field(&mut rec)?.map(|k| records.slice_ref(k));
        let value = slice_field(&mut rec)?.map(|v| records.slice_ref(v));
        let header_count = slice_varint(&mut rec)?;
        let mut headers = Headers::new();
        for _ in 0..header_count.max(0) {
            let name = slice_field(&mut rec)?.unwrap_or_default();
            let value = slice_field(&mut rec)?.map_or_else(Bytes::new, |v| records.slice_ref(v));
            headers.insert_wire(name, value);
        }
        let offset = base_offset
            .checked_add(offset_delta)
            .filter(|o| *o < next)
            .ok_or_else(|| corrupt("record offset outside its batch"))?;
        if offset < from {
            continue;
        }
        out.records.push(ConsumedRecord {
            topic: Arc::clone(topic),
            partition,
            offset,
            key,
            value,
            headers,
            timestamp: if log_append_time {
                max_timestamp
            } else {
                base_timestamp.wrapping_add(ts_delta)
            },
        });
    }
    out.next_offset = Some(next);
    Ok(())
}

/// A legacy message (magic 0 or 1) and, when it wraps a compressed message set, the messages
/// inside it (`depth` 1; deeper nesting is corrupt).
fn decode_legacy(
    mut message: Bytes,
    topic: &Arc<str>,
    partition: i32,
    from: i64,
    check_crcs: bool,
    depth: u8,
    out: &mut Decoded,
) -> Result<()> {
    if message.len() < 12 + 14 {
        return Err(corrupt("message shorter than its header"));
    }
    let offset = message.get_i64();
    message.advance(4); // size
    let stored = message.get_u32();
    if check_crcs {
        let mut crc = flate2::Crc::new();
        crc.update(&message);
        if crc.sum() != stored {
            return Err(Error::Protocol(format!(
                "CRC32 mismatch (stored {stored:#010x}, computed {:#010x})",
                crc.sum()
            )));
        }
    }
    let magic = message.get_i8();
    let attributes = message.get_i8();
    if !(0..=1).contains(&magic) || (magic == 1 && message.remaining() < 8 + 8) {
        return Err(corrupt(&format!("message of magic {magic} cut short")));
    }
    let timestamp = if magic == 1 { message.get_i64() } else { -1 };
    let key = legacy_bytes(&mut message)?;
    let value = legacy_bytes(&mut message)?;
    let codec = attributes & 0x07;
    if codec == 0 {
        if offset < 0 {
            return Err(corrupt("negative offset"));
        }
        if depth == 0 {
            out.next_offset = Some(offset + 1);
        }
        if offset >= from {
            out.records.push(ConsumedRecord {
                topic: Arc::clone(topic),
                partition,
                offset,
                key,
                value,
                headers: Headers::new(),
                timestamp,
            });
        }
        return Ok(());
    }
    if depth > 0 {
        return Err(corrupt("compressed message inside a compressed message"));
    }
    let inner = value.ok_or_else(|| corrupt("compressed message without a value"))?;
    let mut inner = decompress(i16::from(codec), inner, topic, partition)?;
    // v1 wrappers carry the offset of their last inner message; inner offsets are relative
    // (0..n). v0 inner offsets are absolute.
    let mut messages = Vec::new();
    while inner.len() >= 12 {
        let len = (&inner[8..12]).get_i32();
        if len < 14 || inner.len() < 12 + len as usize {
            return Err(corrupt("inner message longer than its wrapper"));
        }
        messages.push(inner.split_to(12 + len as usize));
    }
    let last_relative = messages.last().map_or(0, |m| (&m[0..8]).get_i64());
    let log_append_time = attributes & 0x08 != 0;
    for mut m in messages {
        if magic >= 1 {
            let relative = (&m[0..8]).get_i64();
            let absolute = offset
                .checked_sub(last_relative)
                .and_then(|o| o.checked_add(relative))
                .ok_or_else(|| corrupt("offsets out of range"))?;
            m = rewrite_offset(m, absolute);
        }
        let before = out.records.len();
        decode_legacy(m, topic, partition, from, check_crcs, 1, out)?;
        if log_append_time {
            for r in &mut out.records[before..] {
                r.timestamp = timestamp;
            }
        }
    }
    if offset < 0 {
        return Err(corrupt("negative offset"));
    }
    out.next_offset = Some(offset + 1);
    Ok(())
}

/// The message with its offset field replaced (the rest is shared, not copied).
fn rewrite_offset(m: Bytes, offset: i64) -> Bytes {
    let mut out = bytes::BytesMut::with_capacity(m.len());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&m[8..]);
    out.freeze()
}

/// An i32-length-prefixed byte field of a legacy message; -1 is null.
fn legacy_bytes(buf: &mut Bytes) -> Result<Option<Bytes>> {
    if buf.remaining() < 4 {
        return Err(corrupt("truncated message"));
    }
    let len = buf.get_i32();
    if len < 0 {
        return Ok(None);
    }
    if buf.remaining() < len as usize {
        return Err(corrupt("field longer than its message"));
    }
    Ok(Some(buf.split_to(len as usize)))
}

/// One partition of a Fetch response (the fields the fetcher uses).
#[derive(Debug)]
pub(crate) struct FetchedPartition {
    pub(crate) partition_index: i32,
    pub(crate) error_code: i16,
    pub(crate) high_watermark: i64,
    /// Aborted transactions overlapping the data (`read_committed` fetches; null reads as
    /// empty). Grown as read, never reserved from the wire count.
    pub(crate) aborted_transactions: Vec<AbortedTransaction>,
    pub(crate) records: Option<Bytes>,
}

/// One topic of a Fetch response.
#[derive(Debug)]
pub(crate) struct FetchedTopic {
    pub(crate) topic: String,
    pub(crate) partitions: Vec<FetchedPartition>,
}

/// A Fetch response (v4 to v11), decoded without trusting its counts: `kafka-protocol`
/// reserves a vector of the announced length before reading the elements, so a corrupt or
/// hostile count could abort the process on allocation; here vectors grow as elements are
/// actually read, and record data stays a slice of the frame.
#[derive(Debug)]
pub(crate) struct FetchedResponse {
    pub(crate) error_code: i16,
    pub(crate) responses: Vec<FetchedTopic>,
}

fn need(buf: &Bytes, n: usize, what: &str) -> Result<()> {
    if buf.remaining() < n {
        return Err(Error::Protocol(format!(
            "Fetch response cut short reading {what}"
        )));
    }
    Ok(())
}

/// An i32 element count, checked against the bytes left (each element takes at least
/// `min_size` bytes); -1 (null) reads as 0.
fn count(buf: &mut Bytes, min_size: usize, what: &str) -> Result<usize> {
    need(buf, 4, what)?;
    let n = buf.get_i32();
    if n < -1 {
        return Err(Error::Protocol(format!("Fetch response: {what} count {n}")));
    }
    let n = n.max(0) as usize;
    if n.saturating_mul(min_size) > buf.remaining() {
        return Err(Error::Protocol(format!(
            "Fetch response: {n} {what} announced, {} bytes left",
            buf.remaining()
        )));
    }
    Ok(n)
}

/// Decodes a Fetch response body of `version` (4..=11).
pub(crate) fn decode_fetch_response(mut buf: Bytes, version: i16) -> Result<FetchedResponse> {
    if !(4..=11).contains(&version) {
        return Err(Error::Protocol(format!(
            "Fetch v{version} responses are not decoded here (v4 to v11 are)"
        )));
    }
    need(&buf, 4, "throttle time")?;
    buf.advance(4);
    let mut error_code = 0;
    if version >= 7 {
        need(&buf, 6, "error code and session id")?;
        error_code = buf.get_i16();
        buf.advance(4);
    }
    let topics = count(&mut buf, 6, "topics")?;
    let mut responses = Vec::new();
    for _ in 0..topics {
        need(&buf, 2, "topic name")?;
        let len = buf.get_i16();
        if len < 0 {
            return Err(Error::Protocol("Fetch response: null topic name".into()));
        }
        need(&buf, len as usize, "topic name")?;
        let topic = String::from_utf8_lossy(&buf.split_to(len as usize)).into_owned();
        // A partition: index, error, high watermark, last stable offset, (log start offset),
        // aborted transactions, (preferred read replica), records.
        let fixed = 4 + 2 + 8 + 8 + if version >= 5 { 8 } else { 0 };
        let tail = if version >= 11 { 4 } else { 0 };
        let partitions = count(&mut buf, fixed + 4 + tail + 4, "partitions")?;
        let mut out = Vec::new();
        for _ in 0..partitions {
            need(&buf, fixed, "a partition")?;
            let partition_index = buf.get_i32();
            let error_code = buf.get_i16();
            let high_watermark = buf.get_i64();
            // The last stable offset (where read_committed fetches stop) is the broker's
            // business: it bounds the data; the log start offset is not used.
            buf.advance(fixed - 14);
            let aborted = count(&mut buf, 16, "aborted transactions")?;
            let mut aborted_transactions = Vec::new();
            for _ in 0..aborted {
                aborted_transactions.push(AbortedTransaction {
                    producer_id: buf.get_i64(),
                    first_offset: buf.get_i64(),
                });
            }
            need(&buf, tail + 4, "a partition's records")?;
            buf.advance(tail);
            let len = buf.get_i32();
            let records = if len < 0 {
                None
            } else {
                need(&buf, len as usize, "a partition's records")?;
                Some(buf.split_to(len as usize))
            };
            out.push(FetchedPartition {
                partition_index,
                error_code,
                high_watermark,
                aborted_transactions,
                records,
            });
        }
        responses.push(FetchedTopic {
            topic,
            partitions: out,
        });
    }
    Ok(FetchedResponse {
        error_code,
        responses,
    })
}

fn decompress(codec: i16, batch: Bytes, topic: &str, partition: i32) -> Result<Bytes> {
    crate::codec::decompress(codec, &batch)
        .map(|out| Bytes::from(out.into_owned()))
        .map_err(|e| Error::Protocol(format!("{topic}/{partition}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn encode(compression: Compression, base: i64, n: i64) -> Bytes {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base + i,
                sequence: -1,
                delete_horizon: false,
                timestamp: 1_000 + i,
                key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("v{i}"))),
                headers: if i == 1 {
                    [(
                        kafka_protocol::protocol::StrBytes::from_static_str("h"),
                        Some(Bytes::from_static(b"x")),
                    )]
                    .into_iter()
                    .collect()
                } else {
                    Default::default()
                },
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.freeze()
    }

    #[test]
    fn decodes_plain_and_compressed_batches_from_an_offset() {
        let topic: Arc<str> = Arc::from("t");
        for compression in [Compression::None, Compression::Gzip, Compression::Snappy] {
            let mut data = BytesMut::new();
            let first = encode(compression, 10, 5);
            data.extend_from_slice(&first);
            data.extend_from_slice(&encode(compression, 15, 3));
            let whole = data.freeze();
            // A truncated trailing batch is left for the next fetch.
            let cut = whole.slice(..first.len() + 40);
            let mut out = Decoded::default();
            decode_batches(cut, &topic, 0, 12, true, None, &mut out).unwrap();
            let offsets: Vec<i64> = out.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, [12, 13, 14], "{compression:?}");
            assert_eq!(out.next_offset, Some(15));
            let r = &out.records[0];
            assert_eq!(r.key.as_deref(), Some(&b"k2"[..]));
            assert_eq!(r.value.as_deref(), Some(&b"v2"[..]));
            assert_eq!(r.timestamp, 1_002);

            let mut out = Decoded::default();
            decode_batches(whole, &topic, 0, 0, true, None, &mut out).unwrap();
            assert_eq!(out.records.len(), 8);
            assert_eq!(out.records[1].headers.get_str("h"), Some("x"));
            assert_eq!(out.records[1].key, None);
            assert_eq!(out.next_offset, Some(18));
        }
    }

    fn legacy_message(
        magic: i8,
        offset: i64,
        codec: i8,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Bytes {
        let mut body = BytesMut::new();
        body.put_i8(magic);
        body.put_i8(codec);
        if magic == 1 {
            body.put_i64(5_000 + offset);
        }
        match key {
            Some(k) => {
                body.put_i32(k.len() as i32);
                body.extend_from_slice(k);
            }
            None => body.put_i32(-1),
        }
        body.put_i32(value.len() as i32);
        body.extend_from_slice(value);
        let mut crc = flate2::Crc::new();
        crc.update(&body);
        let mut m = BytesMut::new();
        m.put_i64(offset);
        m.put_i32(4 + body.len() as i32);
        m.put_u32(crc.sum());
        m.extend_from_slice(&body);
        m.freeze()
    }

    use bytes::BufMut;

    #[test]
    fn legacy_message_sets_decode() {
        let topic: Arc<str> = Arc::from("t");
        for magic in [0, 1] {
            let mut data = BytesMut::new();
            for o in 0..3 {
                data.extend_from_slice(&legacy_message(magic, o, 0, Some(b"k"), b"v"));
            }
            let mut out = Decoded::default();
            decode_batches(data.freeze(), &topic, 0, 1, true, None, &mut out).unwrap();
            let offsets: Vec<i64> = out.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, [1, 2], "magic {magic}");
            assert_eq!(out.next_offset, Some(3));
            assert_eq!(out.records[0].key.as_deref(), Some(&b"k"[..]));
            let ts = if magic == 1 { 5_001 } else { -1 };
            assert_eq!(out.records[0].timestamp, ts);
        }
        // A gzip wrapper (v1: inner offsets relative, the wrapper has the last one's).
        let mut inner = BytesMut::new();
        for o in 0..3 {
            inner.extend_from_slice(&legacy_message(1, o, 0, None, format!("v{o}").as_bytes()));
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &inner).unwrap();
        let wrapper = legacy_message(1, 12, 1, None, &gz.finish().unwrap());
        let mut out = Decoded::default();
        decode_batches(wrapper, &topic, 0, 0, true, None, &mut out).unwrap();
        let offsets: Vec<i64> = out.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [10, 11, 12]);
        assert_eq!(out.records[2].value.as_deref(), Some(&b"v2"[..]));
        assert_eq!(out.next_offset, Some(13));
    }

    #[test]
    fn crc_mismatch_is_an_error_and_keeps_earlier_batches() {
        let topic: Arc<str> = Arc::from("t");
        let first = encode(Compression::None, 0, 3);
        let second = encode(Compression::None, 3, 3);
        let mut data = BytesMut::new();
        data.extend_from_slice(&first);
        data.extend_from_slice(&second);
        let n = data.len();
        data[n - 2] ^= 0x55; // a byte of the second batch's last value
        let data = data.freeze();
        let mut out = Decoded::default();
        let err = decode_batches(data.clone(), &topic, 7, 0, true, None, &mut out).unwrap_err();
        assert!(err.to_string().contains("t/7"), "{err}");
        assert!(err.to_string().contains("CRC32C mismatch"), "{err}");
        // The encoder may split records into several batches: those before the altered one
        // are kept (at least the first three records), none of the altered one.
        let kept = out.records.len();
        assert!((3..6).contains(&kept), "{kept} records kept");
        assert_eq!(out.next_offset, Some(kept as i64));
        // check.crcs=false: the altered value is delivered as it is.
        let mut out = Decoded::default();
        decode_batches(data, &topic, 7, 0, false, None, &mut out).unwrap();
        assert_eq!(out.records.len(), 6);
    }

    #[test]
    fn short_and_malformed_batches_are_errors() {
        let topic: Arc<str> = Arc::from("t");
        let good = encode(Compression::None, 0, 2);
        let cases: Vec<(&str, Bytes)> = vec![
            ("length below the header", {
                let mut b = BytesMut::from(&good[..]);
                b[8..12].copy_from_slice(&5i32.to_be_bytes());
                b.freeze()
            }),
            ("unknown magic", {
                let mut b = BytesMut::from(&good[..]);
                b[16] = 7;
                b.freeze()
            }),
            ("record count of 2^31 - 1", {
                let mut b = BytesMut::from(&good[..]);
                b[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
                b.freeze()
            }),
            ("offset overflow", {
                let mut b = BytesMut::from(&good[..]);
                b[0..8].copy_from_slice(&i64::MAX.to_be_bytes());
                b.freeze()
            }),
        ];
        for (what, data) in cases {
            let mut out = Decoded::default();
            let r = decode_batches(data, &topic, 0, 0, false, None, &mut out);
            assert!(r.is_err(), "{what}: {r:?}");
            assert!(out.records.is_empty(), "{what}");
        }
    }

    /// The cost of `check.crcs`: decode 64 MiB of 1 KiB records with and without it.
    /// `cargo test --release --lib crc_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check; run in release"]
    fn crc_cost() {
        let topic: Arc<str> = Arc::from("t");
        let value = Bytes::from(vec![7u8; 1024]);
        let mut data = BytesMut::new();
        for b in 0..64 {
            let records: Vec<Record> = (0..1000)
                .map(|i| Record {
                    transactional: false,
                    control: false,
                    partition_leader_epoch: 0,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: b * 1000 + i,
                    sequence: -1,
                    delete_horizon: false,
                    timestamp: 1_000,
                    key: None,
                    value: Some(value.clone()),
                    headers: Default::default(),
                })
                .collect();
            let options = RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            };
            RecordBatchEncoder::encode(&mut data, &records, &options).unwrap();
        }
        let data = data.freeze();
        for check in [false, true, false, true] {
            let mut best = std::time::Duration::MAX;
            for _ in 0..5 {
                let start = std::time::Instant::now();
                let mut out = Decoded::default();
                decode_batches(data.clone(), &topic, 0, 0, check, None, &mut out).unwrap();
                assert_eq!(out.records.len(), 64_000);
                best = best.min(start.elapsed());
            }
            let mib = data.len() as f64 / (1 << 20) as f64;
            eprintln!(
                "check.crcs={check}: {mib:.0} MiB in {best:?} ({:.0} MiB/s, {:.0} ns/record)",
                mib / best.as_secs_f64(),
                best.as_nanos() as f64 / 64_000.0
            );
        }
    }

    /// The cost of `read_committed` (the default) over `read_uncommitted`: batches of 1 and
    /// of 100 records of 100 B, plain, and transactional with a COMMIT marker after each.
    /// `cargo test --release --lib read_committed_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check; run in release"]
    fn read_committed_cost() {
        let topic: Arc<str> = Arc::from("t");
        for (per_batch, transactional) in [(1, false), (1, true), (100, false), (100, true)] {
            let mut data = BytesMut::new();
            let mut offset = 0;
            let mut n = 0;
            while n < 64_000 {
                let record = |offset: i64, control: bool| Record {
                    transactional,
                    control,
                    partition_leader_epoch: 0,
                    producer_id: 7,
                    producer_epoch: 0,
                    timestamp_type: TimestampType::Creation,
                    offset,
                    sequence: if control { -1 } else { offset as i32 },
                    delete_horizon: false,
                    timestamp: 1_000,
                    key: Some(if control {
                        Bytes::from_static(&[0, 0, 0, 1])
                    } else {
                        Bytes::from_static(b"key")
                    }),
                    value: Some(Bytes::from_static(&[7; 100])),
                    headers: Default::default(),
                };
                let records: Vec<Record> =
                    (0..per_batch).map(|i| record(offset + i, false)).collect();
                let options = RecordEncodeOptions {
                    version: 2,
                    compression: Compression::None,
                };
                RecordBatchEncoder::encode(&mut data, &records, &options).unwrap();
                offset += per_batch;
                n += per_batch;
                if transactional {
                    RecordBatchEncoder::encode(&mut data, &[record(offset, true)], &options)
                        .unwrap();
                    offset += 1;
                }
            }
            let data = data.freeze();
            for aborted in [None, Some(&[][..]), None, Some(&[][..])] {
                let mut best = std::time::Duration::MAX;
                for _ in 0..5 {
                    let start = std::time::Instant::now();
                    let mut out = Decoded::default();
                    decode_batches(data.clone(), &topic, 0, 0, true, aborted, &mut out).unwrap();
                    assert_eq!(out.records.len(), 64_000);
                    best = best.min(start.elapsed());
                }
                eprintln!(
                    "{per_batch} records/batch, transactional={transactional}, {}: {:.0} ns/record",
                    if aborted.is_some() {
                        "read_committed"
                    } else {
                        "read_uncommitted"
                    },
                    best.as_nanos() as f64 / 64_000.0
                );
            }
        }
    }

    #[test]
    fn fetch_response_decoder_agrees_with_kafka_protocol() {
        use kafka_protocol::messages::fetch_response::{
            AbortedTransaction, FetchableTopicResponse, PartitionData,
        };
        use kafka_protocol::messages::{FetchResponse, ProducerId, TopicName};
        use kafka_protocol::protocol::{Encodable, StrBytes};
        for version in [4, 5, 7, 11] {
            let partitions: Vec<PartitionData> = (0..3)
                .map(|p| {
                    PartitionData::default()
                        .with_partition_index(p)
                        .with_error_code(if p == 1 { 6 } else { 0 })
                        .with_high_watermark(100 + i64::from(p))
                        .with_aborted_transactions(Some(vec![AbortedTransaction::default()
                            .with_producer_id(ProducerId(7))
                            .with_first_offset(3)]))
                        .with_records((p != 2).then(|| encode(Compression::None, 0, 2)))
                })
                .collect();
            let response =
                FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str("topic-a")))
                    .with_partitions(partitions)]);
            let mut body = BytesMut::new();
            response.encode(&mut body, version).unwrap();
            let decoded = decode_fetch_response(body.freeze(), version).unwrap();
            assert_eq!(decoded.responses.len(), 1, "v{version}");
            let t = &decoded.responses[0];
            assert_eq!(t.topic, "topic-a");
            assert_eq!(t.partitions.len(), 3);
            for (i, p) in t.partitions.iter().enumerate() {
                assert_eq!(p.partition_index, i as i32, "v{version}");
                assert_eq!(p.error_code, if i == 1 { 6 } else { 0 });
                assert_eq!(p.high_watermark, 100 + i as i64);
                assert_eq!(
                    p.aborted_transactions,
                    [super::AbortedTransaction {
                        producer_id: 7,
                        first_offset: 3
                    }],
                    "v{version}"
                );
                assert_eq!(
                    p.records.as_ref().map(|r| r.to_vec()),
                    (i != 2).then(|| encode(Compression::None, 0, 2).to_vec())
                );
            }
        }
        // A topic count of 2^31 - 1 with a few bytes behind it is an error, not an allocation.
        let mut hostile = BytesMut::new();
        hostile.put_i32(0);
        hostile.put_i16(0);
        hostile.put_i32(0);
        hostile.put_i32(i32::MAX);
        hostile.extend_from_slice(&[0; 32]);
        assert!(decode_fetch_response(hostile.freeze(), 11).is_err());
        // So is an aborted-transactions count of 2^31 - 1.
        let mut hostile = BytesMut::new();
        hostile.put_i32(0); // throttle
        hostile.put_i16(0); // error
        hostile.put_i32(0); // session
        hostile.put_i32(1); // topics
        hostile.put_i16(1);
        hostile.put_u8(b't');
        hostile.put_i32(1); // partitions
        hostile.put_i32(0);
        hostile.put_i16(0);
        hostile.put_i64(5); // high watermark
        hostile.put_i64(5); // last stable offset
        hostile.put_i64(0); // log start offset
        hostile.put_i32(i32::MAX); // aborted transactions
        hostile.extend_from_slice(&[0; 64]);
        let e = decode_fetch_response(hostile.freeze(), 11).unwrap_err();
        assert!(e.to_string().contains("aborted transactions"), "{e}");
    }

    /// One partition's records as tansu 0.6.0 returned them to a read_committed Fetch
    /// (v11), written by confluent-kafka 2.16 (librdkafka) with `confluent_peer.py
    /// produce-steps --prefix c a+2 plain+1 b+2 a+1 b:commit a:abort plain+2 a+2 a:commit
    /// b+1 b:abort plain+1`; tansu wrote the markers and sent an empty aborted list:
    ///
    /// | offsets | batch |
    /// |---|---|
    /// | 0-1 | txn data, pid 5 (a, aborted) |
    /// | 2 | plain (idempotent, pid 8) |
    /// | 3-4 | txn data, pid 7 (b, committed) |
    /// | 5 | txn data, pid 5 (a, aborted) |
    /// | 6 | COMMIT marker, pid 7 |
    /// | 7 | ABORT marker, pid 5 |
    /// | 8-9 | plain |
    /// | 10-11 | txn data, pid 5 (a, committed) |
    /// | 12 | COMMIT marker, pid 5 |
    /// | 13 | txn data, pid 7 (b, aborted) |
    /// | 14 | ABORT marker, pid 7 |
    /// | 15 | plain |
    const TANSU_TXN_CAPTURE: &[&str] = &[
        "00000000000000000000005b00000000028c2914d5001000000001000001a250b1e135000001a250b1e13500",
        "0000000000000500010000000000000002280000000e632d612d302d300e632d612d302d3000280000020e63",
        "2d612d302d310e632d612d302d310000000000000000020000004e00000000024159612d0000000000000000",
        "01a250b1e137000001a250b1e1370000000000000008000000000000000000013800000016632d706c61696e",
        "2d302d3016632d706c61696e2d302d300000000000000000030000005b00000000020b4b087e001000000001",
        "000001a250b1e363000001a250b1e363000000000000000700010000000000000002280000000e632d622d30",
        "2d300e632d622d302d3000280000020e632d622d302d310e632d622d302d3100000000000000000500000046",
        "00000000026c3899e0001000000000000001a250b1e365000001a250b1e36500000000000000050001000000",
        "0200000001280000000e632d612d302d320e632d612d302d3200000000000000000600000042ffffffff0272",
        "e4d045003000000000000001a250b1e365000001a250b1e36500000000000000070001ffffffff0000000120",
        "00000008000000010c00000000000000000000000000000700000042ffffffff0233bbc61100300000000000",
        "0001a250b1e366000001a250b1e36600000000000000050001ffffffff000000012000000008000000000c00",
        "00000000000000000000000000080000006b000000000264a7a1fa000000000001000001a250b1e366000001",
        "a250b1e3660000000000000008000000000001000000023800000016632d706c61696e2d312d3016632d706c",
        "61696e2d312d30003800000216632d706c61696e2d312d3116632d706c61696e2d312d310000000000000000",
        "0a0000005b00000000021e708769001000000001000001a250b1e367000001a250b1e3670000000000000005",
        "00010000000300000002280000000e632d612d312d300e632d612d312d3000280000020e632d612d312d310e",
        "632d612d312d3100000000000000000c00000042ffffffff02bc103658003000000000000001a250b1e36800",
        "0001a250b1e36800000000000000050001ffffffff000000012000000008000000010c000000000000000000",
        "00000000000d0000004600000000029d400f4a001000000000000001a250b1e369000001a250b1e369000000",
        "000000000700010000000200000001280000000e632d622d312d300e632d622d312d3000000000000000000e",
        "00000042ffffffff02fd4f200c003000000000000001a250b1e36b000001a250b1e36b000000000000000700",
        "01ffffffff000000012000000008000000000c00000000000000000000000000000f0000004e0000000002ce",
        "bd28b7000000000000000001a250b1e36b000001a250b1e36b00000000000000080000000000030000000138",
        "00000016632d706c61696e2d322d3016632d706c61696e2d322d3000",
    ];

    fn tansu_capture() -> Bytes {
        let hex: String = TANSU_TXN_CAPTURE.concat();
        Bytes::from(
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>(),
        )
    }

    fn keys(out: &Decoded) -> Vec<String> {
        out.records
            .iter()
            .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
            .collect()
    }

    fn offsets(out: &Decoded) -> Vec<i64> {
        out.records.iter().map(|r| r.offset).collect()
    }

    const COMMITTED: [i64; 8] = [2, 3, 4, 8, 9, 10, 11, 15];

    #[test]
    fn read_committed_over_tansu_bytes_drops_aborted_and_markers() {
        let data = tansu_capture();
        let topic: Arc<str> = Arc::from("t");
        // As tansu sends it: markers, no aborted list.
        let mut out = Decoded::default();
        decode_batches(data.clone(), &topic, 0, 0, true, Some(&[]), &mut out).unwrap();
        assert_eq!(offsets(&out), COMMITTED);
        assert_eq!(
            keys(&out),
            [
                "c-plain-0-0",
                "c-b-0-0",
                "c-b-0-1",
                "c-plain-1-0",
                "c-plain-1-1",
                "c-a-1-0",
                "c-a-1-1",
                "c-plain-2-0"
            ]
        );
        assert_eq!(out.next_offset, Some(16));
        // As Apache Kafka sends it: the aborted transactions listed too. The ABORT marker at
        // 7 ends pid 5's aborted transaction, so its committed one at 10-11 is kept.
        let listed = [
            AbortedTransaction {
                producer_id: 5,
                first_offset: 0,
            },
            AbortedTransaction {
                producer_id: 7,
                first_offset: 13,
            },
        ];
        let mut out = Decoded::default();
        decode_batches(data.clone(), &topic, 0, 0, true, Some(&listed), &mut out).unwrap();
        assert_eq!(offsets(&out), COMMITTED);
        assert_eq!(out.next_offset, Some(16));
        // read_uncommitted: every data record, never a marker.
        let mut out = Decoded::default();
        decode_batches(data.clone(), &topic, 0, 0, true, None, &mut out).unwrap();
        assert_eq!(offsets(&out), [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 13, 15]);
        assert_eq!(out.next_offset, Some(16));
        // From an offset inside the data; from the last marker: nothing, but past it.
        for (from, expected, next) in [
            (5, &[8, 9, 10, 11, 15][..], Some(16)),
            (11, &[11, 15][..], Some(16)),
            (14, &[15][..], Some(16)),
        ] {
            let mut out = Decoded::default();
            decode_batches(data.clone(), &topic, 0, from, true, Some(&[]), &mut out).unwrap();
            assert_eq!(offsets(&out), expected, "from {from}");
            assert_eq!(out.next_offset, next);
        }
    }

    /// The byte length of the capture's batches up to (not including) the one at `offset`.
    fn capture_prefix(data: &Bytes, offset: i64) -> usize {
        let mut at = 0;
        while (&data[at..at + 8]).get_i64() != offset {
            at += 12 + (&data[at + 8..at + 12]).get_i32() as usize;
        }
        at
    }

    #[test]
    fn aborted_list_covers_markers_beyond_the_response() {
        let data = tansu_capture();
        let topic: Arc<str> = Arc::from("t");
        // The response ends before the markers at 6 and 7 (cut by max bytes).
        let cut = data.slice(..capture_prefix(&data, 6));
        let listed = [AbortedTransaction {
            producer_id: 5,
            first_offset: 0,
        }];
        let mut out = Decoded::default();
        decode_batches(cut.clone(), &topic, 0, 0, true, Some(&listed), &mut out).unwrap();
        assert_eq!(offsets(&out), [2, 3, 4]);
        assert_eq!(out.next_offset, Some(6));
        // A broker that lists nothing (tansu 0.6.0) and a marker not in this response: the
        // aborted records cannot be told apart (documented limit).
        let mut out = Decoded::default();
        decode_batches(cut, &topic, 0, 0, true, Some(&[]), &mut out).unwrap();
        assert_eq!(offsets(&out), [0, 1, 2, 3, 4, 5]);
        // Only control batches: nothing returned, the offset still moves past them.
        let markers = data.slice(capture_prefix(&data, 6)..capture_prefix(&data, 8));
        for aborted in [None, Some(&[][..])] {
            let mut out = Decoded::default();
            decode_batches(markers.clone(), &topic, 0, 6, true, aborted, &mut out).unwrap();
            assert!(out.records.is_empty());
            assert_eq!(out.next_offset, Some(8));
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn valid() -> Bytes {
            let mut data = BytesMut::new();
            data.extend_from_slice(&encode(Compression::None, 0, 4));
            data.extend_from_slice(&encode(Compression::Gzip, 4, 3));
            data.extend_from_slice(&legacy_message(1, 7, 0, Some(b"k"), b"v"));
            data.freeze()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400), crc in any::<bool>()) {
                let mut out = Decoded::default();
                let _ = decode_batches(Bytes::from(data), &Arc::from("t"), 0, 0, crc, None, &mut out);
            }

            #[test]
            fn mutated_batches_never_panic(
                flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<proptest::sample::Index>(),
                crc in any::<bool>(),
            ) {
                let mut data = BytesMut::from(&valid()[..]);
                for (at, byte) in flips {
                    let i = at.index(data.len());
                    data[i] = byte;
                }
                let len = data.len();
                data.truncate(cut.index(len + 1));
                let mut out = Decoded::default();
                let r = decode_batches(data.freeze(), &Arc::from("t"), 0, 0, crc, None, &mut out);
                // A corrupt batch contributes no record; without the CRC check a mutated
                // batch may decode to anything, but never to more records than bytes.
                prop_assert!(out.records.len() <= len);
                if crc && r.is_ok() {
                    // Only the header fields before the CRC can change unnoticed.
                    prop_assert!(out.records.len() <= 8);
                }
            }

            /// The captured transactional data, mutated and cut, with a random aborted list:
            /// no panic, and read_committed never returns a record read_uncommitted does not
            /// (when that decoded without error).
            #[test]
            fn read_committed_mutations_never_panic(
                flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..6),
                cut in any::<proptest::sample::Index>(),
                aborted in proptest::collection::vec((0i64..10, -2i64..20), 0..12),
                crc in any::<bool>(),
            ) {
                let mut data = BytesMut::from(&tansu_capture()[..]);
                for (at, byte) in flips {
                    let i = at.index(data.len());
                    data[i] = byte;
                }
                let len = data.len();
                data.truncate(cut.index(len + 1));
                let data = data.freeze();
                let aborted: Vec<AbortedTransaction> = aborted
                    .into_iter()
                    .map(|(producer_id, first_offset)| AbortedTransaction { producer_id, first_offset })
                    .collect();
                let mut committed = Decoded::default();
                let _ = decode_batches(data.clone(), &Arc::from("t"), 0, 0, crc, Some(&aborted), &mut committed);
                let mut all = Decoded::default();
                // A batch read_committed skips unparsed (aborted) may fail to parse here: the
                // comparison holds when read_uncommitted decoded everything.
                if decode_batches(data, &Arc::from("t"), 0, 0, crc, None, &mut all).is_err() {
                    return Ok(());
                }
                let all = offsets(&all);
                for o in offsets(&committed) {
                    prop_assert!(all.contains(&o), "{o} not in {all:?}");
                }
            }

            /// A model: transactions of three producers interleaved with plain batches,
            /// each decided (commit or abort), encoded as a broker writes them (markers
            /// included), decoded from a random offset with a random cut. With Kafka's
            /// aborted list, read_committed returns exactly the committed and plain records
            /// of the whole batches; with no list (tansu) the same when the response is
            /// whole, and never fewer; read_uncommitted returns every data record.
            #[test]
            fn read_committed_matches_a_model(
                ops in proptest::collection::vec((0i64..4, 0u8..4, 1i64..4), 1..40),
                from in 0i64..60,
                cut in any::<proptest::sample::Index>(),
            ) {
                let mut data = BytesMut::new();
                let mut offset = 0i64;
                // Per producer: the open transaction's first offset and records.
                let mut open: HashMap<i64, (i64, Vec<i64>)> = HashMap::new();
                let mut fate: Vec<(i64, bool)> = Vec::new(); // (offset, returned by read_committed)
                let mut listed = Vec::new();
                let mut ends = Vec::new(); // byte length after each batch, with its next offset
                let batch = |data: &mut BytesMut, records: &[Record]| {
                    RecordBatchEncoder::encode(data, records, &RecordEncodeOptions { version: 2, compression: Compression::None }).unwrap();
                };
                let mut ops: Vec<(i64, u8, i64)> = ops;
                // Close every transaction left open at the end, alternating outcomes.
                for pid in 1..4 {
                    ops.push((pid, 2 + (pid % 2) as u8, 1));
                }
                for (pid, op, n) in ops {
                    let record = |offset: i64, control: Option<i16>, pid: i64| Record {
                        transactional: pid > 0,
                        control: control.is_some(),
                        partition_leader_epoch: 0,
                        producer_id: if pid > 0 { pid } else { 100 },
                        producer_epoch: 0,
                        timestamp_type: TimestampType::Creation,
                        offset,
                        sequence: if control.is_some() { -1 } else { offset as i32 },
                        delete_horizon: false,
                        timestamp: 1_000,
                        key: Some(match control {
                            Some(kind) => Bytes::from([0, 0, 0, kind as u8].to_vec()),
                            None => Bytes::from(format!("k{offset}")),
                        }),
                        value: Some(Bytes::from_static(&[0; 6])),
                        headers: Default::default(),
                    };
                    match (pid, op) {
                        // pid 0: plain (non-transactional, idempotent) records.
                        (0, _) | (_, 0 | 1) => {
                            let records: Vec<Record> = (0..n).map(|i| record(offset + i, None, pid)).collect();
                            batch(&mut data, &records);
                            for i in 0..n {
                                if pid == 0 {
                                    fate.push((offset + i, true));
                                } else {
                                    open.entry(pid).or_insert((offset, Vec::new())).1.push(offset + i);
                                }
                            }
                            offset += n;
                        }
                        (_, kind) => {
                            let Some((first, records)) = open.remove(&pid) else { continue };
                            let commit = kind == 2;
                            batch(&mut data, &[record(offset, Some(i16::from(commit)), pid)]);
                            if !commit {
                                listed.push(AbortedTransaction { producer_id: pid, first_offset: first });
                            }
                            fate.extend(records.into_iter().map(|o| (o, commit)));
                            offset += 1;
                        }
                    }
                    ends.push((data.len(), offset));
                }
                fate.sort();
                let data = data.freeze();
                let cut = cut.index(data.len() + 1);
                let next = ends.iter().rev().find(|(len, _)| *len <= cut).map(|(_, o)| *o);
                let whole = next.unwrap_or(0);
                let expected: Vec<i64> = fate.iter().filter(|(o, keep)| *keep && *o >= from && *o < whole).map(|(o, _)| *o).collect();
                let every: Vec<i64> = fate.iter().filter(|(o, _)| *o >= from && *o < whole).map(|(o, _)| *o).collect();
                let topic: Arc<str> = Arc::from("t");

                let mut out = Decoded::default();
                decode_batches(data.slice(..cut), &topic, 0, from, true, Some(&listed), &mut out).unwrap();
                prop_assert_eq!(offsets(&out), expected.clone());
                prop_assert_eq!(out.next_offset, next);

                let mut out = Decoded::default();
                decode_batches(data.slice(..cut), &topic, 0, from, true, Some(&[]), &mut out).unwrap();
                let got = offsets(&out);
                if cut == data.len() {
                    prop_assert_eq!(&got, &expected);
                }
                for o in &expected {
                    prop_assert!(got.contains(o));
                }
                for o in &got {
                    prop_assert!(every.contains(o));
                }

                let mut out = Decoded::default();
                decode_batches(data.slice(..cut), &topic, 0, from, true, None, &mut out).unwrap();
                prop_assert_eq!(offsets(&out), every);
                prop_assert_eq!(out.next_offset, next);
            }

            #[test]
            fn truncation_keeps_whole_batches(cut in 0usize..2000) {
                let data = valid();
                let cut = cut.min(data.len());
                let mut out = Decoded::default();
                decode_batches(data.slice(..cut), &Arc::from("t"), 0, 0, true, None, &mut out).unwrap();
                let mut all = Decoded::default();
                decode_batches(data.clone(), &Arc::from("t"), 0, 0, true, None, &mut all).unwrap();
                prop_assert_eq!(all.records.len(), 8);
                // Whole batches only: a prefix of the full decode, and the next offset right
                // after it.
                let offsets: Vec<i64> = out.records.iter().map(|r| r.offset).collect();
                let prefix: Vec<i64> = all.records.iter().take(offsets.len()).map(|r| r.offset).collect();
                prop_assert_eq!(&offsets, &prefix);
                prop_assert_eq!(out.next_offset, offsets.last().map(|o| o + 1));
            }

            /// The fetch-response path: a response frame with three partitions (0, 1 and 2
            /// aborted transactions listed), mutated and truncated, then decoded as the fetch
            /// worker does with read_committed. No panic; a partition
            /// whose bytes were not touched decodes in full.
            #[test]
            fn fetch_response_mutations_stay_per_partition(
                at in any::<proptest::sample::Index>(),
                byte in any::<u8>(),
                cut in any::<proptest::sample::Index>(),
            ) {
                use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
                use kafka_protocol::messages::{FetchResponse, TopicName};
                use kafka_protocol::protocol::{Encodable, StrBytes};
                let partitions: Vec<PartitionData> = (0..3)
                    .map(|p| PartitionData::default()
                        .with_partition_index(p)
                        .with_high_watermark(4)
                        .with_aborted_transactions(Some(
                            (0..i64::from(p))
                                .map(|i| kafka_protocol::messages::fetch_response::AbortedTransaction::default()
                                    .with_producer_id(kafka_protocol::messages::ProducerId(i))
                                    .with_first_offset(i))
                                .collect(),
                        ))
                        .with_records(Some(encode(Compression::None, 0, 4))))
                    .collect();
                let response = FetchResponse::default().with_responses(vec![
                    FetchableTopicResponse::default()
                        .with_topic(TopicName(StrBytes::from_static_str("t")))
                        .with_partitions(partitions),
                ]);
                let mut frame = BytesMut::new();
                response.encode(&mut frame, 11).unwrap();
                let i = at.index(frame.len());
                frame[i] = byte;
                let len = frame.len();
                frame.truncate(cut.index(len + 1).max(i + 1));
                let frame = frame.freeze();
                let Ok(decoded) = decode_fetch_response(frame, 11) else {
                    return Ok(());
                };
                for t in decoded.responses {
                    for p in t.partitions {
                        let Some(records) = p.records else { continue };
                        let mut out = Decoded::default();
                        let r = decode_batches(records.clone(), &Arc::from("t"), p.partition_index, 0, true, Some(&p.aborted_transactions), &mut out);
                        prop_assert!(t.topic.len() <= len);
                        // A partition whose bytes were not touched decodes in full.
                        let untouched = records == encode(Compression::None, 0, 4);
                        if untouched {
                            prop_assert!(r.is_ok());
                            prop_assert_eq!(out.records.len(), 4);
                        }
                    }
                }
            }
        }
    }
}
