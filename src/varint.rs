//! Kafka's variable-length integers (protobuf style: 7 bits a byte, low groups first; signed
//! values zig-zag encoded): the record fields of v2 batches, and the compact lengths of
//! flexible request versions. One codec for the producer's writers and the consumer's reader.

use bytes::{Buf, BufMut};

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The buffer ended inside it.
    Truncated,
    /// More than 64 bits (10 bytes) long.
    TooLong,
}

/// Zig-zag: small magnitudes, positive or negative, become small unsigned values.
#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Writes `v` unsigned (the compact lengths of flexible versions).
#[inline]
pub(crate) fn put_uvarint(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Writes `v` zig-zag encoded (Kafka's varlong).
#[inline]
pub(crate) fn put_varlong(buf: &mut impl BufMut, v: i64) {
    put_uvarint(buf, zigzag(v));
}

/// Writes `v` zig-zag encoded (Kafka's varint).
#[inline]
pub(crate) fn put_varint(buf: &mut impl BufMut, v: i32) {
    put_varlong(buf, i64::from(v));
}

/// Bytes the zig-zag varlong of `v` takes.
#[inline]
pub(crate) fn varlong_len(v: i64) -> usize {
    // 1 byte per started 7 bits; 0 still takes one byte.
    (64 - (zigzag(v) | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes the zig-zag varint of `v` takes.
#[inline]
pub(crate) fn varint_len(v: i32) -> usize {
    varlong_len(i64::from(v))
}

/// Reads a zig-zag varint or varlong (both decode to `i64`), consuming its bytes.
pub(crate) fn get_varlong(buf: &mut impl Buf) -> Result<i64, VarintError> {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        if !buf.has_remaining() {
            return Err(VarintError::Truncated);
        }
        let b = buf.get_u8();
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(VarintError::TooLong);
        }
    }
    Ok(((value >> 1) as i64) ^ -((value & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip_and_length(v in any::<i64>()) {
            let mut buf = bytes::BytesMut::new();
            put_varlong(&mut buf, v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            let mut bytes = buf.freeze();
            prop_assert_eq!(get_varlong(&mut bytes), Ok(v));
            prop_assert!(bytes.is_empty());
        }
    }

    #[test]
    fn truncated_and_overlong_input_are_errors() {
        assert_eq!(get_varlong(&mut &[0x80u8][..]), Err(VarintError::Truncated));
        assert_eq!(
            get_varlong(&mut &[0xffu8; 11][..]),
            Err(VarintError::TooLong)
        );
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(-1), 1);
        assert_eq!(varint_len(64), 2);
    }
}
