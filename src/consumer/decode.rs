//! Decoding fetched record batches (magic v2) into [`ConsumedRecord`]s without copying.
//!
//! Keys, values and header values are `Bytes` slices of the fetch response frame (or of the
//! decompressed buffer of a compressed batch): no allocation per record beyond the record
//! itself (headers allocate their names only when present). `kafka-protocol`'s
//! `RecordBatchDecoder` slices too, but builds its own record type (with an `IndexMap` of
//! headers and producer fields) that would then be converted; decoding straight into
//! `ConsumedRecord` skips that step.

use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::error::{Error, Result};
use crate::record::{ConsumedRecord, Headers};

/// Size of a v2 batch header up to and including `records count`.
const BATCH_HEADER: usize = 61;

fn corrupt(what: &str) -> Error {
    Error::Protocol(format!("corrupt record batch: {what}"))
}

/// Reads a zig-zag varint.
fn varint(buf: &mut Bytes) -> Result<i64> {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        if !buf.has_remaining() {
            return Err(corrupt("truncated varint"));
        }
        let b = buf.get_u8();
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(corrupt("varint too long"));
        }
    }
    Ok(((value >> 1) as i64) ^ -((value & 1) as i64))
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
    /// records or below the fetch offset); `None` when no complete batch was present.
    pub(crate) next_offset: Option<i64>,
}

/// Decodes the record batches of one partition's fetch response, keeping records with an
/// offset of at least `from`.
pub(crate) fn decode_batches(
    mut data: Bytes,
    topic: &Arc<str>,
    partition: i32,
    from: i64,
    out: &mut Decoded,
) -> Result<()> {
    while data.len() >= BATCH_HEADER {
        let base_offset = (&data[0..8]).get_i64();
        let batch_len = (&data[8..12]).get_i32();
        if batch_len < 0 {
            return Err(corrupt("negative batch length"));
        }
        let total = 12 + batch_len as usize;
        if data.len() < total {
            // A partial batch at the end of the response (cut by max bytes): fetched again.
            break;
        }
        let mut batch = data.split_to(total);
        let magic = batch[16];
        if magic != 2 {
            return Err(Error::Protocol(format!(
                "{topic}/{partition}: record batch magic {magic} at offset {base_offset} \
                 (only v2 batches, Kafka 0.11+, are supported)"
            )));
        }
        batch.advance(21); // base offset, length, leader epoch, magic, crc
        let attributes = batch.get_i16();
        let last_offset_delta = batch.get_i32();
        let base_timestamp = batch.get_i64();
        let max_timestamp = batch.get_i64();
        batch.advance(8 + 2 + 4); // producer id, producer epoch, base sequence
        let count = batch.get_i32();
        out.next_offset = Some(base_offset + i64::from(last_offset_delta) + 1);
        let is_control = attributes & 0x20 != 0;
        if is_control || base_offset + i64::from(last_offset_delta) < from {
            continue;
        }
        let log_append_time = attributes & 0x08 != 0;
        let mut records = match attributes & 0x07 {
            0 => batch,
            codec => decompress(codec, batch, topic, partition)?,
        };
        out.records.reserve(count.max(0) as usize);
        for _ in 0..count {
            let len = varint(&mut records)?;
            if len < 0 || records.remaining() < len as usize {
                return Err(corrupt("record longer than its batch"));
            }
            let mut rec = records.split_to(len as usize);
            if !rec.has_remaining() {
                return Err(corrupt("empty record"));
            }
            rec.advance(1); // attributes
            let ts_delta = varint(&mut rec)?;
            let offset_delta = varint(&mut rec)?;
            let key = nullable_bytes(&mut rec)?;
            let value = nullable_bytes(&mut rec)?;
            let header_count = varint(&mut rec)?;
            let mut headers = Headers::new();
            for _ in 0..header_count.max(0) {
                let name = nullable_bytes(&mut rec)?.unwrap_or_default();
                let value = nullable_bytes(&mut rec)?.unwrap_or_default();
                headers.insert(String::from_utf8_lossy(&name).into_owned(), value);
            }
            let offset = base_offset + offset_delta;
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
                    base_timestamp + ts_delta
                },
            });
        }
    }
    Ok(())
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
            decode_batches(cut, &topic, 0, 12, &mut out).unwrap();
            let offsets: Vec<i64> = out.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, [12, 13, 14], "{compression:?}");
            assert_eq!(out.next_offset, Some(15));
            let r = &out.records[0];
            assert_eq!(r.key.as_deref(), Some(&b"k2"[..]));
            assert_eq!(r.value.as_deref(), Some(&b"v2"[..]));
            assert_eq!(r.timestamp, 1_002);

            let mut out = Decoded::default();
            decode_batches(whole, &topic, 0, 0, &mut out).unwrap();
            assert_eq!(out.records.len(), 8);
            assert_eq!(out.records[1].headers.get_str("h"), Some("x"));
            assert_eq!(out.records[1].key, None);
            assert_eq!(out.next_offset, Some(18));
        }
    }
}
